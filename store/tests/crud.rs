//! Reads and writes through the public `Store` API, on every backend (`sled::*`,
//! `postgres::*`), and what only one backend has.

mod common;

use common::{key, revisions, Backend};
use serde_json::json;
use strait_store::{Op, Outcome, Precondition, SledStore, Store, StoreError};

contract_tests!(
    put_creates_then_updates_and_identical_data_is_unchanged,
    delete_returns_the_object_as_it_was_and_removes_it,
    preconditions_hold_or_conflict_with_the_actual_version,
    a_failing_precondition_leaves_the_whole_batch_unwritten,
    later_ops_in_a_batch_see_earlier_ones,
    empty_batch_is_a_no_op,
    keys_with_nul_bytes_are_refused,
    list_by_kind_and_mesh_is_sorted_by_mesh_then_name,
    list_mesh_returns_every_kind_of_one_mesh,
    versions_are_listed_as_the_objects_are,
    stats_count_objects_by_kind,
    optimistic_read_modify_write_loses_no_update,
);

async fn put_creates_then_updates_and_identical_data_is_unchanged(backend: Backend) {
    let store = backend.open().await;
    let k = key("MeshTimeout", "default", "t1");
    assert_eq!(store.revision(), 0);

    let Outcome::Created(created) = store.put(k.clone(), json!({"idle": "1s"}), Precondition::None).await.unwrap() else {
        panic!("expected Created");
    };
    assert_eq!((created.key.clone(), created.version, created.data.clone()), (k.clone(), 1, json!({"idle": "1s"})));
    assert_eq!(created.creation_time, created.modification_time);
    assert_eq!(store.revision(), 1);

    let same = store.put(k.clone(), json!({"idle": "1s"}), Precondition::None).await.unwrap();
    assert_eq!(same, Outcome::Unchanged(created.clone()), "no new version, no new time");
    assert_eq!(store.revision(), 1, "an unchanged write does not bump the revision");

    let Outcome::Updated(updated) = store.put(k.clone(), json!({"idle": "2s"}), Precondition::None).await.unwrap() else {
        panic!("expected Updated");
    };
    assert_eq!(updated.version, 2);
    assert_eq!(updated.creation_time, created.creation_time, "creation time is kept");
    assert!(updated.modification_time > created.modification_time, "modification time moves");
    assert_eq!(store.revision(), 2);
    assert_eq!(store.get(&k).await.unwrap(), Some(updated));
}

async fn delete_returns_the_object_as_it_was_and_removes_it(backend: Backend) {
    let store = backend.open().await;
    let k = key("Zone", "", "east");
    let created = store.put(k.clone(), json!({"enabled": true}), Precondition::None).await.unwrap().into_object();

    assert_eq!(store.delete(k.clone(), Precondition::None).await.unwrap(), Outcome::Deleted(created));
    assert_eq!(store.get(&k).await.unwrap(), None);
    assert_eq!(store.revision(), 2, "a delete is a change");

    let err = store.delete(k.clone(), Precondition::None).await.unwrap_err();
    assert!(matches!(err, StoreError::NotFound { key } if key == k));
    assert_eq!(store.revision(), 2);
}

