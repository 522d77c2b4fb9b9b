//! The sidecar's side of DPS: register with the zone, keep the latest configuration, obtain
//! and renew the workload certificate (the key is made here and never leaves this process),
//! and reconnect with back-off, keeping the last configuration meanwhile.
//!
//! In: the validated run configuration. Out: [`ProxyState`]: the current configuration and
//! workload identity, each swapped in one step so readers never lock; readiness guards dropped
//! once both have arrived.

use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use arc_swap::ArcSwapOption;
use strait_api::dps::dataplane_sync_client::DataplaneSyncClient;
use strait_api::dps::{dataplane_message, zone_message, Ack, CertificateRequest, DataplaneMessage, Hello, Nack, PROTOCOL_VERSION};
use strait_api::proxy_config::ProxyConfig;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;

use strait_proxy_core::cp_client::{self, classify, End};
use strait_proxy_core::readiness::BlockReady;

use crate::config::Validated;

/// A workload certificate and its key.
#[derive(Debug, Clone)]
pub struct WorkloadIdentity {
    /// Leaf first, then the zone's intermediate.
    pub cert_chain_pem: String,
    /// The private key; it never leaves this process.
    pub key_pem: String,
    /// When it was issued.
    pub issued_at: SystemTime,
    /// Its lifetime.
    pub lifetime: Duration,
}

/// What the data path reads: the latest configuration and identity.
pub struct ProxyState {
    /// The configuration, with its version.
    pub config: ArcSwapOption<(u64, ProxyConfig)>,
    /// The workload identity.
    pub identity: ArcSwapOption<WorkloadIdentity>,
    /// Bumped whenever either changes, so the data path rebuilds its TLS identity.
    pub changed: tokio::sync::watch::Sender<u64>,
}

impl Default for ProxyState {
    fn default() -> Self {
        ProxyState { config: ArcSwapOption::empty(), identity: ArcSwapOption::empty(), changed: tokio::sync::watch::channel(0).0 }
    }
}

impl ProxyState {
    fn bump(&self) {
        self.changed.send_modify(|n| *n += 1);
    }
}

/// Readiness guards released when the first configuration and certificate arrive.
pub struct Guards {
    /// Released on the first configuration.
    pub config: Mutex<Option<BlockReady>>,
    /// Released on the first certificate.
    pub certificate: Mutex<Option<BlockReady>>,
}

fn release(slot: &Mutex<Option<BlockReady>>) {
    slot.lock().unwrap_or_else(|p| p.into_inner()).take();
}

/// The DPS client task.
pub struct DpsClient {
    /// Validated configuration.
    pub config: Arc<Validated>,
    /// Shared state for the data path and admin.
    pub state: Arc<ProxyState>,
    /// Readiness guards.
    pub guards: Arc<Guards>,
}

impl DpsClient {
    /// Runs until cancelled, reconnecting with exponential back-off and full jitter.
    pub async fn run(self, cancel: CancellationToken) {
        let flags = &self.config.flags;
        cp_client::run(cancel, "sidecar", &flags.cp.cp_address, flags.cp.cp_max_backoff, || self.session()).await
    }

