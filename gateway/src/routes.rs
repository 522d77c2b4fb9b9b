//! The gateway's routing state, rebuilt from each configuration off the connection path and
//! read through an `ArcSwap` snapshot: this zone's services and their endpoints, the other
//! zones' ingress addresses and services, and the zone identity's TLS configs.
//!
//! In: a [`GatewayConfig`]. Out: [`Routes`]: lookups by `<service>.<mesh>` and by zone, a
//! round-robin endpoint order per service, and [`Routes::check_peer`], which names the zone of
//! a verified peer chain or says why it is refused (not a zone identity, revoked).

use std::collections::{BTreeSet, HashMap};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use rustls::pki_types::CertificateDer;
use strait_api::gateway_config::{instance_id, GatewayConfig};
use strait_pki::{fingerprint_der, Identity, TrustBundle};
use strait_proxy_core::tls::ALPN_ZONE_TUNNEL;
use strait_proxy_core::TlsIdentity;

/// A service of this zone.
#[derive(Debug)]
pub struct LocalService {
    endpoints: Vec<SocketAddr>,
    /// Endpoints by the id other zones know them by ([`instance_id`]).
    instances: HashMap<String, SocketAddr>,
    next: AtomicUsize,
}

impl LocalService {
    /// Every endpoint once, starting at the next in round-robin order.
    pub fn endpoints(&self) -> impl Iterator<Item = SocketAddr> + '_ {
        let start = self.next.fetch_add(1, Ordering::Relaxed);
        let n = self.endpoints.len();
        (0..n).map(move |i| self.endpoints[(start + i) % n])
    }

    /// The endpoint another zone's sidecar chose by its id, if this zone still has it.
    pub fn instance(&self, id: &str) -> Option<SocketAddr> {
        self.instances.get(id).copied()
    }
}

/// Why a peer gateway is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PeerRefusal {
    /// No certificate, or not a zone identity.
    NotAZone,
    /// Its zone identity was revoked with its zone.
    Revoked,
    /// Its zone is disabled on the global.
    Disabled,
}

impl PeerRefusal {
    /// A fixed reason for logs and metrics.
    pub fn reason(self) -> &'static str {
        match self {
            PeerRefusal::NotAZone => "untrusted_zone",
            PeerRefusal::Revoked => "revoked_zone",
            PeerRefusal::Disabled => "disabled_zone",
        }
    }
}

/// Which addresses the gateway may forward to and accept from, whatever a configuration says.
#[derive(Debug, Clone, Default)]
pub struct AddressPolicy {
    /// Loopback endpoints and egress clients are allowed (a whole mesh on one host: the demo,
    /// tests on loopback). Off, an endpoint on loopback (or unspecified) is dropped.
    pub allow_loopback: bool,
    /// Endpoints never forwarded to, on any port: the zone control plane's own addresses.
    pub forbidden: Vec<SocketAddr>,
}

impl AddressPolicy {
    /// Why the ingress must not forward to `endpoint`, if it must not.
    fn refuses(&self, endpoint: &SocketAddr) -> Option<&'static str> {
        let ip = endpoint.ip().to_canonical();
        if ip != endpoint.ip() {
            return Some("an IPv4-mapped address (register the IPv4 address itself)");
        }
        if ip.is_unspecified() || ip.is_multicast() {
            return Some("not a unicast address");
        }
        if ip.is_loopback() && !self.allow_loopback {
            return Some("a loopback address (the gateway's own host)");
        }
        // Any port of the control plane's host: its DPS and REST ports alike.
        if self.forbidden.iter().any(|f| f.ip().to_canonical() == ip) {
            return Some("the zone control plane's address");
        }
        None
    }
}

