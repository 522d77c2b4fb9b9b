//! Wiring of `strait-dp run`: validated config → data-path threads → the Dataplane's
//! listeners, bound → admin server → zone connection (DPS) → data path; and a handle holding
//! the bound addresses and the shutdown.
//!
//! Listeners are bound first, before the sidecar connects to the zone, from what its Dataplane
//! declares (see [`crate::proxy::listeners`] for why): a port that is taken makes
//! [`Sidecar::start`] fail with an error naming the listener and the address, and the binary
//! exit non-zero. The Dataplane registered with the zone carries the ports actually bound.
//!
//! Readiness (`/ready`) waits for one guard per thing: the first configuration and the
//! workload certificate (released by the DPS client), and one per listener, released by the
//! data path once it accepts there, which it does once it has built its first TLS identity.
//! So `/ready` answers 200 only when every listener accepts with a certificate installed, and
//! 503 again while draining.
//!
//! In: a [`Validated`] configuration. Out: a running [`Sidecar`]; tests start it in-process
//! on port 0 and read its addresses back, the binary does the same and waits for a signal.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use prometheus_client::registry::Registry;
use serde_json::json;
use strait_proxy_core::admin::{AdminServer, AdminState};
use strait_proxy_core::drain::Drain;
use strait_proxy_core::readiness::Ready;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::Validated;
use crate::dps_client::{DpsClient, Guards, ProxyState};
use crate::proxy::listeners::{Addresses, BindError, Listeners};
use crate::proxy::metrics::ProxyMetrics;
use crate::runtime::DataPathRuntime;

