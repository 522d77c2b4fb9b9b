//! Zone sync (KDS) server of the global control plane: one gRPC stream per zone over TLS,
//! authenticated by the zone token.
//!
//! In: zone connections with `authorization: Bearer <zone token>`, and the store's changes.
//! Out: snapshots and deltas of meshes, policies and other zones' inventories; zone status in
//! the [`registry::Registry`]; each zone's inventory in the store; `strait_global_kds_*` metrics.

pub mod board;
pub mod registry;
pub mod session;

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry as MetricsRegistry;
use strait_api::kds::zone_sync_server::ZoneSync;
use strait_api::kds::{zone_message, GlobalMessage, ZoneMessage, PROTOCOL_VERSION};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::task::TaskTracker;
use tonic::{Request, Response, Status, Streaming};
use tracing::Instrument;

use registry::Registry;
use session::Session;
use strait_cp_core::resources::Resources;

/// Timing of the sync protocol.
#[derive(Debug, Clone)]
pub struct KdsSettings {
    /// How often each side sends a heartbeat.
    pub heartbeat_interval: Duration,
    /// A stream with no message for this long is closed and the zone marked offline.
    pub idle_timeout: Duration,
    /// How long the Hello may take.
    pub hello_timeout: Duration,
    /// Lifetime of the zones' intermediate CAs (they renew them at ~70% of it).
    pub zone_ca_lifetime: Duration,
}

impl Default for KdsSettings {
    fn default() -> Self {
        KdsSettings {
            heartbeat_interval: Duration::from_secs(5),
            idle_timeout: Duration::from_secs(15),
            hello_timeout: Duration::from_secs(10),
            zone_ca_lifetime: Duration::from_secs(365 * 24 * 3600),
        }
    }
}

/// Decides which zone a token belongs to.
#[tonic::async_trait]
pub trait ZoneAuthenticator: Send + Sync + 'static {
    /// The zone the bearer token was issued to, or the status to refuse it with.
    async fn authenticate(&self, token: &str) -> Result<String, Status>;
}

/// KDS metrics (`strait_global_kds_*`).
#[derive(Clone)]
pub struct KdsMetrics {
    /// Zones connected now.
    pub connected_zones: Gauge,
    /// ACKs received.
    pub acks: Counter,
    /// NACKs received.
    pub nacks: Counter,
    /// Resource bytes sent.
    pub bytes_sent: Counter,
    /// Time from sending a revision to its ACK.
    pub push_latency: Histogram,
    /// Full snapshots sent.
    pub snapshots: Counter,
    /// Streams resumed from the zone's revision without a snapshot.
    pub resumes: Counter,
    /// Latest revision each zone acknowledged (zone names: a bounded, registered set).
    pub acked_revision: Family<ZoneLabel, Gauge>,
}

/// A zone as a metric label.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ZoneLabel {
    /// Zone name.
    pub zone: String,
}

impl KdsMetrics {
    /// Creates and registers the metrics.
    pub fn register(registry: &mut MetricsRegistry) -> Self {
        let m = KdsMetrics {
            connected_zones: Gauge::default(),
            acks: Counter::default(),
            nacks: Counter::default(),
            bytes_sent: Counter::default(),
            push_latency: Histogram::new([0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5]),
            snapshots: Counter::default(),
            resumes: Counter::default(),
            acked_revision: Family::default(),
        };
        let r = registry.sub_registry_with_prefix("strait_global_kds");
        r.register("connected_zones", "Zones with an open sync stream", m.connected_zones.clone());
        r.register("acks", "Revisions acknowledged by zones", m.acks.clone());
        r.register("nacks", "Revisions rejected by zones", m.nacks.clone());
        r.register("bytes_sent", "Resource bytes sent to zones", m.bytes_sent.clone());
        r.register("push_latency_seconds", "Time from sending a revision to its acknowledgement", m.push_latency.clone());
        r.register("snapshots", "Full snapshots sent to zones", m.snapshots.clone());
        r.register("resumes", "Zone streams resumed without a snapshot", m.resumes.clone());
        r.register("zone_acked_revision", "Latest revision acknowledged by each zone", m.acked_revision.clone());
        m
    }
}

