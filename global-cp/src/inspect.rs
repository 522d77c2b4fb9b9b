//! Questions about a sidecar of any zone (`straitctl inspect dataplane`), asked through the
//! zones' own sync streams: the global never connects into a zone.
//!
//! In: a mesh, a Dataplane name, what to show and maybe the zone. Out: the answer of the zone
//! that has the sidecar, or why there is none: each connected zone (or the one named) is
//! asked at once; the first to answer wins; when none has it (or the zone named is not
//! connected), 404; when a zone that may have it failed, its status (503: it disconnected
//! meanwhile, 504: no answer in time).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use strait_api::kds::{global_message, GlobalMessage, InspectRequest, InspectResponse};
use tokio::sync::{mpsc, oneshot};
use tonic::Status;

/// How long a zone has to answer.
pub const ZONE_TIMEOUT: Duration = Duration::from_secs(8);

/// What can be inspected.
pub const WHATS: [&str; 3] = ["config", "policies", "stats"];

/// A zone's stream to send questions on.
struct Stream {
    session: u64,
    tx: mpsc::Sender<Result<GlobalMessage, Status>>,
}

#[derive(Default)]
struct Inner {
    streams: HashMap<String, Stream>,
    next_id: u64,
    waiting: HashMap<u64, oneshot::Sender<InspectResponse>>,
}

/// The zones' streams and the questions waiting for an answer; cheap to clone.
#[derive(Clone, Default)]
pub struct Inspections(Arc<Mutex<Inner>>);

/// The answer: the zone that has the sidecar and its JSON.
#[derive(Debug)]
pub struct Answer {
    /// The zone.
    pub zone: String,
    /// What it answered.
    pub json: serde_json::Value,
}

impl Inspections {
    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Lends session `session`'s stream to zone `zone` while it lasts.
    pub fn attach(&self, zone: &str, session: u64, tx: mpsc::Sender<Result<GlobalMessage, Status>>) {
        self.lock().streams.insert(zone.to_string(), Stream { session, tx });
    }

    /// Takes back the stream of session `session` (not a newer one of the same zone).
    pub fn detach(&self, zone: &str, session: u64) {
        let mut inner = self.lock();
        if inner.streams.get(zone).is_some_and(|s| s.session == session) {
            inner.streams.remove(zone);
        }
    }

    /// Hands a zone's answer to its question.
    pub fn answered(&self, response: InspectResponse) {
        if let Some(waiting) = self.lock().waiting.remove(&response.id) {
            let _ = waiting.send(response);
        }
    }

    /// Asks zone `zone`.
    async fn ask_zone(&self, zone: &str, mesh: &str, dataplane: &str, what: &str) -> Result<serde_json::Value, (u16, String)> {
        let (tx, rx) = oneshot::channel();
        let (id, stream) = {
            let mut inner = self.lock();
            let Some(stream) = inner.streams.get(zone).map(|s| s.tx.clone()) else {
                // Not an error of the global's: nothing to find there until the zone connects.
                return Err((
                    404,
                    format!("zone {zone} is not connected to this replica of the global: its sidecars can be inspected through the replica that holds its stream, or once it connects"),
                ));
            };
            inner.next_id += 1;
            let id = inner.next_id;
            inner.waiting.retain(|_, w| !w.is_closed());
            inner.waiting.insert(id, tx);
            (id, stream)
        };
        let request = InspectRequest { id, mesh: mesh.to_string(), dataplane: dataplane.to_string(), what: what.to_string() };
        let message = GlobalMessage { message: Some(global_message::Message::Inspect(request)) };
        if stream.send(Ok(message)).await.is_err() {
            self.lock().waiting.remove(&id);
            return Err((503, format!("zone {zone} disconnected")));
        }
        let response = match tokio::time::timeout(ZONE_TIMEOUT, rx).await {
            Ok(Ok(response)) => response,
            Ok(Err(_)) => return Err((503, format!("zone {zone} disconnected before answering"))),
            Err(_) => {
                self.lock().waiting.remove(&id);
                return Err((504, format!("zone {zone} did not answer within {ZONE_TIMEOUT:?}")));
            }
        };
        if !response.error.is_empty() {
            let status = u16::try_from(response.status).ok().filter(|s| (400..600).contains(s)).unwrap_or(502);
            return Err((status, format!("zone {zone}: {}", response.error)));
        }
        serde_json::from_slice(&response.json).map_err(|e| (502, format!("zone {zone} answered something that is not JSON: {e}")))
    }

    /// Asks `zone`, or every connected zone, about Dataplane `dataplane` of `mesh`.
    pub async fn ask(&self, zone: Option<&str>, mesh: &str, dataplane: &str, what: &str) -> Result<Answer, (u16, String)> {
        let zones: Vec<String> = match zone {
            Some(z) => vec![z.to_string()],
            None => {
                let mut all: Vec<String> = self.lock().streams.keys().cloned().collect();
                all.sort();
                all
            }
        };
        if zones.is_empty() {
            return Err((404, format!("no zone is connected, so no sidecar {dataplane:?} of mesh {mesh:?} can be found")));
        }
        let asked = zones.iter().map(|z| async move { (z.clone(), self.ask_zone(z, mesh, dataplane, what).await) });
        let answers = futures::future::join_all(asked).await;
        let mut failures = Vec::new();
        for (zone, answer) in answers {
            match answer {
                Ok(json) => return Ok(Answer { zone, json }),
                Err(failure) => failures.push(failure),
            }
        }
        // A zone that may have the sidecar but failed says more than the zones that do not have it.
        if let Some(failure) = failures.iter().find(|(status, _)| *status != 404) {
            return Err(failure.clone());
        }
        Err((404, format!("no connected zone has dataplane {dataplane:?} in mesh {mesh:?} (asked: {})", zones.join(", "))))
    }
}
