//! One sidecar's DPS stream: register its Dataplane, send its configuration and again on every
//! change that affects it, sign its certificate, and unregister it when it leaves.
//!
//! In: the sidecar's ACK/NACK and CSRs, and the zone store's changes. Out: `Config` messages
//! (only when the sidecar's configuration really changed) and `Certificate` messages.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};

use futures::StreamExt as _;
use serde_json::json;
use strait_api::dataplane::InboundHealth;
use strait_api::dps::{dataplane_message, zone_message, Certificate, DataplaneMessage, Health, InspectRequest, ZoneMessage};
use strait_api::{Resource, ResourceType, Spec};
use strait_cp_core::kinds::DATAPLANE_NACK;
use strait_store::{Key, Precondition};
use tonic::Status;

use super::sent::Sent;
use super::DpsShared;

/// A connected sidecar.
pub struct Session {
    pub(super) shared: DpsShared,
    pub(super) dp: Resource,
    /// Whether the Dataplane is the one the Kubernetes controller keeps for the sidecar's Pod:
    /// then the session follows the stored Dataplane (its Services may change) and leaves it
    /// in place when the stream ends (the Pod's deletion removes it).
    pub(super) from_pod: bool,
    pub(super) mesh: String,
    pub(super) service: String,
    pub(super) id: String,
    /// The dataplane token it connected with; the session ends when it expires or is revoked.
    pub(super) token: super::TokenHold,
    pub(super) tx: super::Outbox,
    /// Whether the sidecar takes its configuration in parts (its Hello says `deltas`).
    pub(super) in_parts: bool,
    /// Whether it takes each delta in pieces of a few KB (its Hello says `pieces`).
    pub(super) in_pieces: bool,
    /// Whether the sidecar's latest answer was a NACK (recorded in the store while it lasts).
    pub(super) nacked: AtomicBool,
    /// The version of the last configuration sent, and when, until the sidecar answers.
    pub(super) sent: std::sync::Mutex<Option<(u64, std::time::Instant)>>,
    /// Questions asked of the sidecar (`straitctl inspect`): the last id, and the waiting ones by id.
    pub(super) inspecting: std::sync::Mutex<(u64, Waiting)>,
}

/// Questions waiting for the sidecar's answer, by id.
type Waiting = HashMap<u64, tokio::sync::oneshot::Sender<Result<Vec<u8>, String>>>;

/// Longest NACK reason recorded, in characters.
const MAX_NACK_REASON: usize = 1024;

/// The shortest time between two recomputations of a session's configuration: a change after
/// a quiet spell goes out at once; changes that follow closer than this wait and go out
/// together. In a registration storm every new Dataplane is a change for every session, and
/// each session's recomputation sends its sidecar the endpoints that changed (tens of KB when
/// its destination has hundreds of endpoints): with a fixed interval, the sessions together
/// send without bound as the zone grows (3,333 sidecars a zone, 200 ms: 16,000 messages a
/// second, which starved the zone of the CPU to take the new sidecars' Hellos). So the
/// interval grows with the sidecars connected, [`RECOMPUTE_PER_SESSION`] each, from
/// [`RECOMPUTE_EVERY`]: the zone recomputes at most a bounded number of configurations a
/// second, however many sidecars it has.
const RECOMPUTE_EVERY: std::time::Duration = std::time::Duration::from_millis(200);

/// The interval's share of each connected sidecar (at most 1,000 recomputations a second).
/// Through a registration storm each recomputation sends the sidecar its destinations' whole
/// endpoint lists again: at 2,000 a second, 10,000 simulated sidecars over 3 zones were sent
/// 5.8 GB in the storm, and writing and reading it was a fifth of every process's CPU.
const RECOMPUTE_PER_SESSION: std::time::Duration = std::time::Duration::from_millis(1);

/// The shortest time between two recomputations with `sessions` sidecars connected.
fn recompute_every(sessions: usize) -> std::time::Duration {
    RECOMPUTE_EVERY.max(RECOMPUTE_PER_SESSION * sessions.min(100_000) as u32)
}

fn unavailable(e: impl std::fmt::Display) -> Status {
    Status::unavailable(format!("zone store: {e}"))
}

