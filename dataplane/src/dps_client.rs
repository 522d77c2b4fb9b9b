//! The sidecar's side of DPS: register with the zone, keep the latest configuration, lend the
//! open stream to the certificate manager for its CSRs (see [`crate::identity`]), and
//! reconnect with back-off, keeping the last configuration and certificate meanwhile.
//!
//! In: the validated run configuration. Out: [`ProxyState`]: the current configuration and
//! workload identity, each swapped in one step so readers never lock; the configuration's
//! readiness guard dropped once the first one has arrived.

use std::sync::{Arc, Mutex};

use arc_swap::ArcSwapOption;
use prometheus_client::metrics::counter::Counter;
use strait_api::dps::{
    dataplane_message, zone_message, Ack, DataplaneMessage, Health, Hello, InboundReadiness, InspectResponse, Nack, ZoneMessage,
    PROTOCOL_VERSION,
};
use strait_api::dps_delta::Assembler;
use strait_api::proxy_config::ProxyConfig;
use tokio::sync::mpsc;
use tokio_stream::StreamExt as _;
use tokio_util::sync::CancellationToken;

use strait_proxy_core::cp_client::{self, classify, End};
use strait_proxy_core::readiness::BlockReady;

use crate::config::Validated;
use crate::identity::Workload;
pub use crate::identity::WorkloadIdentity;

/// What the data path reads: the latest configuration and identity.
pub struct ProxyState {
    /// The configuration, with its version.
    pub config: ArcSwapOption<(u64, ProxyConfig)>,
    /// The workload identity.
    pub identity: ArcSwapOption<WorkloadIdentity>,
    /// Bumped whenever either changes, so the data path rebuilds its TLS identity.
    pub changed: tokio::sync::watch::Sender<u64>,
    /// The version of the configuration the data path serves (its destinations, routes and
    /// listeners rebuilt from it); 0 before the first. It follows `config` by a moment.
    pub applied: std::sync::atomic::AtomicU64,
}

impl Default for ProxyState {
    fn default() -> Self {
        ProxyState {
            config: ArcSwapOption::empty(),
            identity: ArcSwapOption::empty(),
            changed: tokio::sync::watch::channel(0).0,
            applied: std::sync::atomic::AtomicU64::new(0),
        }
    }
}

impl ProxyState {
    fn bump(&self) {
        self.changed.send_modify(|n| *n += 1);
    }

    /// The configuration, once the data path serves it (None while it is still being applied).
    pub fn served(&self) -> Option<Arc<(u64, ProxyConfig)>> {
        self.config.load_full().filter(|c| c.0 == self.applied.load(std::sync::atomic::Ordering::Acquire))
    }
}

/// Readiness guard released when the first configuration arrives.
pub struct Guards {
    /// Released on the first configuration.
    pub config: Mutex<Option<BlockReady>>,
}

fn release(slot: &Mutex<Option<BlockReady>>) {
    slot.lock().unwrap_or_else(|p| p.into_inner()).take();
}

/// The largest message the zone may send (a whole configuration, when it does not come in
/// pieces).
const MAX_FROM_ZONE: usize = 64 * 1024 * 1024;

/// The DPS client task.
pub struct DpsClient {
    /// Validated configuration.
    pub config: Arc<Validated>,
    /// Shared state for the data path and admin.
    pub state: Arc<ProxyState>,
    /// Readiness guards.
    pub guards: Arc<Guards>,
    /// The workload certificate: its CSRs go through the open stream.
    pub workload: Arc<Workload>,
    /// Streams registered with the zone (`strait_dp_control_plane_streams_total`).
    pub streams: Counter,
    /// Configurations refused (`strait_dp_config_nacks_total`).
    pub nacks: Counter,
    /// The application's readiness behind each inbound, from [`crate::probe`].
    pub health: tokio::sync::watch::Receiver<crate::probe::Readinesses>,
    /// What the zone may ask about this sidecar (`straitctl inspect dataplane`).
    pub inspect: Inspect,
}

/// Answers a zone's questions about this sidecar: its configuration dump and its metrics, the
/// same as its admin endpoint's `/config_dump` and `/metrics`.
#[derive(Clone)]
pub struct Inspect {
    /// Renders `/config_dump`.
    pub config_dump: Arc<dyn Fn() -> String + Send + Sync>,
    /// Every metric of the sidecar.
    pub registry: Arc<prometheus_client::registry::Registry>,
}

