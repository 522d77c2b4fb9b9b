//! A sidecar's configuration sent in parts over DPS ([`ConfigDelta`]): the settings (the
//! configuration without its outbounds' endpoints) and each outbound's endpoints, each part
//! sent again only when it changed. A policy write then sends each sidecar its settings alone
//! rather than with every endpoint it reaches, and an endpoint that comes or goes sends
//! one service's list, encoded once for all its callers.
//!
//! A delta goes in pieces of at most [`PIECE_BYTES`] of settings and endpoints to a sidecar
//! that takes them ([`pieces`]); the sidecar puts them back together ([`Assembler::take`]).
//!
//! In: the stream's [`ConfigDelta`]s, in order. Out: each version's whole [`ProxyConfig`].

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use prost::bytes::Bytes;

use crate::dps::{ConfigDelta, ServiceEndpoints};
use crate::proxy_config::{Endpoint, ProxyConfig};

/// The most bytes of settings and endpoints in one piece of a delta: with the message's own
/// fields, a piece stays under 4 KB, so neither end's stream buffer grows past that.
pub const PIECE_BYTES: usize = 3 * 1024;

/// `delta` cut in pieces of at most `limit` bytes of settings and endpoints, each but the last
/// marked `more`; the pieces share `delta`'s buffers. A delta within `limit` is one piece.
pub fn pieces(delta: ConfigDelta, limit: usize) -> Vec<ConfigDelta> {
    let limit = limit.max(1);
    let version = delta.version;
    let start = || ConfigDelta { version, settings: Bytes::new(), endpoints: Vec::new(), more: true };
    let mut done = Vec::new();
    let mut piece = start();
    let mut room = limit;
    let mut settings = delta.settings;
    while !settings.is_empty() {
        let cut = settings.split_to(room.min(settings.len()));
        room -= cut.len();
        piece.settings = cut;
        if room == 0 {
            done.push(std::mem::replace(&mut piece, start()));
            room = limit;
        }
    }
    for part in delta.endpoints {
        let mut json = part.json;
        loop {
            let cut = json.split_to(room.min(json.len()));
            room -= cut.len();
            piece.endpoints.push(ServiceEndpoints { service: part.service.clone(), json: cut });
            if room == 0 {
                done.push(std::mem::replace(&mut piece, start()));
                room = limit;
            }
            if json.is_empty() {
                break;
            }
        }
    }
    if room < limit || done.is_empty() || !piece.endpoints.is_empty() {
        done.push(piece);
    }
    if let Some(last) = done.last_mut() {
        last.more = false;
    }
    done
}

/// A version's whole configuration, or why it could not be put together.
pub type Assembled = Result<Arc<(u64, ProxyConfig)>, String>;

/// The pieces of one version received so far.
struct Pending {
    version: u64,
    settings: Vec<u8>,
    endpoints: Vec<(String, Vec<u8>)>,
}

impl Pending {
    fn new(version: u64) -> Pending {
        Pending { version, settings: Vec::new(), endpoints: Vec::new() }
    }

    fn add(&mut self, piece: &ConfigDelta) {
        self.settings.extend_from_slice(&piece.settings);
        for part in &piece.endpoints {
            match self.endpoints.last_mut() {
                // The next cut of the list the previous piece ended with.
                Some((service, json)) if *service == part.service => json.extend_from_slice(&part.json),
                _ => self.endpoints.push((part.service.clone(), part.json.to_vec())),
            }
        }
    }

    fn into_delta(self) -> ConfigDelta {
        let endpoints = self.endpoints.into_iter().map(|(service, json)| ServiceEndpoints { service, json: json.into() }).collect();
        ConfigDelta { version: self.version, settings: self.settings.into(), endpoints, more: false }
    }
}

/// The sidecar's side of one stream: what the zone sent so far, put back together.
#[derive(Default)]
pub struct Assembler {
    /// The stream's Dataplane: the name of settings that come without one.
    dataplane: String,
    /// The configuration of the stream's latest delta, with its version (applied or refused:
    /// the next delta is what changed since it was sent). `None` before the first delta, and
    /// after one that could not be put together (the zone then sends everything again).
    current: Option<Arc<(u64, ProxyConfig)>>,
    /// The pieces of a version whose last piece has not come yet.
    pending: Option<Pending>,
}

