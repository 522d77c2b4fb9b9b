//! Wiring of `strait-gateway`: the QUIC endpoint and TCP listener of the ingress, the egress
//! listener, the admin endpoint, the zone control plane client, and shutdown with a drain.
//!
//! In: [`Validated`] flags. Out: a [`Running`] gateway whose bound addresses are known (tests
//! bind what they need), and [`Running::shutdown`]: stop accepting, leave the zone (so other
//! zones stop sending here), let open connections finish until the deadline, then close.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arc_swap::ArcSwap;
use prometheus_client::registry::Registry;
use strait_proxy_core::admin::{AdminServer, AdminState};
use strait_proxy_core::{BlockReady, Drain, Ready};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::Validated;
use crate::cp::{CpClient, Guards};
use crate::metrics::GatewayMetrics;
use crate::routes::Routes;
use crate::Gateway;

/// A running gateway.
pub struct Running {
    /// The admin endpoint.
    pub admin_address: SocketAddr,
    /// The ingress (UDP and TCP).
    pub ingress_address: SocketAddr,
    /// The egress.
    pub egress_address: SocketAddr,
    gw: Arc<Gateway>,
    drain: Drain,
    admin_drain: Drain,
    cp: CancellationToken,
    ready: Ready,
    draining: Mutex<Option<BlockReady>>,
}

/// The QUIC socket's receive and send buffers: 160 ms of a 50 MB/s tunnel, so a reader that is
/// late does not lose datagrams (each loss halves the tunnel's congestion window).
const QUIC_SOCKET_BUFFER: usize = 8 * 1024 * 1024;

/// Grows the tunnel socket's buffers; says so if the system keeps them smaller.
fn size_quic_buffers(socket: &std::net::UdpSocket) {
    match strait_runtime::sockets::grow_buffers(socket, QUIC_SOCKET_BUFFER) {
        // The kernel counts twice what it was given.
        Ok(sizes) if sizes.receive < 2 * QUIC_SOCKET_BUFFER => tracing::warn!(
            receive_bytes = sizes.receive,
            send_bytes = sizes.send,
            wanted_bytes = QUIC_SOCKET_BUFFER,
            "the QUIC tunnel's socket buffers are smaller than wanted: fast cross-zone connections may lose datagrams and slow down; raise net.core.rmem_max and net.core.wmem_max, or grant the gateway CAP_NET_ADMIN"
        ),
        Ok(sizes) => tracing::debug!(receive_bytes = sizes.receive, send_bytes = sizes.send, "QUIC tunnel socket buffers"),
        Err(error) => tracing::warn!(%error, "cannot size the QUIC tunnel's socket buffers"),
    }
}