    async fn session(&self) -> End {
        let flags = &self.config.flags;
        let channel = match cp_client::connect(&flags.cp.cp_address, &self.config.cp_ca_pem, &flags.cp.cp_server_name).await {
            Ok(c) => c,
            Err(e) => return End::Broken(e),
        };
        let (tx, rx) = mpsc::channel(8);
        let dataplane = serde_json::to_vec(&self.config.dataplane).unwrap_or_default();
        let hello = Hello { protocol: PROTOCOL_VERSION, dataplane, software_version: env!("CARGO_PKG_VERSION").into() };
        let _ = tx.send(msg(dataplane_message::Message::Hello(hello))).await;
        let request = match cp_client::with_bearer(ReceiverStream::new(rx), &self.config.token) {
            Ok(r) => r,
            Err(end) => return end,
        };
        let mut inbound = match DataplaneSyncClient::new(channel).stream(request).await {
            Ok(r) => r.into_inner(),
            Err(s) => return classify(s),
        };
        tracing::info!(cp = %flags.cp.cp_address, dataplane = %self.config.dataplane.name, "registered with the zone control plane");
        let mut pending_key = match self.request_certificate(&tx).await {
            Ok(k) => Some(k),
            Err(e) => return End::Broken(e),
        };
        let mut renew_at = tokio::time::Instant::now() + Duration::from_secs(3600 * 24 * 365);
        loop {
            tokio::select! {
                message = inbound.message() => match message {
                    Ok(Some(m)) => match m.message {
                        Some(zone_message::Message::Config(c)) => {
                            let reply = match serde_json::from_slice::<ProxyConfig>(&c.json) {
                                Ok(config) => {
                                    tracing::info!(version = c.version, "configuration applied");
                                    self.state.config.store(Some(Arc::new((c.version, config))));
                                    self.state.bump();
                                    release(&self.guards.config);
                                    dataplane_message::Message::Ack(Ack { version: c.version })
                                }
                                Err(e) => {
                                    tracing::warn!(version = c.version, error = %e, "rejected a configuration (NACK); keeping the previous one");
                                    dataplane_message::Message::Nack(Nack { version: c.version, error: e.to_string() })
                                }
                            };
                            if tx.send(msg(reply)).await.is_err() {
                                return End::Broken("request stream closed".into());
                            }
                        }
                        Some(zone_message::Message::Certificate(c)) => {
                            if !c.error.is_empty() {
                                tracing::warn!(error = %c.error, "no workload certificate yet; asking again in 2s");
                                renew_at = tokio::time::Instant::now() + Duration::from_secs(2);
                                pending_key = None;
                                continue;
                            }
                            let Some(key_pem) = pending_key.take() else { continue };
                            let lifetime = self.state.config.load().as_ref().map(|c| Duration::from_secs(c.1.certificate_lifetime_secs)).unwrap_or(Duration::from_secs(3600));
                            self.state.identity.store(Some(Arc::new(WorkloadIdentity { cert_chain_pem: c.cert_chain_pem, key_pem, issued_at: SystemTime::now(), lifetime })));
                            self.state.bump();
                            release(&self.guards.certificate);
                            // Renew at about 70% of the certificate's life.
                            renew_at = tokio::time::Instant::now() + lifetime.mul_f64(0.7);
                            tracing::info!(renew_in = ?lifetime.mul_f64(0.7), "workload certificate installed");
                        }
                        None => {}
                    },
                    Ok(None) => return End::Broken("the zone closed the stream".into()),
                    Err(s) => return classify(s),
                },
                () = tokio::time::sleep_until(renew_at) => {
                    match self.request_certificate(&tx).await {
                        Ok(k) => pending_key = Some(k),
                        Err(e) => return End::Broken(e),
                    }
                    renew_at = tokio::time::Instant::now() + Duration::from_secs(3600 * 24 * 365);
                }
            }
        }
    }

    /// Makes a new key and sends its CSR; returns the key.
    async fn request_certificate(&self, tx: &mpsc::Sender<DataplaneMessage>) -> Result<String, String> {
        let cn = self.config.dataplane.name.clone();
        let kc = tokio::task::spawn_blocking(move || strait_pki::KeyAndCsr::generate(&cn))
            .await
            .map_err(|e| e.to_string())?
            .map_err(|e| e.to_string())?;
        tx.send(msg(dataplane_message::Message::CertificateRequest(CertificateRequest { csr_pem: kc.csr_pem })))
            .await
            .map_err(|_| "request stream closed".to_string())?;
        Ok(kc.key_pem)
    }
}

fn msg(m: dataplane_message::Message) -> DataplaneMessage {
    DataplaneMessage { message: Some(m) }
}