impl Assembler {
    /// Nothing received yet on the stream of Dataplane `dataplane`.
    pub fn new(dataplane: &str) -> Assembler {
        Assembler { dataplane: dataplane.to_string(), current: None, pending: None }
    }

    /// Takes one piece of a delta: once its version's last piece has come, the version and its
    /// whole configuration (or why it cannot be put together), to ACK or NACK; `None` while
    /// more pieces are to come.
    pub fn take(&mut self, piece: &ConfigDelta) -> Option<(u64, Assembled)> {
        let version = piece.version;
        let mut pending = match self.pending.take() {
            Some(pending) if pending.version == version => pending,
            Some(_interrupted) => {
                // Not something a zone does: the unfinished version is dropped, and with it
                // what the next partial delta would build on, so that one is refused and the
                // zone sends everything again.
                self.current = None;
                Pending::new(version)
            }
            None if !piece.more => return Some((version, self.apply(piece))),
            None => Pending::new(version),
        };
        pending.add(piece);
        if piece.more {
            self.pending = Some(pending);
            return None;
        }
        Some((version, self.apply(&pending.into_delta())))
    }

    /// The whole configuration of `delta`'s version.
    pub fn apply(&mut self, delta: &ConfigDelta) -> Assembled {
        match self.assemble(delta) {
            Ok(config) => {
                let config = Arc::new((delta.version, config));
                self.current = Some(config.clone());
                Ok(config)
            }
            Err(e) => {
                self.current = None;
                Err(e)
            }
        }
    }