impl Session {
    /// Runs until the sidecar leaves, then unregisters its Dataplane. The session and its
    /// stream come boxed: a future keeps its arguments and their moved copies apart, so taken
    /// by value they would be held twice for the session's whole life, by each of the
    /// zone's thousands of sessions.
    pub async fn run(self: Box<Self>, mut inbound: super::Inbound) {
        let result = self.serve(&mut inbound).await;
        let reason = match &result {
            Ok(()) => "sidecar closed the stream".to_string(),
            Err(s) => s.message().to_string(),
        };
        if !self.from_pod {
            if let Err(e) = self.shared.resources.delete(ResourceType::Dataplane, Some(&self.mesh), &self.dp.name, None).await {
                tracing::warn!(error = %e, "could not unregister the Dataplane");
            }
        }
        self.clear_nack().await;
        self.shared.targets.remove(&self.dp);
        self.shared.inspectors.remove(&self.id);
        self.shared.traffic.forget(&self.id);
        self.shared.inventory.ask();
        self.shared.connected.lock().unwrap_or_else(|p| p.into_inner()).remove(&self.id);
        tracing::info!(reason, "sidecar disconnected");
        if let Err(status) = result {
            let _ = self.tx.send(Box::new(Err(status))).await;
        }
    }

    async fn send(&self, message: zone_message::Message) -> Result<(), Status> {
        self.tx.send(Box::new(Ok(ZoneMessage { message: Some(message) }))).await.map_err(|_| Status::cancelled("sidecar stream closed"))
    }

    async fn serve(&self, inbound: &mut super::Inbound) -> Result<(), Status> {
        // Follow changes before registering, so no change between the two is missed.
        let mut changes = self.shared.changes.subscribe();
        Box::pin(async {
            // A revocation that arrived between the authentication and this watch is seen now.
            self.token.check(&self.shared.resources).await?;
            if !self.from_pod {
                self.shared.resources.put(&self.dp).await.map_err(unavailable)?;
                // The inventory follows (paced); the sidecar's configuration does not wait for it.
                self.shared.inventory.ask();
            }
            Ok::<_, Status>(())
        })
        .await?;
        let mut sent = Sent::new(self.in_parts);
        let mut pushed = tokio::time::Instant::now();
        self.after_changes(&mut sent, &mut pushed, true, false).await?;
        // Changes heard too soon after a recomputation: (relevant, revoked). While they wait,
        // the zone's changes are not listened to; those that come meanwhile are taken with
        // them when the wait is over.
        let mut waiting: Option<(bool, bool)> = None;
        let recompute = tokio::time::sleep_until(pushed + RECOMPUTE_EVERY);
        let sessions = || self.shared.connected.lock().unwrap_or_else(|p| p.into_inner()).len();
        tokio::pin!(recompute);
        let mut questions = self.shared.inspectors.register(&self.id);
        let mut leading = self.shared.leading.clone();
        loop {
            tokio::select! {
                () = &mut recompute, if waiting.is_some() => {
                    let Some((mut relevant, mut revoked)) = waiting.take() else { continue };
                    if let Some(change) = changes.ready() {
                        let (more_relevant, more_revoked) = changes.burst(change, |key| self.affects(key));
                        relevant |= more_relevant;
                        revoked |= more_revoked;
                    }
                    self.after_changes(&mut sent, &mut pushed, relevant, revoked).await?;
                }
                status = super::lost_leadership(&mut leading) => return Err(status),
                Some(call) = questions.recv() => {
                    let (what, answer) = *call;
                    let id = {
                        let mut inspecting = self.inspecting.lock().unwrap_or_else(|p| p.into_inner());
                        inspecting.0 += 1;
                        let id = inspecting.0;
                        inspecting.1.retain(|_, waiting| !waiting.is_closed());
                        inspecting.1.insert(id, answer);
                        id
                    };
                    self.send(zone_message::Message::Inspect(InspectRequest { id, what })).await?;
                }
                () = self.shared.shutdown.cancelled() => return Err(Status::unavailable("the zone control plane is shutting down")),
                status = self.token.expired() => return Err(status),
                change = changes.next(), if waiting.is_none() => {
                    let Some(change) = change else { return Err(Status::unavailable("the zone control plane is shutting down")) };
                    let (relevant, revoked) = changes.burst(change, |key| self.affects(key));
                    if relevant {
                        let every = recompute_every(sessions());
                        if pushed.elapsed() < every {
                            // Too soon after the last one: this and what follows go together.
                            waiting = Some((relevant, revoked));
                            recompute.as_mut().reset(pushed + every);
                            continue;
                        }
                    }
                    self.after_changes(&mut sent, &mut pushed, relevant, revoked).await?;
                }
                message = inbound.next() => match message {
                    Some(Ok(m)) => {
                        // Boxed, as is every step that awaits more than the stream: a session
                        // waits most of its life, and waiting holds the largest step's state.
                        let refused = Box::pin(self.handle(m)).await?;
                        if refused.is_some_and(|version| sent.refused(version)) {
                            tracing::info!("sending the whole configuration again: the sidecar could not put the last change together");
                            self.after_changes(&mut sent, &mut pushed, true, false).await?;
                        }
                    }
                    None => return Ok(()),
                    Some(Err(s)) => return Err(Status::aborted(format!("sidecar stream failed: {}", s.message()))),
                },
            }
        }
    }

