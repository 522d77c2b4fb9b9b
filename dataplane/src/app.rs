//! Wiring of `strait-dp run`: validated config → DPS client → admin server, and a handle with
//! the bound admin address and the shutdown.
//!
//! In: a [`Validated`] configuration. Out: a running [`Sidecar`]; tests start it in-process
//! with the admin server on port 0.

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

/// A running sidecar.
pub struct Sidecar {
    /// Where the admin server listens.
    pub admin_addr: SocketAddr,
    /// The configuration and identity in effect.
    pub state: Arc<ProxyState>,
    cancel: CancellationToken,
    drain: Drain,
    tasks: TaskTracker,
}

impl Sidecar {
    /// Starts the DPS client, the admin server and the data path, all on the current runtime.
    pub async fn start(config: Validated) -> anyhow::Result<Sidecar> {
        Sidecar::start_on(config, None).await
    }

    /// Starts the DPS client and the admin server on the current runtime, and the data path on
    /// `data_path` when given (the binary keeps proxying off the control-plane thread).
    pub async fn start_on(config: Validated, data_path: Option<tokio::runtime::Handle>) -> anyhow::Result<Sidecar> {
        let config = Arc::new(config);
        let ready = Ready::new();
        let guards = Arc::new(Guards {
            config: Mutex::new(Some(ready.register("configuration from the zone control plane"))),
            certificate: Mutex::new(Some(ready.register("workload certificate"))),
        });
        let state = Arc::new(ProxyState::default());
        let dump_state = state.clone();
        let config_dump = Arc::new(move || {
            let config = dump_state.config.load();
            let identity = dump_state.identity.load();
            let doc = json!({
                "version": config.as_ref().map(|c| c.0),
                "config": config.as_ref().map(|c| &c.1),
                "certificate": identity.as_ref().map(|i| json!({"chain": i.cert_chain_pem, "lifetimeSecs": i.lifetime.as_secs()})),
            });
            serde_json::to_string_pretty(&doc).unwrap_or_default()
        });
        let mut registry = Registry::default();
        let proxy_metrics = crate::proxy::metrics::ProxyMetrics::register(&mut registry);
        let registry = Arc::new(registry);
        let admin = AdminServer::bind(config.flags.admin_address, AdminState { ready, registry, config_dump })
            .await
            .map_err(|e| anyhow::anyhow!("binding the admin server to {}: {e}", config.flags.admin_address))?;
        let admin_addr = admin.local_addr();
        let drain = Drain::new();
        let cancel = CancellationToken::new();
        let tasks = TaskTracker::new();
        tasks.spawn(admin.serve(drain.watcher()));
        tasks.spawn(DpsClient { config: config.clone(), state: state.clone(), guards }.run(cancel.clone()));
        let proxy = crate::proxy::run(state.clone(), proxy_metrics, drain.watcher(), tasks.clone());
        match data_path {
            Some(handle) => tasks.spawn_on(proxy, &handle),
            None => tasks.spawn(proxy),
        };
        tracing::info!(dataplane = %config.dataplane.name, admin = %admin_addr, cp = %config.flags.cp.cp_address, "sidecar started");
        Ok(Sidecar { admin_addr, state, cancel, drain, tasks })
    }

    /// Stops: no new work, then lets what is open finish until `deadline`.
    pub async fn shutdown(self, deadline: Duration) {
        self.cancel.cancel();
        self.drain.drain(deadline).await;
        self.tasks.close();
        self.tasks.wait().await;
    }
}
