//! Helpers shared by the store's integration tests.
#![allow(dead_code)]

use std::time::Duration;

use futures::StreamExt;
use strait_store::{Event, Key, SledOptions, SledStore, WatchStream};
use tempfile::TempDir;

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