    /// Takes changes: checks the token again when one may be revoked, and recomputes (and
    /// notes when) when one is `relevant`. Boxed: a session holds the state of its largest step
    /// while it waits, and this is the largest.
    async fn after_changes(&self, sent: &mut Sent, pushed: &mut tokio::time::Instant, relevant: bool, revoked: bool) -> Result<(), Status> {
        Box::pin(async {
            if revoked {
                self.token.check(&self.shared.resources).await?;
            }
            if relevant {
                self.push_config(sent).await?;
                *pushed = tokio::time::Instant::now();
            }
            Ok(())
        })
        .await
    }

    /// Whether a change of `key` can change this sidecar's configuration.
    fn affects(&self, key: &Key) -> bool {
        // Sidecars' NACK records are status, not configuration.
        key.kind != DATAPLANE_NACK
            && (key.mesh == self.mesh || (key.kind == "Mesh" && key.name == self.mesh) || crate::gateways::affects_remote(key))
    }

    /// Recomputes the configuration and sends what changed. Its version is the zone store's
    /// revision it was computed at, so versions only grow, across reconnects and zone restarts
    /// too.
    async fn push_config(&self, sent: &mut Sent) -> Result<(), Status> {
        let version = self.shared.resources.store().revision();
        let dp = self.current().await?;
        let inputs = self.shared.inputs.get(&self.shared.resources, &self.shared.zone, &self.mesh, version).await?;
        // Sidecars in parts share their settings with the sidecars alike; one taking whole
        // configurations gets its own.
        let built = if sent.in_parts() {
            inputs.settings(&dp).map(|s| s.map(Built::Parts))
        } else {
            let lifetime = inputs.certificate_lifetime.as_secs();
            inputs.view.build(&dp, inputs.bundle.clone(), lifetime).map(|c| c.map(|c| Built::Whole(Box::new(c)))).map_err(|e| e.to_string())
        };
        let built = match built {
            Ok(Some(built)) => built,
            Ok(None) => return Err(Status::internal("not a Dataplane")),
            Err(e) => {
                // The sidecar keeps what it has; nothing it could not apply is sent.
                tracing::error!(version, error = %e, "a merged policy does not fit its type; the sidecar keeps its configuration");
                return Ok(());
            }
        };
        let message = match &built {
            Built::Parts(settings) => {
                self.shared.targets.set(&self.shared.zone, &dp, &settings.config);
                sent.next_parts(settings, &inputs.view, version)?
            }
            Built::Whole(config) => {
                self.shared.targets.set(&self.shared.zone, &dp, config);
                sent.next_whole(config, version)?
            }
        };
        let Some(message) = message else { return Ok(()) };
        tracing::debug!(version, "sending configuration");
        match message.message {
            // Pieces keep the stream's encoding buffer (which stays the size of the largest
            // message it sent, for the stream's life) at a few KB.
            Some(zone_message::Message::ConfigDelta(delta)) if self.in_pieces => {
                for piece in strait_api::dps_delta::pieces(delta, strait_api::dps_delta::PIECE_BYTES) {
                    self.send(zone_message::Message::ConfigDelta(piece)).await?;
                }
            }
            Some(message) => self.send(message).await?,
            None => return Ok(()),
        }
        *self.sent.lock().unwrap_or_else(|p| p.into_inner()) = Some((version, std::time::Instant::now()));
        Ok(())
    }

