//! The zone's copy of what the global sends: applied atomically to the zone's own store, so it
//! survives restarts and keeps serving while the global is away.
//!
//! In: KDS batches (snapshot chunks and deltas). Out: store writes (one atomic batch per
//! revision, with the revision itself), and the errors of resources this zone rejects (for the
//! NACK). Resources are stored in the same shape as on the global, so the same read code serves
//! them.

use std::collections::BTreeSet;
use std::sync::Arc;

use serde_json::{json, Value};
use strait_api::kds;
use strait_api::Resource;
use strait_global_cp::kds::sync_set::{synced_kinds, ZONE_INVENTORY};
use strait_store::{Key, Op, Precondition, Store, StoreError};

/// Store kind of the sync state (last applied revision and the global's identity).
pub const KDS_STATE: &str = "KdsState";

/// Where sync stands.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SyncState {
    /// Last global revision applied.
    pub revision: u64,
    /// Identity of the global it came from.
    pub global_id: String,
}

fn state_key() -> Key {
    Key::new(KDS_STATE, "", "global")
}

/// A resource this zone refused.
#[derive(Debug, Clone, PartialEq)]
pub struct Rejected {
    /// Which.
    pub key: kds::ResourceKey,
    /// Why.
    pub message: String,
}

/// The zone's synced state over its store.
#[derive(Clone)]
pub struct Synced {
    store: Arc<dyn Store>,
    /// Chunks of a snapshot still arriving.
    pending_snapshot: Vec<kds::Resource>,
}

impl Synced {
    /// Wraps the zone's store.
    pub fn new(store: Arc<dyn Store>) -> Self {
        Synced { store, pending_snapshot: Vec::new() }
    }

    /// The stored sync state, if a snapshot was ever applied.
    pub async fn state(&self) -> Result<Option<SyncState>, StoreError> {
        Ok(self.store.get(&state_key()).await?.map(|o| SyncState {
            revision: o.data.get("revision").and_then(Value::as_u64).unwrap_or(0),
            global_id: o.data.get("globalId").and_then(Value::as_str).unwrap_or_default().to_string(),
        }))
    }

