//! The Kubernetes controller of a zone: Dataplanes follow the cluster's Pods and Services.
//!
//! In: watches of Pods, Services, EndpointSlices and Namespaces (kube-runtime watchers feeding reflector
//! caches; a broken watch resumes from its last resource version, and a `410 Gone` or an
//! outage ends in a fresh list, each retried with back-off). Out: the zone's Dataplanes that
//! came from Kubernetes (label [`ORIGIN_LABEL`]) made equal to what [`dataplanes::dataplane`]
//! (and [`dataplanes::endpoint_readiness`]) computes from the caches, after every change
//! (debounced), and never before all four caches
//! hold a complete list: an API-server outage or a restart keeps what is there, and since each
//! Dataplane's name comes from its Pod, recomputing never duplicates one. Dataplanes
//! registered over the zone's REST API (VMs) are not touched.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::core::v1::{Namespace, Pod, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::runtime::reflector::{self, Store};
use kube::runtime::{watcher, WatchStreamExt};
use kube::Api;
use strait_api::{Resource, ResourceType};
use strait_cp_core::resources::Resources;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use super::dataplanes;

/// The label of a Dataplane that the controller manages.
pub const ORIGIN_LABEL: &str = "k8s.strait.io/origin";
const ORIGIN: &str = "pod";
/// The label of a managed Dataplane that holds its Pod's UID: a sidecar's service-account
/// token names its Pod's UID, so a Pod recreated under the same name cannot take over the
/// Dataplane of the one before it.
pub const POD_UID_LABEL: &str = "k8s.strait.io/pod-uid";

/// Changes are applied this long after the last one, so a burst costs one pass.
const DEBOUNCE: Duration = Duration::from_millis(100);

/// What one pass changed.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Pass {
    /// Dataplanes created or changed.
    pub written: Vec<String>,
    /// Dataplanes removed.
    pub removed: Vec<String>,
    /// Dataplanes that could not be written or removed (retried at the next pass).
    pub failed: Vec<String>,
}

/// The Dataplanes the cluster's objects call for, by `mesh/name`.
pub fn desired(
    pods: &[Arc<Pod>],
    services: &[Arc<Service>],
    slices: &[Arc<EndpointSlice>],
    namespaces: &[Arc<Namespace>],
    zone: &str,
) -> BTreeMap<String, Resource> {
    let services: Vec<&Service> = services.iter().map(|s| &**s).collect();
    let slices: Vec<&EndpointSlice> = slices.iter().map(|s| &**s).collect();
    let mut out = BTreeMap::new();
    for pod in pods {
        let namespace = pod.metadata.namespace.as_deref().unwrap_or("default");
        let ns = namespaces.iter().find(|n| n.metadata.name.as_deref() == Some(namespace)).map(|n| &**n);
        // A Pod with no sidecar, no address yet, or on its way out has no Dataplane.
        if let Ok(mut dp) = dataplanes::dataplane(pod, &services, ns, zone) {
            dataplanes::endpoint_readiness(&mut dp, pod, &slices);
            dp.labels.insert(ORIGIN_LABEL.into(), ORIGIN.into());
            if let Some(uid) = pod.metadata.uid.as_ref().filter(|u| !u.is_empty()) {
                dp.labels.insert(POD_UID_LABEL.into(), uid.clone());
            }
            out.insert(format!("{}/{}", dp.mesh.as_deref().unwrap_or_default(), dp.name), dp);
        }
    }
    out
}

