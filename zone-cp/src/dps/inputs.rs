//! What every sidecar of a mesh computes its configuration from, read once per store revision
//! and shared by every session: the mesh's view (its policies, each converted once, and every
//! service's endpoints, this zone's and the other zones'), its trust bundle and certificate
//! lifetime. Without it, each session read and parsed the whole mesh on its own at every
//! change: with N sidecars, N reads of N Dataplanes per change, and N copies in memory at once
//! during a registration storm; and each sidecar's build went over every Dataplane again.
//!
//! In: the store and the revision a session computes at. Out: [`MeshInputs`], behind an `Arc`.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use bytes::Bytes;
use strait_api::proxy_config::{MeshTrust, MeshView, ProxyConfig};
use strait_api::{Resource, ResourceType, Spec};
use strait_cp_core::resources::Resources;
use strait_store::Key;
use tonic::Status;

/// A mesh's inputs at (or after) one store revision.
pub struct MeshInputs {
    /// The store revision read before the inputs: they are at least this recent.
    pub revision: u64,
    /// The mesh's policies and endpoints, prepared for building each sidecar's configuration.
    pub view: MeshView,
    /// The mesh's trust bundle.
    pub bundle: MeshTrust,
    /// The lifetime of the mesh's workload certificates.
    pub certificate_lifetime: Duration,
    /// The settings of each shape of sidecar ([`MeshView::shape_of`]), computed by the first
    /// session that needs them; the others wait for that one rather than compute them again.
    settings: Mutex<HashMap<String, Arc<OnceLock<Built>>>>,
}

/// The settings of a shape, or why they could not be made.
type Built = Result<Option<Arc<SharedSettings>>, String>;

/// The settings part of a configuration ([`MeshView::build_settings`]) that every sidecar of
/// one shape gets: computed, encoded and digested once per mesh inputs. They name no
/// Dataplane: a sidecar takes them as its own.
pub struct SharedSettings {
    /// The settings, `dataplane` empty.
    pub config: ProxyConfig,
    /// Their JSON, sent as is to every sidecar of the shape.
    pub json: Bytes,
    /// The SHA-256 of `json`.
    pub digest: Vec<u8>,
}

impl MeshInputs {
    /// The inputs of a mesh, with no settings computed yet.
    pub fn new(revision: u64, view: MeshView, bundle: MeshTrust, certificate_lifetime: Duration) -> MeshInputs {
        MeshInputs { revision, view, bundle, certificate_lifetime, settings: Mutex::default() }
    }

    /// The settings of Dataplane `dp`, shared with the sidecars of its shape. `Ok(None)` when
    /// `dp` is not a Dataplane of a mesh; an error when a merged conf does not fit its type.
    pub fn settings(&self, dp: &strait_api::Resource) -> Built {
        let Some(shape) = self.view.shape_of(dp) else { return Ok(None) };
        let slot = self.settings.lock().unwrap_or_else(|p| p.into_inner()).entry(shape).or_default().clone();
        slot.get_or_init(|| {
            let built = self.view.build_settings(dp, self.bundle.clone(), self.certificate_lifetime.as_secs());
            let Some(mut config) = built.map_err(|e| e.to_string())? else { return Ok(None) };
            config.dataplane.clear();
            let json = serde_json::to_vec(&config).map_err(|e| format!("the settings do not encode: {e}"))?;
            let digest = strait_pki::pem::sha256(&json);
            Ok(Some(Arc::new(SharedSettings { config, json: json.into(), digest })))
        })
        .clone()
    }
}

/// The latest inputs of each mesh; cheap to clone.
#[derive(Clone)]
pub struct InputCache {
    // An async lock held while reading: sessions woken by one change wait for one read.
    meshes: Arc<tokio::sync::Mutex<HashMap<String, Cached>>>,
    /// How long each read took.
    reads: prometheus_client::metrics::histogram::Histogram,
}

fn unavailable(e: impl std::fmt::Display) -> Status {
    Status::unavailable(format!("zone store: {e}"))
}

/// A mesh's latest inputs, and when and how long their read took.
struct Cached {
    inputs: Arc<MeshInputs>,
    ended: tokio::time::Instant,
    took: Duration,
}

impl InputCache {
    /// No inputs yet; each read's time goes to `reads`.
    pub fn new(reads: prometheus_client::metrics::histogram::Histogram) -> InputCache {
        InputCache { meshes: Arc::default(), reads }
    }

    /// The inputs of `mesh` at least as recent as `revision`: shared when another session
    /// already read them, else read now.
    pub async fn get(&self, resources: &Resources, zone: &str, mesh: &str, revision: u64) -> Result<Arc<MeshInputs>, Status> {
        let mut meshes = self.meshes.lock().await;
        if let Some(cached) = meshes.get(mesh) {
            if cached.inputs.revision >= revision {
                return Ok(cached.inputs.clone());
            }
            // Paced: a read begins no sooner than the last one's length after it ended, so
            // reads take at most half the zone's time however fast changes come (through a
            // registration storm they came back to back, each over every Dataplane). The
            // sessions waiting meanwhile are all answered by the read that follows, which
            // takes in every change made until it begins; a change after a quiet spell is read
            // at once.
            tokio::time::sleep_until(cached.ended + cached.took).await;
        }
        let read_at = resources.store().revision().max(revision);
        let began = tokio::time::Instant::now();
        let inputs = Arc::new(read(resources, zone, mesh, read_at).await?);
        let ended = tokio::time::Instant::now();
        self.reads.observe((ended - began).as_secs_f64());
        meshes.insert(mesh.to_string(), Cached { inputs: inputs.clone(), ended, took: ended - began });
        Ok(inputs)
    }
}

