//! Live status of every zone: connected or not, last seen, revisions sent and acknowledged,
//! NACK errors, software version. Also the grace period before an offline zone's services
//! leave the other zones' views.
//!
//! In: session events (connect, ack, nack, message seen, disconnect). Out: a status snapshot
//! per zone for the REST API and `straitctl zone list`, and a cancel handle per session so a
//! revoked zone's stream closes at once.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use serde::Serialize;
use tokio_util::sync::CancellationToken;

/// One zone's status.
#[derive(Debug, Clone, Default, Serialize, serde::Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ZoneStatus {
    /// Whether a stream is open now.
    pub connected: bool,
    /// When the zone was last heard from (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none", with = "time::serde::rfc3339::option")]
    pub last_seen: Option<time::OffsetDateTime>,
    /// Remote address of the current or last stream.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub peer: Option<String>,
    /// The zone control plane's version.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub software_version: Option<String>,
    /// Where the zone's REST API (its `/metrics` and `/prometheus/targets`) is reached.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub api_url: Option<String>,
    /// Latest revision sent to the zone.
    #[serde(default)]
    pub sent_revision: u64,
    /// Latest revision the zone acknowledged.
    #[serde(default)]
    pub acked_revision: u64,
    /// Errors of the latest NACK, if the latest answer was a NACK.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub nack_errors: Vec<String>,
    /// Revision of the latest NACK.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub nacked_revision: Option<u64>,
    /// The zone's sidecars that refused their latest configuration, as it last reported.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub dataplane_nacks: Vec<strait_api::gateway_config::DataplaneNack>,
}

/// What a zone says of itself when it connects.
#[derive(Debug, Clone, Copy, Default)]
pub struct ZoneHello<'a> {
    /// Its version.
    pub software_version: &'a str,
    /// Where its REST API listens (`ip:port`, maybe unspecified).
    pub api_address: &'a str,
    /// `https` or `http`.
    pub api_scheme: &'a str,
}

impl ZoneHello<'_> {
    /// The URL of the zone's REST API: its address, or on every interface, the one it
    /// connects from (`peer`, `ip:port`) with its port.
    fn api_url(&self, peer: &str) -> Option<String> {
        let address: std::net::SocketAddr = self.api_address.parse().ok()?;
        let scheme = match self.api_scheme {
            "http" => "http",
            _ => "https",
        };
        let ip = match address.ip() {
            ip if ip.is_unspecified() => peer.parse::<std::net::SocketAddr>().ok()?.ip(),
            ip => ip,
        };
        Some(format!("{scheme}://{}", std::net::SocketAddr::new(ip, address.port())))
    }
}

struct Entry {
    status: ZoneStatus,
    session: Option<(u64, CancellationToken)>,
    /// The latest session's id and when it connected (kept after it ends).
    last_session: (u64, time::OffsetDateTime),
    /// Changed since the status board last published it.
    dirty: bool,
}

/// One zone's status as this replica knows it, for the status board.
#[derive(Debug, Clone)]
pub struct Local {
    /// The zone.
    pub zone: String,
    /// Its status.
    pub status: ZoneStatus,
    /// The id of its latest session here.
    pub session: u64,
    /// When that session connected.
    pub connected_at: time::OffsetDateTime,
}

/// Status of all zones; cheap to clone.
#[derive(Clone, Default)]
pub struct Registry {
    inner: Arc<Mutex<Inner>>,
    /// Woken at each change worth publishing.
    changed: Arc<tokio::sync::Notify>,
}

struct Inner {
    zones: HashMap<String, Entry>,
    next_session: u64,
    /// Zones not heard from since start count as offline since then.
    started: time::OffsetDateTime,
}

impl Default for Inner {
    fn default() -> Self {
        Inner { zones: HashMap::new(), next_session: 0, started: now() }
    }
}