/// Send times of revisions not yet acknowledged, oldest first.
type SendTimes = VecDeque<(u64, Instant)>;

/// Revisions sent and not yet acknowledged, per zone, to measure push latency; on each
/// scrape, `strait_global_kds_zone_sync_lag_seconds{zone}`: how long the oldest revision sent
/// to the zone has waited for its acknowledgement (0 when the zone has acknowledged all).
#[derive(Clone, Default)]
pub struct Pending {
    inner: Arc<Mutex<HashMap<String, SendTimes>>>,
}

impl std::fmt::Debug for Pending {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Pending")
    }
}

impl prometheus_client::collector::Collector for Pending {
    fn encode(&self, mut encoder: prometheus_client::encoding::DescriptorEncoder) -> Result<(), std::fmt::Error> {
        use prometheus_client::encoding::EncodeMetric;
        let lags: Vec<(String, f64)> = {
            let map = self.inner.lock().unwrap_or_else(|p| p.into_inner());
            map.iter().map(|(zone, queue)| (zone.clone(), queue.front().map_or(0.0, |(_, at)| at.elapsed().as_secs_f64()))).collect()
        };
        let mut metric = encoder.encode_descriptor(
            "strait_global_kds_zone_sync_lag_seconds",
            "How long the oldest revision sent to each zone has waited for its acknowledgement (0: all acknowledged)",
            None,
            prometheus_client::metrics::MetricType::Gauge,
        )?;
        for (zone, lag) in lags {
            let label = ZoneLabel { zone };
            let family = metric.encode_family(&label)?;
            prometheus_client::metrics::gauge::ConstGauge::new(lag).encode(family)?;
        }
        Ok(())
    }
}

impl Pending {
    fn record_sent(&self, zone: &str, revision: u64) {
        let mut map = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        let queue = map.entry(zone.to_string()).or_default();
        if queue.len() >= 1024 {
            queue.pop_front();
        }
        queue.push_back((revision, Instant::now()));
    }

    /// Forgets revisions up to `revision`; returns the latency of the newest of them.
    fn acked(&self, zone: &str, revision: u64) -> Option<Duration> {
        let mut map = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        let queue = map.get_mut(zone)?;
        let mut latest = None;
        while queue.front().is_some_and(|(r, _)| *r <= revision) {
            latest = queue.pop_front().map(|(_, at)| at.elapsed());
        }
        latest
    }
}

/// What every session shares.
#[derive(Clone)]
pub struct KdsShared {
    /// The store, typed.
    pub resources: Resources,
    /// Zone status: this replica's sessions.
    pub registry: Registry,
    /// Zone status shared by the replicas.
    pub board: board::StatusBoard,
    /// Timing.
    pub settings: Arc<KdsSettings>,
    /// Metrics.
    pub metrics: KdsMetrics,
    /// Identity of this global's store.
    pub global_id: Arc<String>,
    /// Send times of unacknowledged revisions.
    pub pending: Pending,
    /// Signs zone identities.
    pub system_ca: Arc<strait_pki::CertificateAuthority>,
    /// Questions about the zones' sidecars, asked on their streams.
    pub inspections: crate::inspect::Inspections,
    /// What each zone's sidecars served, for the traffic map.
    pub traffic: crate::traffic::TrafficMap,
}

/// The tonic service.
pub struct KdsService {
    shared: KdsShared,
    auth: Arc<dyn ZoneAuthenticator>,
    tasks: TaskTracker,
}

impl KdsService {
    /// A service over `shared`, authenticating with `auth`; sessions are tracked in `tasks`.
    pub fn new(shared: KdsShared, auth: Arc<dyn ZoneAuthenticator>, tasks: TaskTracker) -> Self {
        KdsService { shared, auth, tasks }
    }
}