impl Inspect {
    /// The answer to a question of kind `what`.
    fn answer(&self, id: u64, what: &str) -> InspectResponse {
        let json = match what {
            "config" => Ok((self.config_dump)().into_bytes()),
            "stats" => {
                let mut text = String::new();
                match prometheus_client::encoding::text::encode(&mut text, &self.registry) {
                    Ok(()) => Ok(serde_json::to_vec(&serde_json::json!({ "metrics": text })).unwrap_or_default()),
                    Err(e) => Err(format!("encoding the metrics: {e}")),
                }
            }
            other => Err(format!("this sidecar answers `config` and `stats`, not {other:?}")),
        };
        match json {
            Ok(json) => InspectResponse { id, json, error: String::new() },
            Err(error) => InspectResponse { id, json: Vec::new(), error },
        }
    }
}

/// The configuration in `json`, if this sidecar can apply it; else why not (the NACK's
/// reason, naming the field or the policy).
fn applicable(json: &[u8]) -> Result<ProxyConfig, String> {
    let config: ProxyConfig = serde_json::from_slice(json).map_err(|e| format!("the configuration does not parse: {e}"))?;
    crate::proxy::check(&config)?;
    Ok(config)
}

impl DpsClient {
    /// Runs until cancelled, reconnecting with exponential back-off and full jitter.
    pub async fn run(self, cancel: CancellationToken) {
        let flags = &self.config.flags;
        cp_client::run(cancel, "sidecar", &flags.cp.cp_address, flags.cp.cp_max_backoff, || self.session()).await
    }

    async fn session(&self) -> End {
        let flags = &self.config.flags;
        // The zone accepts a Dataplane only from the address it declares: connect from it.
        let source = match &self.config.dataplane.spec {
            strait_api::Spec::Dataplane(spec) => spec.networking.address.parse().ok(),
            _ => None,
        };
        let stream = cp_client::connect_framed(
            &flags.cp.cp_address,
            &self.config.cp_ca_pem,
            &flags.cp.cp_server_name,
            source,
            &self.config.current_token(),
        )
        .await;
        let cp_client::Framed { read, write } = match stream {
            Ok(s) => s,
            Err(e) => return End::Broken(e),
        };
        let (tx, rx) = mpsc::channel::<DataplaneMessage>(8);
        // Registered with what the probes find now; changes follow as `Health` messages.
        let mut health = self.health.clone();
        let dataplane = {
            let readiness = health.borrow_and_update();
            // On Kubernetes the zone keeps the Pod's Dataplane: the Hello carries none.
            if self.config.from_zone {
                Vec::new()
            } else {
                crate::probe::with_health(&self.config.dataplane, &readiness)
            }
        };
        let hello =
            Hello { protocol: PROTOCOL_VERSION, dataplane, software_version: env!("CARGO_PKG_VERSION").into(), deltas: true, pieces: true };
        let _ = tx.send(msg(dataplane_message::Message::Hello(hello))).await;
        // What this sidecar sends, written by a task of its own (this one may wait to queue a
        // message while the connection is slow to take the last), stopped with the session.
        let mut writer = tokio_util::task::AbortOnDropHandle::new(strait_runtime::framed::spawn_writer(write, rx));
        let mut inbound = std::pin::pin!(strait_runtime::framed::messages::<_, ZoneMessage>(read, MAX_FROM_ZONE));
        // The zone answers a stream it accepts with the sidecar's configuration; one it refuses,
        // with the reason.
        let first = tokio::select! {
            first = inbound.next() => first,
            written = &mut writer => return End::Broken(writer_end(written)),
        };
        let first = match first {
            Some(Ok(m)) => m,
            Some(Err(s)) => return classify(s),
            None => return End::Broken("the zone closed the stream".into()),
        };
        tracing::info!(cp = %flags.cp.cp_address, dataplane = %self.config.dataplane.name, "registered with the zone control plane");
        self.streams.inc();
        let _attached = self.workload.signer.attach(tx.clone());
        // What the inbounds served, sent when it changed (the zone sums it for the traffic map).
        let mut traffic = tokio::time::interval(flags.traffic_report_interval);
        traffic.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut reported = strait_api::dps::TrafficReport::default();
        // What this stream sent of the configuration, when it comes in parts.
        let mut assembler = Assembler::new(&self.config.dataplane.name);
        let mut first = Some(first);
        loop {
            let message = tokio::select! {
                biased;
                Some(first) = std::future::ready(first.take()) => first,
                written = &mut writer => return End::Broken(writer_end(written)),
                _ = traffic.tick() => {
                    let report = crate::traffic::report(&self.inspect.registry);
                    if report != reported {
                        reported = report.clone();
                        if tx.send(msg(dataplane_message::Message::Traffic(report))).await.is_err() {
                            return End::Broken("request stream closed".into());
                        }
                    }
                    continue;
                }
                message = inbound.next() => match message {
                    Some(Ok(m)) => m,
                    None => return End::Broken("the zone closed the stream".into()),
                    Some(Err(s)) => return classify(s),
                },
                Ok(()) = health.changed() => {
                    let report = health_report(&health.borrow_and_update());
                    if tx.send(msg(dataplane_message::Message::Health(report))).await.is_err() {
                        return End::Broken("request stream closed".into());
                    }
                    continue;
                }
            };
            match message.message {
                Some(zone_message::Message::Config(c)) => {
                    let config = applicable(&c.json).map(|config| Arc::new((c.version, config)));
                    if !self.take(c.version, config, &tx).await {
                        return End::Broken("request stream closed".into());
                    }
                }
                Some(zone_message::Message::ConfigDelta(piece)) => {
                    // A version in pieces is answered once, after its last piece.
                    let Some((version, config)) = assembler.take(&piece) else { continue };
                    let config = config.and_then(|config| crate::proxy::check(&config.1).map(|()| config));
                    if !self.take(version, config, &tx).await {
                        return End::Broken("request stream closed".into());
                    }
                }
                Some(zone_message::Message::Certificate(c)) if c.error.is_empty() => self.workload.signer.answer(Ok(c.cert_chain_pem)),
                Some(zone_message::Message::Certificate(c)) => {
                    self.workload.signer.answer(Err(format!("the zone refused the CSR: {}", c.error)))
                }
                Some(zone_message::Message::Inspect(request)) => {
                    tracing::debug!(what = request.what, "inspected by the zone");
                    let answer = self.inspect.answer(request.id, &request.what);
                    if tx.send(msg(dataplane_message::Message::InspectResponse(answer))).await.is_err() {
                        return End::Broken("request stream closed".into());
                    }
                }
                None => {}
            }
        }
    }
}

