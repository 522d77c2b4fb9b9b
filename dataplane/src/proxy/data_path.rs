//! What every listener and connection of the data path shares, built once the first
//! certificate and configuration are in.
//!
//! In: the state from the zone, the first TLS identity, the first destination table, the
//! metrics, the drain and the task tracker. Out: [`DataPath`], held in an `Arc` by every
//! accept loop and connection task; its identity and table are swapped whole, so a
//! connection or request reads them without a lock.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use strait_proxy_core::drain::DrainWatcher;
use strait_proxy_core::identity::IdentityStore;
use tokio::net::{TcpListener, TcpStream};
use tokio_util::task::TaskTracker;

use super::destinations::Table;
use super::metrics::ProxyMetrics;
use crate::dps_client::ProxyState;

/// What every listener and connection of the data path shares.
pub struct DataPath {
    /// Configuration and workload certificate from the zone.
    pub state: Arc<ProxyState>,
    /// The TLS identity new connections use.
    pub identities: Arc<IdentityStore>,
    /// Destinations by service and endpoint address, swapped whole on configuration changes.
    pub table: ArcSwap<Table>,
    /// Every metric.
    pub metrics: ProxyMetrics,
    /// Held by every task of the data path: the drain waits for them.
    pub drain: DrainWatcher,
    /// Owns every task of the data path.
    pub tasks: TaskTracker,
}

impl DataPath {
    /// The next connection on `listener`, or `None` once the drain starts. A failed accept
    /// (out of descriptors and the like) is logged and retried after a pause, never in a loop.
    pub async fn accept(&self, listener: &TcpListener) -> Option<(TcpStream, SocketAddr)> {
        loop {
            let accepted = tokio::select! {
                () = self.drain.signaled() => return None,
                a = listener.accept() => a,
            };
            match accepted {
                Ok(a) => return Some(a),
                Err(error) => {
                    tracing::warn!(%error, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        }
    }
}
