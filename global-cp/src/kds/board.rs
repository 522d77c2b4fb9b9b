//! Zone status shared by the replicas of the global: the replica that holds a zone's stream
//! writes the zone's status to the store (when it changes, and every few seconds while the
//! stream lasts), and every replica answers status questions from there, so `straitctl zone
//! list` says the same whichever replica answers, and the offline-zone grace period counts from
//! what the zone's own replica saw.
//!
//! In: the local [`Registry`] (sessions of this replica) and the store. Out: one `ZoneStatus`
//! record per zone (global only, never synced), and [`StatusBoard::status`] /
//! [`StatusBoard::offline_for`] for the REST API and the expiry.
//!
//! A record whose writer stopped refreshing it (its replica died) reads as disconnected
//! [`STALE_AFTER`] after its last write. When a zone moved to another replica, the newer
//! session's record wins; the older replica's later writes are skipped.

use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use strait_cp_core::kinds::ZONE_STATUS;
use strait_store::{Key, Precondition, Store, StoreError};
use time::OffsetDateTime;
use tokio_util::sync::CancellationToken;

use super::registry::{Local, Registry, ZoneStatus};

/// How often a replica rewrites the status of the zones it holds.
pub const REFRESH: Duration = Duration::from_secs(3);
/// A connected zone's record not rewritten for this long belongs to a replica that is gone.
pub const STALE_AFTER: Duration = Duration::from_secs(10);
/// Changes close together are written together.
const COALESCE: Duration = Duration::from_millis(50);

#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Record {
    #[serde(flatten)]
    status: ZoneStatus,
    /// The replica that wrote it.
    replica: String,
    /// Its session's id there.
    session: u64,
    /// Where the other replicas reach its REST API (`--advertise-api-url`), if it said.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    api: Option<String>,
    #[serde(with = "time::serde::rfc3339")]
    connected_at: OffsetDateTime,
    #[serde(with = "time::serde::rfc3339")]
    written_at: OffsetDateTime,
}

impl Record {
    fn live(&self) -> bool {
        (OffsetDateTime::now_utc() - self.written_at).unsigned_abs() < STALE_AFTER
    }

    /// What the REST API shows: a stale "connected" is an offline zone, last seen at the last write.
    fn shown(self) -> ZoneStatus {
        let live = self.live();
        let mut status = self.status;
        if status.connected && !live {
            status.connected = false;
            status.last_seen = Some(self.written_at);
        }
        status
    }
}

/// Shared zone status; cheap to clone.
#[derive(Clone)]
pub struct StatusBoard {
    store: Arc<dyn Store>,
    registry: Registry,
    replica: Arc<String>,
    /// This replica's REST API for the others, written in its records.
    api: Option<Arc<String>>,
    started: OffsetDateTime,
}

/// Another replica that holds a zone's stream.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Holder {
    /// The zone.
    pub zone: String,
    /// The replica's id.
    pub replica: String,
    /// Its REST API, if it advertises one.
    pub api: Option<String>,
}

fn key(zone: &str) -> Key {
    Key::new(ZONE_STATUS, "", zone)
}

impl StatusBoard {
    /// A board for this replica (a new random id per process), whose REST API the other
    /// replicas reach at `api`.
    pub fn new(store: Arc<dyn Store>, registry: Registry, api: Option<String>) -> StatusBoard {
        StatusBoard {
            store,
            registry,
            replica: Arc::new(hex::encode(rand::random::<[u8; 8]>())),
            api: api.map(Arc::new),
            started: OffsetDateTime::now_utc(),
        }
    }

    /// This replica's id.
    pub fn replica(&self) -> &str {
        &self.replica
    }

    /// The zones (`zone`, or all) whose live stream another replica holds, and where it is.
    pub async fn held_elsewhere(&self, zone: Option<&str>) -> Result<Vec<Holder>, StoreError> {
        let records: Vec<(String, Record)> = match zone {
            Some(zone) => self.record(zone).await.map(|r| (zone.to_string(), r)).into_iter().collect(),
            None => self
                .store
                .list(ZONE_STATUS, Some(""))
                .await?
                .into_iter()
                .filter_map(|o| Some((o.key.name.clone(), serde_json::from_value(o.data).ok()?)))
                .collect(),
        };
        Ok(records
            .into_iter()
            .filter(|(_, r)| r.status.connected && r.live() && r.replica != *self.replica)
            .map(|(zone, r)| Holder { zone, replica: r.replica, api: r.api })
            .collect())
    }

