//! What a session has sent its sidecar, to send only what changed: the digest of the whole
//! configuration, or for a sidecar that takes its configuration in parts
//! ([`strait_api::dps_delta`]), the digest of its settings and the endpoints of each outbound.
//!
//! A session keeps digests and shared buffers, never a copy of a configuration: with thousands
//! of sidecars, a copy of each one's would be most of the zone's memory. The endpoints it
//! keeps are the mesh view's own encoding, shared by every sidecar that reaches the service, and
//! the settings it sends are those of its shape, encoded once for every sidecar alike.
//!
//! In: each newly computed configuration. Out: the message to send, if anything changed.

use std::collections::HashMap;

use bytes::Bytes;
use strait_api::dps::{zone_message, ConfigDelta, ServiceEndpoints, ZoneMessage};
use strait_api::proxy_config::{MeshView, ProxyConfig};
use tonic::Status;

use super::inputs::SharedSettings;

/// What the sidecar has from this stream.
pub enum Sent {
    /// Whole configurations: the digest of the last one.
    Whole(Option<Vec<u8>>),
    /// Configurations in parts.
    Parts(Parts),
}

/// The parts a sidecar has.
#[derive(Default)]
pub struct Parts {
    /// The digest of the settings.
    settings: Option<Vec<u8>>,
    /// Each outbound's endpoints, as sent (the view's buffer, shared).
    endpoints: HashMap<String, Bytes>,
    /// The version of the last delta, and whether it held every part.
    last: Option<(u64, bool)>,
}

impl Sent {
    /// Nothing sent yet; in parts when the sidecar takes them.
    pub fn new(in_parts: bool) -> Sent {
        if in_parts {
            Sent::Parts(Parts::default())
        } else {
            Sent::Whole(None)
        }
    }

    /// Whether the sidecar takes its configuration in parts (its settings are then built
    /// without endpoints).
    pub fn in_parts(&self) -> bool {
        matches!(self, Sent::Parts(_))
    }

    /// What to send for the whole configuration `config`, computed at `version`; `None` when
    /// the sidecar already has it. For a sidecar that takes parts, see [`Sent::next_parts`].
    pub fn next_whole(&mut self, config: &ProxyConfig, version: u64) -> Result<Option<ZoneMessage>, Status> {
        match self {
            Sent::Whole(last) => super::changed_config(config, version, last),
            Sent::Parts(_) => Err(Status::internal("a whole configuration for a sidecar that takes parts")),
        }
    }

    /// What to send for `settings` and the endpoints of their outbounds in `view`, computed at
    /// `version`; `None` when the sidecar already has it all.
    pub fn next_parts(&mut self, settings: &SharedSettings, view: &MeshView, version: u64) -> Result<Option<ZoneMessage>, Status> {
        match self {
            Sent::Whole(_) => Err(Status::internal("parts for a sidecar that takes whole configurations")),
            Sent::Parts(parts) => {
                let delta = parts.delta(settings, view, version);
                Ok(delta.map(|d| ZoneMessage { message: Some(zone_message::Message::ConfigDelta(d)) }))
            }
        }
    }

    /// The sidecar refused `version`: whether to send everything again now. After a partial
    /// delta it may have nothing to apply the next one on (it could not put this one
    /// together), so everything goes again once; a delta that held everything is not sent
    /// again until something changes.
    pub fn refused(&mut self, version: u64) -> bool {
        let Sent::Parts(parts) = self else { return false };
        if parts.last != Some((version, false)) {
            return false;
        }
        *parts = Parts::default();
        true
    }
}

impl Parts {
    fn delta(&mut self, shared: &SharedSettings, view: &MeshView, version: u64) -> Option<ConfigDelta> {
        let config = &shared.config;
        let settings = if self.settings.as_ref() == Some(&shared.digest) {
            Bytes::new()
        } else {
            self.settings = Some(shared.digest.clone());
            shared.json.clone()
        };
        let mut endpoints = Vec::new();
        for outbound in &config.outbounds {
            let encoded = view.encoded_endpoints(&outbound.service).unwrap_or_else(|| Bytes::from_static(b"[]"));
            match self.endpoints.get_mut(&outbound.service) {
                // The same list in a newer view: keep its buffer, so the old one is freed.
                Some(sent) if *sent == encoded => *sent = encoded,
                Some(sent) => {
                    *sent = encoded.clone();
                    endpoints.push(ServiceEndpoints { service: outbound.service.clone(), json: encoded });
                }
                None => {
                    self.endpoints.insert(outbound.service.clone(), encoded.clone());
                    endpoints.push(ServiceEndpoints { service: outbound.service.clone(), json: encoded });
                }
            }
        }
        if !settings.is_empty() {
            // Outbounds that are gone take their endpoints with them.
            self.endpoints.retain(|service, _| config.outbounds.iter().any(|o| &o.service == service));
        }
        if settings.is_empty() && endpoints.is_empty() {
            return None;
        }
        let whole = !settings.is_empty() && endpoints.len() == config.outbounds.len();
        self.last = Some((version, whole));
        Some(ConfigDelta { version, settings, endpoints, more: false })
    }
}
