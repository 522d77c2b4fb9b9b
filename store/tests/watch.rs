//! Watch streams through the public `Store` API, on every backend (`sled::*`, `postgres::*`),
//! and what only one backend has.

mod common;

use std::collections::HashSet;

use common::{assert_quiet, key, next_event, next_events, revisions, Backend};
use futures::StreamExt;
use serde_json::json;
use strait_store::{EventKind, Op, Precondition, SledOptions, SledStore, Store, StoreError};

contract_tests!(
    watch_from_zero_sees_history_then_live_events,
    watch_from_the_middle_starts_after_that_revision,
    unchanged_writes_produce_no_events,
    watch_of_a_compacted_revision_fails,
    watch_from_zero_is_fine_while_the_log_was_never_trimmed,
    the_stream_ends_when_the_store_is_dropped,
    concurrent_writers_while_watching_see_every_revision_once_in_order,
);

async fn put_n(store: &dyn Store, names: impl IntoIterator<Item = u64>) {
    for n in names {
        store.put(key("K", "m", &format!("o{n}")), json!(n), Precondition::None).await.unwrap();
    }
}

async fn watch_from_zero_sees_history_then_live_events(backend: Backend) {
    let store = backend.open().await;
    put_n(&*store, 1..=3).await;
    let mut watch = store.watch(0).await.unwrap();
    let history = next_events(&mut watch, 3).await;
    assert_eq!(revisions(&history), [1, 2, 3]);
    assert_eq!(history[2].object, store.get(&key("K", "m", "o3")).await.unwrap().unwrap());
    assert!(history.iter().all(|e| e.kind == EventKind::Put));

    let deleted = store.delete(key("K", "m", "o1"), Precondition::None).await.unwrap().into_object();
    put_n(&*store, [4]).await;
    let live = next_events(&mut watch, 2).await;
    assert_eq!(revisions(&live), [4, 5]);
    assert_eq!((live[0].kind, &live[0].object), (EventKind::Delete, &deleted), "a delete carries the object as it was");
    assert_eq!((live[1].kind, live[1].object.version), (EventKind::Put, 5));
    assert_quiet(&mut watch).await;
}

async fn watch_from_the_middle_starts_after_that_revision(backend: Backend) {
    let store = backend.open().await;
    put_n(&*store, 1..=5).await;
    let mut watch = store.watch(3).await.unwrap();
    assert_eq!(revisions(&next_events(&mut watch, 2).await), [4, 5]);
    put_n(&*store, [6]).await;
    assert_eq!(next_event(&mut watch).await.revision, 6);
    assert_quiet(&mut watch).await;

    let mut current = store.watch(store.revision()).await.unwrap();
    assert_quiet(&mut current).await;
    put_n(&*store, [7]).await;
    assert_eq!(next_event(&mut current).await.revision, 7);
}

async fn unchanged_writes_produce_no_events(backend: Backend) {
    let store = backend.open().await;
    let mut watch = store.watch(0).await.unwrap();
    put_n(&*store, [1]).await;
    put_n(&*store, [1]).await; // same data
    store
        .apply(vec![Op::put(key("K", "m", "o1"), json!(1), Precondition::None), Op::put(key("K", "m", "o2"), json!(2), Precondition::None)])
        .await
        .unwrap();
    assert_eq!(revisions(&next_events(&mut watch, 2).await), [1, 2]);
    assert_quiet(&mut watch).await;
}

async fn watch_of_a_compacted_revision_fails(backend: Backend) {
    let store = backend.open_with(3).await;
    put_n(&*store, 1..=10).await;
    for from in [0, 6] {
        match store.watch(from).await {
            Err(StoreError::Compacted { requested, oldest }) => {
                assert_eq!((requested, oldest), (from, 8))
            }
            Err(err) => panic!("expected Compacted, got {err}"),
            Ok(_) => panic!("watch from {from} should be compacted"),
        }
    }
    let mut watch = store.watch(7).await.unwrap();
    assert_eq!(revisions(&next_events(&mut watch, 3).await), [8, 9, 10]);
}