/// Makes the zone's Pod Dataplanes equal to `wanted`.
pub async fn apply(resources: &Resources, wanted: &BTreeMap<String, Resource>) -> Result<Pass, strait_cp_core::resources::ServiceError> {
    let existing: BTreeMap<String, Resource> = resources
        .list(ResourceType::Dataplane, None)
        .await?
        .into_iter()
        .filter(|r| r.labels.get(ORIGIN_LABEL).map(String::as_str) == Some(ORIGIN))
        .map(|r| (format!("{}/{}", r.mesh.as_deref().unwrap_or_default(), r.name), r))
        .collect();
    let mut pass = Pass::default();
    for (key, dp) in wanted {
        if existing.get(key).is_some_and(|e| e.labels == dp.labels && e.spec == dp.spec) {
            continue;
        }
        match resources.put(dp).await {
            Ok(_) => pass.written.push(key.clone()),
            Err(error) => {
                tracing::warn!(dataplane = %key, %error, "cannot write the Dataplane of a Pod; retrying at the next change");
                pass.failed.push(key.clone());
            }
        }
    }
    for (key, dp) in &existing {
        if wanted.contains_key(key) {
            continue;
        }
        match resources.delete(ResourceType::Dataplane, dp.mesh.as_deref(), &dp.name, None).await {
            Ok(_) => pass.removed.push(key.clone()),
            Err(strait_cp_core::resources::ServiceError::Store(strait_store::StoreError::NotFound { .. })) => {}
            Err(error) => {
                tracing::warn!(dataplane = %key, %error, "cannot remove the Dataplane of a gone Pod; retrying at the next change");
                pass.failed.push(key.clone());
            }
        }
    }
    Ok(pass)
}

/// Caches of the cluster's objects, filled by watches.
struct Caches {
    pods: Store<Pod>,
    services: Store<Service>,
    slices: Store<EndpointSlice>,
    namespaces: Store<Namespace>,
}

/// Watches `K` into a cache, waking `changed` after each event; logs failed watches (they
/// are retried with back-off).
fn watch<K>(api: Api<K>, changed: Arc<Notify>, shutdown: CancellationToken) -> Store<K>
where
    K: kube::Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug + Send + Sync + 'static,
    K::DynamicType: Default + Eq + std::hash::Hash + Clone,
{
    let (store, writer) = reflector::store();
    let kind = K::kind(&K::DynamicType::default()).to_string();
    let stream = reflector::reflector(writer, watcher(api, watcher::Config::default()).default_backoff());
    tokio::spawn(async move {
        let mut stream = std::pin::pin!(stream);
        loop {
            let next = tokio::select! {
                _ = shutdown.cancelled() => return,
                next = stream.next() => next,
            };
            match next {
                Some(Ok(_)) => changed.notify_one(),
                Some(Err(error)) => tracing::warn!(%kind, %error, "the watch of the Kubernetes API failed; retrying"),
                None => return,
            }
        }
    });
    store
}

/// Runs the controller until `shutdown`: Dataplanes of zone `zone` follow the cluster.
/// `on_change` is called after the first complete pass (the zone's Dataplanes are then the
/// cluster's), and after every pass that changed a Dataplane.
pub async fn run(
    client: kube::Client,
    zone: String,
    resources: Resources,
    on_change: impl Fn() + Send + 'static,
    shutdown: CancellationToken,
) {
    let changed = Arc::new(Notify::new());
    let caches = Caches {
        pods: watch(Api::<Pod>::all(client.clone()), changed.clone(), shutdown.clone()),
        services: watch(Api::<Service>::all(client.clone()), changed.clone(), shutdown.clone()),
        slices: watch(Api::<EndpointSlice>::all(client.clone()), changed.clone(), shutdown.clone()),
        namespaces: watch(Api::<Namespace>::all(client), changed.clone(), shutdown.clone()),
    };
    let ready = async {
        let _ = caches.pods.wait_until_ready().await;
        let _ = caches.services.wait_until_ready().await;
        let _ = caches.slices.wait_until_ready().await;
        let _ = caches.namespaces.wait_until_ready().await;
    };
    tokio::select! {
        _ = shutdown.cancelled() => return,
        _ = ready => {}
    }
    tracing::info!("the Kubernetes caches are complete: Dataplanes follow the cluster's Pods");
    let mut first = true;
    loop {
        let wanted = desired(&caches.pods.state(), &caches.services.state(), &caches.slices.state(), &caches.namespaces.state(), &zone);
        match apply(&resources, &wanted).await {
            Ok(pass) => {
                let changed = !pass.written.is_empty() || !pass.removed.is_empty();
                if changed {
                    tracing::info!(written = ?pass.written, removed = ?pass.removed, "Dataplanes follow the cluster");
                }
                if changed || std::mem::take(&mut first) {
                    on_change();
                }
            }
            Err(error) => tracing::warn!(%error, "cannot read the zone's Dataplanes; retrying at the next change"),
        }
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = changed.notified() => {}
        }
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(DEBOUNCE) => {}
        }
    }
}