    /// Publishes this replica's changes until `stop`.
    pub async fn run(self, stop: CancellationToken) {
        let mut tick = tokio::time::interval(REFRESH);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let all = tokio::select! {
                () = stop.cancelled() => return,
                _ = tick.tick() => true,
                () = self.registry.changed() => false,
            };
            if !all {
                tokio::time::sleep(COALESCE).await;
            }
            for local in self.registry.take_changes(all) {
                // A failed write is retried by the next refresh, which writes every zone.
                if let Err(error) = self.publish(&local).await {
                    tracing::debug!(zone = %local.zone, %error, "could not publish the zone's status");
                }
            }
        }
    }

    async fn publish(&self, local: &Local) -> Result<(), StoreError> {
        let current = self.store.get(&key(&local.zone)).await?;
        let record: Option<Record> = current.as_ref().and_then(|o| serde_json::from_value(o.data.clone()).ok());
        let ours = record.as_ref().is_some_and(|r| r.replica == *self.replica && r.session == local.session);
        let write = if local.status.connected {
            ours || record.as_ref().is_none_or(|r| !r.status.connected || !r.live() || r.connected_at <= local.connected_at)
        } else {
            // Only the session that said "connected" may take it back.
            ours && record.as_ref().is_some_and(|r| r.status.connected)
        };
        if !write {
            return Ok(());
        }
        let record = Record {
            status: local.status.clone(),
            replica: (*self.replica).clone(),
            session: local.session,
            api: self.api.as_deref().cloned(),
            connected_at: local.connected_at,
            written_at: OffsetDateTime::now_utc(),
        };
        let data = serde_json::to_value(&record).map_err(|e| StoreError::Backend(e.to_string()))?;
        let precondition = current.map_or(Precondition::MustNotExist, |o| Precondition::Version(o.version));
        match self.store.put(key(&local.zone), data, precondition).await {
            // Another replica wrote in between: the next refresh decides again.
            Ok(_) | Err(StoreError::Conflict { .. }) => Ok(()),
            Err(e) => Err(e),
        }
    }

    async fn record(&self, zone: &str) -> Option<Record> {
        let object = self.store.get(&key(zone)).await.ok()??;
        serde_json::from_value(object.data).ok()
    }

    /// The zone's status, the same on every replica (this replica's own view when the store
    /// has none yet).
    pub async fn status(&self, zone: &str) -> ZoneStatus {
        match self.record(zone).await {
            Some(record) => record.shown(),
            None => self.registry.status(zone),
        }
    }

    /// Whether the zone is connected to some replica.
    pub async fn is_connected(&self, zone: &str) -> bool {
        self.status(zone).await.connected
    }

    /// Whether `zone` has been offline for at least `grace`. Offline counts from when it was
    /// last seen, or from this replica's start if later (a zone not heard from since the start
    /// counts as offline since then), so a restart of the global does not drop every zone's
    /// services at once.
    pub async fn offline_for(&self, zone: &str, grace: Duration) -> bool {
        let status = self.status(zone).await;
        if status.connected {
            return false;
        }
        let since = status.last_seen.map_or(self.started, |seen| seen.max(self.started));
        (OffsetDateTime::now_utc() - since).unsigned_abs() >= grace
    }

    /// Forgets a deleted zone's record.
    pub async fn forget(&self, zone: &str) -> Result<(), StoreError> {
        match self.store.delete(key(zone), Precondition::None).await {
            Ok(_) | Err(StoreError::NotFound { .. }) => Ok(()),
            Err(e) => Err(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kds::registry::ZoneHello;

    fn board(store: &Arc<dyn Store>) -> StatusBoard {
        StatusBoard::new(store.clone(), Registry::default(), Some("https://198.18.0.9:7680".into()))
    }

    async fn publish_all(board: &StatusBoard) {
        for local in board.registry.take_changes(true) {
            board.publish(&local).await.unwrap();
        }
    }

    #[tokio::test]
    async fn every_replica_reads_the_status_the_holder_writes_and_the_newer_session_wins() {
        let dir = tempfile::tempdir().unwrap();
        let store: Arc<dyn Store> = Arc::new(strait_store::SledStore::open(&dir.path().join("s")).unwrap());
        let (a, b) = (board(&store), board(&store));
        let (id, _) = a.registry.connect("zone-1", "198.18.0.2:5000", &ZoneHello::default()).unwrap();
        a.registry.update("zone-1", id, |s| s.acked_revision = 7);
        publish_all(&a).await;
        let seen = b.status("zone-1").await;
        assert!(seen.connected);
        assert_eq!((seen.acked_revision, seen.peer.as_deref()), (7, Some("198.18.0.2:5000")));
        let holder = Holder { zone: "zone-1".into(), replica: a.replica().into(), api: Some("https://198.18.0.9:7680".into()) };
        assert_eq!(b.held_elsewhere(None).await.unwrap(), std::slice::from_ref(&holder), "b forwards to a");
        assert_eq!(b.held_elsewhere(Some("zone-1")).await.unwrap(), [holder]);
        assert!(b.held_elsewhere(Some("zone-2")).await.unwrap().is_empty());
        assert!(a.held_elsewhere(None).await.unwrap().is_empty(), "a holds it itself");

        // The zone moves to b; a notices late that its stream ended: b's record stays.
        let (_, _) = b.registry.connect("zone-1", "198.18.0.3:5000", &ZoneHello::default()).unwrap();
        publish_all(&b).await;
        a.registry.disconnect("zone-1", id);
        publish_all(&a).await;
        let seen = a.status("zone-1").await;
        assert!(seen.connected, "the older session's disconnect does not end the newer one");
        assert_eq!(seen.peer.as_deref(), Some("198.18.0.3:5000"));
        assert!(!a.offline_for("zone-1", Duration::ZERO).await);

        // b says it is gone: offline everywhere.
        let (id_b, _) = (b.registry.take_changes(true)[0].session, ());
        b.registry.disconnect("zone-1", id_b);
        publish_all(&b).await;
        assert!(!a.status("zone-1").await.connected);
        assert!(a.offline_for("zone-1", Duration::ZERO).await);
        assert!(!a.offline_for("zone-1", Duration::from_secs(3600)).await);
        b.forget("zone-1").await.unwrap();
        assert!(a.record("zone-1").await.is_none());
    }

    #[test]
    fn a_record_not_refreshed_reads_as_offline() {
        let written_at = OffsetDateTime::now_utc() - STALE_AFTER - Duration::from_secs(1);
        let status = ZoneStatus { connected: true, ..Default::default() };
        let record = Record { status, replica: "r".into(), session: 1, api: None, connected_at: written_at, written_at };
        let shown = record.shown();
        assert!(!shown.connected);
        assert_eq!(shown.last_seen, Some(written_at));
    }
}