async fn watch_from_zero_is_fine_while_the_log_was_never_trimmed(backend: Backend) {
    let store = backend.open_with(5).await;
    put_n(&*store, 1..=5).await;
    let mut watch = store.watch(0).await.unwrap();
    assert_eq!(revisions(&next_events(&mut watch, 5).await), [1, 2, 3, 4, 5]);
}

#[tokio::test]
async fn reopening_with_a_smaller_retention_trims_the_log() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("store");
    put_n(&SledStore::open(&path).unwrap(), 1..=10).await;
    let store = SledStore::open_with(&path, SledOptions { event_retention: 2, ..SledOptions::default() }).unwrap();
    assert!(matches!(store.watch(0).await, Err(StoreError::Compacted { requested: 0, oldest: 9 })));
    let mut watch = store.watch(8).await.unwrap();
    assert_eq!(revisions(&next_events(&mut watch, 2).await), [9, 10]);
}

async fn the_stream_ends_when_the_store_is_dropped(backend: Backend) {
    let store = backend.open().await;
    put_n(&*store, [1]).await;
    let mut watch = store.watch(0).await.unwrap();
    drop(store);
    assert_eq!(next_event(&mut watch).await.revision, 1, "history already committed is still delivered");
    let end = tokio::time::timeout(std::time::Duration::from_secs(10), watch.next()).await.unwrap();
    assert!(end.is_none());
}

async fn concurrent_writers_while_watching_see_every_revision_once_in_order(backend: Backend) {
    const WRITERS: u64 = 4;
    const BATCHES: u64 = 40;
    // Every batch changes two objects, so it makes two events.
    const TOTAL: u64 = WRITERS * BATCHES * 2;
    let test_store = backend.open().await;
    let store = test_store.store.clone();
    let early = store.watch(0).await.unwrap();

    // On PostgreSQL, half the writers use a second handle on the database, as a second
    // replica would.
    let second: Option<std::sync::Arc<dyn Store>> = match &test_store.url {
        Some(url) => Some(std::sync::Arc::new(common::open_pg(url, 100_000).await)),
        None => None,
    };
    let mut writers = tokio::task::JoinSet::new();
    for w in 0..WRITERS {
        let store = match &second {
            Some(second) if w % 2 == 1 => second.clone(),
            _ => store.clone(),
        };
        writers.spawn(async move {
            for b in 0..BATCHES {
                let ops = vec![
                    Op::put(key("K", "m", &format!("w{w}-{b}")), json!(b), Precondition::MustNotExist),
                    Op::put(key("K", "m", &format!("w{w}")), json!(b), Precondition::None),
                ];
                store.apply(ops).await.unwrap();
            }
        });
    }
    // A watcher that joins mid-way stitches history and live events under concurrent writes.
    let mut late_from = 0;
    while late_from == 0 {
        tokio::task::yield_now().await;
        late_from = store.revision();
    }
    let late = store.watch(late_from).await.unwrap();

    let collect = |mut watch: strait_store::WatchStream, count: u64| async move {
        let mut seen = Vec::new();
        for _ in 0..count {
            seen.push(next_event(&mut watch).await.revision);
        }
        assert_quiet(&mut watch).await;
        seen
    };
    let (early_seen, late_seen) = tokio::join!(collect(early, TOTAL), collect(late, TOTAL - late_from));
    while let Some(result) = writers.join_next().await {
        result.unwrap();
    }
    assert_eq!(early_seen, (1..=TOTAL).collect::<Vec<_>>());
    assert_eq!(late_seen, (late_from + 1..=TOTAL).collect::<Vec<_>>());
    assert_eq!(early_seen.iter().collect::<HashSet<_>>().len() as u64, TOTAL);
    assert_eq!(store.revision(), TOTAL);
    if let Some(second) = second {
        let replica = second.watch(0).await.unwrap();
        assert_eq!(collect(replica, TOTAL).await, (1..=TOTAL).collect::<Vec<_>>(), "the other handle's watch sees every write");
    }
}
