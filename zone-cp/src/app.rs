//! Wiring of `strait-zone`: config → store → zone sync client → read-only REST, and a handle
//! holding the bound address and the shutdown.
//!
//! In: a validated [`Config`]. Out: a running [`ZoneCp`]; tests start it in-process on port 0.

use std::net::SocketAddr;
use std::sync::Arc;

use prometheus_client::registry::Registry;
use strait_cp_core::resources::Resources;
use strait_pki::RotationPolicy;
use strait_runtime::certs::CertManager;
use strait_store::{SledStore, Store};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::Config;
use crate::kds_client::KdsClient;
use crate::metrics::ZoneMetrics;
use crate::rest::{self, ZoneApi};
use crate::synced::Synced;

/// How long REST requests in flight may run after shutdown is asked before they are cut.
const REST_DRAIN_DEADLINE: std::time::Duration = std::time::Duration::from_secs(10);
/// How often the zone samples its CPU use to decide when to give freed memory back.
const TRIM_SAMPLE: std::time::Duration = std::time::Duration::from_secs(2);

/// A running zone control plane.
pub struct ZoneCp {
    /// Where the REST API listens.
    pub api_addr: SocketAddr,
    /// Where the dataplane config server (DPS) listens.
    pub dps_addr: SocketAddr,
    /// Where the sidecar injection webhook listens, if it does.
    pub injection_addr: Option<SocketAddr>,
    /// The CA sidecars trust for DPS.
    pub dps_ca_pem: String,
    store: Arc<dyn Store>,
    shutdown: CancellationToken,
    tasks: TaskTracker,
}

