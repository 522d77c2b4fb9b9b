//! One zone's sync stream on the global: snapshot or resume, then deltas as the store changes,
//! ACK/NACK and inventory from the zone, heartbeats both ways.
//!
//! In: the zone's Hello and its later messages, and the store's watch stream. Out: batches on
//! the response channel (bounded, so a slow zone applies backpressure), status updates in the
//! registry, and the zone's inventory written to the store.

use std::time::{Duration, Instant};

use futures::{FutureExt, StreamExt};
use strait_api::gateway_config::{DataplaneNack, InventoryInstance, InventoryService, ZoneInventory};
use strait_api::kds::{self, global_message, zone_message, GlobalMessage, ZoneMessage};
use strait_store::{EventKind, Key, Precondition, StoreError, WatchStream};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tonic::{Status, Streaming};

use super::KdsShared;
use strait_cp_core::kinds::{ZONE_INVENTORY, ZONE_TOKEN};
use strait_cp_core::sync_set::{is_synced, key_to_proto, object_to_proto, synced_kinds};

/// Resources per snapshot chunk, and the byte budget of one chunk.
const CHUNK_RESOURCES: usize = 500;
const CHUNK_BYTES: usize = 1024 * 1024;
/// Store events coalesced into one delta at most.
const MAX_DELTA_EVENTS: usize = 1000;

/// A running session.
pub struct Session {
    pub(super) shared: KdsShared,
    pub(super) zone: String,
    pub(super) id: u64,
    pub(super) tx: mpsc::Sender<Result<GlobalMessage, Status>>,
    pub(super) cancel: CancellationToken,
    /// Checks the zone's token again when its record or its Zone changes, which may happen
    /// through another replica (revoked, replaced, disabled, deleted).
    pub(super) auth: std::sync::Arc<dyn super::ZoneAuthenticator>,
    pub(super) token: String,
}

fn unavailable(e: StoreError) -> Status {
    Status::unavailable(format!("global store: {e}"))
}

impl Session {
    /// Runs until the zone leaves, the stream fails, or the session is cancelled.
    pub async fn run(self, hello: kds::Hello, inbound: Streaming<ZoneMessage>) {
        let result = self.stream(hello, inbound).await;
        let reason = match &result {
            Ok(()) => "zone closed the stream".to_string(),
            Err(status) => status.message().to_string(),
        };
        self.shared.registry.disconnect(&self.zone, self.id);
        self.shared.inspections.detach(&self.zone, self.id);
        self.shared.metrics.connected_zones.set(self.shared.registry.connected_count() as i64);
        tracing::info!(reason, "zone disconnected");
        if let Err(status) = result {
            let _ = self.tx.send(Err(status)).await;
        }
    }

    async fn send(&self, msg: global_message::Message) -> Result<(), Status> {
        if let global_message::Message::Batch(b) = &msg {
            let bytes: usize = b.upserts.iter().map(|r| r.json.len()).sum();
            self.shared.metrics.bytes_sent.inc_by(bytes as u64);
        }
        self.tx.send(Ok(GlobalMessage { message: Some(msg) })).await.map_err(|_| Status::cancelled("zone stream closed"))
    }