impl DpsClient {
    /// Applies `config` (version `version`) if it is applicable, and answers the zone (ACK, or
    /// NACK with why not); false when the stream is closed.
    async fn take(&self, version: u64, config: Result<Arc<(u64, ProxyConfig)>, String>, tx: &mpsc::Sender<DataplaneMessage>) -> bool {
        let reply = match config {
            Ok(config) => {
                tracing::info!(version, "configuration applied");
                self.workload.follow_trust(&config.1.trust_bundle, &self.state);
                self.state.config.store(Some(config));
                self.state.bump();
                release(&self.guards.config);
                dataplane_message::Message::Ack(Ack { version })
            }
            Err(error) => {
                tracing::warn!(version, %error, "refused a configuration (NACK); the previous one stays in force");
                self.nacks.inc();
                dataplane_message::Message::Nack(Nack { version, error })
            }
        };
        tx.send(msg(reply)).await.is_ok()
    }
}

/// Why the task writing to the zone ended.
fn writer_end(ended: Result<std::io::Result<()>, tokio::task::JoinError>) -> String {
    match ended {
        Ok(Ok(())) => "the stream's sender closed".into(),
        Ok(Err(error)) => format!("writing to the zone control plane failed: {error}"),
        Err(error) => format!("the task writing to the zone control plane ended: {error}"),
    }
}

/// Every inbound's readiness, as the zone takes it.
fn health_report(readiness: &crate::probe::Readinesses) -> Health {
    let inbounds = readiness
        .iter()
        .map(|(port, r)| InboundReadiness { port: u32::from(*port), ready: r.is_ok(), reason: r.clone().err().unwrap_or_default() })
        .collect();
    Health { inbounds }
}

fn msg(m: dataplane_message::Message) -> DataplaneMessage {
    DataplaneMessage { message: Some(m) }
}