impl ZoneCp {
    /// Opens the store, starts zone sync and the REST API.
    pub async fn start(config: Arc<Config>) -> anyhow::Result<ZoneCp> {
        let mut problems = Vec::new();
        let Some((token, ca_pem)) = config.credentials(&mut problems) else { anyhow::bail!("{}", problems.join("; ")) };
        // It holds the zone's keys (intermediates, identity, the DPS CA) and its admin token:
        // the owner's only. Sidecars and gateways get a copy of the public `dps-ca.pem`.
        strait_runtime::files::private_dir(&config.data_dir)
            .map_err(|e| anyhow::anyhow!("making the data directory {} private: {e}", config.data_dir.display()))?;
        let dir = config.data_dir.join("store");
        let opened = {
            let dir = dir.clone();
            tokio::task::spawn_blocking(move || SledStore::open_with(&dir, strait_cp_core::kinds::store_options())).await?
        };
        let store: Arc<dyn Store> = Arc::new(opened.map_err(|e| anyhow::anyhow!("opening the store in {}: {e}", dir.display()))?);
        let zone_store = store.clone();
        let synced = Synced::new(store.clone(), config.disabled_policy_types.iter().cloned().collect());
        // A snapshot on disk from an earlier run is enough to serve while the global is away.
        let state = synced.state().await?;
        let (ready_tx, ready_rx) = watch::channel(state.is_some());
        if let Some(s) = &state {
            tracing::info!(revision = s.revision, "serving the last state received from the global until it answers");
        }

        let mut registry = Registry::default();
        let metrics = ZoneMetrics::register(&mut registry);
        let connected: Arc<std::sync::Mutex<std::collections::HashSet<String>>> = Default::default();
        let dps_metrics = crate::metrics::DpsMetrics::register(&mut registry, connected.clone());
        let memory_metrics = strait_runtime::memory::TrimMetrics::register(&mut registry, "strait_zone_memory");
        let listener = tokio::net::TcpListener::bind(config.api_address)
            .await
            .map_err(|e| anyhow::anyhow!("binding the REST API to {}: {e}", config.api_address))?;
        let api_addr = listener.local_addr()?;
        let resources = Resources::new(store);
        // NACKs belong to sessions, and no session outlives the process: sidecars report again.
        for stale in resources.store().list(strait_cp_core::kinds::DATAPLANE_NACK, None).await? {
            resources.store().delete(stale.key, strait_store::Precondition::None).await?;
        }
        let inventory_tx = crate::inventory::Publisher::start(crate::inventory::compute(&resources).await?, resources.clone());
        let inventory_rx = inventory_tx.subscribe();
        let token_file = config.data_dir.join("admin-token");
        let (admin_token, created) = strait_cp_core::auth::load_or_create(&token_file)?;
        if created {
            tracing::info!(path = %token_file.display(), "generated the zone's admin token (for registering Dataplanes)");
        }
        let shutdown = CancellationToken::new();
        // A start that fails from here on stops what it already spawned.
        let stop_on_failure = shutdown.clone().drop_guard();
        let tasks = TaskTracker::new();
        // One certificate for DPS and the REST API: "strait-zone" for sidecars, and the
        // addresses REST clients (probes, Prometheus) reach the zone at.
        let mut names = config.dps_tls_names.clone();
        names.extend(["localhost", "127.0.0.1", "::1"].map(String::from));
        for address in [config.api_address, config.dps_address] {
            if !address.ip().is_unspecified() {
                names.push(address.ip().to_string());
            }
        }
        let dps_identity = crate::dps::tls::identity(
            zone_store.as_ref(),
            &config.data_dir,
            &names,
            config.dps_certificate_lifetime,
            provided_ca(&config)?,
        )
        .await?;
        // One certificate manager for the process: the DPS endpoint's certificate, the
        // intermediate CA of each mesh and the zone identity.
        let certs = CertManager::new(RotationPolicy::default(), shutdown.clone(), tasks.clone());
        let dps_cert = certs.manage_now(dps_identity.issuer).await.map_err(|e| anyhow::anyhow!(e))?;
        let dps_tls = strait_cp_core::tls::server_config(dps_cert, &tasks, shutdown.clone())?;
        let dps_listener = tokio::net::TcpListener::bind(config.dps_address)
            .await
            .map_err(|e| anyhow::anyhow!("binding DPS to {}: {e}", config.dps_address))?;
        let dps_addr = dps_listener.local_addr()?;
        if config.environment == crate::config::Environment::Universal {
            let first = config.global_addresses().first().map_or_else(String::new, |a| a.to_string());
            let host = crate::dps::cp_env::advertised_host(&config.dps_tls_names, dps_addr, &first);
            let text = crate::dps::cp_env::render(host.as_deref(), dps_addr.port(), &dps_identity.ca_pem);
            match crate::dps::cp_env::write(&config.data_dir, &text) {
                Ok(()) => {
                    tracing::info!(path = %config.data_dir.join("cp.env").display(), address = host.as_deref().unwrap_or("unknown (give --dps-tls-name)"), "wrote how gateways and sidecars reach this zone (copy it to /etc/strait/cp.env on their hosts)")
                }
                Err(error) => tracing::warn!(%error, "cannot write cp.env in the data directory"),
            }
        }
        let kubernetes = match config.environment {
            crate::config::Environment::Universal => None,
            crate::config::Environment::Kubernetes => {
                let client = crate::k8s::client(config.kubeconfig.as_deref()).await?;
                let lease = crate::k8s::lease::LeaseConfig {
                    namespace: crate::k8s::own_namespace(config.namespace.as_deref()),
                    name: config.leader_lease.clone(),
                    identity: crate::k8s::replica_name(config.replica_name.as_deref()),
                    duration: config.leader_lease_duration,
                    renew_every: config.leader_lease_duration / 5,
                };
                tracing::info!(namespace = %lease.namespace, lease = %lease.name, replica = %lease.identity, "Kubernetes mode: electing the leading replica");
                let leading = crate::k8s::lease::elect(client.clone(), lease, shutdown.clone(), &tasks);
                let webhook = config.sidecar_image.as_ref().map(|_| {
                    let name = format!("strait-sidecar-injector-{}", crate::k8s::own_namespace(config.namespace.as_deref()));
                    (name, dps_identity.ca_pem.clone())
                });
                let cluster = Cluster {
                    client: client.clone(),
                    namespace: crate::k8s::own_namespace(config.namespace.as_deref()),
                    zone: config.zone.clone(),
                    resources: resources.clone(),
                    inventory: inventory_tx.clone(),
                    webhook,
                };
                let followed = follow_cluster(cluster, leading.clone(), &shutdown, &tasks);
                Some((client, leading, followed))
            }
        };
        let targets = crate::discovery::Targets::default();
        let inspectors = crate::inspect::Inspectors::default();
        let traffic = crate::traffic::Traffic::default();
        let dps_shared = crate::dps::DpsShared {
            resources: resources.clone(),
            zone: Arc::new(config.zone.clone()),
            inventory: inventory_tx.clone(),
            connected,
            shutdown: shutdown.clone(),
            inputs: crate::dps::inputs::InputCache::new(dps_metrics.view_builds.clone()),
            metrics: dps_metrics,
            allowed_addresses: Arc::new(config.allow_dataplane_addresses.clone()),
            targets: targets.clone(),
            inspectors: inspectors.clone(),
            traffic: traffic.clone(),
            kubernetes: kubernetes.as_ref().map(|(client, ..)| client.clone()),
            leading: kubernetes.as_ref().map(|(_, leading, _)| leading.clone()),
            changes: crate::dps::changes::Changes::start(resources.store().clone(), shutdown.clone()),
        };
        // Keepalive pings find sidecars whose host vanished without closing its connection, so
        // their Dataplane is unregistered and a replacement can register.
        let dps_service = crate::dps::DpsService::new(dps_shared, tasks.clone());
        let dps = tonic::transport::Server::builder()
            .http2_keepalive_interval(Some(std::time::Duration::from_secs(5)))
            .http2_keepalive_timeout(Some(std::time::Duration::from_secs(10)))
            .add_service(strait_api::dps::dataplane_sync_server::DataplaneSyncServer::new(dps_service.clone()));
        let stop = shutdown.clone();
        // Sidecars ask for the framed transport by ALPN; gateways and other clients speak gRPC.
        let mut dps_port_tls = (*dps_tls).clone();
        dps_port_tls.alpn_protocols.push(strait_runtime::framed::ALPN.to_vec());
        let incoming = strait_cp_core::tls::incoming(dps_listener, Arc::new(dps_port_tls), &tasks, shutdown.clone());
        let incoming = crate::dps::framed::divert(incoming, dps_service);
        tasks.spawn(async move {
            if let Err(e) = dps.serve_with_incoming_shutdown(incoming, stop.cancelled()).await {
                tracing::error!(error = %e, "DPS server failed");
            }
        });
        let api = ZoneApi {
            resources,
            ready: ready_rx,
            registry: Arc::new(registry),
            zone: Arc::new(config.zone.clone()),
            inventory: inventory_tx,
            targets,
            leading: kubernetes.as_ref().map(|(_, leading, _)| leading.clone()),
        };
        // The intermediates and the zone identity, signed by the global over the sync stream.
        let signer = Arc::new(crate::certs::KdsSigner::default());
        let zone_certs = Arc::new(crate::certs::ZoneCerts::new(
            certs.clone(),
            signer.clone(),
            zone_store.clone(),
            config.zone.clone(),
            shutdown.clone(),
        ));
        zone_certs.reconcile().await?;
        let client = KdsClient {
            config: config.clone(),
            token,
            ca_pem,
            synced,
            ready: ready_tx,
            metrics,
            inventory: inventory_rx,
            signer,
            certs: zone_certs,
            inspectors,
            traffic,
            // A new leader syncs once its Dataplanes are the cluster's, so the global never
            // hears of a zone emptied by a handover.
            leading: kubernetes.map(|(.., followed)| followed),
            address: 0,
        };
        tasks.spawn(client.run(shutdown.clone()));
        // A registration storm leaves freed memory glibc keeps (see strait_runtime::memory).
        tasks.spawn(strait_runtime::memory::give_back_after_bursts(
            strait_runtime::memory::TrimPolicy::default(),
            TRIM_SAMPLE,
            shutdown.clone(),
            move |t| memory_metrics.trimmed(t),
        ));
        let router = rest::router(api, strait_cp_core::auth::shared(admin_token));
        tasks.spawn(strait_cp_core::rest::serve::serve(
            listener,
            router,
            shutdown.clone(),
            REST_DRAIN_DEADLINE,
            strait_cp_core::rest::serve::ServeOptions {
                header_read_timeout: config.api_header_read_timeout,
                tls: (!config.api_plaintext).then(|| dps_tls.clone()),
            },
        ));
        let mut injection_addr = None;
        if let (Some(image), crate::config::Environment::Kubernetes) = (&config.sidecar_image, config.environment) {
            let namespace = crate::k8s::own_namespace(config.namespace.as_deref());
            let injector = crate::k8s::injection::Injector {
                image: image.clone(),
                cp_address: config.sidecar_cp_address.clone().unwrap_or_else(|| format!("https://strait-zone.{namespace}.svc:7678")),
                cp_ca_pem: dps_identity.ca_pem.clone(),
            };
            let listener = tokio::net::TcpListener::bind(config.injection_address)
                .await
                .map_err(|e| anyhow::anyhow!("binding the injection webhook to {}: {e}", config.injection_address))?;
            injection_addr = Some(listener.local_addr()?);
            tracing::info!(address = ?injection_addr, image = %injector.image, cp = %injector.cp_address, "serving the sidecar injection webhook");
            let options = strait_cp_core::rest::serve::ServeOptions {
                header_read_timeout: config.api_header_read_timeout,
                tls: Some(dps_tls.clone()),
            };
            crate::k8s::serve_injection(listener, injector, options, shutdown.clone(), &tasks);
        }
        tracing::info!(zone = %config.zone, api = %api_addr, dps = %dps_addr, global = %config.global_address, "zone control plane started");
        stop_on_failure.disarm();
        Ok(ZoneCp { api_addr, dps_addr, injection_addr, dps_ca_pem: dps_identity.ca_pem, store: zone_store, shutdown, tasks })
    }