/// The routing state of one configuration.
#[derive(Debug, Default)]
pub struct Routes {
    /// This zone.
    pub zone: String,
    local: HashMap<String, LocalService>,
    ingress: HashMap<String, Vec<SocketAddr>>,
    hosting: HashMap<String, Vec<String>>,
    revoked: BTreeSet<String>,
    disabled: BTreeSet<String>,
    /// The addresses of this zone's sidecars: the only clients the egress serves.
    sidecars: std::collections::HashSet<std::net::IpAddr>,
    allow_loopback: bool,
    /// The zone identity's TLS configs; `None` until the identity has arrived.
    pub tls: Option<Arc<TlsIdentity>>,
}

impl Routes {
    /// Builds the state of `config`. Building the TLS configs costs CPU: call from
    /// `spawn_blocking`. An identity that does not verify under the system trust is an error.
    pub fn build(config: &GatewayConfig, policy: &AddressPolicy) -> Result<Routes, String> {
        let parse = |list: &[String], what: &str| -> Vec<SocketAddr> {
            list.iter().filter_map(|a| a.parse().inspect_err(|_| tracing::warn!(address = a, what, "not ip:port; skipped")).ok()).collect()
        };
        let mut sidecars = std::collections::HashSet::new();
        let local = config
            .services
            .iter()
            .map(|s| {
                let mut endpoints = parse(&s.endpoints, "endpoint");
                endpoints.retain(|e| match policy.refuses(e) {
                    Some(why) => {
                        tracing::warn!(endpoint = %e, service = %s.service, why, "an endpoint this gateway never forwards to; skipped");
                        false
                    }
                    None => true,
                });
                sidecars.extend(endpoints.iter().map(|e| e.ip()));
                let instances = endpoints.iter().map(|e| (instance_id(&s.mesh, &s.service, e), *e)).collect();
                let service = LocalService { endpoints, instances, next: AtomicUsize::new(0) };
                (format!("{}.{}", s.service, s.mesh), service)
            })
            .filter(|(_, s)| !s.endpoints.is_empty())
            .collect();
        let mut hosting: HashMap<String, Vec<String>> = HashMap::new();
        let mut ingress = HashMap::new();
        for z in config.zones.iter().filter(|z| !config.trust.disabled_zones.contains(&z.zone)) {
            let addresses = parse(&z.ingress_addresses, "ingress address");
            if addresses.is_empty() {
                continue;
            }
            for s in &z.services {
                hosting.entry(s.clone()).or_default().push(z.zone.clone());
            }
            ingress.insert(z.zone.clone(), addresses);
        }
        let tls = match &config.identity {
            None => None,
            Some(id) => {
                let bundle = TrustBundle { roots: config.trust.roots.clone(), revoked: Default::default() };
                let tls = TlsIdentity::from_pem(&id.cert_pem, &id.key_pem, &bundle, &[ALPN_ZONE_TUNNEL])
                    .map_err(|e| format!("the zone identity is unusable: {e}"))?;
                let expected = Identity::zone(&config.zone).map_err(|e| e.to_string())?;
                if tls.identity() != &expected {
                    return Err(format!("the zone identity is {}, not {expected}", tls.identity()));
                }
                Some(Arc::new(tls))
            }
        };
        Ok(Routes {
            zone: config.zone.clone(),
            local,
            ingress,
            hosting,
            revoked: config.trust.revoked.clone(),
            disabled: config.trust.disabled_zones.clone(),
            sidecars,
            allow_loopback: policy.allow_loopback,
            tls,
        })
    }

    /// This zone's service `<service>.<mesh>`.
    pub fn local(&self, key: &str) -> Option<&LocalService> {
        self.local.get(key)
    }

    /// The other zones hosting `<service>.<mesh>`.
    pub fn zones_hosting(&self, key: &str) -> &[String] {
        self.hosting.get(key).map_or(&[], Vec::as_slice)
    }

    /// The ingress addresses of `zone`.
    pub fn ingress(&self, zone: &str) -> &[SocketAddr] {
        self.ingress.get(zone).map_or(&[], Vec::as_slice)
    }

