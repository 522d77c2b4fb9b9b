//! The resource service: validated resources in and out of the store.
//!
//! In: parsed [`Resource`]s and look-ups by type, mesh and name, from either control plane's
//! REST API and sync. Out: stored resources with their server-set fields, and
//! created/configured/unchanged outcomes. It owns the rules the store does not know: a
//! mesh-scoped resource needs its Mesh, and deleting a Mesh deletes everything in it. What else
//! a new or deleted Mesh brings (the global's root CA and default policies) comes from a
//! [`MeshLifecycle`] the owner plugs in, in the same atomic batch.

use std::sync::Arc;

use serde::Serialize;
use serde_json::{json, Value};
use strait_api::{Resource, ResourceType, ValidationErrors};
use strait_store::{Key, Object, Op, Outcome, Precondition, Store, StoreError};

/// Stored resources skipped by lists because they no longer validate, in this process.
static INVALID_SKIPPED: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// How many stored resources lists have skipped in this process because they no longer
/// validate (written by an incompatible version, or damaged).
pub fn invalid_skipped() -> u64 {
    INVALID_SKIPPED.load(std::sync::atomic::Ordering::Relaxed)
}

/// Why a resource operation failed.
#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    /// The store refused or failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The resource's mesh does not exist.
    #[error("mesh {0:?} not found: create it first (type: Mesh, name: {0})")]
    MeshNotFound(String),
    /// Stored data no longer parses (written by an incompatible version).
    #[error("stored {key} does not parse: {errors}")]
    Corrupt {
        /// Which object.
        key: String,
        /// Why.
        errors: ValidationErrors,
    },
}

/// What a put did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum PutOutcome {
    /// The resource did not exist.
    Created,
    /// The resource changed.
    Configured,
    /// The resource was already exactly so; nothing was written.
    Unchanged,
}

/// A service of a mesh and how many endpoints serve it.
#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
pub struct ServiceSummary {
    /// The `strait.io/service` tag.
    pub name: String,
    /// Endpoints (Dataplanes) serving it, in every zone.
    pub dataplanes: u64,
}

/// What a control plane adds to the batch that creates or deletes a Mesh.
pub trait MeshLifecycle: Send + Sync {
    /// Extra writes for a mesh that does not exist yet (CPU work, such as a key generation, is
    /// allowed: meshes are created rarely).
    fn on_create(&self, mesh: &Resource) -> Result<Vec<Op>, String>;
    /// Extra deletions for a mesh being deleted, beyond the resources in it; those of keys
    /// that do not exist are skipped.
    fn on_delete(&self, mesh: &str) -> Vec<Op>;
}

/// Typed access to resources in a store.
#[derive(Clone)]
pub struct Resources {
    store: Arc<dyn Store>,
    meshes: Option<Arc<dyn MeshLifecycle>>,
    /// What [`Resources::list_shared`] parsed, kept while the objects are unchanged.
    parsed: Arc<std::sync::Mutex<Parsed>>,
}

/// Changed resources a shared listing reads one by one; more (and more than a quarter of the
/// listing) are read in one scan.
const READ_ALONE: usize = 64;

/// One resource of a shared listing: parsed before and unchanged since, or read now.
enum Listed {
    Known(Key, u64, Arc<Resource>),
    Fresh(Object),
}

/// Resources as parsed from their stored objects, by key, with the version parsed and the
/// number of the last listing that saw each (to forget those gone).
#[derive(Default)]
struct Parsed {
    by_key: std::collections::HashMap<Key, (u64, u64, Arc<Resource>)>,
    listings: u64,
}

/// The store key of a resource.
pub fn key_of(kind: ResourceType, mesh: Option<&str>, name: &str) -> Key {
    Key::new(kind.name(), mesh.unwrap_or(""), name)
}

fn data_of(r: &Resource) -> Value {
    json!({ "labels": r.labels, "spec": r.spec_value() })
}

/// The store operation that writes `r` as it is, with no precondition.
pub fn put_op(r: &Resource) -> Op {
    Op::Put { key: key_of(r.kind, r.mesh.as_deref(), &r.name), data: data_of(r), precondition: Precondition::None }
}

fn mesh_key(mesh: &str) -> Key {
    key_of(ResourceType::Mesh, None, mesh)
}

impl Resources {
    /// Wraps a store; creating a Mesh writes only the Mesh.
    pub fn new(store: Arc<dyn Store>) -> Self {
        Resources { store, meshes: None, parsed: Arc::default() }
    }

    /// Wraps a store; creating or deleting a Mesh also applies what `meshes` adds.
    pub fn with_mesh_lifecycle(store: Arc<dyn Store>, meshes: Arc<dyn MeshLifecycle>) -> Self {
        Resources { store, meshes: Some(meshes), parsed: Arc::default() }
    }