/// Why the sidecar could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The data path's threads could not be created.
    #[error("cannot start the data-path threads: {0}")]
    Runtime(#[source] std::io::Error),
    /// A listener of the Dataplane could not be bound.
    #[error(transparent)]
    Listener(#[from] BindError),
    /// The admin server could not be bound.
    #[error("binding the admin server to {address}: {source}")]
    Admin {
        /// `--admin-address`.
        address: SocketAddr,
        /// What the operating system said.
        source: std::io::Error,
    },
}

/// How often the sidecar samples its CPU use to decide when to give freed memory back.
const TRIM_SAMPLE: Duration = Duration::from_secs(2);
/// A sample with this much CPU (in cores) is a busy spell for the sidecar...
const TRIM_BUSY_CORES: f64 = 0.05;
/// ...and one with at most this much a quiet one, after which freed memory is given back.
const TRIM_QUIET_CORES: f64 = 0.01;

/// A running sidecar.
pub struct Sidecar {
    /// Where the admin server listens.
    pub admin_addr: SocketAddr,
    /// Where the Dataplane's listeners are bound.
    pub listeners: Addresses,
    /// The configuration and identity in effect.
    pub state: Arc<ProxyState>,
    ready: Ready,
    cancel: CancellationToken,
    drain: Drain,
    admin_drain: Drain,
    tasks: TaskTracker,
    data_path: DataPathRuntime,
}

impl Sidecar {
    /// Binds every listener and the admin server, then starts the DPS client and the admin
    /// server on the current runtime and the data path on threads of its own (as many as
    /// `--concurrency` says), so that control-plane work never delays a request.
    pub async fn start(mut config: Validated) -> Result<Sidecar, StartError> {
        let data_path = DataPathRuntime::start(config.flags.concurrency).map_err(StartError::Runtime)?;
        let ready = Ready::new();
        let guards = Arc::new(Guards { config: Mutex::new(Some(ready.register("configuration from the zone control plane"))) });
        let certificate = ready.register("workload certificate");
        let listeners = Listeners::bind(&config.dataplane, &ready).await?;
        let addresses = listeners.addresses();
        listeners.register(&mut config.dataplane);
        let config = Arc::new(config);

        let state = Arc::new(ProxyState::default());
        let mut registry = Registry::default();
        let proxy_metrics = ProxyMetrics::register(&mut registry);
        let trims = strait_runtime::memory::TrimMetrics::register(&mut registry, "strait_dp_memory");
        let registry = Arc::new(registry);
        let dump = config_dump(state.clone(), addresses.clone());
        let inspect = crate::dps_client::Inspect { config_dump: dump.clone(), registry: registry.clone() };
        let admin_state = AdminState { ready: ready.clone(), registry: registry.clone(), config_dump: dump };
        let address = config.flags.admin_address;
        let admin = AdminServer::bind(address, admin_state).await.map_err(|source| StartError::Admin { address, source })?;
        let admin_addr = admin.local_addr();

        let (drain, admin_drain, cancel, tasks) = (Drain::new(), Drain::new(), CancellationToken::new(), TaskTracker::new());
        // The admin server outlives the drain, so that `/ready` says `draining` meanwhile.
        tasks.spawn(admin.serve(admin_drain.watcher()));
        let workload = crate::identity::start(&config.dataplane.name, state.clone(), certificate, cancel.clone(), &tasks);
        let (streams, nacks) = (proxy_metrics.control_plane_streams.clone(), proxy_metrics.config_nacks.clone());
        let health = crate::probe::start(&config.dataplane, &cancel, &tasks);
        if let Some(address) = own_address(&config.dataplane) {
            crate::exposition::start(address, state.clone(), registry, cancel.clone(), &tasks);
        }
        tasks.spawn(
            DpsClient { config: config.clone(), state: state.clone(), guards, workload, streams, nacks, health, inspect }
                .run(cancel.clone()),
        );
        // What a burst of connections freed goes back to the system once it is over.
        tasks.spawn(strait_runtime::memory::give_back_after_bursts(
            strait_runtime::memory::TrimPolicy::new(TRIM_BUSY_CORES, TRIM_QUIET_CORES, Duration::from_secs(600)),
            TRIM_SAMPLE,
            cancel.clone(),
            move |t| trims.trimmed(t),
        ));
        let proxy = crate::proxy::run(state.clone(), proxy_metrics, listeners, drain.watcher(), tasks.clone());
        tasks.spawn_on(proxy, data_path.handle());
        tracing::info!(
            dataplane = %config.dataplane.name, admin = %admin_addr, listeners = ?addresses, cp = %config.flags.cp.cp_address,
            "sidecar started"
        );
        Ok(Sidecar { admin_addr, listeners: addresses, state, ready, cancel, drain, admin_drain, tasks, data_path })
    }

    /// Resolves once the sidecar is ready (`/ready` answers 200): listening, configured and
    /// with its certificate.
    pub async fn wait_ready(&self) {
        self.ready.wait().await;
    }

    /// Stops: `/ready` turns 503, nothing new is accepted, what is open may finish until
    /// `deadline`, then the data path's threads end.
    pub async fn shutdown(self, deadline: Duration) {
        let _draining = self.ready.register("draining");
        self.cancel.cancel();
        let outcome = self.drain.drain(deadline).await;
        tracing::info!(?outcome, "drained");
        self.admin_drain.drain(Duration::from_millis(200)).await;
        self.tasks.close();
        self.tasks.wait().await;
        let data_path = self.data_path;
        let _ = tokio::task::spawn_blocking(move || data_path.stop()).await;
    }
}

/// The address other proxies reach this one at (`networking.address`).
fn own_address(dataplane: &strait_api::Resource) -> Option<std::net::IpAddr> {
    match &dataplane.spec {
        strait_api::Spec::Dataplane(spec) => spec.networking.address.parse().ok(),
        _ => None,
    }
}

/// `/config_dump`: the configuration in effect with its version, the certificate chain (never
/// the key) and where the listeners are bound.
fn config_dump(state: Arc<ProxyState>, listeners: Addresses) -> Arc<dyn Fn() -> String + Send + Sync> {
    Arc::new(move || {
        let config = state.config.load();
        let identity = state.identity.load();
        let doc = json!({
            "version": config.as_ref().map(|c| c.0),
            "config": config.as_ref().map(|c| &c.1),
            "certificate": identity.as_ref().map(|i| json!({"chain": i.cert_chain_pem, "lifetimeSecs": i.lifetime.as_secs()})),
            "listeners": listeners,
        });
        serde_json::to_string_pretty(&doc).unwrap_or_default()
    })
}