/// Why a zone could not connect.
#[derive(Debug, thiserror::Error)]
#[error("zone {zone:?} is already connected from {peer}")]
pub struct AlreadyConnected {
    /// The zone.
    pub zone: String,
    /// Where the open stream comes from.
    pub peer: String,
}

fn now() -> time::OffsetDateTime {
    time::OffsetDateTime::from(SystemTime::now())
}

impl Registry {
    fn with<T>(&self, f: impl FnOnce(&mut Inner) -> T) -> T {
        // A poisoned lock only means a panic elsewhere; the map itself stays consistent.
        let mut guard = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        f(&mut guard)
    }

    /// Registers a new session for `zone`; refuses a second one while the first is open.
    pub fn connect(&self, zone: &str, peer: &str, hello: &ZoneHello<'_>) -> Result<(u64, CancellationToken), AlreadyConnected> {
        self.with(|inner| {
            inner.next_session += 1;
            let id = inner.next_session;
            let entry = inner.zones.entry(zone.to_string()).or_insert_with(|| Entry {
                status: ZoneStatus::default(),
                session: None,
                last_session: (0, now()),
                dirty: true,
            });
            if entry.session.is_some() {
                return Err(AlreadyConnected { zone: zone.to_string(), peer: entry.status.peer.clone().unwrap_or_default() });
            }
            let cancel = CancellationToken::new();
            entry.session = Some((id, cancel.clone()));
            entry.last_session = (id, now());
            entry.dirty = true;
            entry.status.connected = true;
            entry.status.peer = Some(peer.to_string());
            entry.status.software_version = Some(hello.software_version.to_string());
            entry.status.api_url = hello.api_url(peer);
            entry.status.last_seen = Some(now());
            Ok((id, cancel))
        })
        .inspect(|_| self.changed.notify_one())
    }

    /// Updates the status of the zone's current session `id`.
    pub fn update(&self, zone: &str, id: u64, f: impl FnOnce(&mut ZoneStatus)) {
        let changed = self.with(|inner| {
            let entry = inner.zones.get_mut(zone).filter(|e| e.session.as_ref().is_some_and(|(sid, _)| *sid == id))?;
            let before = entry.status.clone();
            entry.status.last_seen = Some(now());
            f(&mut entry.status);
            // Being heard from alone is published by the board's periodic refresh.
            let changed = ZoneStatus { last_seen: before.last_seen, ..entry.status.clone() } != before;
            entry.dirty |= changed;
            Some(changed)
        });
        if changed == Some(true) {
            self.changed.notify_one();
        }
    }

    /// Ends session `id` of `zone`; returns whether it was the current one.
    pub fn disconnect(&self, zone: &str, id: u64) -> bool {
        self.with(|inner| match inner.zones.get_mut(zone) {
            Some(entry) if entry.session.as_ref().is_some_and(|(sid, _)| *sid == id) => {
                entry.session = None;
                entry.status.connected = false;
                entry.dirty = true;
                true
            }
            _ => false,
        })
        .then(|| self.changed.notify_one())
        .is_some()
    }

    /// Waits until a status changed (see [`Registry::take_changes`]).
    pub async fn changed(&self) {
        self.changed.notified().await
    }

    /// Every zone this replica has had a session for; `all` false: only those changed since the
    /// last call. Clears the changed marks.
    pub fn take_changes(&self, all: bool) -> Vec<Local> {
        self.with(|inner| {
            inner
                .zones
                .iter_mut()
                .filter(|(_, e)| all || e.dirty)
                .map(|(zone, e)| {
                    e.dirty = false;
                    Local { zone: zone.clone(), status: e.status.clone(), session: e.last_session.0, connected_at: e.last_session.1 }
                })
                .collect()
        })
    }

    /// Closes the zone's open stream, if any (revocation, deletion).
    pub fn kick(&self, zone: &str) {
        self.with(|inner| {
            if let Some((_, cancel)) = inner.zones.get(zone).and_then(|e| e.session.as_ref()) {
                cancel.cancel();
            }
        });
    }