    /// The store underneath.
    pub fn store(&self) -> &Arc<dyn Store> {
        &self.store
    }

    /// Rebuilds a resource from a stored object.
    pub fn from_object(obj: &Object) -> Result<Resource, ServiceError> {
        let kind = ResourceType::ALL.iter().copied().find(|t| t.name() == obj.key.kind);
        let corrupt = |errors| ServiceError::Corrupt { key: obj.key.to_string(), errors };
        let Some(kind) = kind else { return Err(corrupt(ValidationErrors::single("type", format!("unknown type {:?}", obj.key.kind)))) };
        let mut value = json!({
            "type": kind.name(),
            "name": obj.key.name,
            "labels": obj.data.get("labels").cloned().unwrap_or(Value::Null),
            "spec": obj.data.get("spec").cloned().unwrap_or(Value::Null),
        });
        if kind.is_mesh_scoped() {
            value["mesh"] = Value::String(obj.key.mesh.clone());
        }
        let mut r = Resource::from_value(value).map_err(corrupt)?;
        r.version = Some(obj.version);
        r.creation_time = Some(obj.creation_time);
        r.modification_time = Some(obj.modification_time);
        Ok(r)
    }

    /// One resource.
    pub async fn get(&self, kind: ResourceType, mesh: Option<&str>, name: &str) -> Result<Option<Resource>, ServiceError> {
        match self.store.get(&key_of(kind, mesh, name)).await? {
            Some(obj) => Ok(Some(Self::from_object(&obj)?)),
            None => Ok(None),
        }
    }

    /// Resources of a type, in one mesh or all.
    pub async fn list(&self, kind: ResourceType, mesh: Option<&str>) -> Result<Vec<Resource>, ServiceError> {
        let scope = if kind.is_mesh_scoped() { mesh } else { Some("") };
        let objects = self.store.list(kind.name(), scope).await?;
        Ok(objects.iter().filter_map(Self::valid_or_skipped).collect())
    }

    /// The resource of a listed object; `None` for one that no longer validates, which must not
    /// hide the others: it is skipped, named in the log and counted (`GET` of it alone still
    /// reports it).
    fn valid_or_skipped(obj: &Object) -> Option<Resource> {
        Self::from_object(obj)
            .inspect_err(|error| {
                INVALID_SKIPPED.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                tracing::error!(key = %obj.key, %error, "skipping a stored resource that does not validate; delete or rewrite it");
            })
            .ok()
    }

    /// [`Resources::list`], shared: each resource is parsed from its stored object once per
    /// version and the same copy handed to every later listing while the object is unchanged.
    /// For readers that list the same resources again and again as a few of them change (a
    /// zone recomputing its sidecars' inputs and its inventory through a registration storm,
    /// where parsing every Dataplane at every change was most of the zone's CPU).
    pub async fn list_shared(&self, kind: ResourceType, mesh: Option<&str>) -> Result<Vec<Arc<Resource>>, ServiceError> {
        let scope = if kind.is_mesh_scoped() { mesh } else { Some("") };
        // Versions first: their payloads are skipped, not decoded (decoding every Dataplane's
        // to learn it had not changed was a tenth of a zone's CPU in a registration storm).
        let versions = self.store.list_versions(kind.name(), scope).await?;
        let known: Vec<Option<Arc<Resource>>> = {
            let parsed = self.parsed.lock().unwrap_or_else(|p| p.into_inner());
            let same = |(key, version): &(Key, u64)| parsed.by_key.get(key).filter(|(v, ..)| v == version).map(|(.., r)| r.clone());
            versions.iter().map(same).collect()
        };
        let changed = known.iter().filter(|k| k.is_none()).count();
        // Many changed (a first listing, a mesh rewritten): one scan reads them, else each alone.
        let mut listed = Vec::with_capacity(versions.len());
        if changed > READ_ALONE && changed * 4 > versions.len() {
            let unchanged: std::collections::HashMap<(&Key, u64), Arc<Resource>> =
                versions.iter().zip(known).filter_map(|((key, version), r)| Some(((key, *version), r?))).collect();
            for obj in self.store.list(kind.name(), scope).await? {
                match unchanged.get(&(&obj.key, obj.version)).cloned() {
                    Some(r) => listed.push(Listed::Known(obj.key, obj.version, r)),
                    None => listed.push(Listed::Fresh(obj)),
                }
            }
        } else {
            for ((key, version), known) in versions.into_iter().zip(known) {
                match known {
                    Some(r) => listed.push(Listed::Known(key, version, r)),
                    // Gone since it was listed: left out, as a later listing would.
                    None => listed.extend(self.store.get(&key).await?.map(Listed::Fresh)),
                }
            }
        }
        Ok(self.remember(kind, scope, listed))
    }

