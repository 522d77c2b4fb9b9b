//! The zone's copy of what the global sends: applied atomically to the zone's own store, so it
//! survives restarts and keeps serving while the global is away.
//!
//! In: KDS batches (snapshot chunks and deltas). Out: store writes (one atomic batch per
//! revision, with the revision itself), and the errors of resources this zone rejects (for the
//! NACK). Resources are stored in the same shape as on the global, so the same read code serves
//! them.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use serde_json::{json, Value};
use strait_api::kds;
use strait_api::Resource;
use strait_cp_core::kinds::KDS_STATE;
use strait_cp_core::sync_set::{is_raw, synced_kinds};
use strait_store::{Key, Op, Precondition, Store, StoreError};

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
    /// Policy types this zone refuses.
    disabled: Arc<BTreeSet<String>>,
    /// Chunks of a snapshot still arriving.
    pending_snapshot: Vec<kds::Resource>,
}

impl Synced {
    /// The store underneath.
    pub fn store(&self) -> &Arc<dyn Store> {
        &self.store
    }

    /// Wraps the zone's store; resources of the `disabled` types are refused.
    pub fn new(store: Arc<dyn Store>, disabled: BTreeSet<String>) -> Self {
        Synced { store, disabled: Arc::new(disabled), pending_snapshot: Vec::new() }
    }

    /// The stored sync state, if a snapshot was ever applied.
    pub async fn state(&self) -> Result<Option<SyncState>, StoreError> {
        Ok(self.store.get(&state_key()).await?.map(|o| SyncState {
            revision: o.data.get("revision").and_then(Value::as_u64).unwrap_or(0),
            global_id: o.data.get("globalId").and_then(Value::as_str).unwrap_or_default().to_string(),
        }))
    }

    /// Applies one batch. Returns `None` while a snapshot is still arriving, else every resource
    /// this zone currently refuses (empty: ACK) once the revision is stored. Refusals persist
    /// until the resource changes into something acceptable or is deleted, so the global keeps
    /// showing them.
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
        let mut refused: BTreeMap<(String, String, String), String> = if batch.snapshot { BTreeMap::new() } else { self.refused().await? };
        let mut rejected = Vec::new();
        let mut ops = Vec::new();
        let mut kept = BTreeSet::new();
        for r in upserts {
            let Some(key) = r.key.clone() else { continue };
            if self.disabled.contains(&key.r#type) {
                let message = format!("{} is disabled in this zone (--disabled-policy-types)", key.r#type);
                rejected.push(Rejected { key, message });
                continue;
            }
            match stored_data(&key, &r.json) {
                Ok(data) => {
                    let store_key = Key::new(&key.r#type, &key.mesh, &key.name);
                    kept.insert(store_key.clone());
                    ops.push(Op::Put { key: store_key, data, precondition: Precondition::None });
                }
                Err(message) => rejected.push(Rejected { key, message }),
            }
        }
        for k in kept.iter().chain(batch.deletes.iter().map(|k| Key::new(&k.r#type, &k.mesh, &k.name)).collect::<Vec<_>>().iter()) {
            refused.remove(&(k.kind.clone(), k.mesh.clone(), k.name.clone()));
        }
        for r in rejected {
            refused.insert((r.key.r#type, r.key.mesh, r.key.name), r.message);
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
        let refused_json: Vec<Value> =
            refused.iter().map(|((t, m, n), msg)| json!({"type": t, "mesh": m, "name": n, "message": msg})).collect();
        let state = json!({"revision": batch.revision, "globalId": batch.global_id, "refused": refused_json});
        ops.push(Op::Put { key: state_key(), data: state, precondition: Precondition::None });
        self.store.apply(ops).await?;
        let all = refused
            .into_iter()
            .map(|((t, m, n), message)| Rejected { key: kds::ResourceKey { r#type: t, mesh: m, name: n }, message })
            .collect();
        Ok(Some(all))
    }

    /// The resources refused so far, from the stored state.
    async fn refused(&self) -> Result<BTreeMap<(String, String, String), String>, StoreError> {
        let state = self.store.get(&state_key()).await?;
        let list = state.as_ref().and_then(|s| s.data.get("refused")).and_then(Value::as_array).cloned().unwrap_or_default();
        let field = |v: &Value, f: &str| v.get(f).and_then(Value::as_str).unwrap_or_default().to_string();
        Ok(list.iter().map(|v| ((field(v, "type"), field(v, "mesh"), field(v, "name")), field(v, "message"))).collect())
    }
}

/// The data stored for a synced resource: `{labels, spec}` for resources (validated by this
/// zone's own rules), the raw object for inventories and trust bundles.
fn stored_data(key: &kds::ResourceKey, json: &[u8]) -> Result<Value, String> {
    let value: Value = serde_json::from_slice(json).map_err(|e| format!("not JSON: {e}"))?;
    if is_raw(&key.r#type) {
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
        let mut synced = Synced::new(store.clone(), BTreeSet::new());
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
        let mut synced = Synced::new(store.clone(), BTreeSet::new());
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

    #[tokio::test]
    async fn disabled_policy_types_are_refused() {
        let store: Arc<dyn Store> = Arc::new(strait_store::SledStore::temporary().unwrap());
        let mut synced = Synced::new(store.clone(), ["MeshTimeout".to_string()].into());
        let t = res(
            "MeshTimeout",
            "a",
            "t",
            json!({"type": "MeshTimeout", "name": "t", "mesh": "a", "spec": {"to": [{"targetRef": {"kind": "Mesh"}, "default": {"idleTimeout": "1s"}}]}}),
        );
        let rejected = synced.apply(batch(3, true, true, vec![mesh("a"), t], vec![])).await.unwrap().unwrap();
        assert_eq!(rejected.len(), 1);
        assert!(rejected[0].message.contains("MeshTimeout is disabled in this zone"));
        assert!(store.list("MeshTimeout", None).await.unwrap().is_empty());
        assert_eq!(store.list("Mesh", None).await.unwrap().len(), 1);
        let later = synced.apply(batch(4, false, false, vec![mesh("b")], vec![])).await.unwrap().unwrap();
        assert_eq!(later.len(), 1, "the refusal is reported until the resource goes away");
        let gone = kds::ResourceKey { r#type: "MeshTimeout".into(), mesh: "a".into(), name: "t".into() };
        let after_delete = synced.apply(batch(5, false, false, vec![], vec![gone])).await.unwrap().unwrap();
        assert!(after_delete.is_empty());
    }
}
