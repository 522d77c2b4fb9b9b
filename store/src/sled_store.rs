//! [`SledStore`]: the embedded [`Store`] backend over sled.
//!
//! In: a directory (and [`SledOptions`]). Out: a store whose trees are `objects` (encoded key
//! → JSON [`Object`]), `events` (big-endian revision → JSON [`Event`]) and `meta` (the revision
//! counter). Each [`Store::apply`] is one sled transaction over all three trees, flushed to disk
//! before it returns, then published to watchers and the event log trimmed to its retention.
//! Every sled call runs on a blocking thread.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use sled::transaction::{ConflictableTransactionError, TransactionError, TransactionalTree};
use sled::Transactional;
use time::OffsetDateTime;
use tokio::sync::broadcast;

use crate::apply::{event_for, plan};
use crate::codec::{from_json, revision_from_bytes, revision_to_bytes, to_json};
use crate::error::StoreError;
use crate::event_log::EventLog;
use crate::key::{self, Key};
use crate::object::{Event, EventKind, Object, Op, Outcome};
use crate::store::{Stats, Store, WatchStream};
use crate::watch;

/// The `meta` tree key holding the current revision.
const REVISION_KEY: &[u8] = b"revision";

/// How many live events a watcher may fall behind before it re-reads the event log.
const LIVE_BUFFER: usize = 1024;

/// Tuning for [`SledStore::open_with`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SledOptions {
    /// How many of the latest events to keep for watchers (at least 1; default 100 000).
    pub event_retention: u64,
    /// Kinds whose data never enters the event log (private keys): their events carry `null`
    /// data, so a deleted or replaced key is gone from disk with its object.
    pub unlogged_kinds: Vec<String>,
}

impl Default for SledOptions {
    fn default() -> Self {
        SledOptions { event_retention: 100_000, unlogged_kinds: Vec::new() }
    }
}

/// The sled-backed [`Store`]; cheap to clone (clones share one database). The database stays
/// open (and its directory locked) until the last clone and the last watch stream are dropped.
#[derive(Clone)]
pub struct SledStore {
    inner: Arc<Inner>,
}

struct Inner {
    db: sled::Db,
    objects: sled::Tree,
    events: sled::Tree,
    meta: sled::Tree,
    log: EventLog,
    retention: u64,
    /// The last revision committed, flushed and published.
    revision: AtomicU64,
    live: broadcast::Sender<Event>,
    /// Serialises commit → flush → publish, so live events go out in revision order and only
    /// once durable. Holds the oldest retained revision, which trimming advances.
    writer: Mutex<u64>,
    /// Records skipped by lists because they do not decode (see [`Stats::corrupt_skipped`]).
    corrupt_skipped: AtomicU64,
    /// Kinds whose events carry no data (see [`SledOptions::unlogged_kinds`]).
    unlogged: std::collections::HashSet<String>,
}

/// Whether sled could not open a store because its directory's lock is held: sled reports it
/// as an `Other` I/O error with this message, the lock's own `WouldBlock` folded into the text.
fn is_lock_held(e: &std::io::Error) -> bool {
    e.kind() == std::io::ErrorKind::WouldBlock || e.to_string().starts_with("could not acquire lock")
}

/// How long opening a store waits for its directory's lock.
pub const LOCK_WAIT: std::time::Duration = std::time::Duration::from_secs(5);