    /// Applies one batch. Returns `None` while a snapshot is still arriving, else the rejected
    /// resources (empty: ACK) once the revision is stored.
    pub async fn apply(&mut self, mut batch: kds::Batch) -> Result<Option<Vec<Rejected>>, StoreError> {
        let upserts = if batch.snapshot {
            self.pending_snapshot.append(&mut batch.upserts);
            if !batch.last_chunk {
                return Ok(None);
            }
            std::mem::take(&mut self.pending_snapshot)
        } else {
            std::mem::take(&mut batch.upserts)
        };
        let mut rejected = Vec::new();
        let mut ops = Vec::new();
        let mut kept = BTreeSet::new();
        for r in upserts {
            let Some(key) = r.key.clone() else { continue };
            match stored_data(&key, &r.json) {
                Ok(data) => {
                    let store_key = Key::new(&key.r#type, &key.mesh, &key.name);
                    kept.insert(store_key.clone());
                    ops.push(Op::Put { key: store_key, data, precondition: Precondition::None });
                }
                Err(message) => rejected.push(Rejected { key, message }),
            }
        }
        let mut deletes: BTreeSet<Key> = batch.deletes.iter().map(|k| Key::new(&k.r#type, &k.mesh, &k.name)).collect();
        if batch.snapshot {
            // Everything synced before that the snapshot no longer has is gone on the global.
            for kind in synced_kinds() {
                for obj in self.store.list(kind, None).await? {
                    if !kept.contains(&obj.key) {
                        deletes.insert(obj.key);
                    }
                }
            }
        }
        for key in deletes {
            // Only existing keys: deleting a missing one would fail the whole batch.
            if self.store.get(&key).await?.is_some() {
                ops.push(Op::Delete { key, precondition: Precondition::None });
            }
        }
        ops.push(Op::Put {
            key: state_key(),
            data: json!({"revision": batch.revision, "globalId": batch.global_id}),
            precondition: Precondition::None,
        });
        self.store.apply(ops).await?;
        Ok(Some(rejected))
    }
}

/// The data stored for a synced resource: `{labels, spec}` for resources (validated by this
/// zone's own rules), the raw object for inventories.
fn stored_data(key: &kds::ResourceKey, json: &[u8]) -> Result<Value, String> {
    let value: Value = serde_json::from_slice(json).map_err(|e| format!("not JSON: {e}"))?;
    if key.r#type == ZONE_INVENTORY {
        return Ok(value);
    }
    let resource = Resource::from_value(value).map_err(|e| e.to_string())?;
    if resource.kind.name() != key.r#type || resource.name != key.name || resource.mesh.as_deref().unwrap_or("") != key.mesh {
        return Err(format!("resource does not match its key {}/{}/{}", key.r#type, key.mesh, key.name));
    }
    Ok(json!({"labels": resource.labels, "spec": resource.spec_value()}))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn res(kind: &str, mesh: &str, name: &str, json: Value) -> kds::Resource {
        kds::Resource {
            key: Some(kds::ResourceKey { r#type: kind.into(), mesh: mesh.into(), name: name.into() }),
            version: 1,
            json: serde_json::to_vec(&json).unwrap(),
        }
    }

    fn mesh(name: &str) -> kds::Resource {
        res("Mesh", "", name, json!({"type": "Mesh", "name": name}))
    }

    fn batch(revision: u64, snapshot: bool, last: bool, upserts: Vec<kds::Resource>, deletes: Vec<kds::ResourceKey>) -> kds::Batch {
        kds::Batch { revision, snapshot, last_chunk: last, upserts, deletes, global_id: "g1".into() }
    }

    #[tokio::test]
    async fn snapshots_replace_and_deltas_change() {
        let store: Arc<dyn Store> = Arc::new(strait_store::SledStore::temporary().unwrap());
        let mut synced = Synced::new(store.clone());
        assert_eq!(synced.state().await.unwrap(), None);
        assert_eq!(synced.apply(batch(5, true, false, vec![mesh("a")], vec![])).await.unwrap(), None, "first chunk waits");
        assert_eq!(store.list("Mesh", None).await.unwrap().len(), 0, "nothing applied before the last chunk");
        assert_eq!(synced.apply(batch(5, true, true, vec![mesh("b")], vec![])).await.unwrap(), Some(vec![]));
        assert_eq!(store.list("Mesh", None).await.unwrap().len(), 2);
        assert_eq!(synced.state().await.unwrap(), Some(SyncState { revision: 5, global_id: "g1".into() }));

        let del = kds::ResourceKey { r#type: "Mesh".into(), mesh: String::new(), name: "a".into() };
        let ghost = kds::ResourceKey { r#type: "Mesh".into(), mesh: String::new(), name: "never-there".into() };
        synced.apply(batch(6, false, false, vec![mesh("c")], vec![del, ghost])).await.unwrap();
        let names: Vec<String> = store.list("Mesh", None).await.unwrap().into_iter().map(|o| o.key.name).collect();
        assert_eq!(names, vec!["b", "c"]);

        synced.apply(batch(9, true, true, vec![mesh("c")], vec![])).await.unwrap();
        let names: Vec<String> = store.list("Mesh", None).await.unwrap().into_iter().map(|o| o.key.name).collect();
        assert_eq!(names, vec!["c"], "a snapshot removes what it no longer has");
    }

    #[tokio::test]
    async fn invalid_resources_are_rejected_and_the_rest_applied() {
        let store: Arc<dyn Store> = Arc::new(strait_store::SledStore::temporary().unwrap());
        let mut synced = Synced::new(store.clone());
        let bad = res(
            "MeshTimeout",
            "a",
            "t",
            json!({"type": "MeshTimeout", "name": "t", "mesh": "a", "spec": {"to": [{"targetRef": {"kind": "Mesh"}, "default": {"idleTimeout": "soon"}}]}}),
        );
        let rejected = synced.apply(batch(3, true, true, vec![mesh("a"), bad], vec![])).await.unwrap().unwrap();
        assert_eq!(rejected.len(), 1);
        assert!(rejected[0].message.contains("spec.to[0].default.idleTimeout"), "{}", rejected[0].message);
        assert_eq!(store.list("Mesh", None).await.unwrap().len(), 1);
        assert_eq!(synced.state().await.unwrap().unwrap().revision, 3);
    }
}