    /// The resources of one listing, in its order: the fresh ones parsed (those that do not
    /// validate are skipped), and what the listing covered and did not find forgotten.
    fn remember(&self, kind: ResourceType, scope: Option<&str>, listed: Vec<Listed>) -> Vec<Arc<Resource>> {
        let mut resources = Vec::with_capacity(listed.len());
        let mut entries = Vec::with_capacity(listed.len());
        for item in listed {
            match item {
                Listed::Known(key, version, r) => {
                    resources.push(r.clone());
                    entries.push((key, version, r));
                }
                Listed::Fresh(obj) => {
                    if let Some(r) = Self::valid_or_skipped(&obj) {
                        let r = Arc::new(r);
                        resources.push(r.clone());
                        entries.push((obj.key, obj.version, r));
                    }
                }
            }
        }
        let mut parsed = self.parsed.lock().unwrap_or_else(|p| p.into_inner());
        parsed.listings += 1;
        let listing = parsed.listings;
        for (key, version, r) in entries {
            parsed.by_key.insert(key, (version, listing, r));
        }
        let covered = |key: &Key| key.kind == kind.name() && scope.is_none_or(|m| key.mesh == m);
        parsed.by_key.retain(|key, (_, seen, _)| *seen == listing || !covered(key));
        resources
    }

    /// Creates or replaces a validated resource; `resource.version` is the expected version.
    pub async fn put(&self, resource: &Resource) -> Result<(PutOutcome, Resource), ServiceError> {
        let key = key_of(resource.kind, resource.mesh.as_deref(), &resource.name);
        let precondition = resource.version.map(Precondition::Version).unwrap_or(Precondition::None);
        let mut ops = vec![Op::Put { key: key.clone(), data: data_of(resource), precondition }];
        let mut creating_mesh = false;
        if let Some(mesh) = resource.mesh.as_deref() {
            // Re-putting the mesh unchanged under its version makes the batch fail if the mesh
            // is deleted concurrently, without writing anything for it.
            let mesh_obj = self.store.get(&mesh_key(mesh)).await?.ok_or_else(|| ServiceError::MeshNotFound(mesh.to_string()))?;
            ops.push(Op::Put { key: mesh_key(mesh), data: mesh_obj.data, precondition: Precondition::Version(mesh_obj.version) });
        } else if resource.kind == ResourceType::Mesh && self.store.get(&key).await?.is_none() {
            creating_mesh = true;
            if let Op::Put { precondition, .. } = &mut ops[0] {
                if *precondition == Precondition::None {
                    *precondition = Precondition::MustNotExist;
                }
            }
            if let Some(meshes) = &self.meshes {
                ops.extend(meshes.on_create(resource).map_err(|e| StoreError::Backend(format!("creating mesh {}: {e}", resource.name)))?);
            }
        }
        let outcomes = match self.store.apply(ops).await {
            // Another writer (maybe on another replica) created the mesh first: a PUT without a
            // version replaces whatever is there, so it goes on as an update of that mesh.
            Err(conflict @ StoreError::Conflict { .. }) if creating_mesh && resource.version.is_none() => {
                // Under the version just read: deleted again meanwhile, it is not re-created without its CA.
                let current = self.store.get(&key).await?.ok_or(conflict)?;
                let precondition = Precondition::Version(current.version);
                self.store.apply(vec![Op::Put { key: key.clone(), data: data_of(resource), precondition }]).await?
            }
            other => other?,
        };
        let first = outcomes.into_iter().next().ok_or_else(|| StoreError::Backend("store returned no outcome".into()))?;
        let outcome = match &first {
            Outcome::Created(_) => PutOutcome::Created,
            Outcome::Updated(_) => PutOutcome::Configured,
            Outcome::Unchanged(_) | Outcome::Deleted(_) => PutOutcome::Unchanged,
        };
        Ok((outcome, Self::from_object(first.object())?))
    }