impl SledStore {
    /// Opens (creating it if needed) the store in directory `path`, with default options.
    /// Blocking: call it at start-up or from a blocking thread.
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        Self::open_with(path, SledOptions::default())
    }

    /// Opens (creating it if needed) the store in directory `path`. Blocking: waits up to
    /// [`LOCK_WAIT`] for the directory's lock.
    pub fn open_with(path: &Path, options: SledOptions) -> Result<Self, StoreError> {
        std::fs::create_dir_all(path).map_err(|e| StoreError::backend(format!("creating store directory {}", path.display()), e))?;
        // The store holds keys: its directory is the owner's only, whatever the umask.
        std::fs::set_permissions(path, std::os::unix::fs::PermissionsExt::from_mode(0o700))
            .map_err(|e| StoreError::backend(format!("making store directory {} private", path.display()), e))?;
        // The directory's lock outlives a closed store for a moment (sled's flusher thread lets
        // go of it last), so a store reopened at once in the same process waits for it; a lock
        // still held after the deadline belongs to another process.
        let deadline = std::time::Instant::now() + LOCK_WAIT;
        let db = loop {
            match sled::Config::new().path(path).open() {
                Ok(db) => break db,
                Err(sled::Error::Io(e)) if is_lock_held(&e) && std::time::Instant::now() < deadline => {
                    std::thread::sleep(std::time::Duration::from_millis(20));
                }
                Err(e) => {
                    return Err(StoreError::backend(format!("opening store at {} (is another process using it?)", path.display()), e));
                }
            }
        };
        Self::from_db(db, options, LIVE_BUFFER)
    }

    /// A store in a temporary directory removed on drop, for tests of the crates that use it.
    pub fn temporary() -> Result<Self, StoreError> {
        Self::temporary_with(SledOptions::default(), LIVE_BUFFER)
    }

    pub(crate) fn temporary_with(options: SledOptions, live_buffer: usize) -> Result<Self, StoreError> {
        let db = sled::Config::new().temporary(true).open().map_err(|e| StoreError::backend("opening a temporary store", e))?;
        Self::from_db(db, options, live_buffer)
    }

    fn from_db(db: sled::Db, options: SledOptions, live_buffer: usize) -> Result<Self, StoreError> {
        let tree = |name: &str| db.open_tree(name).map_err(|e| StoreError::backend(format!("opening tree {name}"), e));
        let (objects, events, meta) = (tree("objects")?, tree("events")?, tree("meta")?);
        let revision = match meta.get(REVISION_KEY).map_err(|e| StoreError::backend("reading the revision", e))? {
            Some(bytes) => revision_from_bytes(&bytes, "the revision counter")?,
            None => 0,
        };
        let log = EventLog::new(events.clone());
        let oldest = log.oldest()?.unwrap_or(revision + 1);
        let (live, _) = broadcast::channel(live_buffer.max(1));
        let inner = Inner {
            db,
            objects,
            events,
            meta,
            log,
            retention: options.event_retention.max(1),
            revision: AtomicU64::new(revision),
            live,
            writer: Mutex::new(oldest),
            corrupt_skipped: AtomicU64::new(0),
            unlogged: options.unlogged_kinds.iter().cloned().collect(),
        };
        // The retention may have shrunk since the last run.
        inner.trim(&mut inner.lock_writer(), revision)?;
        tracing::info!(revision, oldest_event = oldest, "store opened");
        Ok(SledStore { inner: Arc::new(inner) })
    }
}

/// Runs `f` on tokio's blocking pool, so sled never blocks an async worker.
pub(crate) async fn blocking<T, F>(f: F) -> Result<T, StoreError>
where
    T: Send + 'static,
    F: FnOnce() -> Result<T, StoreError> + Send + 'static,
{
    tokio::task::spawn_blocking(f).await.map_err(|e| StoreError::backend("store task failed", e))?
}

impl Inner {
    fn lock_writer(&self) -> std::sync::MutexGuard<'_, u64> {
        // The guarded value is only advanced after a successful trim, so it is valid even if a
        // previous holder panicked.
        self.writer.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn get(&self, key: &Key) -> Result<Option<Object>, StoreError> {
        let bytes = key.to_bytes()?;
        match self.objects.get(bytes).map_err(|e| StoreError::backend(format!("reading {key}"), e))? {
            Some(value) => Ok(Some(from_json(&value, format_args!("object {key}"))?)),
            None => Ok(None),
        }
    }

    fn scan(&self, prefix: Vec<u8>, keep: impl Fn(&Key) -> bool) -> Result<Vec<Object>, StoreError> {
        self.decode_each(prefix, keep, |_, object: Object| object)
    }

    /// As [`Inner::scan`], each object's key and version only: its payload is skipped over,
    /// not decoded (decoding every Dataplane's was a tenth of a zone's CPU in a registration
    /// storm, for readers that wanted the few that changed).
    fn scan_versions(&self, prefix: Vec<u8>) -> Result<Vec<(Key, u64)>, StoreError> {
        /// An object's version; every other field is skipped.
        #[derive(serde::Deserialize)]
        struct Versioned {
            version: u64,
        }
        self.decode_each(prefix, |_| true, |key, object: Versioned| (key, object.version))
    }