async fn preconditions_hold_or_conflict_with_the_actual_version(backend: Backend) {
    let store = backend.open().await;
    let k = key("Mesh", "", "default");
    let missing = key("Mesh", "", "other");
    let v1 = store.put(k.clone(), json!(1), Precondition::MustNotExist).await.unwrap();
    assert!(matches!(v1, Outcome::Created(ref o) if o.version == 1));

    let conflict = |res: Result<Outcome, StoreError>| match res {
        Err(StoreError::Conflict { key, expected, actual }) => (key, expected, actual),
        other => panic!("expected a conflict, got {other:?}"),
    };
    assert_eq!(
        conflict(store.put(k.clone(), json!(2), Precondition::MustNotExist).await),
        (k.clone(), Precondition::MustNotExist, Some(1))
    );
    assert_eq!(conflict(store.put(k.clone(), json!(2), Precondition::Version(7)).await), (k.clone(), Precondition::Version(7), Some(1)));
    assert_eq!(
        conflict(store.put(missing.clone(), json!(2), Precondition::Version(1)).await),
        (missing.clone(), Precondition::Version(1), None)
    );
    assert_eq!(conflict(store.delete(k.clone(), Precondition::Version(7)).await), (k.clone(), Precondition::Version(7), Some(1)));
    assert_eq!(conflict(store.delete(k.clone(), Precondition::MustNotExist).await), (k.clone(), Precondition::MustNotExist, Some(1)));
    let err = store.delete(missing.clone(), Precondition::Version(1)).await.unwrap_err();
    assert!(matches!(err, StoreError::NotFound { .. }), "{err}");
    assert_eq!(store.revision(), 1, "failed preconditions write nothing");
    assert_eq!(store.get(&k).await.unwrap(), Some(v1.into_object()));

    let v2 = store.put(k.clone(), json!(2), Precondition::Version(1)).await.unwrap();
    assert!(matches!(v2, Outcome::Updated(ref o) if o.version == 2));
    assert_eq!(
        conflict(store.put(k.clone(), json!(3), Precondition::Version(1)).await),
        (k.clone(), Precondition::Version(1), Some(2)),
        "the version moved on"
    );
    assert!(matches!(store.delete(k.clone(), Precondition::Version(2)).await, Ok(Outcome::Deleted(_))));
}

async fn a_failing_precondition_leaves_the_whole_batch_unwritten(backend: Backend) {
    let store = backend.open().await;
    let existing = key("MeshRetry", "default", "existing");
    let taken = key("MeshRetry", "default", "taken");
    store.put(existing.clone(), json!("old"), Precondition::None).await.unwrap();
    store.put(taken.clone(), json!("taken"), Precondition::None).await.unwrap();

    let ops = vec![
        Op::put(key("MeshRetry", "default", "a"), json!("a"), Precondition::None),
        Op::put(existing.clone(), json!("new"), Precondition::Version(1)),
        Op::put(taken.clone(), json!("mine"), Precondition::MustNotExist),
        Op::put(key("MeshRetry", "default", "b"), json!("b"), Precondition::None),
    ];
    let err = store.apply(ops).await.unwrap_err();
    assert!(matches!(err, StoreError::Conflict { ref key, actual: Some(2), .. } if *key == taken), "{err}");

    assert_eq!(store.get(&key("MeshRetry", "default", "a")).await.unwrap(), None);
    assert_eq!(store.get(&existing).await.unwrap().unwrap().data, json!("old"));
    assert_eq!(store.get(&taken).await.unwrap().unwrap().data, json!("taken"));
    assert_eq!(store.get(&key("MeshRetry", "default", "b")).await.unwrap(), None);
    assert_eq!(store.revision(), 2);
    let mut watch = store.watch(0).await.unwrap();
    assert_eq!(revisions(&common::next_events(&mut watch, 2).await), vec![1, 2]);
    common::assert_quiet(&mut watch).await;

    // The same batch without the failing op commits, and the revision the failed batch would
    // have used is taken by it: the failure left no trace.
    let outcomes = store
        .apply(vec![
            Op::put(key("MeshRetry", "default", "a"), json!("a"), Precondition::None),
            Op::put(existing.clone(), json!("new"), Precondition::Version(1)),
        ])
        .await
        .unwrap();
    assert_eq!(outcomes.iter().map(|o| o.object().version).collect::<Vec<_>>(), [3, 4]);
}

async fn later_ops_in_a_batch_see_earlier_ones(backend: Backend) {
    let store = backend.open().await;
    let k = key("MeshRetry", "default", "r");
    let other = key("MeshRetry", "default", "s");
    let outcomes = store
        .apply(vec![
            Op::put(k.clone(), json!(1), Precondition::MustNotExist),
            Op::put(k.clone(), json!(1), Precondition::Version(1)),
            Op::put(k.clone(), json!(2), Precondition::Version(1)),
            Op::put(other.clone(), json!(0), Precondition::None),
            Op::delete(k.clone(), Precondition::Version(2)),
        ])
        .await
        .unwrap();
    let summary: Vec<(&str, u64)> = outcomes
        .iter()
        .map(|o| {
            let name = match o {
                Outcome::Created(_) => "created",
                Outcome::Updated(_) => "updated",
                Outcome::Unchanged(_) => "unchanged",
                Outcome::Deleted(_) => "deleted",
            };
            (name, o.object().version)
        })
        .collect();
    assert_eq!(summary, vec![("created", 1), ("unchanged", 1), ("updated", 2), ("created", 3), ("deleted", 2)]);
    assert_eq!(store.revision(), 4, "one revision per change, none for the unchanged op");
    assert_eq!(store.get(&k).await.unwrap(), None);
    assert_eq!(store.get(&other).await.unwrap().unwrap().version, 3);
}