/// Starts everything; serves the saved configuration until the zone control plane answers.
pub async fn start(config: Validated) -> anyhow::Result<Running> {
    let flags = &config.flags;
    strait_runtime::files::private_dir(&flags.data_dir)
        .map_err(|e| anyhow::anyhow!("creating --data-dir {}: {e}", flags.data_dir.display()))?;
    let socket = std::net::UdpSocket::bind(flags.ingress_address)
        .map_err(|e| anyhow::anyhow!("binding the ingress to udp {}: {e}", flags.ingress_address))?;
    let ingress_address = socket.local_addr()?;
    size_quic_buffers(&socket);
    let endpoint = quinn::Endpoint::new(quinn::EndpointConfig::default(), None, socket, Arc::new(quinn::TokioRuntime))
        .map_err(|e| anyhow::anyhow!("starting QUIC on {ingress_address}: {e}"))?;
    let tcp_ingress = tokio::net::TcpListener::bind(ingress_address)
        .await
        .map_err(|e| anyhow::anyhow!("binding the ingress to tcp {ingress_address}: {e}"))?;
    let egress = tokio::net::TcpListener::bind(flags.egress_address)
        .await
        .map_err(|e| anyhow::anyhow!("binding the egress to {}: {e}", flags.egress_address))?;
    let egress_address = egress.local_addr()?;

    let mut registry = Registry::default();
    let metrics = GatewayMetrics::register(&mut registry);
    let ready = Ready::new();
    let guards = Arc::new(Guards {
        config: Mutex::new(Some(ready.register("configuration from the zone control plane"))),
        identity: Mutex::new(Some(ready.register("zone identity"))),
    });
    let gw = Arc::new(Gateway {
        routes: ArcSwap::from_pointee(Routes::default()),
        routes_changed: tokio::sync::watch::channel(()).0,
        addresses: crate::routes::AddressPolicy {
            allow_loopback: flags.allow_loopback,
            forbidden: cp_addresses(&flags.cp.cp_address).await,
        },
        metrics,
        shutdown: CancellationToken::new(),
        tasks: TaskTracker::new(),
        idle_timeout: flags.quic_idle_timeout,
        copy: strait_proxy_core::copy::CopyOptions {
            idle_timeout: Some(flags.tcp_idle_timeout).filter(|d| !d.is_zero()),
            ..Default::default()
        },
        endpoint,
        links: Default::default(),
        peers: Default::default(),
        next_fallback: Default::default(),
    });
    if let Some(saved) = crate::cp::load_saved(&flags.data_dir) {
        match crate::cp::apply(&gw, &guards, &flags.data_dir, saved).await {
            Ok(()) => tracing::info!("serving the saved configuration until the zone control plane answers"),
            Err(e) => tracing::warn!(error = e, "the saved configuration is unusable; waiting for the zone control plane"),
        }
    }

    let drain = Drain::new();
    let dump_gw = gw.clone();
    let admin_state = AdminState {
        ready: ready.clone(),
        registry: Arc::new(registry),
        config_dump: Arc::new(move || {
            let routes = dump_gw.routes.load();
            let zones: Vec<_> = routes
                .zones()
                .map(|z| serde_json::json!({"zone": z, "ingress": routes.ingress(z), "quic": dump_gw.links.get(z).is_some_and(|l| l.connection().is_some())}))
                .collect();
            serde_json::json!({"zone": routes.zone, "zones": zones, "identity": routes.tls.as_ref().map(|t| t.identity().to_string())})
                .to_string()
        }),
    };
    let admin = AdminServer::bind(flags.admin_address, admin_state)
        .await
        .map_err(|e| anyhow::anyhow!("binding the admin endpoint to {}: {e}", flags.admin_address))?;
    let admin_address = admin.local_addr();
    // The admin endpoint outlives the drain, so `/ready` says `draining` meanwhile.
    let admin_drain = Drain::new();
    gw.tasks.spawn(admin.serve(admin_drain.watcher()));
    gw.tasks.spawn(crate::ingress::serve_quic(gw.clone(), drain.watcher()));
    gw.tasks.spawn(crate::ingress::serve_tcp(gw.clone(), tcp_ingress, drain.watcher()));
    gw.tasks.spawn(crate::egress::serve(gw.clone(), egress, drain.watcher()));
    gw.tasks.spawn(crate::links::report(gw.clone()));
    let cp = CancellationToken::new();
    // An admin endpoint on every interface is scraped at the address this zone reaches the
    // gateway at (the egress's: the ingress may be advertised as a load balancer's).
    let metrics_address = match admin_address.ip() {
        ip if ip.is_unspecified() => Some(std::net::SocketAddr::new(config.advertised_egress.ip(), admin_address.port())),
        _ => Some(admin_address),
    };
    let client = CpClient { config: Arc::new(config.clone()), gw: gw.clone(), guards, metrics_address };
    gw.tasks.spawn(client.run(cp.clone()));
    tracing::info!(
        ingress = %ingress_address, egress = %egress_address, admin = %admin_address,
        advertised_ingress = %config.advertised_ingress, cp = %config.flags.cp.cp_address,
        "gateway started"
    );
    Ok(Running { admin_address, ingress_address, egress_address, gw, drain, admin_drain, cp, ready, draining: Mutex::new(None) })
}

impl Running {
    /// Resolves once the gateway is ready (`/ready` answers 200): registered with its zone,
    /// with its configuration and identity.
    pub async fn wait_ready(&self) {
        self.ready.wait().await;
    }

    /// Drains: `/ready` turns 503, the gateway leaves its zone (other zones stop sending
    /// here), nothing new is accepted, open connections get until `deadline`, then everything
    /// closes.
    pub async fn shutdown(self, deadline: Duration) {
        *self.draining.lock().unwrap_or_else(|p| p.into_inner()) = Some(self.ready.register("draining"));
        tracing::info!(deadline = ?deadline, "draining");
        self.cp.cancel();
        let outcome = self.drain.drain(deadline).await;
        tracing::info!(?outcome, "drained");
        self.admin_drain.drain(Duration::from_millis(200)).await;
        self.gw.shutdown.cancel();
        self.gw.endpoint.close(0u32.into(), b"shutting down");
        self.gw.tasks.close();
        if tokio::time::timeout(Duration::from_secs(2), self.gw.tasks.wait()).await.is_err() {
            tracing::warn!(tasks = self.gw.tasks.len(), "tasks still running 2s after the drain; exiting anyway");
        }
        // Lets the peers see the close rather than wait for their idle timeout.
        let _ = tokio::time::timeout(Duration::from_millis(500), self.gw.endpoint.wait_idle()).await;
        tracing::info!("stopped");
    }
}

/// The socket addresses of the zone control plane's DPS URL, which the ingress never forwards to.
async fn cp_addresses(url: &str) -> Vec<std::net::SocketAddr> {
    let authority = url.split_once("://").map_or(url, |(_, rest)| rest).split('/').next().unwrap_or_default();
    // Without a port the URL means 443; only the host matters here.
    let has_port = authority.rsplit_once(':').is_some_and(|(_, p)| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()))
        && !authority.ends_with(']');
    let target = if has_port { authority.to_string() } else { format!("{authority}:443") };
    let resolved = tokio::net::lookup_host(target).await;
    match resolved {
        Ok(addresses) => addresses.collect(),
        Err(error) => {
            tracing::warn!(%error, url, "cannot resolve the zone control plane's address to keep it off the ingress");
            Vec::new()
        }
    }
}