    /// Each record under `prefix` whose key `keep` accepts, decoded as `T` and made into an
    /// item by `item`.
    fn decode_each<T: serde::de::DeserializeOwned, R>(
        &self,
        prefix: Vec<u8>,
        keep: impl Fn(&Key) -> bool,
        item: impl Fn(Key, T) -> R,
    ) -> Result<Vec<R>, StoreError> {
        let mut items = Vec::new();
        for entry in self.objects.scan_prefix(prefix) {
            let (key_bytes, value) = entry.map_err(|e| StoreError::backend("scanning objects", e))?;
            let key = Key::from_bytes(&key_bytes)?;
            if !keep(&key) {
                continue;
            }
            // One damaged record must not hide every other of its kind (nor stop zone sync):
            // it is skipped, named in the log and counted.
            match from_json::<T>(&value, format_args!("object {key}")) {
                Ok(decoded) => items.push(item(key, decoded)),
                Err(error) => {
                    self.corrupt_skipped.fetch_add(1, Ordering::Relaxed);
                    tracing::error!(%key, %error, "skipping a corrupted record; delete or rewrite it");
                }
            }
        }
        Ok(items)
    }

    fn stats(&self) -> Result<Stats, StoreError> {
        let mut objects_by_kind = BTreeMap::<String, u64>::new();
        for entry in self.objects.iter().keys() {
            let key_bytes = entry.map_err(|e| StoreError::backend("scanning objects", e))?;
            *objects_by_kind.entry(key::kind_of(&key_bytes)?.to_string()).or_default() += 1;
        }
        let size_on_disk = self.db.size_on_disk().map_err(|e| StoreError::backend("measuring the store size", e))?;
        Ok(Stats {
            objects_by_kind,
            size_on_disk,
            revision: self.revision.load(Ordering::Acquire),
            corrupt_skipped: self.corrupt_skipped.load(Ordering::Relaxed),
        })
    }

    fn apply(&self, ops: Vec<Op>) -> Result<Vec<Outcome>, StoreError> {
        if ops.is_empty() {
            return Ok(Vec::new());
        }
        let keys = ops.iter().map(|op| op.key().to_bytes()).collect::<Result<Vec<_>, _>>()?;
        let mut oldest = self.lock_writer();
        // Taken under the lock, so modification times follow revision order.
        let now = OffsetDateTime::now_utc();
        let (outcomes, events) = (&self.objects, &self.events, &self.meta)
            .transaction(|(objects, events, meta)| transact(&ops, &keys, &self.unlogged, now, objects, events, meta))
            .map_err(|e| match e {
                TransactionError::Abort(err) => err,
                TransactionError::Storage(err) => StoreError::backend("committing a batch", err),
            })?;
        let Some(last) = events.last().map(|e| e.revision) else {
            return Ok(outcomes);
        };
        // On a failed flush the batch stays committed in memory but is not acknowledged or
        // published; watchers read its events from the log once a later batch shows the gap.
        self.db.flush().map_err(|e| StoreError::backend("flushing a batch to disk", e))?;
        self.revision.store(last, Ordering::Release);
        for event in events {
            // No receiver is not an error: nobody is watching.
            let _ = self.live.send(event);
        }
        if let Err(err) = self.trim(&mut oldest, last) {
            // The batch is committed; a late trim only keeps more history than asked.
            tracing::warn!(error = %err, "could not trim the event log");
        }
        Ok(outcomes)
    }

    /// Drops events older than the retention allows, given the current `revision`.
    fn trim(&self, oldest: &mut u64, revision: u64) -> Result<(), StoreError> {
        let keep_from = revision.saturating_sub(self.retention) + 1;
        if *oldest < keep_from {
            let removed = self.log.trim_below(keep_from)?;
            tracing::debug!(removed, keep_from, "trimmed the event log");
            *oldest = keep_from;
        }
        Ok(())
    }
}

type TxResult<T> = Result<T, ConflictableTransactionError<StoreError>>;