async fn empty_batch_is_a_no_op(backend: Backend) {
    let store = backend.open().await;
    assert!(store.apply(vec![]).await.unwrap().is_empty());
    assert_eq!(store.revision(), 0);
}

async fn keys_with_nul_bytes_are_refused(backend: Backend) {
    let store = backend.open().await;
    let err = store.put(key("K", "m", "a\0b"), json!(1), Precondition::None).await.unwrap_err();
    assert!(matches!(err, StoreError::Backend(ref m) if m.contains("NUL")), "{err}");
    assert!(store.get(&key("K\0", "", "a")).await.is_err());
    assert!(store.list("K", Some("m\0")).await.is_err());
    assert_eq!(store.revision(), 0);
}

async fn seed(store: &dyn Store) {
    let items = [
        ("MeshTimeout", "prod", "b"),
        ("MeshTimeout", "dev", "z"),
        ("MeshTimeout", "prod", "a"),
        ("MeshTimeout", "prod-eu", "a"),
        ("MeshTimeout", "dev", "a"),
        ("MeshRetry", "prod", "a"),
        ("Mesh", "", "prod"),
        ("Mesh", "", "dev"),
        ("Zone", "", "east"),
        ("Dataplane", "prod", "web-1"),
    ];
    for (kind, mesh, name) in items {
        store.put(key(kind, mesh, name), json!({"n": name}), Precondition::None).await.unwrap();
    }
}

fn names(objects: &[strait_store::Object]) -> Vec<String> {
    objects.iter().map(|o| o.key.to_string()).collect()
}

async fn list_by_kind_and_mesh_is_sorted_by_mesh_then_name(backend: Backend) {
    let store = backend.open().await;
    seed(&*store).await;
    assert_eq!(names(&store.list("MeshTimeout", Some("prod")).await.unwrap()), ["MeshTimeout/prod/a", "MeshTimeout/prod/b"]);
    assert_eq!(
        names(&store.list("MeshTimeout", None).await.unwrap()),
        ["MeshTimeout/dev/a", "MeshTimeout/dev/z", "MeshTimeout/prod/a", "MeshTimeout/prod/b", "MeshTimeout/prod-eu/a"]
    );
    // "Mesh" is a prefix of "MeshTimeout": the kind must match exactly.
    assert_eq!(names(&store.list("Mesh", None).await.unwrap()), ["Mesh/dev", "Mesh/prod"]);
    assert_eq!(names(&store.list("Mesh", Some("")).await.unwrap()), ["Mesh/dev", "Mesh/prod"]);
    assert!(store.list("MeshTimeout", Some("staging")).await.unwrap().is_empty());
    assert!(store.list("Nothing", None).await.unwrap().is_empty());
    let listed = store.list("MeshRetry", Some("prod")).await.unwrap();
    assert_eq!(listed[0], store.get(&key("MeshRetry", "prod", "a")).await.unwrap().unwrap());
}

async fn versions_are_listed_as_the_objects_are(backend: Backend) {
    let store = backend.open().await;
    seed(&*store).await;
    store.put(key("MeshTimeout", "prod", "a"), json!({"n": "changed"}), Precondition::None).await.unwrap();
    store.delete(key("MeshTimeout", "dev", "z"), Precondition::None).await.unwrap();
    for (kind, mesh) in [("MeshTimeout", Some("prod")), ("MeshTimeout", None), ("Mesh", None), ("Mesh", Some("")), ("Nothing", None)] {
        let listed: Vec<_> = store.list(kind, mesh).await.unwrap().into_iter().map(|o| (o.key, o.version)).collect();
        assert_eq!(store.list_versions(kind, mesh).await.unwrap(), listed, "{kind} in {mesh:?}");
    }
    let versions = store.list_versions("MeshTimeout", Some("prod")).await.unwrap();
    assert_eq!(versions[0].1, store.revision() - 1, "the changed object's new version");
}

