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
use strait_api::gateway_config::GatewayConfig;
use strait_pki::{fingerprint_der, Identity, TrustBundle};
use strait_proxy_core::tls::ALPN_ZONE_TUNNEL;
use strait_proxy_core::TlsIdentity;

/// A service of this zone.
#[derive(Debug)]
pub struct LocalService {
    endpoints: Vec<SocketAddr>,
    next: AtomicUsize,
}

impl LocalService {
    /// Every endpoint once, starting at the next in round-robin order.
    pub fn endpoints(&self) -> impl Iterator<Item = SocketAddr> + '_ {
        let start = self.next.fetch_add(1, Ordering::Relaxed);
        let n = self.endpoints.len();
        (0..n).map(move |i| self.endpoints[(start + i) % n])
    }
}

/// Why a peer gateway is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PeerRefusal {
    /// No certificate, or not a zone identity.
    NotAZone,
    /// Its zone identity was revoked with its zone.
    Revoked,
}

impl PeerRefusal {
    /// A fixed reason for logs and metrics.
    pub fn reason(self) -> &'static str {
        match self {
            PeerRefusal::NotAZone => "untrusted_zone",
            PeerRefusal::Revoked => "revoked_zone",
        }
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
    /// The zone identity's TLS configs; `None` until the identity has arrived.
    pub tls: Option<Arc<TlsIdentity>>,
}

impl Routes {
    /// Builds the state of `config`. Building the TLS configs costs CPU: call from
    /// `spawn_blocking`. An identity that does not verify under the system trust is an error.
    pub fn build(config: &GatewayConfig) -> Result<Routes, String> {
        let parse = |list: &[String], what: &str| -> Vec<SocketAddr> {
            list.iter().filter_map(|a| a.parse().inspect_err(|_| tracing::warn!(address = a, what, "not ip:port; skipped")).ok()).collect()
        };
        let local = config
            .services
            .iter()
            .map(|s| {
                let service = LocalService { endpoints: parse(&s.endpoints, "endpoint"), next: AtomicUsize::new(0) };
                (format!("{}.{}", s.service, s.mesh), service)
            })
            .filter(|(_, s)| !s.endpoints.is_empty())
            .collect();
        let mut hosting: HashMap<String, Vec<String>> = HashMap::new();
        let mut ingress = HashMap::new();
        for z in &config.zones {
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
        Ok(Routes { zone: config.zone.clone(), local, ingress, hosting, revoked: config.trust.revoked.clone(), tls })
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
            Some(zone) if id.trust_domain() == strait_pki::SYSTEM_TRUST_DOMAIN && !zone.is_empty() => Ok(zone.to_string()),
            _ => Err(PeerRefusal::NotAZone),
        }
    }

    /// Whether a certificate fingerprint is revoked.
    pub fn is_revoked(&self, leaf: &CertificateDer<'_>) -> bool {
        self.revoked.contains(&fingerprint_der(leaf))
    }
}