    fn assemble(&self, delta: &ConfigDelta) -> Result<ProxyConfig, String> {
        let previous = self.current.as_deref().map(|(_, c)| c);
        let mut sent: BTreeMap<&str, Vec<Endpoint>> = BTreeMap::new();
        for part in &delta.endpoints {
            let list = serde_json::from_slice(&part.json)
                .map_err(|e| format!("the endpoints of outbound {:?} do not parse: {e}", part.service))?;
            if sent.insert(part.service.as_str(), list).is_some() {
                return Err(format!("the endpoints of outbound {:?} were sent twice in one configuration", part.service));
            }
        }
        let (mut config, new_settings) = if delta.settings.is_empty() {
            let previous =
                previous.ok_or("a configuration change came without the configuration it changes (no earlier one on this stream)")?;
            (previous.clone(), false)
        } else {
            let mut settings: ProxyConfig =
                serde_json::from_slice(&delta.settings).map_err(|e| format!("the configuration does not parse: {e}"))?;
            if settings.dataplane.is_empty() {
                // Settings shared by the sidecars configured alike name none: this stream's.
                settings.dataplane.clone_from(&self.dataplane);
            }
            (settings, true)
        };
        let services: BTreeSet<String> = config.outbounds.iter().map(|o| o.service.clone()).collect();
        if let Some(stray) = sent.keys().find(|s| !services.contains(**s)) {
            return Err(format!("endpoints came for {stray:?}, which is not an outbound of the configuration"));
        }
        for outbound in &mut config.outbounds {
            if let Some(list) = sent.remove(outbound.service.as_str()) {
                outbound.endpoints = list;
            } else if new_settings {
                // Settings come without endpoints: an outbound keeps the ones sent before.
                let before = previous.and_then(|p| p.outbounds.iter().find(|o| o.service == outbound.service));
                let Some(before) = before else {
                    return Err(format!("outbound {:?} is new but its endpoints did not come with it", outbound.service));
                };
                outbound.endpoints.clone_from(&before.endpoints);
            }
        }
        Ok(config)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dps::ServiceEndpoints;
    use prost::bytes::Bytes;

    fn settings(outbounds: &[&str], timeout: u64) -> Bytes {
        let outbounds: Vec<_> = outbounds
            .iter()
            .map(|s| {
                serde_json::json!({"service": s, "port": null, "address": null, "protocol": "http", "endpoints": [],
                    "policies": {}, "httpRoutes": [], "tcpRoute": null})
            })
            .collect();
        serde_json::to_vec(&serde_json::json!({
            "mesh": "default", "dataplane": "web-1", "zone": "z", "identity": "spiffe://default/web", "inbounds": [],
            "outbounds": outbounds, "trustBundle": {"roots": []}, "certificateLifetimeSecs": timeout, "proxy": {}
        }))
        .unwrap()
        .into()
    }

    fn endpoints(service: &str, addresses: &[&str]) -> ServiceEndpoints {
        let list: Vec<_> = addresses
            .iter()
            .map(|a| serde_json::json!({"address": a, "port": 8000, "zone": "z", "tags": {"strait.io/service": service}}))
            .collect();
        ServiceEndpoints { service: service.into(), json: serde_json::to_vec(&list).unwrap().into() }
    }

    fn addresses(config: &ProxyConfig, service: &str) -> Vec<String> {
        let outbound = config.outbounds.iter().find(|o| o.service == service).unwrap();
        outbound.endpoints.iter().map(|e| e.address.clone()).collect()
    }

    #[test]
    fn parts_are_put_back_together_and_each_keeps_what_came_before() {
        let mut assembler = Assembler::default();
        let first = ConfigDelta {
            version: 1,
            settings: settings(&["api", "db"], 60),
            endpoints: vec![endpoints("api", &["10.0.0.1"]), endpoints("db", &["10.0.0.2"])],
            more: false,
        };
        let config = assembler.apply(&first).unwrap();
        assert_eq!(
            (config.0, addresses(&config.1, "api"), addresses(&config.1, "db")),
            (1, vec!["10.0.0.1".into()], vec!["10.0.0.2".into()])
        );

        // New settings alone: every outbound keeps its endpoints.
        let config =
            assembler.apply(&ConfigDelta { version: 2, settings: settings(&["api", "db"], 90), endpoints: vec![], more: false }).unwrap();
        assert_eq!((config.1.certificate_lifetime_secs, addresses(&config.1, "api")), (90, vec!["10.0.0.1".to_string()]));

        // One service's endpoints alone: the settings stay.
        let config = assembler
            .apply(&ConfigDelta {
                version: 3,
                settings: Bytes::new(),
                endpoints: vec![endpoints("db", &["10.0.0.2", "10.0.0.3"])],
                more: false,
            })
            .unwrap();
        assert_eq!((config.1.certificate_lifetime_secs, addresses(&config.1, "db").len(), addresses(&config.1, "api").len()), (90, 2, 1));

        // An outbound that goes takes its endpoints; one that comes brings them.
        let config = assembler
            .apply(&ConfigDelta {
                version: 4,
                settings: settings(&["db", "cache"], 90),
                endpoints: vec![endpoints("cache", &["10.0.0.9"])],
                more: false,
            })
            .unwrap();
        let services: Vec<_> = config.1.outbounds.iter().map(|o| o.service.as_str()).collect();
        assert_eq!(services, ["db", "cache"]);
        assert_eq!(addresses(&config.1, "db").len(), 2);
    }

    #[test]
    fn a_delta_that_cannot_be_put_together_is_refused_by_name_until_everything_comes_again() {
        let mut assembler = Assembler::default();
        let err = assembler
            .apply(&ConfigDelta { version: 1, settings: Bytes::new(), endpoints: vec![endpoints("api", &["10.0.0.1"])], more: false })
            .unwrap_err();
        assert!(err.contains("without the configuration it changes"), "{err}");
        let err =
            assembler.apply(&ConfigDelta { version: 2, settings: settings(&["api"], 60), endpoints: vec![], more: false }).unwrap_err();
        assert!(err.contains("outbound \"api\" is new"), "{err}");
        let err = assembler
            .apply(&ConfigDelta {
                version: 3,
                settings: settings(&["api"], 60),
                endpoints: vec![endpoints("api", &[]), endpoints("db", &[])],
                more: false,
            })
            .unwrap_err();
        assert!(err.contains("\"db\", which is not an outbound"), "{err}");
        let err = assembler
            .apply(&ConfigDelta {
                version: 4,
                settings: settings(&["api"], 60),
                endpoints: vec![ServiceEndpoints { service: "api".into(), json: b"{".to_vec().into() }],
                more: false,
            })
            .unwrap_err();
        assert!(err.contains("endpoints of outbound \"api\" do not parse"), "{err}");

        assembler
            .apply(&ConfigDelta {
                version: 5,
                settings: settings(&["api"], 60),
                endpoints: vec![endpoints("api", &["10.0.0.1"])],
                more: false,
            })
            .unwrap();
        // A refused part leaves nothing to build on: the next partial delta is refused too.
        assert!(assembler.apply(&ConfigDelta { version: 6, settings: Bytes::from_static(b"[]"), endpoints: vec![], more: false }).is_err());
        let err = assembler
            .apply(&ConfigDelta { version: 7, settings: Bytes::new(), endpoints: vec![endpoints("api", &[])], more: false })
            .unwrap_err();
        assert!(err.contains("without the configuration it changes"), "{err}");
    }

    #[test]
    fn shared_settings_take_the_name_of_the_stream() {
        let mut shared: serde_json::Value = serde_json::from_slice(&settings(&[], 60)).unwrap();
        shared["dataplane"] = "".into();
        let shared = ConfigDelta { version: 1, settings: serde_json::to_vec(&shared).unwrap().into(), endpoints: vec![], more: false };
        assert_eq!(Assembler::new("web-2").apply(&shared).unwrap().1.dataplane, "web-2");
        // Settings that name their Dataplane keep the name.
        let named = ConfigDelta { version: 1, settings: settings(&[], 60), endpoints: vec![], more: false };
        assert_eq!(Assembler::new("web-2").apply(&named).unwrap().1.dataplane, "web-1");
    }

    #[test]
    fn a_delta_in_pieces_is_put_back_together_and_answered_once() {
        let many: Vec<String> = (0..200).map(|i| format!("10.0.{}.{}", i / 250, i % 250)).collect();
        let many: Vec<&str> = many.iter().map(String::as_str).collect();
        let whole = ConfigDelta {
            version: 9,
            settings: settings(&["api", "db", "cache"], 60),
            endpoints: vec![endpoints("api", &many), endpoints("db", &[]), endpoints("cache", &["10.1.0.1"])],
            more: false,
        };
        let size = |d: &ConfigDelta| d.settings.len() + d.endpoints.iter().map(|e| e.json.len()).sum::<usize>();
        let cut = pieces(whole.clone(), 512);
        assert!(cut.len() > size(&whole) / 512, "{} pieces of {} bytes", cut.len(), size(&whole));
        assert!(cut.iter().all(|p| size(p) <= 512 && p.version == 9), "a piece over the limit");
        assert!(cut.iter().rev().skip(1).all(|p| p.more) && !cut.last().unwrap().more, "only the last piece is the last");
        // The empty list of "db" is not lost between cuts of the others.
        assert!(cut.iter().flat_map(|p| &p.endpoints).any(|e| e.service == "db"));

        let mut assembler = Assembler::new("web-1");
        let (last, rest) = cut.split_last().unwrap();
        assert!(rest.iter().all(|p| assembler.take(p).is_none()), "an answer before the last piece");
        let (version, config) = assembler.take(last).expect("the last piece completes the version");
        let config = config.unwrap();
        let expected = Assembler::new("web-1").apply(&whole).unwrap();
        assert_eq!((version, serde_json::to_value(&config.1).unwrap()), (9, serde_json::to_value(&expected.1).unwrap()));
        assert_eq!(addresses(&config.1, "api").len(), 200);

        // A delta within the limit is one piece, applied at once; the next builds on it.
        let small = pieces(ConfigDelta { version: 10, endpoints: vec![endpoints("db", &["10.0.9.9"])], ..Default::default() }, 512);
        assert_eq!(small.len(), 1);
        let (version, config) = assembler.take(&small[0]).unwrap();
        assert_eq!((version, addresses(&config.unwrap().1, "db")), (10, vec!["10.0.9.9".to_string()]));
    }

    #[test]
    fn a_version_interrupted_before_its_last_piece_leaves_nothing_to_build_on() {
        let mut assembler = Assembler::new("web-1");
        let first =
            ConfigDelta { version: 1, settings: settings(&["api"], 60), endpoints: vec![endpoints("api", &["10.0.0.1"])], more: false };
        assembler.take(&first).unwrap().1.unwrap();
        let cut = pieces(ConfigDelta { version: 2, settings: settings(&["api"], 90), ..Default::default() }, 64);
        assert!(cut.len() > 1);
        assert!(assembler.take(&cut[0]).is_none());
        // Version 3 changes only endpoints, on top of a version 2 that never finished.
        let partial = ConfigDelta { version: 3, endpoints: vec![endpoints("api", &["10.0.0.2"])], ..Default::default() };
        let (version, refused) = assembler.take(&partial).unwrap();
        assert_eq!(version, 3);
        assert!(refused.unwrap_err().contains("without the configuration it changes"));
        // Everything again is taken.
        let again = ConfigDelta { version: 4, ..first };
        assert!(assembler.take(&again).unwrap().1.is_ok());
    }
}
