//! Inspecting one sidecar of the zone, for the global (`straitctl inspect dataplane`).
//!
//! In: a question from the global over the zone's sync stream: a mesh, a Dataplane name and
//! what to show. Out: the answer as JSON, or an HTTP-like status and reason:
//!
//! - `config` and `stats` are asked of the sidecar itself, over its own DPS stream (its
//!   session lends a channel, see [`Inspectors`]): what it runs and its metrics, live;
//! - `policies` is computed here from the zone's store: for each inbound, outbound and route,
//!   the policies that matched, in merge order, and for each effective field the policy that
//!   set it ([`strait_api::proxy_config::explain`]).
//!
//! The global never connects into the zone: question and answer travel on the stream the zone
//! opened.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use strait_api::kds::{InspectRequest, InspectResponse};
use strait_api::{proxy_config, ResourceType};
use strait_cp_core::resources::Resources;
use tokio::sync::{mpsc, oneshot};

/// How long a sidecar has to answer.
pub const SIDECAR_TIMEOUT: Duration = Duration::from_secs(5);

/// A question for a connected sidecar: what to show, and where its answer goes.
pub type Call = (String, oneshot::Sender<Result<Vec<u8>, String>>);

/// The connected sidecars' question channels, by `mesh/name`.
#[derive(Clone, Default)]
pub struct Inspectors(Arc<Mutex<HashMap<String, mpsc::Sender<Box<Call>>>>>);

impl Inspectors {
    /// Registers the channel of sidecar `id` (`mesh/name`) while its session lasts (boxed
    /// questions: the channel's slots are allocated 32 at a time and kept while it lasts).
    pub fn register(&self, id: &str) -> mpsc::Receiver<Box<Call>> {
        let (tx, rx) = mpsc::channel(4);
        self.0.lock().unwrap_or_else(|p| p.into_inner()).insert(id.to_string(), tx);
        rx
    }

    /// Forgets the channel of sidecar `id`.
    pub fn remove(&self, id: &str) {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).remove(id);
    }

    /// Asks sidecar `id` for `what`.
    async fn ask(&self, id: &str, what: &str) -> Result<Vec<u8>, (u32, String)> {
        let sender = self.0.lock().unwrap_or_else(|p| p.into_inner()).get(id).cloned();
        let Some(sender) = sender else {
            return Err((503, format!("dataplane {id} is registered in this zone but its sidecar is not connected")));
        };
        let (tx, rx) = oneshot::channel();
        if sender.send(Box::new((what.to_string(), tx))).await.is_err() {
            return Err((503, format!("the sidecar of {id} disconnected")));
        }
        match tokio::time::timeout(SIDECAR_TIMEOUT, rx).await {
            Ok(Ok(Ok(json))) => Ok(json),
            Ok(Ok(Err(error))) => Err((502, format!("the sidecar of {id} answered: {error}"))),
            Ok(Err(_)) => Err((503, format!("the sidecar of {id} disconnected before answering"))),
            Err(_) => Err((504, format!("the sidecar of {id} did not answer within {SIDECAR_TIMEOUT:?}"))),
        }
    }
}

/// Answers the global's `request`.
pub async fn answer(resources: &Resources, zone: &str, inspectors: &Inspectors, request: &InspectRequest) -> InspectResponse {
    let result = match request.what.as_str() {
        "config" | "stats" => match registered(resources, request).await {
            Ok(()) => inspectors.ask(&format!("{}/{}", request.mesh, request.dataplane), &request.what).await,
            Err(e) => Err(e),
        },
        "policies" => policies(resources, zone, request).await,
        other => Err((400, format!("cannot inspect {other:?}: ask for config, policies or stats"))),
    };
    match result {
        Ok(json) => InspectResponse { id: request.id, json, error: String::new(), status: 200 },
        Err((status, error)) => InspectResponse { id: request.id, json: Vec::new(), error, status },
    }
}

async fn registered(resources: &Resources, request: &InspectRequest) -> Result<(), (u32, String)> {
    match resources.get(ResourceType::Dataplane, Some(&request.mesh), &request.dataplane).await {
        Ok(Some(_)) => Ok(()),
        Ok(None) => Err((404, format!("no dataplane {:?} in mesh {:?} in this zone", request.dataplane, request.mesh))),
        Err(e) => Err((503, format!("zone store: {e}"))),
    }
}

/// The policies behind each field of the sidecar's configuration.
async fn policies(resources: &Resources, zone: &str, request: &InspectRequest) -> Result<Vec<u8>, (u32, String)> {
    let unavailable = |e: &dyn std::fmt::Display| (503, format!("zone store: {e}"));
    let Some(dp) = resources.get(ResourceType::Dataplane, Some(&request.mesh), &request.dataplane).await.map_err(|e| unavailable(&e))?
    else {
        return Err((404, format!("no dataplane {:?} in mesh {:?} in this zone", request.dataplane, request.mesh)));
    };
    let mut all = Vec::new();
    for kind in ResourceType::ALL.iter().copied().filter(|k| k.is_mesh_scoped()) {
        all.extend(resources.list(kind, Some(&request.mesh)).await.map_err(|e| unavailable(&e))?);
    }
    let remote = crate::gateways::remote(resources.store().as_ref()).await.map_err(|e| unavailable(&e))?;
    let explained = proxy_config::explain(&dp, zone, &all, &remote).ok_or((500, "not a Dataplane".to_string()))?;
    serde_json::to_vec(&explained).map_err(|e| (500, e.to_string()))
}
