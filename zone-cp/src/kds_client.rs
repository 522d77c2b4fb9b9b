//! Zone sync client: keeps one stream open to the global, applies what arrives, answers with
//! ACK/NACK, reports the zone's inventory, and reconnects with exponential back-off and jitter,
//! resuming from the last applied revision.
//!
//! In: the global's batches and heartbeats. Out: the zone's store (through [`Synced`]), the
//! readiness flag, `strait_zone_kds_*` metrics, and logs that say why a connection failed.

use std::sync::Arc;
use std::time::{Duration, Instant};

use strait_api::kds::zone_sync_client::ZoneSyncClient;
use strait_api::kds::{self, global_message, zone_message, ZoneMessage, PROTOCOL_VERSION};
use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tonic::codec::CompressionEncoding;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint};

use crate::config::Config;
use crate::metrics::ZoneMetrics;
use crate::synced::{Rejected, Synced};

/// Connection settings read once from the config and files.
pub struct KdsClient {
    /// The zone's config.
    pub config: Arc<Config>,
    /// The zone token.
    pub token: String,
    /// CA of the global's sync endpoint.
    pub ca_pem: String,
    /// The synced store.
    pub synced: Synced,
    /// Set once a snapshot is on disk.
    pub ready: watch::Sender<bool>,
    /// Metrics.
    pub metrics: ZoneMetrics,
    /// The zone's latest inventory.
    pub inventory: watch::Receiver<kds::Inventory>,
    /// Where the certificate manager's CSRs go while the stream is open.
    pub signer: Arc<crate::certs::KdsSigner>,
    /// The certificates the global signs for this zone.
    pub certs: Arc<crate::certs::ZoneCerts>,
    /// The connected sidecars, for the global's questions about them.
    pub inspectors: crate::inspect::Inspectors,
    /// What the zone's sidecars served, reported to the global for its traffic map.
    pub traffic: crate::traffic::Traffic,
    /// On Kubernetes: whether this replica leads; only the leader holds the zone's stream.
    /// `None`: always.
    pub leading: Option<watch::Receiver<bool>>,
    /// Which of the global's addresses the next session tries (they are tried in turn).
    pub address: usize,
}

/// Exponential back-off with full jitter, reset after a healthy session.
struct Backoff {
    attempt: u32,
    max: Duration,
}

impl Backoff {
    fn next(&mut self) -> Duration {
        let base = Duration::from_millis(250).saturating_mul(1 << self.attempt.min(10));
        self.attempt += 1;
        let cap = base.min(self.max);
        cap.mul_f64(0.5 + rand::random::<f64>() / 2.0)
    }
}

enum End {
    /// The global refused us: retrying soon will not help, so back off fully.
    Refused(tonic::Status),
    /// The connection or stream broke.
    Broken(String),
}

impl KdsClient {
    /// Runs until cancelled.
    pub async fn run(mut self, cancel: CancellationToken) {
        let mut backoff = Backoff { attempt: 0, max: self.config.kds_max_backoff };
        let mut leading = self.leading.clone();
        loop {
            if let Some(leading) = &mut leading {
                if !*leading.borrow() {
                    tracing::info!("standing by: another replica holds the zone's sync stream");
                }
                tokio::select! {
                    biased;
                    () = cancel.cancelled() => return,
                    led = leading.wait_for(|leads| *leads) => if led.is_err() { return },
                }
            }
            let started = Instant::now();
            let end = tokio::select! {
                biased;
                () = cancel.cancelled() => return,
                end = self.session() => end,
                status = crate::dps::lost_leadership(&mut leading) => End::Broken(status.message().to_string()),
            };
            self.metrics.connected.set(0);
            match &end {
                End::Refused(status) => {
                    tracing::error!(code = ?status.code(), reason = status.message(), "the global control plane refused this zone; check the zone token")
                }
                End::Broken(reason) => {
                    tracing::warn!(reason, "zone sync stream ended");
                    // The next replica of the global, if there are several.
                    self.address = (self.address + 1) % self.config.global_addresses().len().max(1);
                }
            }
            if started.elapsed() > Duration::from_secs(30) {
                backoff.attempt = 0;
            }
            if matches!(end, End::Refused(_)) {
                backoff.attempt = backoff.attempt.max(6);
            }
            let wait = backoff.next();
            tracing::info!(retry_in = ?wait, "reconnecting to the global control plane");
            tokio::select! {
                biased;
                () = cancel.cancelled() => return,
                () = tokio::time::sleep(wait) => {}
            }
        }
    }

