//! Read-only copies, in the cluster, of what the global synced to the zone: `kubectl get
//! meshtrafficpermissions -n strait-system` shows the policies in force.
//!
//! In: the zone's store (meshes and policies from the global) and its changes. Out: one
//! `strait.io` custom resource per synced resource (the meshes cluster-wide, the rest in the
//! zone's namespace, named `<name>.<mesh>` so that meshes never collide), labelled
//! [`ORIGIN_LABEL`]` = global`, created, replaced or deleted until the cluster holds exactly
//! those. Objects without the label are not the zone's and are left alone. The admission
//! policy of `strait_api::crd::read_only_policy` refuses everyone else's writes.

use std::collections::BTreeMap;
use std::time::Duration;

use kube::api::{Api, ApiResource, DeleteParams, DynamicObject, ListParams, PostParams};
use serde_json::{json, Value};
use strait_api::{crd, Resource, ResourceType};
use strait_cp_core::resources::Resources;
use tokio_util::sync::CancellationToken;

/// The label of the copies the zone keeps.
pub const ORIGIN_LABEL: &str = "k8s.strait.io/origin";
const ORIGIN: &str = "global";

/// The types copied: every type with a CRD but the zone's own Dataplanes.
fn copied() -> impl Iterator<Item = ResourceType> {
    crd::kinds().into_iter().filter(|k| *k != ResourceType::Dataplane)
}

fn api_resource(kind: ResourceType) -> ApiResource {
    ApiResource {
        group: crd::GROUP.into(),
        version: crd::VERSION.into(),
        api_version: format!("{}/{}", crd::GROUP, crd::VERSION),
        kind: kind.name().into(),
        plural: kind.plural().into(),
    }
}

/// The copy of `resource` in `namespace`.
pub fn copy(resource: &Resource, namespace: &str) -> Value {
    let mut object = crd::to_custom_resource(resource, namespace);
    if let Some(mesh) = resource.mesh.as_deref().filter(|_| resource.kind.is_mesh_scoped()) {
        object["metadata"]["name"] = json!(format!("{}.{mesh}", resource.name));
    }
    object["metadata"]["labels"][ORIGIN_LABEL] = json!(ORIGIN);
    object
}

/// Makes the cluster's copies of `kind` equal to `wanted` (by name); how many it changed.
async fn apply_kind(
    client: &kube::Client,
    namespace: &str,
    kind: ResourceType,
    wanted: &BTreeMap<String, Value>,
) -> Result<usize, kube::Error> {
    let resource = api_resource(kind);
    let api: Api<DynamicObject> = if kind.is_mesh_scoped() {
        Api::namespaced_with(client.clone(), namespace, &resource)
    } else {
        Api::all_with(client.clone(), &resource)
    };
    let existing = api.list(&ListParams::default().labels(&format!("{ORIGIN_LABEL}={ORIGIN}"))).await?;
    let mut changed = 0;
    let mut have = BTreeMap::new();
    for object in existing.items {
        let name = object.metadata.name.clone().unwrap_or_default();
        if !wanted.contains_key(&name) {
            api.delete(&name, &DeleteParams::default()).await?;
            changed += 1;
            continue;
        }
        have.insert(name, object);
    }
    for (name, copy) in wanted {
        let mut object: DynamicObject = serde_json::from_value(copy.clone()).map_err(kube::Error::SerdeError)?;
        match have.get(name) {
            Some(current) if current.data.get("spec") == copy.get("spec") && current.metadata.labels == object.metadata.labels => {}
            Some(current) => {
                object.metadata.resource_version = current.metadata.resource_version.clone();
                api.replace(name, &PostParams::default(), &object).await?;
                changed += 1;
            }
            None => {
                api.create(&PostParams::default(), &object).await?;
                changed += 1;
            }
        }
    }
    Ok(changed)
}

/// One pass: the cluster's copies made equal to the zone's store; how many changed.
pub async fn apply(client: &kube::Client, namespace: &str, resources: &Resources) -> anyhow::Result<usize> {
    let mut changed = 0;
    for kind in copied() {
        let stored = resources.list(kind, None).await?;
        let wanted: BTreeMap<String, Value> = stored
            .iter()
            .map(|r| copy(r, namespace))
            .map(|c| (c["metadata"]["name"].as_str().unwrap_or_default().to_string(), c))
            .collect();
        changed += apply_kind(client, namespace, kind, &wanted).await?;
    }
    Ok(changed)
}

/// Keeps the copies until `term`: a pass at once, then after each change of the store
/// (debounced); a failed pass is retried.
pub async fn run(client: kube::Client, namespace: String, resources: Resources, term: CancellationToken) {
    use futures::StreamExt;
    let store = resources.store().clone();
    loop {
        // Watch before the pass, so that no change between the two is missed.
        let mut events = match store.watch(store.revision()).await {
            Ok(events) => events,
            Err(error) => {
                tracing::warn!(%error, "cannot watch the zone's store to copy its policies into the cluster");
                return;
            }
        };
        let retry = match apply(&client, &namespace, &resources).await {
            Ok(0) => None,
            Ok(changed) => {
                tracing::info!(changed, %namespace, "the cluster's read-only copies follow the global's policies");
                None
            }
            Err(error) => {
                tracing::warn!(%error, "cannot copy the global's policies into the cluster; retrying");
                Some(Duration::from_secs(5))
            }
        };
        let next = async {
            match retry {
                Some(wait) => tokio::time::sleep(wait).await,
                None => {
                    // The zone's own records (Dataplanes, NACKs) change often: only copied types count.
                    while let Some(Ok(event)) = events.next().await {
                        if copied().any(|k| k.name() == event.object.key.kind) {
                            break;
                        }
                    }
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
            }
        };
        tokio::select! {
            () = term.cancelled() => return,
            () = next => {}
        }
    }
}
