//! What only the PostgreSQL backend has: several processes (replicas) on one database, schema
//! migrations, and watches that survive a lost notification. The contract every backend meets
//! is in `crud.rs` and `watch.rs` (`postgres::*`).

mod common;

use std::time::Duration;

use common::{key, next_event, open_pg, postgres};
use serde_json::json;
use strait_store::{PgOptions, PgStore, Precondition, Store, StoreError};

fn server() -> Option<postgres::Server> {
    postgres::available().then(|| postgres::start().expect("a server"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_opening_together_migrate_once_and_a_newer_schema_is_refused() {
    let Some(server) = server() else { return };
    let url = server.url();
    // The first open waits for the server; then four "replicas" open at once.
    drop(open_pg(&url, 100).await);
    let opened = futures::future::join_all((0..4).map(|_| PgStore::open(&url, PgOptions::default()))).await;
    for result in &opened {
        assert!(result.is_ok(), "{:?}", result.as_ref().err().map(ToString::to_string));
    }
    let (client, connection) = tokio_postgres::connect(&url, tokio_postgres::NoTls).await.unwrap();
    tokio::spawn(connection);
    let versions: Vec<i32> =
        client.query("SELECT version FROM strait_schema ORDER BY version", &[]).await.unwrap().iter().map(|r| r.get(0)).collect();
    assert_eq!(versions, [1], "each migration applied once");

    client.execute("INSERT INTO strait_schema (version) VALUES (99)", &[]).await.unwrap();
    let refused = PgStore::open(&url, PgOptions::default()).await.err().expect("a newer schema is refused");
    assert!(refused.to_string().contains("schema is at version 99"), "{refused}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_on_one_replica_reaches_the_watch_of_another_even_without_its_notifications() {
    let Some(server) = server() else { return };
    let url = server.url();
    let a = open_pg(&url, 100).await;
    let b = open_pg(&url, 100).await;
    let mut watch = b.watch(0).await.unwrap();
    a.put(key("Mesh", "", "one"), json!(1), Precondition::None).await.unwrap();
    let event = next_event(&mut watch).await;
    assert_eq!((event.revision, event.object.key.name.as_str()), (1, "one"));
    assert_eq!(b.get(&key("Mesh", "", "one")).await.unwrap().map(|o| o.version), Some(1), "the other replica reads it");

    // Cut every notification connection: the watch keeps going by reading the table.
    let (client, connection) = tokio_postgres::connect(&url, tokio_postgres::NoTls).await.unwrap();
    tokio::spawn(connection);
    let cut = client
        .query("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = 'strait-store-listen'", &[])
        .await
        .unwrap();
    assert!(!cut.is_empty(), "the replicas listen for commits");
    for n in 2..=4 {
        a.put(key("Mesh", "", &format!("m{n}")), json!(n), Precondition::None).await.unwrap();
        let event = tokio::time::timeout(Duration::from_secs(10), next_event(&mut watch)).await.unwrap();
        assert_eq!(event.revision, n, "no event lost while the notifications were down");
    }
    // A conflict is a conflict whichever replica wrote first.
    let err = b.put(key("Mesh", "", "one"), json!(2), Precondition::Version(0)).await.unwrap_err();
    assert!(matches!(err, StoreError::Conflict { actual: Some(1), .. }), "{err}");
    assert!(b.revision() >= 4 || b.stats().await.unwrap().revision == 4);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unlogged_kinds_leave_no_data_in_the_event_table() {
    let Some(server) = server() else { return };
    let url = server.url();
    drop(open_pg(&url, 100).await);
    let store = PgStore::open(&url, PgOptions { unlogged_kinds: vec!["Secret".into()], ..PgOptions::default() }).await.unwrap();
    store.put(key("Secret", "", "ca"), json!({"key": "PRIVATE"}), Precondition::None).await.unwrap();
    assert_eq!(store.get(&key("Secret", "", "ca")).await.unwrap().unwrap().data["key"], "PRIVATE");
    let (client, connection) = tokio_postgres::connect(&url, tokio_postgres::NoTls).await.unwrap();
    tokio::spawn(connection);
    let events: Vec<String> = client.query("SELECT event FROM strait_events", &[]).await.unwrap().iter().map(|r| r.get(0)).collect();
    assert_eq!(events.len(), 1);
    assert!(!events[0].contains("PRIVATE"), "{}", events[0]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lock_is_held_by_one_replica_at_a_time_and_freed_when_its_holder_goes() {
    let Some(server) = server() else { return };
    let url = server.url();
    let a = open_pg(&url, 100).await;
    let b = open_pg(&url, 100).await;
    let lease = a.try_lock("expiry").await.unwrap().expect("the first replica takes the lock");
    assert!(lease.is_held());
    assert!(b.try_lock("expiry").await.unwrap().is_none(), "a second replica is refused while the first holds it");
    assert!(b.try_lock("another").await.unwrap().is_some(), "locks of other names are independent");

    // The holder lets go: the other replica gets it (the server frees it when the connection closes).
    drop(lease);
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let lease = loop {
        if let Some(lease) = b.try_lock("expiry").await.unwrap() {
            break lease;
        }
        assert!(std::time::Instant::now() < deadline, "the lock was never freed");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };

    // Its connection is cut (a crashed holder looks the same to the server): the holder learns it
    // lost the lock, and the other replica can take it.
    let (client, connection) = tokio_postgres::connect(&url, tokio_postgres::NoTls).await.unwrap();
    tokio::spawn(connection);
    client.query("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = 'strait-store-lock'", &[]).await.unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while lease.is_held() {
        assert!(std::time::Instant::now() < deadline, "the holder never noticed its lock was gone");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(a.try_lock("expiry").await.unwrap().is_some());
}
