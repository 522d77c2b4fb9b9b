//! Helpers shared by the store's integration tests.
#![allow(dead_code)]

pub use strait_pg_harness as postgres;

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use strait_store::{Event, Key, PgOptions, PgStore, SledOptions, SledStore, Store, WatchStream};
use tempfile::TempDir;

/// Which backend a contract test runs on.
#[derive(Clone, Copy, Debug)]
pub enum Backend {
    Sled,
    Postgres,
}

/// A store of one backend for one test, with what keeps it alive (its directory or server).
pub struct TestStore {
    pub store: Arc<dyn Store>,
    pub backend: Backend,
    /// A second handle on the same data, as a second replica would open it (PostgreSQL), or
    /// `None` (sled: one process owns its directory).
    pub url: Option<String>,
    _dir: Option<TempDir>,
    _server: Option<postgres::Server>,
}

impl std::ops::Deref for TestStore {
    type Target = dyn Store;
    fn deref(&self) -> &(dyn Store + 'static) {
        &*self.store
    }
}

impl Backend {
    /// A fresh, empty store with the default retention.
    pub async fn open(self) -> TestStore {
        self.open_with(100_000).await
    }

    /// A fresh, empty store keeping `event_retention` events.
    pub async fn open_with(self, event_retention: u64) -> TestStore {
        match self {
            Backend::Sled => {
                let (dir, store) = temp_store_with(SledOptions { event_retention, ..SledOptions::default() });
                TestStore { store: Arc::new(store), backend: self, url: None, _dir: Some(dir), _server: None }
            }
            Backend::Postgres => {
                let server = postgres::start().expect("postgres_available() said yes");
                let url = server.url();
                let store = open_pg(&url, event_retention).await;
                TestStore { store: Arc::new(store), backend: self, url: Some(url), _dir: None, _server: Some(server) }
            }
        }
    }
}

/// Opens a [`PgStore`] on `url`, retrying while the server finishes starting.
pub async fn open_pg(url: &str, event_retention: u64) -> PgStore {
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        match PgStore::open(url, PgOptions { event_retention, ..PgOptions::default() }).await {
            Ok(store) => return store,
            Err(err) if std::time::Instant::now() < deadline => {
                let _ = err;
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(err) => panic!("opening the PostgreSQL store: {err}"),
        }
    }
}

/// Whether a PostgreSQL server can run here (says why not when it cannot).
pub fn postgres_available() -> bool {
    postgres::available()
}

/// Runs each named contract test (`async fn name(backend: Backend)`) on sled and on
/// PostgreSQL, as `sled::name` and `postgres::name`.
#[macro_export]
macro_rules! contract_tests {
    ($($name:ident),* $(,)?) => {
        mod sled {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::$name($crate::common::Backend::Sled).await
                }
            )*
        }
        mod postgres {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    if $crate::common::postgres_available() {
                        super::$name($crate::common::Backend::Postgres).await
                    }
                }
            )*
        }
    };
}

/// A store in a fresh temporary directory; keep the `TempDir` alive as long as the store.
pub fn temp_store() -> (TempDir, SledStore) {
    temp_store_with(SledOptions::default())
}

pub fn temp_store_with(options: SledOptions) -> (TempDir, SledStore) {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = SledStore::open_with(&dir.path().join("store"), options).expect("open store");
    (dir, store)
}

pub fn key(kind: &str, mesh: &str, name: &str) -> Key {
    Key::new(kind, mesh, name)
}

/// The next event, failing the test if none comes within 10 s or the stream errors or ends.
pub async fn next_event(stream: &mut WatchStream) -> Event {
    match tokio::time::timeout(Duration::from_secs(10), stream.next()).await {
        Ok(Some(Ok(event))) => event,
        Ok(Some(Err(err))) => panic!("watch failed: {err}"),
        Ok(None) => panic!("watch ended"),
        Err(_) => panic!("no event within 10s"),
    }
}

/// The next `n` events.
pub async fn next_events(stream: &mut WatchStream, n: usize) -> Vec<Event> {
    let mut events = Vec::with_capacity(n);
    for _ in 0..n {
        events.push(next_event(stream).await);
    }
    events
}

/// Asserts nothing more arrives within a short grace period.
pub async fn assert_quiet(stream: &mut WatchStream) {
    if let Ok(item) = tokio::time::timeout(Duration::from_millis(200), stream.next()).await {
        panic!("unexpected watch item: {item:?}");
    }
}

pub fn revisions(events: &[Event]) -> Vec<u64> {
    events.iter().map(|e| e.revision).collect()
}