async fn read(resources: &Resources, zone: &str, mesh: &str, revision: u64) -> Result<MeshInputs, Status> {
    // Shared with the listings before: only the resources that changed since are parsed.
    let mut all = Vec::new();
    for kind in ResourceType::ALL.iter().copied().filter(|k| k.is_mesh_scoped()) {
        all.extend(resources.list_shared(kind, Some(mesh)).await.map_err(unavailable)?);
    }
    let bundle = resources
        .store()
        .get(&Key::new(strait_cp_core::kinds::TRUST_BUNDLE, mesh, "default"))
        .await
        .map_err(unavailable)?
        .map(|o| serde_json::from_value::<MeshTrust>(o.data))
        .transpose()
        .map_err(|e| Status::internal(format!("the mesh's stored trust bundle does not parse: {e}")))?
        .unwrap_or_default();
    let certificate_lifetime = match resources.get(ResourceType::Mesh, None, mesh).await.map_err(unavailable)? {
        Some(Resource { spec: Spec::Mesh(m), .. }) => m.certificate_lifetime().get(),
        _ => return Err(Status::failed_precondition(format!("mesh {mesh:?} is gone from this zone"))),
    };
    let remote = crate::gateways::remote(resources.store().as_ref()).await.map_err(unavailable)?;
    // Building the view goes over every Dataplane and policy once: off the async threads.
    let (zone, mesh) = (zone.to_string(), mesh.to_string());
    let view = tokio::task::spawn_blocking(move || MeshView::new(&mesh, &zone, &all, &remote))
        .await
        .map_err(|e| Status::internal(format!("building the mesh's view failed: {e}")))?;
    Ok(MeshInputs::new(revision, view, bundle, certificate_lifetime))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sidecars_of_one_shape_share_one_computation_and_a_name_in_a_policy_splits_them() {
        let dataplane = |name: &str, address: &str| {
            format!(
                "type: Dataplane\nname: {name}\nmesh: default\nspec:\n  networking:\n    address: {address}\n    inbound: [{{port: 8080, tags: {{strait.io/service: web}}}}]\n    outbound: [{{port: 10001, tags: {{strait.io/service: api}}}}]\n---\n"
            )
        };
        let api = "type: Dataplane\nname: api-1\nmesh: default\nspec:\n  networking:\n    address: 192.0.2.9\n    inbound: [{port: 9090, tags: {strait.io/service: api}}]\n---\n";
        let docs = dataplane("web-1", "192.0.2.1") + &dataplane("web-2", "192.0.2.2") + api;
        let mut resources: Vec<strait_api::Resource> = strait_api::parse_documents(&docs).into_iter().map(|r| r.unwrap()).collect();
        let remote = strait_api::proxy_config::Remote::default();
        let inputs = |resources: &[strait_api::Resource]| {
            let view = MeshView::new("default", "zone-1", resources, &remote);
            MeshInputs::new(1, view, MeshTrust::default(), Duration::from_secs(3600))
        };
        let shared = inputs(&resources);
        let (one, two) = (shared.settings(&resources[0]).unwrap().unwrap(), shared.settings(&resources[1]).unwrap().unwrap());
        assert!(Arc::ptr_eq(&one, &two), "replicas of web share one computation");
        assert_eq!(one.config.dataplane, "", "shared settings name no sidecar");
        assert_eq!(one.digest, strait_pki::pem::sha256(&one.json));
        let built = shared.view.build_settings(&resources[0], MeshTrust::default(), 3600).unwrap().unwrap();
        assert_eq!((one.config.outbounds.clone(), one.config.inbounds.clone()), (built.outbounds, built.inbounds));

        let named = "type: MeshTimeout\nname: t\nmesh: default\nspec:\n  targetRef: {kind: Dataplane, name: web-1}\n  to: [{targetRef: {kind: Mesh}, default: {idleTimeout: 5s}}]\n";
        resources.extend(strait_api::parse_documents(named).into_iter().map(|r| r.unwrap()));
        let split = inputs(&resources);
        let (one, two) = (split.settings(&resources[0]).unwrap().unwrap(), split.settings(&resources[1]).unwrap().unwrap());
        assert!(!Arc::ptr_eq(&one, &two));
        assert_ne!(one.config.outbounds, two.config.outbounds, "web-1 alone gets its timeout");
        assert!(split.settings(&resources[3]).unwrap().is_none(), "a policy is not a Dataplane");
    }
}
