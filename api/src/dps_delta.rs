//! A sidecar's configuration sent in parts over DPS ([`ConfigDelta`]): the settings (the
//! configuration without its outbounds' endpoints) and each outbound's endpoints, each part
//! sent again only when it changed. A policy write then sends each sidecar its settings alone
//! rather than with every endpoint it reaches, and an endpoint that comes or goes sends
//! one service's list, encoded once for all its callers.
//!
//! In: the stream's [`ConfigDelta`]s, in order. Out: each version's whole [`ProxyConfig`].

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use crate::dps::ConfigDelta;
use crate::proxy_config::{Endpoint, ProxyConfig};

/// The sidecar's side of one stream: what the zone sent so far, put back together.
#[derive(Default)]
pub struct Assembler {
    /// The stream's Dataplane: the name of settings that come without one.
    dataplane: String,
    /// The configuration of the stream's latest delta, with its version (applied or refused:
    /// the next delta is what changed since it was sent). `None` before the first delta, and
    /// after one that could not be put together (the zone then sends everything again).
    current: Option<Arc<(u64, ProxyConfig)>>,
}

impl Assembler {
    /// Nothing received yet on the stream of Dataplane `dataplane`.
    pub fn new(dataplane: &str) -> Assembler {
        Assembler { dataplane: dataplane.to_string(), current: None }
    }

    /// The whole configuration of `delta`'s version.
    pub fn apply(&mut self, delta: &ConfigDelta) -> Result<Arc<(u64, ProxyConfig)>, String> {
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
        };
        let config = assembler.apply(&first).unwrap();
        assert_eq!(
            (config.0, addresses(&config.1, "api"), addresses(&config.1, "db")),
            (1, vec!["10.0.0.1".into()], vec!["10.0.0.2".into()])
        );

        // New settings alone: every outbound keeps its endpoints.
        let config = assembler.apply(&ConfigDelta { version: 2, settings: settings(&["api", "db"], 90), endpoints: vec![] }).unwrap();
        assert_eq!((config.1.certificate_lifetime_secs, addresses(&config.1, "api")), (90, vec!["10.0.0.1".to_string()]));

        // One service's endpoints alone: the settings stay.
        let config = assembler
            .apply(&ConfigDelta { version: 3, settings: Bytes::new(), endpoints: vec![endpoints("db", &["10.0.0.2", "10.0.0.3"])] })
            .unwrap();
        assert_eq!((config.1.certificate_lifetime_secs, addresses(&config.1, "db").len(), addresses(&config.1, "api").len()), (90, 2, 1));

        // An outbound that goes takes its endpoints; one that comes brings them.
        let config = assembler
            .apply(&ConfigDelta {
                version: 4,
                settings: settings(&["db", "cache"], 90),
                endpoints: vec![endpoints("cache", &["10.0.0.9"])],
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
            .apply(&ConfigDelta { version: 1, settings: Bytes::new(), endpoints: vec![endpoints("api", &["10.0.0.1"])] })
            .unwrap_err();
        assert!(err.contains("without the configuration it changes"), "{err}");
        let err = assembler.apply(&ConfigDelta { version: 2, settings: settings(&["api"], 60), endpoints: vec![] }).unwrap_err();
        assert!(err.contains("outbound \"api\" is new"), "{err}");
        let err = assembler
            .apply(&ConfigDelta {
                version: 3,
                settings: settings(&["api"], 60),
                endpoints: vec![endpoints("api", &[]), endpoints("db", &[])],
            })
            .unwrap_err();
        assert!(err.contains("\"db\", which is not an outbound"), "{err}");
        let err = assembler
            .apply(&ConfigDelta {
                version: 4,
                settings: settings(&["api"], 60),
                endpoints: vec![ServiceEndpoints { service: "api".into(), json: b"{".to_vec().into() }],
            })
            .unwrap_err();
        assert!(err.contains("endpoints of outbound \"api\" do not parse"), "{err}");

        assembler
            .apply(&ConfigDelta { version: 5, settings: settings(&["api"], 60), endpoints: vec![endpoints("api", &["10.0.0.1"])] })
            .unwrap();
        // A refused part leaves nothing to build on: the next partial delta is refused too.
        assert!(assembler.apply(&ConfigDelta { version: 6, settings: Bytes::from_static(b"[]"), endpoints: vec![] }).is_err());
        let err = assembler.apply(&ConfigDelta { version: 7, settings: Bytes::new(), endpoints: vec![endpoints("api", &[])] }).unwrap_err();
        assert!(err.contains("without the configuration it changes"), "{err}");
    }

    #[test]
    fn shared_settings_take_the_name_of_the_stream() {
        let mut shared: serde_json::Value = serde_json::from_slice(&settings(&[], 60)).unwrap();
        shared["dataplane"] = "".into();
        let shared = ConfigDelta { version: 1, settings: serde_json::to_vec(&shared).unwrap().into(), endpoints: vec![] };
        assert_eq!(Assembler::new("web-2").apply(&shared).unwrap().1.dataplane, "web-2");
        // Settings that name their Dataplane keep the name.
        let named = ConfigDelta { version: 1, settings: settings(&[], 60), endpoints: vec![] };
        assert_eq!(Assembler::new("web-2").apply(&named).unwrap().1.dataplane, "web-1");
    }
}