    /// Closes every open stream (the global is shutting down: its zones move to another
    /// replica, or reconnect when it is back, at once rather than at the drain's end).
    pub fn kick_all(&self) {
        self.with(|inner| {
            for (_, cancel) in inner.zones.values().filter_map(|e| e.session.as_ref()) {
                cancel.cancel();
            }
        });
    }

    /// Forgets a deleted zone.
    pub fn remove(&self, zone: &str) {
        self.kick(zone);
        self.with(|inner| inner.zones.remove(zone));
    }

    /// The status of one zone (offline and never seen when unknown).
    pub fn status(&self, zone: &str) -> ZoneStatus {
        self.with(|inner| inner.zones.get(zone).map(|e| e.status.clone()).unwrap_or_default())
    }

    /// Whether the zone is connected now.
    pub fn is_connected(&self, zone: &str) -> bool {
        self.status(zone).connected
    }

    /// Zones connected now.
    pub fn connected_count(&self) -> usize {
        self.with(|inner| inner.zones.values().filter(|e| e.status.connected).count())
    }

    /// Whether `zone` has been offline for at least `grace`; a zone not heard from since this
    /// process started counts as offline since the start, so a restart of the global does not
    /// drop every zone's services at once.
    pub fn offline_for(&self, zone: &str, grace: Duration) -> bool {
        let (status, started) = self.with(|inner| (inner.zones.get(zone).map(|e| e.status.clone()), inner.started));
        match status {
            Some(s) if s.connected => false,
            Some(ZoneStatus { last_seen: Some(seen), .. }) => (now() - seen).unsigned_abs() >= grace,
            _ => (now() - started).unsigned_abs() >= grace,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hello(api_address: &str) -> ZoneHello<'_> {
        ZoneHello { software_version: "0.1.0", api_address, api_scheme: "https" }
    }

    #[test]
    fn one_session_per_zone() {
        let r = Registry::default();
        let (id, _) = r.connect("zone-1", "198.18.0.2:5000", &hello("0.0.0.0:7681")).unwrap();
        let err = r.connect("zone-1", "198.18.0.3:5000", &hello("0.0.0.0:7681")).unwrap_err();
        assert!(err.to_string().contains("already connected from 198.18.0.2:5000"));
        assert!(r.disconnect("zone-1", id));
        assert!(!r.is_connected("zone-1"));
        let (id2, _) = r.connect("zone-1", "198.18.0.3:5000", &hello("0.0.0.0:7681")).unwrap();
        assert!(!r.disconnect("zone-1", id), "a stale session cannot end the new one");
        assert!(r.is_connected("zone-1"));
        r.update("zone-1", id2, |s| s.acked_revision = 7);
        assert_eq!(r.status("zone-1").acked_revision, 7);
        // Its API on every interface: reached at the address it connects from.
        assert_eq!(r.status("zone-1").api_url.as_deref(), Some("https://198.18.0.3:7681"));
        assert_eq!(hello("192.0.2.4:7681").api_url("198.18.0.3:5000").as_deref(), Some("https://192.0.2.4:7681"));
    }

    #[test]
    fn kick_cancels_the_session() {
        let r = Registry::default();
        let (_, cancel) = r.connect("zone-1", "p", &ZoneHello::default()).unwrap();
        r.kick("zone-1");
        assert!(cancel.is_cancelled());
    }

    #[test]
    fn offline_grace() {
        let r = Registry::default();
        let (id, _) = r.connect("zone-1", "p", &ZoneHello::default()).unwrap();
        assert!(!r.offline_for("zone-1", Duration::ZERO), "connected zones are never offline");
        r.disconnect("zone-1", id);
        assert!(r.offline_for("zone-1", Duration::ZERO));
        assert!(!r.offline_for("zone-1", Duration::from_secs(3600)));
        assert!(r.offline_for("unknown", Duration::ZERO));
        assert!(!r.offline_for("unknown", Duration::from_secs(3600)), "unknown zones get the grace period from start");
    }
}