    /// The zone's store (for tests and tools).
    pub fn store(&self) -> &Arc<dyn Store> {
        &self.store
    }

    /// Asks everything to stop.
    pub fn shutdown(&self) {
        self.shutdown.cancel();
    }

    /// Waits until everything has stopped.
    pub async fn wait(self) {
        self.tasks.close();
        self.tasks.wait().await;
    }
}

/// What the leading replica keeps in step with the cluster.
struct Cluster {
    client: kube::Client,
    /// The zone's own namespace (where the copies of the global's policies go).
    namespace: String,
    zone: String,
    resources: Resources,
    /// Publishes the zone's inventory after the controller's changes.
    inventory: crate::inventory::Publisher,
    /// The injection webhook's configuration (its name) and the CA it must trust.
    webhook: Option<(String, String)>,
}

/// Runs the Kubernetes controller while this replica leads: the zone's Dataplanes follow the
/// cluster's Pods and Services, and the inventory the global sees follows them. The returned
/// watch is true while this replica leads and its controller has made a complete pass.
fn follow_cluster(
    cluster: Cluster,
    mut leading: watch::Receiver<bool>,
    shutdown: &CancellationToken,
    tasks: &TaskTracker,
) -> watch::Receiver<bool> {
    let Cluster { client, namespace, zone, resources, inventory, webhook } = cluster;
    let (followed_tx, followed) = watch::channel(false);
    let followed_tx = Arc::new(followed_tx);
    let changed = Arc::new(tokio::sync::Notify::new());
    let (refresh_changed, stop) = (changed.clone(), shutdown.clone());
    tasks.spawn(async move {
        loop {
            tokio::select! {
                () = stop.cancelled() => return,
                () = refresh_changed.notified() => crate::inventory::refresh(&inventory).await,
            }
        }
    });
    let shutdown = shutdown.clone();
    tasks.spawn(async move {
        loop {
            tokio::select! {
                () = shutdown.cancelled() => return,
                led = leading.wait_for(|leads| *leads) => if led.is_err() { return },
            }
            let term = shutdown.child_token();
            let on_change = {
                let (changed, followed_tx) = (changed.clone(), followed_tx.clone());
                move || {
                    changed.notify_one();
                    followed_tx.send_if_modified(|followed| !std::mem::replace(followed, true));
                }
            };
            let controller =
                tokio::spawn(crate::k8s::controller::run(client.clone(), zone.clone(), resources.clone(), on_change, term.clone()));
            if let Some((name, ca_pem)) = webhook.clone() {
                tokio::spawn(keep_ca_bundle(client.clone(), name, ca_pem, term.clone()));
            }
            tokio::spawn(crate::k8s::mirror::run(client.clone(), namespace.clone(), resources.clone(), term.clone()));
            tokio::select! {
                () = shutdown.cancelled() => {}
                _ = leading.wait_for(|leads| !*leads) => tracing::info!("stopped leading: the controller stops"),
            }
            followed_tx.send_replace(false);
            term.cancel();
            let _ = controller.await;
        }
    });
    followed
}