    async fn stream(&self, hello: kds::Hello, mut inbound: Streaming<ZoneMessage>) -> Result<(), Status> {
        let store = self.shared.resources.store().clone();
        let global_id = self.shared.global_id.clone();
        let resumable = hello.resume_revision > 0 && hello.global_id == *global_id && hello.resume_revision <= store.revision();
        let mut events: WatchStream = if resumable {
            match store.watch(hello.resume_revision).await {
                Ok(events) => {
                    tracing::info!(revision = hello.resume_revision, "resuming zone from its revision");
                    self.shared.metrics.resumes.inc();
                    events
                }
                Err(StoreError::Compacted { .. }) => self.snapshot().await?,
                Err(e) => return Err(unavailable(e)),
            }
        } else {
            self.snapshot().await?
        };

        let settings = &self.shared.settings;
        let mut heartbeat = tokio::time::interval(settings.heartbeat_interval);
        heartbeat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut last_heard = Instant::now();
        loop {
            tokio::select! {
                () = self.cancel.cancelled() => {
                    return Err(Status::permission_denied(format!("zone {:?} was revoked or deleted on the global control plane", self.zone)));
                }
                event = events.next() => {
                    let Some(event) = event else { return Err(Status::unavailable("global is shutting down")) };
                    self.send_delta(event.map_err(unavailable)?, &mut events).await?;
                }
                message = inbound.message() => {
                    last_heard = Instant::now();
                    match message {
                        Ok(Some(m)) => self.handle(m).await?,
                        Ok(None) => return Ok(()),
                        Err(status) => return Err(Status::aborted(format!("zone stream failed: {}", status.message()))),
                    }
                }
                _ = heartbeat.tick() => {
                    if last_heard.elapsed() > settings.idle_timeout {
                        return Err(Status::deadline_exceeded(format!("no message from zone {:?} in {:?}", self.zone, settings.idle_timeout)));
                    }
                    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
                    self.send(global_message::Message::Heartbeat(kds::Heartbeat { unix_millis: now.as_millis() as u64 })).await?;
                }
            }
        }
    }

    /// Sends every synced resource in chunks, and returns the watch of what follows.
    async fn snapshot(&self) -> Result<WatchStream, Status> {
        let store = self.shared.resources.store();
        let revision = store.revision();
        // Watch first: anything written while we list is replayed as a delta (upserts are idempotent).
        let events = store.watch(revision).await.map_err(unavailable)?;
        let mut chunk: Vec<kds::Resource> = Vec::new();
        let mut chunk_bytes = 0;
        let mut total = 0usize;
        for kind in synced_kinds() {
            for obj in store.list(kind, None).await.map_err(unavailable)? {
                let resource = match object_to_proto(&obj) {
                    Ok(r) => r,
                    Err(e) => {
                        tracing::error!(error = %e, "skipping a resource that does not encode");
                        continue;
                    }
                };
                chunk_bytes += resource.json.len();
                chunk.push(resource);
                total += 1;
                if chunk.len() >= CHUNK_RESOURCES || chunk_bytes >= CHUNK_BYTES {
                    self.send_batch(revision, true, false, std::mem::take(&mut chunk), Vec::new()).await?;
                    chunk_bytes = 0;
                }
            }
        }
        self.send_batch(revision, true, true, chunk, Vec::new()).await?;
        self.shared.metrics.snapshots.inc();
        tracing::info!(revision, resources = total, "sent snapshot");
        Ok(events)
    }

    async fn send_batch(
        &self,
        revision: u64,
        snapshot: bool,
        last_chunk: bool,
        upserts: Vec<kds::Resource>,
        deletes: Vec<kds::ResourceKey>,
    ) -> Result<(), Status> {
        if last_chunk || !snapshot {
            self.shared.registry.update(&self.zone, self.id, |s| s.sent_revision = revision);
            self.shared.pending.record_sent(&self.zone, revision);
        }
        let batch = kds::Batch { revision, snapshot, last_chunk, upserts, deletes, global_id: (*self.shared.global_id).clone() };
        self.send(global_message::Message::Batch(batch)).await
    }

    /// Sends `first` and every event already waiting, as one delta.
    async fn send_delta(&self, first: strait_store::Event, events: &mut WatchStream) -> Result<(), Status> {
        let mut batch = vec![first];
        while batch.len() < MAX_DELTA_EVENTS {
            match events.next().now_or_never() {
                Some(Some(Ok(e))) => batch.push(e),
                Some(Some(Err(e))) => return Err(unavailable(e)),
                _ => break,
            }
        }
        let revision = batch.last().map(|e| e.revision).unwrap_or_default();
        let about_this_zone = |key: &Key| {
            key.name == self.zone && (key.kind == ZONE_TOKEN || key.kind == strait_api::ResourceType::Zone.name()) && key.mesh.is_empty()
        };
        if batch.iter().any(|e| about_this_zone(&e.object.key)) {
            if let Err(refused) = self.auth.authenticate(&self.token).await {
                tracing::warn!(reason = refused.message(), "closing the zone's stream: its token or Zone changed");
                return Err(refused);
            }
        }
        let mut upserts = Vec::new();
        let mut deletes = Vec::new();
        for event in batch.into_iter().filter(|e| is_synced(&e.object.key.kind)) {
            match event.kind {
                EventKind::Put => match object_to_proto(&event.object) {
                    Ok(r) => upserts.push(r),
                    Err(e) => tracing::error!(error = %e, "skipping a resource that does not encode"),
                },
                EventKind::Delete => deletes.push(key_to_proto(&event.object.key)),
            }
        }
        if upserts.is_empty() && deletes.is_empty() {
            return Ok(());
        }
        self.send_batch(revision, false, false, upserts, deletes).await
    }