/// The body of one apply transaction; sled may run it more than once on conflict, so it only
/// builds fresh values.
fn transact(
    ops: &[Op],
    keys: &[Vec<u8>],
    unlogged: &std::collections::HashSet<String>,
    now: OffsetDateTime,
    objects: &TransactionalTree,
    events: &TransactionalTree,
    meta: &TransactionalTree,
) -> TxResult<(Vec<Outcome>, Vec<Event>)> {
    let mut revision = match meta.get(REVISION_KEY)? {
        Some(bytes) => revision_from_bytes(&bytes, "the revision counter").map_err(abort)?,
        None => 0,
    };
    let mut outcomes = Vec::with_capacity(ops.len());
    let mut new_events = Vec::new();
    for (op, key_bytes) in ops.iter().zip(keys) {
        // Reads see this transaction's earlier writes, so a later op on the same key sees them.
        let current = match objects.get(key_bytes)? {
            Some(value) => Some(from_json::<Object>(&value, format_args!("object {}", op.key())).map_err(abort)?),
            None => None,
        };
        let outcome = plan(op, current, revision + 1, now).map_err(abort)?;
        if let Some(mut event) = event_for(&outcome, revision + 1) {
            revision += 1;
            match event.kind {
                EventKind::Put => {
                    let value = to_json(&event.object, format_args!("object {}", op.key())).map_err(abort)?;
                    objects.insert(key_bytes.as_slice(), value)?;
                }
                EventKind::Delete => {
                    objects.remove(key_bytes.as_slice())?;
                }
            }
            if unlogged.contains(&event.object.key.kind) {
                event.object.data = serde_json::Value::Null;
            }
            let value = to_json(&event, format_args!("event {revision}")).map_err(abort)?;
            events.insert(&revision_to_bytes(revision), value)?;
            new_events.push(event);
        }
        outcomes.push(outcome);
    }
    if !new_events.is_empty() {
        meta.insert(REVISION_KEY, &revision_to_bytes(revision))?;
    }
    Ok((outcomes, new_events))
}

fn abort(err: StoreError) -> ConflictableTransactionError<StoreError> {
    ConflictableTransactionError::Abort(err)
}

#[async_trait::async_trait]
impl Store for SledStore {
    async fn get(&self, key: &Key) -> Result<Option<Object>, StoreError> {
        let (inner, key) = (self.inner.clone(), key.clone());
        blocking(move || inner.get(&key)).await
    }

    async fn list(&self, kind: &str, mesh: Option<&str>) -> Result<Vec<Object>, StoreError> {
        let (inner, prefix) = (self.inner.clone(), key::prefix(kind, mesh)?);
        blocking(move || inner.scan(prefix, |_| true)).await
    }

    async fn list_versions(&self, kind: &str, mesh: Option<&str>) -> Result<Vec<(Key, u64)>, StoreError> {
        let (inner, prefix) = (self.inner.clone(), key::prefix(kind, mesh)?);
        blocking(move || inner.scan_versions(prefix)).await
    }

    async fn list_mesh(&self, mesh: &str) -> Result<Vec<Object>, StoreError> {
        let (inner, mesh) = (self.inner.clone(), mesh.to_string());
        // Keys lead with the kind, so this is a full scan (it serves rare cascade deletes), and
        // key order within one mesh is already (kind, name).
        blocking(move || inner.scan(Vec::new(), |key| key.mesh == mesh)).await
    }

    async fn apply(&self, ops: Vec<Op>) -> Result<Vec<Outcome>, StoreError> {
        let inner = self.inner.clone();
        blocking(move || inner.apply(ops)).await
    }

    fn revision(&self) -> u64 {
        self.inner.revision.load(Ordering::Acquire)
    }

    async fn watch(&self, from_revision: u64) -> Result<WatchStream, StoreError> {
        // Subscribe before reading history: whatever commits after the read is then on the
        // channel, and the overlap is dropped by revision.
        let live = self.inner.live.subscribe();
        watch::start(self.inner.log.clone(), live, from_revision).await
    }