fn bearer<T>(request: &Request<T>) -> Result<String, Status> {
    let header = request
        .metadata()
        .get("authorization")
        .ok_or_else(|| Status::unauthenticated("missing zone token: send `authorization: Bearer <zone token>`"))?;
    let value = header.to_str().map_err(|_| Status::unauthenticated("authorization header is not text"))?;
    value.strip_prefix("Bearer ").map(str::to_string).ok_or_else(|| Status::unauthenticated("authorization must be `Bearer <zone token>`"))
}

#[tonic::async_trait]
impl ZoneSync for KdsService {
    type SyncStream = ReceiverStream<Result<GlobalMessage, Status>>;

    async fn sync(&self, request: Request<Streaming<ZoneMessage>>) -> Result<Response<Self::SyncStream>, Status> {
        let peer = request.remote_addr().map(|a| a.to_string()).unwrap_or_else(|| "unknown".into());
        let token = bearer(&request).inspect_err(|s| tracing::warn!(peer, reason = s.message(), "zone refused"))?;
        let zone = self.auth.authenticate(&token).await.inspect_err(|s| tracing::warn!(peer, reason = s.message(), "zone refused"))?;
        let mut inbound = request.into_inner();
        let first = tokio::time::timeout(self.shared.settings.hello_timeout, inbound.message())
            .await
            .map_err(|_| Status::deadline_exceeded("no Hello within the hello timeout"))?
            .map_err(|s| Status::aborted(format!("reading Hello: {}", s.message())))?;
        let Some(ZoneMessage { message: Some(zone_message::Message::Hello(hello)) }) = first else {
            return Err(Status::invalid_argument("the first message must be Hello"));
        };
        if hello.protocol != PROTOCOL_VERSION {
            return Err(Status::failed_precondition(format!(
                "protocol {} is not supported; this global speaks {PROTOCOL_VERSION}",
                hello.protocol
            )));
        }
        if hello.zone != zone {
            tracing::warn!(peer, token_zone = %zone, hello_zone = %hello.zone, "zone refused: name does not match its token");
            return Err(Status::permission_denied(format!("this token belongs to zone {zone:?}, not {:?}", hello.zone)));
        }
        let (id, cancel) = self
            .shared
            .registry
            .connect(
                &zone,
                &peer,
                &registry::ZoneHello {
                    software_version: &hello.software_version,
                    api_address: &hello.api_address,
                    api_scheme: &hello.api_scheme,
                },
            )
            .map_err(|e| {
                tracing::warn!(peer, zone = %zone, reason = %e, "zone refused");
                Status::already_exists(e.to_string())
            })?;
        self.shared.metrics.connected_zones.set(self.shared.registry.connected_count() as i64);
        // Every line of the session, to its end, names the zone and where it connected from.
        let span = tracing::info_span!("kds_session", zone = %zone, peer);
        span.in_scope(|| tracing::info!(version = %hello.software_version, resume = hello.resume_revision, "zone connected"));
        let (tx, rx) = mpsc::channel(16);
        self.shared.inspections.attach(&zone, id, tx.clone());
        let session = Session { shared: self.shared.clone(), zone, id, tx, cancel, auth: self.auth.clone(), token };
        self.tasks.spawn(session.run(hello, inbound).instrument(span));
        Ok(Response::new(ReceiverStream::new(rx)))
    }
}

#[cfg(test)]
mod tests {
    use std::io::Write;
    use std::sync::{Arc, Mutex};
    use std::time::{Duration, Instant};

    use serde_json::Value;
    use strait_api::kds::zone_sync_client::ZoneSyncClient;
    use strait_api::kds::{self, global_message, zone_message, ZoneMessage, PROTOCOL_VERSION};
    use tokio::sync::mpsc;
    use tokio_stream::wrappers::ReceiverStream;
    use tonic::transport::{Certificate, ClientTlsConfig, Endpoint};

    /// The JSON log lines written under the test's subscriber.
    #[derive(Clone, Default)]
    struct Captured(Arc<Mutex<Vec<u8>>>);

