//! Wiring of `strait-global`: config → store → admin token → REST server, and a handle that
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

use crate::config::Config;
use crate::metrics::Metrics;
use crate::resources::Resources;
use crate::rest::{self, AppState};

/// Why the control plane could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// No data directory could be chosen.
    #[error("no data directory: set --data-dir")]
    NoDataDir,
    /// The store did not open.
    #[error("opening the store in {dir}: {source}")]
    Store {
        /// Where.
        dir: PathBuf,
        /// Why.
        source: strait_store::StoreError,
    },
    /// The admin token could not be read or created.
    #[error(transparent)]
    Token(#[from] crate::auth::TokenError),
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
    /// The admin token file.
    pub token_file: PathBuf,
    shutdown: CancellationToken,
    server: JoinHandle<()>,
    store: Arc<dyn Store>,
}

impl GlobalCp {
    /// Opens the store, loads the token, binds and starts serving.
    pub async fn start(config: Arc<Config>) -> Result<GlobalCp, StartError> {
        let data_dir = config.resolved_data_dir().ok_or(StartError::NoDataDir)?;
        let token_file = config.resolved_token_file().ok_or(StartError::NoDataDir)?;
        let store_dir = data_dir.join("store");
        let opened = {
            let dir = store_dir.clone();
            tokio::task::spawn_blocking(move || SledStore::open(&dir)).await
        };
        let store: Arc<dyn Store> = match opened {
            Ok(Ok(s)) => Arc::new(s),
            Ok(Err(source)) => return Err(StartError::Store { dir: store_dir, source }),
            Err(join) => return Err(StartError::Store { dir: store_dir, source: strait_store::StoreError::Backend(join.to_string()) }),
        };
        let (token, created) = crate::auth::load_or_create(&token_file)?;
        if created {
            tracing::info!(path = %token_file.display(), "generated a new admin token; pass it to straitctl with --token-file or STRAIT_TOKEN");
        } else {
            tracing::info!(path = %token_file.display(), "using the admin token from file");
        }

        let mut registry = Registry::default();
        let metrics = Arc::new(Metrics::register(&mut registry));
        let state = AppState {
            resources: Resources::new(store.clone()),
            metrics,
            registry: Arc::new(registry),
            max_body_bytes: config.max_body_bytes,
        };
        let router = rest::router(state, Arc::new(token));

        let listener = tokio::net::TcpListener::bind(config.api_address)
            .await
            .map_err(|source| StartError::Bind { addr: config.api_address, source })?;
        let api_addr = listener.local_addr().map_err(|source| StartError::Bind { addr: config.api_address, source })?;
        tracing::info!(address = %api_addr, data_dir = %data_dir.display(), revision = store.revision(), "REST API listening");

        let shutdown = CancellationToken::new();
        let server = tokio::spawn(serve(listener, router, shutdown.clone(), config.shutdown_timeout));
        Ok(GlobalCp { api_addr, token_file, shutdown, server, store })
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
        drop(self.store);
    }
}

/// Serves until cancelled, then drains in-flight requests for up to `deadline` before cutting them.
async fn serve(listener: tokio::net::TcpListener, router: axum::Router, shutdown: CancellationToken, deadline: std::time::Duration) {
    let stop = shutdown.clone();
    let graceful = axum::serve(listener, router).with_graceful_shutdown(async move { stop.cancelled().await });
    let mut task = tokio::spawn(async move { graceful.await });
    tokio::select! {
        result = &mut task => {
            if let Ok(Err(e)) = result {
                tracing::error!(error = %e, "REST server stopped with an error");
            }
            return;
        }
        () = shutdown.cancelled() => {}
    }
    tracing::info!(deadline = ?deadline, "shutting down: no new connections, draining requests in flight");
    match tokio::time::timeout(deadline, &mut task).await {
        Ok(_) => tracing::info!("drained"),
        Err(_) => {
            tracing::warn!("drain deadline passed; closing remaining connections");
            task.abort();
        }
    }
}