async fn list_mesh_returns_every_kind_of_one_mesh(backend: Backend) {
    let store = backend.open().await;
    seed(&*store).await;
    assert_eq!(
        names(&store.list_mesh("prod").await.unwrap()),
        ["Dataplane/prod/web-1", "MeshRetry/prod/a", "MeshTimeout/prod/a", "MeshTimeout/prod/b"]
    );
    assert_eq!(names(&store.list_mesh("").await.unwrap()), ["Mesh/dev", "Mesh/prod", "Zone/east"]);
    assert!(store.list_mesh("pro").await.unwrap().is_empty());
}

async fn stats_count_objects_by_kind(backend: Backend) {
    let store = backend.open().await;
    seed(&*store).await;
    store.delete(key("Zone", "", "east"), Precondition::None).await.unwrap();
    let stats = store.stats().await.unwrap();
    let counts: Vec<(&str, u64)> = stats.objects_by_kind.iter().map(|(k, v)| (k.as_str(), *v)).collect();
    assert_eq!(counts, [("Dataplane", 1), ("Mesh", 2), ("MeshRetry", 1), ("MeshTimeout", 5)]);
    assert_eq!(stats.revision, 11);
    assert!(stats.size_on_disk > 0);
}

#[tokio::test]
async fn reopen_keeps_objects_revision_and_history() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("store");
    let (first, second) = {
        let store = SledStore::open(&path).unwrap();
        let a = store.put(key("Mesh", "", "a"), json!(1), Precondition::None).await.unwrap().into_object();
        let b = store.put(key("Mesh", "", "b"), json!(2), Precondition::None).await.unwrap().into_object();
        store.delete(key("Mesh", "", "b"), Precondition::None).await.unwrap();
        (a, b)
    };
    let store = SledStore::open(&path).unwrap();
    assert_eq!(store.revision(), 3);
    assert_eq!(store.get(&first.key).await.unwrap(), Some(first.clone()));
    assert_eq!(store.get(&second.key).await.unwrap(), None);
    let next = store.put(key("Mesh", "", "c"), json!(3), Precondition::None).await.unwrap();
    assert_eq!(next.object().version, 4, "revisions continue after a restart");
    let mut watch = store.watch(0).await.unwrap();
    assert_eq!(revisions(&common::next_events(&mut watch, 4).await), [1, 2, 3, 4]);
}

async fn optimistic_read_modify_write_loses_no_update(backend: Backend) {
    let test_store = backend.open().await;
    let store = test_store.store.clone();
    let k = key("Counter", "", "c");
    store.put(k.clone(), json!(0), Precondition::None).await.unwrap();
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..4 {
        let (store, k) = (store.clone(), k.clone());
        tasks.spawn(async move {
            let mut conflicts = 0;
            for _ in 0..10 {
                loop {
                    let current = store.get(&k).await.unwrap().unwrap();
                    let n = current.data.as_u64().unwrap();
                    match store.put(k.clone(), json!(n + 1), Precondition::Version(current.version)).await {
                        Ok(_) => break,
                        Err(StoreError::Conflict { .. }) => conflicts += 1,
                        Err(err) => panic!("{err}"),
                    }
                }
            }
            conflicts
        });
    }
    while let Some(result) = tasks.join_next().await {
        result.unwrap();
    }
    assert_eq!(store.get(&k).await.unwrap().unwrap().data, json!(40));
    assert_eq!(store.revision(), 41);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn opening_waits_for_a_lock_released_meanwhile() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("store");
    let first = SledStore::open(&path).unwrap();
    // The first store lets go of the directory 300 ms from now, well within the wait.
    let releaser = std::thread::spawn(move || {
        std::thread::sleep(std::time::Duration::from_millis(300));
        drop(first);
    });
    let second = SledStore::open(&path);
    releaser.join().unwrap();
    assert!(second.is_ok(), "the second open waits for the lock: {:?}", second.err());
}