/// Keeps the injection webhook's caBundle the zone's DPS CA while `term` lasts: at once, then
/// every few minutes (a `helm upgrade` may write another), retrying sooner after a failure.
async fn keep_ca_bundle(client: kube::Client, name: String, ca_pem: String, term: CancellationToken) {
    loop {
        let wait = match crate::k8s::injection::keep_ca_bundle(&client, &name, &ca_pem).await {
            Ok(_) => std::time::Duration::from_secs(300),
            Err(error) => {
                tracing::warn!(webhook = %name, %error, "cannot check the injection webhook's caBundle; retrying");
                std::time::Duration::from_secs(10)
            }
        };
        tokio::select! {
            () = term.cancelled() => return,
            () = tokio::time::sleep(wait) => {}
        }
    }
}

/// The DPS CA given by --dps-ca-cert-file and --dps-ca-key-file, if any.
fn provided_ca(config: &Config) -> anyhow::Result<Option<(String, String)>> {
    let (Some(cert), Some(key)) = (&config.dps_ca_cert_file, &config.dps_ca_key_file) else { return Ok(None) };
    let read = |flag: &str, path: &std::path::Path| {
        std::fs::read_to_string(path).map_err(|e| anyhow::anyhow!("reading {flag} {}: {e}", path.display()))
    };
    Ok(Some((read("--dps-ca-cert-file", cert)?, read("--dps-ca-key-file", key)?)))
}