    /// The sidecar's Dataplane now: the one it registered, or the one the controller keeps for
    /// its Pod (gone when the Pod is, or when no Service selects it any more).
    async fn current(&self) -> Result<std::borrow::Cow<'_, Resource>, Status> {
        if !self.from_pod {
            return Ok(std::borrow::Cow::Borrowed(&self.dp));
        }
        match self.shared.resources.get(ResourceType::Dataplane, Some(&self.mesh), &self.dp.name).await.map_err(unavailable)? {
            Some(dp) => Ok(std::borrow::Cow::Owned(dp)),
            None => Err(Status::not_found(format!(
                "the zone removed Dataplane {}: its Pod is gone, or no Service selects it any more",
                self.dp.name
            ))),
        }
    }

    async fn certificate_lifetime(&self) -> Result<std::time::Duration, Status> {
        match self.shared.resources.get(ResourceType::Mesh, None, &self.mesh).await.map_err(unavailable)? {
            Some(Resource { spec: Spec::Mesh(m), .. }) => Ok(m.certificate_lifetime().get()),
            _ => Err(Status::failed_precondition(format!("mesh {:?} is gone from this zone", self.mesh))),
        }
    }

    /// Takes one message of the sidecar; the version it refused, if it is a NACK.
    async fn handle(&self, message: DataplaneMessage) -> Result<Option<u64>, Status> {
        match message.message {
            Some(dataplane_message::Message::Ack(ack)) => {
                tracing::debug!(version = ack.version, "configuration applied");
                let sent = self.sent.lock().unwrap_or_else(|p| p.into_inner()).take_if(|(version, _)| *version == ack.version);
                if let Some((_, at)) = sent {
                    self.shared.metrics.push_latency.observe(at.elapsed().as_secs_f64());
                }
                self.clear_nack().await;
            }
            Some(dataplane_message::Message::Nack(nack)) => {
                tracing::warn!(version = nack.version, error = %nack.error, "sidecar refused its configuration (NACK); it keeps its previous one");
                self.shared.metrics.config_nacks.inc();
                self.record_nack(nack.version, &nack.error).await;
                return Ok(Some(nack.version));
            }
            Some(dataplane_message::Message::CertificateRequest(req)) => {
                self.token.check(&self.shared.resources).await?;
                let answer = match self.sign(&req.csr_pem).await {
                    Ok(chain) => Certificate { cert_chain_pem: chain, error: String::new() },
                    Err(e) => {
                        tracing::warn!(error = %e, "could not issue a workload certificate");
                        Certificate { cert_chain_pem: String::new(), error: e }
                    }
                };
                self.send(zone_message::Message::Certificate(answer)).await?;
            }
            Some(dataplane_message::Message::Health(health)) => self.record_health(&health).await?,
            Some(dataplane_message::Message::Traffic(report)) => self.shared.traffic.record(&self.id, report),
            Some(dataplane_message::Message::InspectResponse(response)) => {
                let waiting = self.inspecting.lock().unwrap_or_else(|p| p.into_inner()).1.remove(&response.id);
                if let Some(waiting) = waiting {
                    let _ = waiting.send(if response.error.is_empty() { Ok(response.json) } else { Err(response.error) });
                }
            }
            Some(dataplane_message::Message::Hello(_)) => {
                return Err(Status::invalid_argument("Hello is only allowed as the first message"))
            }
            // A newer sidecar's message this zone does not know yet: nothing to do with it.
            None => tracing::debug!("ignored a message of a kind this zone does not know"),
        }
        Ok(None)
    }

    /// Takes the sidecar's probe results into its Dataplane: an inbound that is not ready
    /// leaves every pool (this zone's sidecars and the inventory other zones balance over).
    async fn record_health(&self, health: &Health) -> Result<(), Status> {
        let resources = &self.shared.resources;
        let Some(mut dp) = resources.get(ResourceType::Dataplane, Some(&self.mesh), &self.dp.name).await.map_err(unavailable)? else {
            return Ok(());
        };
        let Spec::Dataplane(spec) = &mut dp.spec else { return Ok(()) };
        let mut changed = false;
        for report in &health.inbounds {
            let Some(inbound) = spec.networking.inbound.iter_mut().find(|i| u32::from(i.port) == report.port) else { continue };
            if inbound.is_ready() == report.ready {
                continue;
            }
            if report.ready {
                tracing::info!(port = report.port, "the application is ready again: the inbound is back in the pool");
            } else {
                tracing::warn!(port = report.port, reason = %report.reason, "the application fails its probe: the inbound leaves the pool");
            }
            inbound.health = Some(InboundHealth { ready: report.ready });
            changed = true;
        }
        if changed {
            resources.put(&dp).await.map_err(unavailable)?;
            crate::inventory::refresh(&self.shared.inventory).await;
        }
        Ok(())
    }

    fn nack_key(&self) -> Key {
        Key::new(DATAPLANE_NACK, &self.mesh, &self.dp.name)
    }

    /// Records a NACK where the zone's inventory (and so the global's zone list) shows it.
    async fn record_nack(&self, version: u64, error: &str) {
        // The reason comes from the sidecar: keep it to a line's worth.
        let error: String = error.chars().take(MAX_NACK_REASON).collect();
        let data = json!({"mesh": self.mesh, "dataplane": self.dp.name, "version": version, "error": error});
        match self.shared.resources.store().put(self.nack_key(), data, Precondition::None).await {
            Ok(_) => self.nacked.store(true, Ordering::Relaxed),
            Err(e) => tracing::warn!(error = %e, "could not record the NACK"),
        }
        crate::inventory::refresh(&self.shared.inventory).await;
    }

    /// Forgets the sidecar's NACK once it applies a configuration again, or leaves.
    async fn clear_nack(&self) {
        if !self.nacked.swap(false, Ordering::Relaxed) {
            return;
        }
        if let Err(e) = self.shared.resources.store().delete(self.nack_key(), Precondition::None).await {
            tracing::warn!(error = %e, "could not clear the NACK record");
        }
        crate::inventory::refresh(&self.shared.inventory).await;
    }

    /// Signs the sidecar's CSR for `spiffe://<mesh>/<service>` with the zone's intermediate CA;
    /// returns leaf and intermediate.
    async fn sign(&self, csr_pem: &str) -> Result<String, String> {
        let store = self.shared.resources.store();
        let (cert, key, _) = crate::zone_ca::get(store.as_ref(), &self.mesh)
            .await
            .map_err(|e| e.to_string())?
            .ok_or_else(|| format!("this zone has no intermediate CA for mesh {:?} yet; retry shortly", self.mesh))?;
        let lifetime = self.certificate_lifetime().await.map_err(|s| s.message().to_string())?;
        let id = strait_pki::spiffe_id(&self.mesh, &self.service);
        let csr = csr_pem.to_string();
        let leaf = tokio::task::spawn_blocking(move || {
            strait_pki::CertificateAuthority::from_pem(&cert, &key)
                .and_then(|ca| ca.sign_workload(&csr, &id, lifetime))
                .map(|leaf| format!("{leaf}{cert}"))
        })
        .await
        .map_err(|e| e.to_string())?
        .map_err(|e| e.to_string())?;
        tracing::info!(lifetime = ?lifetime, "issued a workload certificate");
        self.shared.metrics.certificates_issued.inc();
        if let Ok((_, not_after)) = strait_pki::cert_validity(leaf.split_inclusive("-----END CERTIFICATE-----").nth(1).unwrap_or_default())
        {
            self.shared.metrics.intermediate_expiry.get_or_create(&crate::metrics::MeshLabel { mesh: self.mesh.clone() }).set(not_after);
        }
        Ok(leaf)
    }
}

/// A sidecar's configuration as computed for it: the settings of its shape, shared, for one
/// that takes parts; its own whole configuration otherwise.
enum Built {
    Parts(std::sync::Arc<super::inputs::SharedSettings>),
    Whole(Box<strait_api::proxy_config::ProxyConfig>),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_recomputation_interval_grows_with_the_sidecars_so_the_zone_recomputes_at_a_bounded_rate() {
        assert_eq!(recompute_every(0), RECOMPUTE_EVERY);
        assert_eq!(recompute_every(100), RECOMPUTE_EVERY);
        for sessions in [1_000usize, 3_333, 10_000, 50_000] {
            let per_second = sessions as f64 / recompute_every(sessions).as_secs_f64();
            assert!(per_second <= 1_000.0 + 1e-6, "{sessions} sidecars: {per_second:.0} recomputations a second");
        }
        assert!(recompute_every(10_000) > recompute_every(3_333));
    }
}