    /// Deletes a resource (and, for a Mesh, everything in it) in one atomic batch.
    pub async fn delete(&self, kind: ResourceType, mesh: Option<&str>, name: &str, version: Option<u64>) -> Result<Resource, ServiceError> {
        let key = key_of(kind, mesh, name);
        let precondition = version.map(Precondition::Version).unwrap_or(Precondition::None);
        let mut ops = vec![Op::Delete { key, precondition }];
        if kind == ResourceType::Mesh {
            for op in self.meshes.as_ref().map(|m| m.on_delete(name)).unwrap_or_default() {
                // Meshes older than what the lifecycle adds may lack it: delete what exists.
                if let Op::Delete { key, .. } = &op {
                    if self.store.get(key).await?.is_none() {
                        continue;
                    }
                }
                ops.push(op);
            }
            for obj in self.store.list_mesh(name).await? {
                ops.push(Op::Delete { key: obj.key, precondition: Precondition::Version(obj.version) });
            }
        }
        let outcomes = self.store.apply(ops).await?;
        let first = outcomes.into_iter().next().ok_or_else(|| StoreError::Backend("store returned no outcome".into()))?;
        Self::from_object(first.object())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dataplane(name: &str, address: &str) -> Resource {
        let yaml = format!(
            "type: Dataplane\nname: {name}\nmesh: default\nspec:\n  networking:\n    address: {address}\n    inbound: [{{port: 8080, tags: {{strait.io/service: web}}}}]\n"
        );
        strait_api::parse_documents(&yaml).pop().unwrap().unwrap()
    }

    #[tokio::test]
    async fn shared_listings_parse_each_version_once_and_forget_what_is_gone() {
        let store: Arc<dyn Store> = Arc::new(strait_store::SledStore::temporary().unwrap());
        let resources = Resources::new(store.clone());
        resources.put(&strait_api::parse_documents("type: Mesh\nname: default\n").pop().unwrap().unwrap()).await.unwrap();
        for (name, address) in [("a", "10.0.0.1"), ("b", "10.0.0.2"), ("c", "10.0.0.3")] {
            resources.put(&dataplane(name, address)).await.unwrap();
        }
        let names = |list: &[Arc<Resource>]| list.iter().map(|r| r.name.clone()).collect::<Vec<_>>();
        let first = resources.list_shared(ResourceType::Dataplane, Some("default")).await.unwrap();
        assert_eq!(names(&first), ["a", "b", "c"]);
        // Each is what a plain listing parses.
        let plain = resources.list(ResourceType::Dataplane, Some("default")).await.unwrap();
        assert!(first.iter().zip(&plain).all(|(shared, plain)| **shared == *plain));

        resources.put(&dataplane("b", "10.0.0.20")).await.unwrap();
        resources.delete(ResourceType::Dataplane, Some("default"), "c", None).await.unwrap();
        let second = resources.list_shared(ResourceType::Dataplane, Some("default")).await.unwrap();
        assert_eq!(names(&second), ["a", "b"]);
        assert!(Arc::ptr_eq(&first[0], &second[0]), "unchanged: the same copy");
        assert!(!Arc::ptr_eq(&first[1], &second[1]), "changed: parsed again");
        let strait_api::Spec::Dataplane(b) = &second[1].spec else { panic!("{:?}", second[1]) };
        assert_eq!(b.networking.address, "10.0.0.20");
        // The deleted one is no longer kept; a listing of everything shares the same copies.
        let parsed = resources.parsed.lock().unwrap().by_key.keys().map(|k| k.name.clone()).collect::<std::collections::BTreeSet<_>>();
        assert_eq!(parsed, ["a", "b"].map(String::from).into());
        let everywhere = resources.list_shared(ResourceType::Dataplane, None).await.unwrap();
        assert!(Arc::ptr_eq(&everywhere[0], &second[0]) && Arc::ptr_eq(&everywhere[1], &second[1]));

        // A stored object that no longer validates is skipped, as a plain listing skips it.
        let bad = Key::new("Dataplane", "default", "broken");
        store.put(bad, json!({"spec": {"networking": {"address": 7}}}), Precondition::None).await.unwrap();
        let third = resources.list_shared(ResourceType::Dataplane, Some("default")).await.unwrap();
        assert_eq!(names(&third), ["a", "b"]);

        // Many changed at once are read in one scan, the unchanged ones still shared.
        store.delete(Key::new("Dataplane", "default", "broken"), Precondition::None).await.unwrap();
        for n in 0..READ_ALONE + 10 {
            resources.put(&dataplane(&format!("n{n:03}"), &format!("10.0.1.{}", n % 250))).await.unwrap();
        }
        let fourth = resources.list_shared(ResourceType::Dataplane, Some("default")).await.unwrap();
        assert_eq!(fourth.len(), READ_ALONE + 12);
        assert!(Arc::ptr_eq(&fourth[0], &second[0]) && Arc::ptr_eq(&fourth[1], &second[1]), "unchanged: the same copies");
        let plain = resources.list(ResourceType::Dataplane, Some("default")).await.unwrap();
        assert!(fourth.iter().zip(&plain).all(|(shared, plain)| **shared == *plain), "as a plain listing, in its order");
        let again = resources.list_shared(ResourceType::Dataplane, Some("default")).await.unwrap();
        assert!(again.iter().zip(&fourth).all(|(a, b)| Arc::ptr_eq(a, b)), "every one kept");
    }
}