    /// The other zones with an ingress.
    pub fn zones(&self) -> impl Iterator<Item = &str> {
        self.ingress.keys().map(String::as_str)
    }

    /// The zone of a peer whose chain the TLS layer verified under the system trust.
    pub fn check_peer(&self, certs: Option<&[CertificateDer<'static>]>) -> Result<String, PeerRefusal> {
        let leaf = certs.and_then(|c| c.first()).ok_or(PeerRefusal::NotAZone)?;
        if self.revoked.contains(&fingerprint_der(leaf)) {
            return Err(PeerRefusal::Revoked);
        }
        let id = strait_proxy_core::tls::spiffe_id_of(leaf).map_err(|_| PeerRefusal::NotAZone)?;
        match id.path().strip_prefix("zone/") {
            Some(zone) if self.disabled.contains(zone) => Err(PeerRefusal::Disabled),
            Some(zone) if id.trust_domain() == strait_pki::SYSTEM_TRUST_DOMAIN && !zone.is_empty() => Ok(zone.to_string()),
            _ => Err(PeerRefusal::NotAZone),
        }
    }

    /// Whether a connection from `client` may use the egress: only this zone's sidecars may.
    pub fn is_sidecar(&self, client: std::net::IpAddr) -> bool {
        let client = client.to_canonical();
        self.sidecars.contains(&client) || (self.allow_loopback && client.is_loopback())
    }

    /// Whether `zone` is disabled on the global.
    pub fn is_disabled(&self, zone: &str) -> bool {
        self.disabled.contains(zone)
    }

    /// Why a peer already connected must now be cut: its identity was revoked, or its zone
    /// disabled.
    pub fn refusal(&self, leaf: &CertificateDer<'static>) -> Option<PeerRefusal> {
        match self.check_peer(Some(std::slice::from_ref(leaf))) {
            Err(r @ (PeerRefusal::Revoked | PeerRefusal::Disabled)) => Some(r),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    fn config(endpoints: &[&str]) -> GatewayConfig {
        GatewayConfig {
            zone: "zone-1".into(),
            services: vec![strait_api::gateway_config::LocalService {
                mesh: "default".into(),
                service: "db".into(),
                endpoints: endpoints.iter().map(|e| e.to_string()).collect(),
            }],
            zones: Vec::new(),
            identity: None,
            trust: Default::default(),
        }
    }

    #[test]
    fn the_ingress_never_forwards_to_loopback_or_the_control_plane_and_the_egress_serves_only_sidecars() {
        let cp: SocketAddr = "10.0.0.1:7678".parse().unwrap();
        let policy = AddressPolicy { allow_loopback: false, forbidden: vec![cp] };
        let routes = Routes::build(
            &config(&["10.0.0.5:8080", "127.0.0.1:8080", "0.0.0.0:8080", "10.0.0.1:7678", "10.0.0.1:7681", "[::ffff:127.0.0.1]:8080"]),
            &policy,
        )
        .unwrap();
        let endpoints: Vec<SocketAddr> = routes.local("db.default").unwrap().endpoints().collect();
        assert_eq!(endpoints, ["10.0.0.5:8080".parse::<SocketAddr>().unwrap()]);
        assert!(routes.is_sidecar("10.0.0.5".parse().unwrap()));
        assert!(!routes.is_sidecar("10.0.0.9".parse().unwrap()), "an address no sidecar registered");
        assert!(!routes.is_sidecar("127.0.0.1".parse().unwrap()));
        assert!(routes.is_sidecar("::ffff:10.0.0.5".parse().unwrap()), "IPv4-mapped addresses are the same");

        let single_host = AddressPolicy { allow_loopback: true, forbidden: vec![cp] };
        let routes = Routes::build(&config(&["127.0.0.1:8080"]), &single_host).unwrap();
        assert_eq!(routes.local("db.default").unwrap().endpoints().count(), 1);
        assert!(routes.is_sidecar("127.0.0.1".parse().unwrap()));
    }
}