    async fn handle(&self, message: ZoneMessage) -> Result<(), Status> {
        let registry = &self.shared.registry;
        match message.message {
            Some(zone_message::Message::Ack(ack)) => {
                self.shared.metrics.acked_revision.get_or_create(&super::ZoneLabel { zone: self.zone.clone() }).set(ack.revision as i64);
                registry.update(&self.zone, self.id, |s| {
                    s.acked_revision = s.acked_revision.max(ack.revision);
                    s.nack_errors.clear();
                    s.nacked_revision = None;
                });
                if let Some(latency) = self.shared.pending.acked(&self.zone, ack.revision) {
                    self.shared.metrics.push_latency.observe(latency.as_secs_f64());
                }
                self.shared.metrics.acks.inc();
            }
            Some(zone_message::Message::Nack(nack)) => {
                let errors: Vec<String> = nack
                    .errors
                    .iter()
                    .map(|e| {
                        let key = e.key.as_ref().map(|k| format!("{}/{}/{}", k.r#type, k.mesh, k.name)).unwrap_or_default();
                        format!("{key}: {}", e.message)
                    })
                    .collect();
                tracing::warn!(revision = nack.revision, errors = ?errors, "zone rejected resources (NACK)");
                registry.update(&self.zone, self.id, |s| {
                    s.nacked_revision = Some(nack.revision);
                    s.nack_errors = errors;
                });
                self.shared.pending.acked(&self.zone, nack.revision);
                self.shared.metrics.nacks.inc();
            }
            Some(zone_message::Message::Inventory(inventory)) => self.store_inventory(inventory).await?,
            Some(zone_message::Message::InspectResponse(response)) => self.shared.inspections.answered(response),
            Some(zone_message::Message::Traffic(report)) => {
                registry.update(&self.zone, self.id, |_| {});
                self.shared.traffic.record(&self.zone, report);
            }
            Some(zone_message::Message::Heartbeat(_)) => registry.update(&self.zone, self.id, |_| {}),
            Some(zone_message::Message::CertificateRequest(req)) if req.zone_identity => {
                let store = self.shared.resources.store();
                let answer = match crate::zone_identity::issue(store.as_ref(), &self.shared.system_ca, &self.zone, &req.csr_pem).await {
                    Ok(cert_pem) => kds::Certificate {
                        cert_pem,
                        root_pem: self.shared.system_ca.cert_pem().to_string(),
                        zone_identity: true,
                        ..Default::default()
                    },
                    Err(e) => {
                        tracing::warn!(error = %e, "refused to issue a zone identity");
                        kds::Certificate { error: e.to_string(), zone_identity: true, ..Default::default() }
                    }
                };
                self.send(global_message::Message::Certificate(answer)).await?;
            }
            Some(zone_message::Message::CertificateRequest(req)) => {
                let store = self.shared.resources.store();
                let answer = match crate::mesh_ca::issue_intermediate(
                    store.as_ref(),
                    &req.mesh,
                    &self.zone,
                    &req.csr_pem,
                    self.shared.settings.zone_ca_lifetime,
                )
                .await
                {
                    Ok((cert_pem, root_pem)) => kds::Certificate { mesh: req.mesh, cert_pem, root_pem, ..Default::default() },
                    Err(e) => {
                        tracing::warn!(mesh = %req.mesh, error = %e, "refused to issue an intermediate CA");
                        kds::Certificate { mesh: req.mesh, error: e.to_string(), ..Default::default() }
                    }
                };
                self.send(global_message::Message::Certificate(answer)).await?;
            }
            Some(zone_message::Message::Hello(_)) => return Err(Status::invalid_argument("Hello is only allowed as the first message")),
            None => return Err(Status::invalid_argument("empty message")),
        }
        Ok(())
    }

    /// Writes the zone's inventory; only this zone's own record, nothing else.
    async fn store_inventory(&self, inventory: kds::Inventory) -> Result<(), Status> {
        let stored = ZoneInventory {
            zone: self.zone.clone(),
            services: inventory
                .services
                .into_iter()
                .map(|s| InventoryService {
                    protocol: if s.protocol.is_empty() { "tcp".into() } else { s.protocol },
                    mesh: s.mesh,
                    name: s.name,
                    endpoints: s.endpoints,
                    healthy: s.healthy,
                    instances: s
                        .instances
                        .into_iter()
                        .map(|i| InventoryInstance { id: i.id, tags: i.tags.into_iter().collect() })
                        .collect(),
                })
                .collect(),
            ingress_addresses: inventory.ingress_addresses,
        };
        // Sidecars' NACKs are the zone's live status, shown by the global, never synced on to
        // other zones (whose sidecars they do not concern).
        let nacks: Vec<DataplaneNack> = inventory
            .dataplane_nacks
            .into_iter()
            .map(|n| DataplaneNack { mesh: n.mesh, dataplane: n.dataplane, version: n.version, error: n.error })
            .collect();
        let data = serde_json::to_value(&stored).map_err(|e| Status::internal(e.to_string()))?;
        let key = Key::new(ZONE_INVENTORY, "", &self.zone);
        self.shared.resources.store().put(key, data, Precondition::None).await.map_err(unavailable)?;
        self.shared.registry.update(&self.zone, self.id, |s| s.dataplane_nacks = nacks);
        Ok(())
    }
}

/// Removes the inventories of zones offline for longer than the grace period, so their
/// services leave the other zones' views; zones that come back in time keep theirs.
pub async fn expire_inventories(shared: KdsShared, grace: Duration, cancel: CancellationToken) {
    let mut tick = tokio::time::interval((grace / 4).clamp(Duration::from_millis(200), Duration::from_secs(5)));
    // One replica at a time expires zones (the others would only race it to the same deletes).
    let mut lease: Option<strait_store::Lease> = None;
    loop {
        tokio::select! {
            () = cancel.cancelled() => return,
            _ = tick.tick() => {}
        }
        let store = shared.resources.store();
        if lease.as_ref().is_some_and(|l| !l.is_held()) {
            tracing::warn!("lost the lock of the offline-zone expiry; another replica may take it");
            lease = None;
        }
        if lease.is_none() {
            match store.try_lock(EXPIRY_LOCK).await {
                Ok(Some(l)) => {
                    tracing::debug!("this replica runs the offline-zone expiry");
                    lease = Some(l);
                }
                Ok(None) => continue,
                Err(e) => {
                    tracing::debug!(error = %e, "could not take the lock of the offline-zone expiry");
                    continue;
                }
            }
        }
        let Ok(inventories) = store.list(ZONE_INVENTORY, Some("")).await else { continue };
        for inv in inventories {
            let zone = &inv.key.name;
            if shared.board.offline_for(zone, grace).await {
                match store.delete(inv.key.clone(), Precondition::Version(inv.version)).await {
                    Ok(_) => {
                        tracing::info!(zone = %zone, grace = ?grace, "zone offline past its grace period: its services leave the other zones")
                    }
                    Err(e) => tracing::debug!(zone = %zone, error = %e, "inventory changed while expiring; retrying later"),
                }
            }
        }
    }
}

/// The store lock under which one replica expires offline zones.
pub const EXPIRY_LOCK: &str = "zone-grace-period";