    /// The global's address this session uses.
    fn global_address(&self) -> String {
        let addresses = self.config.global_addresses();
        addresses.get(self.address % addresses.len().max(1)).map_or_else(String::new, |a| a.to_string())
    }

    fn endpoint(&self) -> Result<Endpoint, String> {
        let tls = ClientTlsConfig::new().ca_certificate(Certificate::from_pem(&self.ca_pem)).domain_name(&self.config.global_server_name);
        let address = self.global_address();
        Endpoint::from_shared(address.clone())
            .and_then(|e| e.tls_config(tls))
            .map(|e| {
                e.connect_timeout(Duration::from_secs(5))
                    .http2_keep_alive_interval(self.config.kds_heartbeat_interval)
                    .keep_alive_timeout(self.config.kds_idle_timeout)
            })
            .map_err(|e| format!("invalid --global-address {address:?}: {e}"))
    }

    async fn session(&mut self) -> End {
        let endpoint = match self.endpoint() {
            Ok(e) => e,
            Err(e) => return End::Broken(e),
        };
        let channel: Channel = match endpoint.connect().await {
            Ok(c) => c,
            Err(e) => {
                return End::Broken(format!("cannot connect to {}: {}", self.global_address(), strait_runtime::telemetry::error_chain(&e)))
            }
        };
        let mut client = ZoneSyncClient::new(channel)
            .send_compressed(CompressionEncoding::Gzip)
            .accept_compressed(CompressionEncoding::Gzip)
            .max_decoding_message_size(16 * 1024 * 1024);
        let state = self.synced.state().await.ok().flatten().unwrap_or_default();
        let (tx, rx) = mpsc::channel::<ZoneMessage>(16);
        let hello = kds::Hello {
            protocol: PROTOCOL_VERSION,
            zone: self.config.zone.clone(),
            resume_revision: state.revision,
            software_version: env!("CARGO_PKG_VERSION").into(),
            global_id: state.global_id,
            api_address: self.config.api_address.to_string(),
            api_scheme: if self.config.api_plaintext { "http" } else { "https" }.into(),
        };
        let _ = tx.send(msg(zone_message::Message::Hello(hello))).await;
        let inventory = self.inventory.borrow_and_update().clone();
        let _ = tx.send(msg(zone_message::Message::Inventory(inventory))).await;
        let mut request = tonic::Request::new(ReceiverStream::new(rx));
        match format!("Bearer {}", self.token).parse() {
            Ok(v) => {
                request.metadata_mut().insert("authorization", v);
            }
            Err(_) => return End::Refused(tonic::Status::unauthenticated("the zone token file holds characters not allowed in a header")),
        }
        let mut inbound = match client.sync(request).await {
            Ok(r) => r.into_inner(),
            Err(status) => return classify(status),
        };
        tracing::info!(global = %self.global_address(), resume = state.revision, "connected to the global control plane");
        self.metrics.connected.set(1);
        self.metrics.streams.inc();
        let mut heartbeat = tokio::time::interval(self.config.kds_heartbeat_interval);
        let mut traffic = tokio::time::interval(self.config.traffic_report_interval);
        traffic.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut last_heard = Instant::now();
        let signer = self.signer.clone();
        let _attached = signer.attach(tx.clone());
        loop {
            tokio::select! {
                message = inbound.message() => {
                    last_heard = Instant::now();
                    match message {
                        Ok(Some(m)) => match m.message {
                            Some(global_message::Message::Batch(batch)) => {
                                if let Err(e) = self.on_batch(batch, &tx).await {
                                    return End::Broken(e);
                                }
                                // New meshes need an intermediate; a revocation, a new one now.
                                if let Err(e) = self.certs.reconcile().await {
                                    tracing::warn!(error = %e, "could not read the zone's certificates");
                                }
                            }
                            Some(global_message::Message::Certificate(cert)) => self.signer.answer(cert),
                            // The global asks about a sidecar: answered off this loop, which
                            // keeps syncing meanwhile.
                            Some(global_message::Message::Inspect(request)) => {
                                let (resources, zone, inspectors, tx) =
                                    (strait_cp_core::resources::Resources::new(self.synced.store().clone()), self.config.zone.clone(), self.inspectors.clone(), tx.clone());
                                tokio::spawn(async move {
                                    tracing::info!(mesh = request.mesh, dataplane = request.dataplane, what = request.what, "inspected from the global");
                                    let answer = crate::inspect::answer(&resources, &zone, &inspectors, &request).await;
                                    let _ = tx.send(msg(zone_message::Message::InspectResponse(answer))).await;
                                });
                            }
                            _ => {}
                        },
                        Ok(None) => return End::Broken("the global closed the stream".into()),
                        Err(status) => return classify(status),
                    }
                }
                Ok(()) = self.inventory.changed() => {
                    let inventory = self.inventory.borrow_and_update().clone();
                    if tx.send(msg(zone_message::Message::Inventory(inventory))).await.is_err() {
                        return End::Broken("request stream closed".into());
                    }
                }
                _ = traffic.tick() => {
                    // Sent on every tick once there is traffic, changed or not: the global's
                    // rates fall to zero when it stops.
                    let report = self.traffic.report(&self.config.zone);
                    if !report.edges.is_empty() && tx.send(msg(zone_message::Message::Traffic(report))).await.is_err() {
                        return End::Broken("request stream closed".into());
                    }
                }
                _ = heartbeat.tick() => {
                    if last_heard.elapsed() > self.config.kds_idle_timeout {
                        return End::Broken(format!("no message from the global in {:?}", self.config.kds_idle_timeout));
                    }
                    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
                    if tx.send(msg(zone_message::Message::Heartbeat(kds::Heartbeat { unix_millis: now.as_millis() as u64 }))).await.is_err() {
                        return End::Broken("request stream closed".into());
                    }
                }
            }
        }
    }

