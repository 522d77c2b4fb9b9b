//! The certificate slot of a proxy: the TLS configs of its current workload certificate.
//!
//! In: a workload certificate (chain + key) and the trust bundle, each time the certificate
//! manager renews the certificate or the control plane sends a new bundle. Out: an
//! [`IdentityStore`] that every new connection reads lock-free ([`IdentityStore::current`]) and
//! that announces changes on a `watch` channel. A [`TlsIdentity`] is immutable: connections
//! that started on one keep it (their TLS session already holds its keys) while new connections
//! get the next one, so rotation never drops an open connection. TLS configs are built once
//! per certificate, never per connection; client configs are built once per expected peer
//! identity and ALPN, then cached in the [`TlsIdentity`] they belong to.

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;
use std::time::SystemTime;

use arc_swap::ArcSwap;
use rustls::pki_types::UnixTime;
use rustls::{ClientConfig, ServerConfig};
use strait_pki::{Identity, TrustBundle};
use tokio::sync::watch;
use webpki::KeyUsage;

use crate::tls::{self, ClientConfigBuilder, PeerVerifier, TlsError, WorkloadCert};

/// Client configs kept per certificate before the cache starts over; bounds memory if a
/// proxy talks to very many distinct identities.
const MAX_CACHED_PEERS: usize = 4096;

type ClientCache = HashMap<Identity, Vec<(Vec<Vec<u8>>, Arc<ClientConfig>)>>;

/// The ready-built TLS configs of one workload certificate under one trust bundle.
pub struct TlsIdentity {
    cert: WorkloadCert,
    server: Arc<ServerConfig>,
    clients: ClientConfigBuilder,
    cache: ArcSwap<ClientCache>,
}

impl TlsIdentity {
    /// Builds the configs for `cert` under `bundle`, accepting the `server_alpn` protocols on
    /// the server side. Refuses a certificate that does not itself verify against the bundle,
    /// so a bad renewal is never put in use. Costs some CPU: call from `spawn_blocking`.
    pub fn new(cert: WorkloadCert, bundle: &TrustBundle, server_alpn: &[&[u8]]) -> Result<Self, TlsError> {
        let verifier = Arc::new(PeerVerifier::new(bundle)?);
        let (leaf, intermediates) = match cert.chain().split_first() {
            Some(split) => split,
            None => return Err(TlsError::BadCertificate { reason: "empty chain".into() }),
        };
        let now = UnixTime::now();
        for usage in [KeyUsage::server_auth(), KeyUsage::client_auth()] {
            verifier.verify(leaf, intermediates, now, usage).map_err(TlsError::OwnChain)?;
        }
        let server = Arc::new(tls::server_config(&cert, verifier.clone(), server_alpn)?);
        let clients = ClientConfigBuilder::new(&cert, verifier)?;
        Ok(TlsIdentity { cert, server, clients, cache: ArcSwap::from_pointee(HashMap::new()) })
    }

    /// Parses `chain_pem` and `key_pem` (see [`WorkloadCert::from_pem`]) and builds the configs.
    pub fn from_pem(chain_pem: &str, key_pem: &str, bundle: &TrustBundle, server_alpn: &[&[u8]]) -> Result<Self, TlsError> {
        TlsIdentity::new(WorkloadCert::from_pem(chain_pem, key_pem)?, bundle, server_alpn)
    }

    /// Our SPIFFE ID.
    pub fn identity(&self) -> &Identity {
        self.cert.identity()
    }

    /// When our certificate expires.
    pub fn not_after(&self) -> SystemTime {
        self.cert.not_after()
    }

    /// The certificate these configs present.
    pub fn cert(&self) -> &WorkloadCert {
        &self.cert
    }

    /// The server config (mandatory client certificate, our certificate).
    pub fn server_config(&self) -> Arc<ServerConfig> {
        self.server.clone()
    }

    /// A client config that accepts only a server with SPIFFE ID `expected`, offering `alpn`.
    /// Built on first use and cached; the lookup takes no lock.
    pub fn client_config(&self, expected: &Identity, alpn: &[u8]) -> Arc<ClientConfig> {
        self.client_config_offering(expected, &[alpn])
    }

    /// A client config that accepts only a server with SPIFFE ID `expected`, offering each of
    /// `alpn` (the server picks by its own preference). Built on first use and cached.
    pub fn client_config_offering(&self, expected: &Identity, alpn: &[&[u8]]) -> Arc<ClientConfig> {
        if let Some(config) = lookup(&self.cache.load(), expected, alpn) {
            return config;
        }
        let built = Arc::new(self.clients.build(expected, alpn));
        // Two connections may race to build the same config: the first one stored wins, so
        // every later connection shares one session-resumption cache.
        let mut result = built.clone();
        self.cache.rcu(|cache| {
            if let Some(existing) = lookup(cache, expected, alpn) {
                result = existing;
                return Arc::clone(cache);
            }
            result = built.clone();
            let mut next = if cache.len() >= MAX_CACHED_PEERS { HashMap::new() } else { HashMap::clone(cache) };
            next.entry(expected.clone()).or_default().push((alpn.iter().map(|p| p.to_vec()).collect(), built.clone()));
            Arc::new(next)
        });
        result
    }
}

fn lookup(cache: &ClientCache, expected: &Identity, alpn: &[&[u8]]) -> Option<Arc<ClientConfig>> {
    let same = |offered: &[Vec<u8>]| offered.len() == alpn.len() && offered.iter().zip(alpn).all(|(a, b)| a == b);
    cache.get(expected)?.iter().find(|(offered, _)| same(offered)).map(|(_, config)| config.clone())
}

impl fmt::Debug for TlsIdentity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TlsIdentity").field("cert", &self.cert).finish_non_exhaustive()
    }
}

/// The current [`TlsIdentity`] of a proxy: read by every new connection, replaced on rotation.
pub struct IdentityStore {
    current: ArcSwap<TlsIdentity>,
    updates: watch::Sender<Arc<TlsIdentity>>,
}

impl IdentityStore {
    /// A store holding `initial` (a proxy serves nothing before its first certificate).
    pub fn new(initial: TlsIdentity) -> Self {
        let initial = Arc::new(initial);
        let (updates, _) = watch::channel(initial.clone());
        IdentityStore { current: ArcSwap::new(initial), updates }
    }

    /// The identity new connections use now (lock-free).
    pub fn current(&self) -> Arc<TlsIdentity> {
        self.current.load_full()
    }

    /// Puts `next` in use for new connections and tells subscribers; open connections keep
    /// the identity they started with.
    pub fn replace(&self, next: TlsIdentity) {
        let next = Arc::new(next);
        self.current.store(next.clone());
        self.updates.send_replace(next);
    }

    /// Changes of the current identity (for a certificate-expiry gauge, a pool to recycle
    /// its connections, logs).
    pub fn subscribe(&self) -> watch::Receiver<Arc<TlsIdentity>> {
        self.updates.subscribe()
    }
}

impl fmt::Debug for IdentityStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("IdentityStore").field("current", &self.current.load()).finish()
    }
}