    async fn stats(&self) -> Result<Stats, StoreError> {
        let inner = self.inner.clone();
        blocking(move || inner.stats()).await
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use futures::StreamExt;
    use serde_json::json;

    use super::*;
    use crate::object::Precondition;

    #[tokio::test]
    async fn a_watcher_slower_than_the_live_buffer_still_sees_every_event() {
        let store = SledStore::temporary_with(SledOptions::default(), 2).unwrap();
        let mut watch = store.watch(0).await.unwrap();
        for n in 0..50u64 {
            store.put(Key::new("K", "", format!("o{n}")), json!(n), Precondition::None).await.unwrap();
        }
        for want in 1..=50 {
            let got = tokio::time::timeout(Duration::from_secs(10), watch.next()).await;
            assert!(matches!(got, Ok(Some(Ok(ref e))) if e.revision == want), "revision {want}: {got:?}");
        }
    }

    #[tokio::test]
    async fn a_watcher_lagging_past_retention_gets_compacted() {
        let store = SledStore::temporary_with(SledOptions { event_retention: 5, ..SledOptions::default() }, 2).unwrap();
        let mut watch = store.watch(0).await.unwrap();
        for n in 0..20u64 {
            store.put(Key::new("K", "", format!("o{n}")), json!(n), Precondition::None).await.unwrap();
        }
        let got = tokio::time::timeout(Duration::from_secs(10), watch.next()).await;
        assert!(matches!(got, Ok(Some(Err(StoreError::Compacted { requested: 0, oldest: 16 })))), "{got:?}");
    }

    #[tokio::test]
    async fn temporary_store_works() {
        let store = SledStore::temporary().unwrap();
        store.put(Key::new("K", "", "n"), json!(1), Precondition::None).await.unwrap();
        assert_eq!(store.revision(), 1);
    }

    #[tokio::test]
    async fn a_corrupted_record_is_skipped_and_counted_not_fatal_to_its_list() {
        let store = SledStore::temporary().unwrap();
        for name in ["a", "b", "c"] {
            store.put(Key::new("K", "m", name), json!({"n": name}), Precondition::None).await.unwrap();
        }
        // Damage b's bytes on disk, as a torn write or a bad disk would.
        let raw = Key::new("K", "m", "b").to_bytes().unwrap();
        store.inner.objects.insert(raw, &b"{not json"[..]).unwrap();
        let names: Vec<String> = store.list("K", Some("m")).await.unwrap().into_iter().map(|o| o.key.name).collect();
        assert_eq!(names, ["a", "c"], "the others are still listed");
        assert_eq!(store.list_mesh("m").await.unwrap().len(), 2);
        assert_eq!(store.stats().await.unwrap().corrupt_skipped, 2, "each skip is counted");
        assert!(store.get(&Key::new("K", "m", "b")).await.is_err(), "reading it alone still says it is damaged");
    }

    #[tokio::test]
    async fn unlogged_kinds_leave_no_data_in_the_event_log() {
        let dir = tempfile::tempdir().unwrap();
        let options = SledOptions { unlogged_kinds: vec!["Secret".into()], ..SledOptions::default() };
        let store = SledStore::open_with(dir.path(), options).unwrap();
        let secret = Key::new("Secret", "", "ca");
        store.put(secret.clone(), json!({"key": "PRIVATE"}), Precondition::None).await.unwrap();
        store.put(Key::new("Public", "", "p"), json!({"cert": "PUBLIC"}), Precondition::None).await.unwrap();
        assert_eq!(store.get(&secret).await.unwrap().unwrap().data["key"], "PRIVATE", "the object itself keeps its data");
        store.delete(secret.clone(), Precondition::None).await.unwrap();
        let mut watch = store.watch(0).await.unwrap();
        let mut seen = Vec::new();
        for _ in 0..3 {
            let event = tokio::time::timeout(Duration::from_secs(5), watch.next()).await.unwrap().unwrap().unwrap();
            seen.push((event.object.key.kind.clone(), event.object.data.clone()));
        }
        assert_eq!(seen[0], ("Secret".to_string(), serde_json::Value::Null));
        assert_eq!(seen[1].1["cert"], "PUBLIC");
        assert_eq!(seen[2], ("Secret".to_string(), serde_json::Value::Null));
    }
}
