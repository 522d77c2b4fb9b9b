//! Wiring of `strait-global`: config → store → secrets and admin token → REST server and zone sync (KDS) server, and a handle that
//! holds the bound addresses and shuts everything down.
//!
//! In: a validated [`Config`]. Out: a running [`GlobalCp`]; tests start it in-process on port 0
//! and read `api_addr` back, the binary does the same and waits on it.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use prometheus_client::registry::Registry;
use strait_store::{SledStore, Store};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use strait_api::kds::zone_sync_server::ZoneSyncServer;
use tokio_util::task::TaskTracker;
use tonic::codec::CompressionEncoding;

use crate::config::Config;
use crate::kds::registry::Registry as ZoneRegistry;
use crate::kds::{KdsMetrics, KdsService, KdsSettings, KdsShared};
use crate::metrics::Metrics;
use crate::rest::{self, AppState};
use crate::secrets::Secrets;
use crate::zones::Zones;
use strait_cp_core::resources::Resources;
use strait_pki::RotationPolicy;
use strait_runtime::certs::CertManager;

/// Why the control plane could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// No data directory could be chosen.
    #[error("no data directory: set --data-dir")]
    NoDataDir,
    /// The data directory could not be created or made private.
    #[error("data directory {dir}: {source}")]
    DataDir {
        /// Where.
        dir: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The store did not open.
    #[error("opening the store ({dir}): {source}")]
    Store {
        /// Where: its directory, or its URL without the password.
        dir: PathBuf,
        /// Why.
        source: strait_store::StoreError,
    },
    /// The admin token could not be read or created.
    #[error(transparent)]
    Token(#[from] crate::admin_token::AdminTokenError),
    /// The global's secrets could not be loaded or created.
    #[error(transparent)]
    Secrets(#[from] crate::secrets::SecretError),
    /// The sync endpoint's TLS identity is unusable.
    #[error("sync endpoint TLS: {0}")]
    Tls(String),
    /// The REST API's TLS could not be set up.
    #[error("REST API TLS: {0}")]
    ApiTls(String),
    /// The API address could not be bound.
    #[error("binding the REST API to {addr}: {source}")]
    Bind {
        /// Where.
        addr: SocketAddr,
        /// Why.
        source: std::io::Error,
    },
}

/// A running global control plane.
pub struct GlobalCp {
    /// Where the REST API listens.
    pub api_addr: SocketAddr,
    /// Where zone sync (KDS) listens.
    pub kds_addr: SocketAddr,
    /// The system CA certificate zones verify the sync endpoint with.
    pub ca_bundle: String,
    /// The admin token file.
    pub token_file: PathBuf,
    /// The CA that verifies the REST API's certificate (`api-ca.pem` next to the admin token),
    /// when the API serves HTTPS with a certificate of the system CA.
    pub api_ca_file: Option<PathBuf>,
    /// Whether the REST API serves HTTPS.
    pub api_tls: bool,
    shutdown: CancellationToken,
    server: JoinHandle<strait_cp_core::rest::serve::Served>,
    tasks: TaskTracker,
    store: Arc<dyn Store>,
}

/// The global's store: sled in `<data_dir>/store`, or the PostgreSQL database `url` names;
/// private keys stay out of the event log either way.
async fn open_store(url: &str, data_dir: &std::path::Path) -> Result<(Arc<dyn Store>, PathBuf), StartError> {
    let sled = strait_cp_core::kinds::store_options();
    if url != "sled" {
        let location = PathBuf::from(strait_store::redact_url(url));
        let options = strait_store::PgOptions { unlogged_kinds: sled.unlogged_kinds, ..Default::default() };
        return match strait_store::PgStore::open(url, options).await {
            Ok(store) => Ok((Arc::new(store), location)),
            Err(source) => Err(StartError::Store { dir: location, source }),
        };
    }
    let dir = data_dir.join("store");
    let opened = {
        let dir = dir.clone();
        tokio::task::spawn_blocking(move || SledStore::open_with(&dir, sled)).await
    };
    match opened {
        Ok(Ok(s)) => Ok((Arc::new(s), dir)),
        Ok(Err(source)) => Err(StartError::Store { dir, source }),
        Err(join) => Err(StartError::Store { dir, source: strait_store::StoreError::Backend(join.to_string()) }),
    }
}

impl GlobalCp {
    /// Opens the store, loads the token, binds and starts serving.
    pub async fn start(config: Arc<Config>) -> Result<GlobalCp, StartError> {
        let data_dir = config.resolved_data_dir().ok_or(StartError::NoDataDir)?;
        let token_file = config.resolved_token_file().ok_or(StartError::NoDataDir)?;
        // It holds every mesh's root key and the token-signing keys: the owner's only.
        strait_runtime::files::private_dir(&data_dir).map_err(|source| StartError::DataDir { dir: data_dir.clone(), source })?;
        let (store, store_dir) = open_store(&config.store, &data_dir).await?;
        let (token, origin) = crate::admin_token::establish(store.as_ref(), &token_file, config.admin_token_file.is_some()).await?;
        match origin {
            crate::admin_token::Origin::Generated => {
                tracing::info!(path = %token_file.display(), "generated a new admin token; pass it to straitctl with --token-file or STRAIT_TOKEN")
            }
            crate::admin_token::Origin::FromFile => tracing::info!(path = %token_file.display(), "using the admin token from file"),
            crate::admin_token::Origin::Shared => {
                tracing::info!(path = %token_file.display(), "using the admin token shared by the replicas (copied to the file)")
            }
        }
        let token = strait_cp_core::auth::shared(token);

        let secrets = Secrets::load(store.as_ref()).await?;
        crate::zone_identity::publish_trust(store.as_ref(), &secrets.system_ca_pem).await.map_err(crate::secrets::SecretError::from)?;
        let mut registry = Registry::default();
        let metrics = Arc::new(Metrics::register(&mut registry));
        let kds_metrics = KdsMetrics::register(&mut registry);
        let pending = crate::kds::Pending::default();
        registry.register_collector(Box::new(pending.clone()));
        let resources = Resources::with_mesh_lifecycle(store.clone(), Arc::new(crate::meshes::GlobalMeshes));
        let kds_listener = bind(config.kds_address).await?;
        let kds_addr = local(&kds_listener, config.kds_address)?;
        let api_listener = bind(config.api_address).await?;
        let api_addr = local(&api_listener, config.api_address)?;
        let zone_registry = ZoneRegistry::default();
        let board = crate::kds::board::StatusBoard::new(store.clone(), zone_registry.clone(), config.api_url_for_peers(api_addr));
        let zones = Zones::new(resources.clone(), zone_registry.clone(), board.clone(), &secrets);
        // Zones disabled by an earlier version (or while the trust bundle was written
        // elsewhere) are cut off too.
        for zone in resources
            .list(strait_api::ResourceType::Zone, None)
            .await
            .map_err(|e| StartError::Store { dir: store_dir.clone(), source: strait_store::StoreError::Backend(e.to_string()) })?
        {
            if let strait_api::Spec::Zone(spec) = &zone.spec {
                zones
                    .apply_enabled(&zone.name, spec.enabled)
                    .await
                    .map_err(|e| StartError::Store { dir: store_dir.clone(), source: strait_store::StoreError::Backend(e.to_string()) })?;
            }
        }

        let inspections = crate::inspect::Inspections::default();
        let traffic = crate::traffic::TrafficMap::default();
        let peers = crate::peers::Peers::new(peer_ca(&config, &secrets)?.as_deref(), board.replica()).map_err(StartError::ApiTls)?;
        let state = AppState {
            peers,
            inspections: inspections.clone(),
            traffic: traffic.clone(),
            resources: resources.clone(),
            zones: zones.clone(),
            metrics,
            registry: Arc::new(registry),
            max_body_bytes: config.max_body_bytes,
            kds_port: kds_addr.port(),
            api_scheme: if config.api_plaintext { "http" } else { "https" },
            zone_token_validity: config.zone_token_validity,
            dataplane_tokens: crate::dataplane_tokens::DataplaneTokens::new(resources.clone(), secrets.dataplane_token_signer.clone()),
        };
        let router = rest::router(state, token.clone());

        let shutdown = CancellationToken::new();
        // A start that fails from here on stops what it already spawned.
        let stop_on_failure = shutdown.clone().drop_guard();
        let tasks = TaskTracker::new();
        let shared = KdsShared {
            resources,
            registry: zone_registry.clone(),
            board: board.clone(),
            settings: Arc::new(KdsSettings {
                heartbeat_interval: config.kds_heartbeat_interval,
                idle_timeout: config.kds_idle_timeout,
                zone_ca_lifetime: config.zone_ca_lifetime,
                ..Default::default()
            }),
            metrics: kds_metrics,
            global_id: Arc::new(secrets.global_id.clone()),
            pending,
            system_ca: secrets.system_ca.clone(),
            inspections: inspections.clone(),
            traffic: traffic.clone(),
        };
        // One certificate manager for the process: it keeps the sync endpoint's certificate current.
        let certs = CertManager::new(RotationPolicy::default(), shutdown.clone(), tasks.clone());
        let kds_cert = certs
            .manage_now(secrets.kds_server_issuer(&config.kds_tls_names, config.kds_certificate_lifetime))
            .await
            .map_err(StartError::Tls)?;
        let tls = strait_cp_core::tls::server_config(kds_cert, &tasks, shutdown.clone()).map_err(|e| StartError::Tls(e.to_string()))?;
        let (api_tls, api_ca_file) = api_tls(&config, &secrets, &certs, &token_file, &tasks, &shutdown).await?;
        let service = KdsService::new(shared.clone(), Arc::new(zones), tasks.clone());
        let kds = tonic::transport::Server::builder().http2_keepalive_interval(Some(config.kds_heartbeat_interval)).add_service(
            ZoneSyncServer::new(service)
                .send_compressed(CompressionEncoding::Gzip)
                .accept_compressed(CompressionEncoding::Gzip)
                .max_decoding_message_size(16 * 1024 * 1024),
        );
        let stop = shutdown.clone();
        let incoming = strait_cp_core::tls::incoming(kds_listener, tls, &tasks, shutdown.clone());
        tasks.spawn(async move {
            if let Err(e) = kds.serve_with_incoming_shutdown(incoming, stop.cancelled()).await {
                tracing::error!(error = %e, "zone sync server failed");
            }
        });
        {
            let (stop, registry) = (shutdown.clone(), zone_registry.clone());
            tasks.spawn(async move {
                stop.cancelled().await;
                registry.kick_all();
            });
        }
        {
            let copy = config.admin_token_file.is_none().then(|| token_file.clone());
            tasks.spawn(crate::admin_token::follow(store.clone(), token, copy, shutdown.clone()));
        }
        tasks.spawn(board.run(shutdown.clone()));
        tasks.spawn(crate::kds::session::expire_inventories(shared, config.zone_grace_period, shutdown.clone()));
        tracing::info!(api = %api_addr, kds = %kds_addr, data_dir = %data_dir.display(), revision = store.revision(), "listening");

        let server = tokio::spawn(strait_cp_core::rest::serve::serve(
            api_listener,
            router,
            shutdown.clone(),
            config.shutdown_timeout,
            strait_cp_core::rest::serve::ServeOptions { header_read_timeout: config.api_header_read_timeout, tls: api_tls.clone() },
        ));
        stop_on_failure.disarm();
        Ok(GlobalCp {
            api_addr,
            kds_addr,
            ca_bundle: secrets.system_ca_pem.clone(),
            token_file,
            api_ca_file,
            api_tls: api_tls.is_some(),
            shutdown,
            server,
            tasks,
            store,
        })
    }

    /// The store (for tests and tools that load data in bulk).
    pub fn store(&self) -> &Arc<dyn Store> {
        &self.store
    }

    /// Asks the server to stop; [`GlobalCp::wait`] returns once it has drained.
    pub fn shutdown(&self) {
        self.shutdown.cancel();
    }

    /// Waits until the server has stopped.
    pub async fn wait(self) {
        if let Err(e) = self.server.await {
            tracing::error!(error = %e, "REST server task failed");
        }
        self.tasks.close();
        self.tasks.wait().await;
        drop(self.store);
    }
}

async fn bind(addr: SocketAddr) -> Result<tokio::net::TcpListener, StartError> {
    tokio::net::TcpListener::bind(addr).await.map_err(|source| StartError::Bind { addr, source })
}

fn local(listener: &tokio::net::TcpListener, addr: SocketAddr) -> Result<SocketAddr, StartError> {
    listener.local_addr().map_err(|source| StartError::Bind { addr, source })
}

/// The CA certificates that verify the other replicas' REST APIs (`None`: plain HTTP): the
/// system CA, plus the chain of `--api-tls-cert-file` (the replicas are configured alike).
fn peer_ca(config: &Config, secrets: &crate::secrets::Secrets) -> Result<Option<Vec<u8>>, StartError> {
    if config.api_plaintext {
        return Ok(None);
    }
    let mut pem = secrets.system_ca_pem.clone().into_bytes();
    if let Some(cert) = &config.api_tls_cert_file {
        let chain = std::fs::read(cert).map_err(|e| StartError::ApiTls(format!("--api-tls-cert-file {}: {e}", cert.display())))?;
        // Its issuers verify the other replicas' certificates (the leaf among them is inert).
        pem.push(b'\n');
        pem.extend_from_slice(&chain);
    }
    Ok(Some(pem))
}

/// The REST API's TLS: none with --api-plaintext; the operator's certificate when given; else a
/// certificate of the system CA that renews itself, with the CA written to `api-ca.pem` next to
/// the admin token for straitctl and curl to verify it.
async fn api_tls(
    config: &Config,
    secrets: &crate::secrets::Secrets,
    certs: &CertManager,
    token_file: &std::path::Path,
    tasks: &TaskTracker,
    shutdown: &CancellationToken,
) -> Result<(Option<Arc<rustls::ServerConfig>>, Option<PathBuf>), StartError> {
    if config.api_plaintext {
        tracing::warn!(address = %config.api_address, "the REST API serves plain HTTP (--api-plaintext): tokens cross the network in the clear");
        return Ok((None, None));
    }
    if let (Some(cert), Some(key)) = (&config.api_tls_cert_file, &config.api_tls_key_file) {
        let read = |flag: &str, path: &PathBuf| {
            std::fs::read_to_string(path).map_err(|e| StartError::ApiTls(format!("{flag} {}: {e}", path.display())))
        };
        let tls = strait_cp_core::tls::fixed_server_config(&read("--api-tls-cert-file", cert)?, &read("--api-tls-key-file", key)?)
            .map_err(|e| StartError::ApiTls(format!("--api-tls-cert-file {}: {e}", cert.display())))?;
        tracing::info!(cert = %cert.display(), "the REST API serves HTTPS with the operator's certificate");
        return Ok((Some(tls), None));
    }
    let issuer = strait_cp_core::tls::LocalServerIssuer {
        name: "REST API server",
        ca: secrets.system_ca.clone(),
        dns_names: config.api_tls_names(),
        lifetime: config.kds_certificate_lifetime,
    };
    let current = certs.manage_now(issuer).await.map_err(StartError::ApiTls)?;
    let tls = strait_cp_core::tls::server_config(current, tasks, shutdown.clone()).map_err(|e| StartError::ApiTls(e.to_string()))?;
    let ca_file = token_file.parent().unwrap_or(std::path::Path::new(".")).join("api-ca.pem");
    std::fs::write(&ca_file, &secrets.system_ca_pem).map_err(|e| StartError::ApiTls(format!("writing {}: {e}", ca_file.display())))?;
    tracing::info!(ca_file = %ca_file.display(), names = ?config.api_tls_names(), "the REST API serves HTTPS; clients verify it with the CA in ca_file");
    Ok((Some(tls), Some(ca_file)))
}