    async fn on_batch(&mut self, batch: kds::Batch, tx: &mpsc::Sender<ZoneMessage>) -> Result<(), String> {
        let revision = batch.revision;
        let (snapshot, count) = (batch.snapshot, batch.upserts.len() + batch.deletes.len());
        let Some(rejected) = self.synced.apply(batch).await.map_err(|e| format!("storing revision {revision}: {e}"))? else {
            return Ok(());
        };
        self.ready.send_replace(true);
        self.metrics.revision.set(revision as i64);
        let reply = if rejected.is_empty() {
            tracing::debug!(revision, snapshot, count, "applied");
            zone_message::Message::Ack(kds::Ack { revision })
        } else {
            for r in &rejected {
                tracing::warn!(revision, r#type = %r.key.r#type, mesh = %r.key.mesh, name = %r.key.name, reason = %r.message, "rejected a resource from the global (NACK)");
            }
            self.metrics.nacks.inc();
            zone_message::Message::Nack(kds::Nack { revision, errors: rejected.into_iter().map(to_error).collect() })
        };
        tx.send(msg(reply)).await.map_err(|_| "request stream closed".to_string())
    }
}

fn to_error(r: Rejected) -> kds::ResourceError {
    kds::ResourceError { key: Some(r.key), message: r.message }
}

fn msg(m: zone_message::Message) -> ZoneMessage {
    ZoneMessage { message: Some(m) }
}

fn classify(status: tonic::Status) -> End {
    use tonic::Code;
    match status.code() {
        Code::Unauthenticated | Code::PermissionDenied | Code::FailedPrecondition | Code::AlreadyExists | Code::InvalidArgument => {
            End::Refused(status)
        }
        _ => End::Broken(format!("{:?}: {}", status.code(), status.message())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_with_jitter_up_to_the_cap() {
        let mut b = Backoff { attempt: 0, max: Duration::from_secs(30) };
        let waits: Vec<Duration> = (0..12).map(|_| b.next()).collect();
        assert!(waits[0] <= Duration::from_millis(250) && waits[0] >= Duration::from_millis(125));
        assert!(waits[4] >= Duration::from_secs(2), "{waits:?}");
        assert!(waits.iter().all(|w| *w <= Duration::from_secs(30)), "{waits:?}");
        assert!(waits[11] >= Duration::from_secs(15), "capped waits stay near the cap: {waits:?}");
    }
}