    impl Write for Captured {
        fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap_or_else(|p| p.into_inner()).extend_from_slice(bytes);
            Ok(bytes.len())
        }

        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    impl Captured {
        fn line(&self, message: &str) -> Option<Value> {
            let bytes = self.0.lock().unwrap_or_else(|p| p.into_inner()).clone();
            String::from_utf8_lossy(&bytes).lines().filter_map(|l| serde_json::from_str::<Value>(l).ok()).find(|v| v["message"] == message)
        }
    }

    /// On a current-thread runtime the global's tasks all run on the test's thread, so the
    /// subscriber set for this thread sees every line of the session; the binaries log these
    /// same JSON lines (`--log-format json`).
    #[tokio::test]
    async fn every_line_of_a_zone_session_names_the_zone() {
        let captured = Captured::default();
        let writer = captured.clone();
        let subscriber = tracing_subscriber::fmt().json().flatten_event(true).with_writer(move || writer.clone()).finish();
        let _logging = tracing::subscriber::set_default(subscriber);

        let dir = tempfile::tempdir().unwrap();
        let config = crate::Config::for_dir(dir.path().to_path_buf(), "127.0.0.1:0".parse().unwrap());
        let global = crate::GlobalCp::start(Arc::new(config)).await.unwrap();
        let admin = std::fs::read_to_string(&global.token_file).unwrap().trim().to_string();
        let registered: Value = reqwest::Client::new()
            .post(format!("http://{}/zones/zone-1/token", global.api_addr))
            .bearer_auth(&admin)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();

        let tls = ClientTlsConfig::new().ca_certificate(Certificate::from_pem(&global.ca_bundle)).domain_name("strait-global");
        let channel =
            Endpoint::from_shared(format!("https://{}", global.kds_addr)).unwrap().tls_config(tls).unwrap().connect().await.unwrap();
        let (tx, rx) = mpsc::channel(8);
        let hello = kds::Hello { protocol: PROTOCOL_VERSION, zone: "zone-1".into(), software_version: "test".into(), ..Default::default() };
        tx.send(ZoneMessage { message: Some(zone_message::Message::Hello(hello)) }).await.unwrap();
        let mut request = tonic::Request::new(ReceiverStream::new(rx));
        let token = registered["token"].as_str().unwrap();
        request.metadata_mut().insert("authorization", format!("Bearer {token}").parse().unwrap());
        let mut inbound = ZoneSyncClient::new(channel).sync(request).await.unwrap().into_inner();
        let revision = loop {
            let message = tokio::time::timeout(Duration::from_secs(10), inbound.message()).await.expect("a snapshot within 10 s");
            if let Some(global_message::Message::Batch(b)) = message.unwrap().unwrap().message {
                if b.last_chunk {
                    break b.revision;
                }
            }
        };
        let nack = kds::Nack { revision, errors: vec![kds::ResourceError { key: None, message: "refused".into() }] };
        tx.send(ZoneMessage { message: Some(zone_message::Message::Nack(nack)) }).await.unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        while captured.line("zone rejected resources (NACK)").is_none() {
            assert!(Instant::now() < deadline, "no NACK line");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        drop((tx, inbound));
        while captured.line("zone disconnected").is_none() {
            assert!(Instant::now() < deadline, "no disconnection line");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }

        for message in ["zone connected", "sent snapshot", "zone rejected resources (NACK)", "zone disconnected"] {
            let line = captured.line(message).unwrap_or_else(|| panic!("no line {message:?}"));
            assert_eq!(line["span"]["name"], "kds_session", "{line}");
            assert_eq!(line["span"]["zone"], "zone-1", "{line}");
            assert!(line["span"]["peer"].as_str().is_some_and(|p| p.starts_with("127.0.0.1:")), "{line}");
            assert!(line.get("zone").is_none(), "the line repeats the span's zone: {line}");
        }
        global.shutdown();
        global.wait().await;
    }
}
