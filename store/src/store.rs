//! The [`Store`] trait: the contract every backend (sled today; PostgreSQL or the Kubernetes
//! API later) implements, so callers never name a backend.
//!
//! In: keys, batches of [`Op`]s and watch requests. Out: [`Object`]s, one [`Outcome`] per op,
//! [`Stats`], and a [`WatchStream`] of [`Event`]s in revision order.

use std::collections::BTreeMap;
use std::pin::Pin;

use serde::Serialize;

use crate::error::StoreError;
use crate::key::Key;
use crate::object::{Event, Object, Op, Outcome, Precondition};

/// Events in revision order; it ends when the store is dropped, and after yielding an error.
pub type WatchStream = Pin<Box<dyn futures::Stream<Item = Result<Event, StoreError>> + Send>>;

/// A summary of what a store holds.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Stats {
    /// How many objects each kind has; kinds without objects are absent.
    pub objects_by_kind: BTreeMap<String, u64>,
    /// Bytes the backend uses on disk.
    pub size_on_disk: u64,
    /// The current revision.
    pub revision: u64,
    /// Records lists skipped since the store was opened because they do not decode.
    pub corrupt_skipped: u64,
}

/// A versioned, watchable store of JSON objects.
///
/// To mirror the store (list, then follow changes): read [`Store::revision`], list, then
/// [`Store::watch`] from that revision. Events for changes the list already showed may be
/// replayed; each carries the whole object, so applying them again is harmless.
#[async_trait::async_trait]
pub trait Store: Send + Sync + 'static {
    /// The object under `key`, if any.
    async fn get(&self, key: &Key) -> Result<Option<Object>, StoreError>;

    /// Objects of one kind, in one mesh (Some) or every mesh (None), sorted by (mesh, name).
    async fn list(&self, kind: &str, mesh: Option<&str>) -> Result<Vec<Object>, StoreError>;

    /// The key and version of each object [`Store::list`] would return, in its order, without
    /// their payloads: for readers that keep what they parsed and read again only what
    /// changed. Backends that can skip decoding the payloads do.
    async fn list_versions(&self, kind: &str, mesh: Option<&str>) -> Result<Vec<(Key, u64)>, StoreError> {
        Ok(self.list(kind, mesh).await?.into_iter().map(|o| (o.key, o.version)).collect())
    }

    /// Every object of a mesh, all kinds, sorted by (kind, name) (used for cascade delete of a
    /// mesh).
    async fn list_mesh(&self, mesh: &str) -> Result<Vec<Object>, StoreError>;

    /// Applies all ops atomically: either every precondition holds and all are written, or
    /// nothing is. Returns one Outcome per op in order; a later op on the same key sees the
    /// earlier one's effect. Durable (flushed to disk) before it returns Ok.
    async fn apply(&self, ops: Vec<Op>) -> Result<Vec<Outcome>, StoreError>;

    /// The current revision (0 on an empty store).
    fn revision(&self) -> u64;

    /// Events with revision > `from_revision`: first the retained history, then live ones, in
    /// order, no gaps, no duplicates. Fails with [`StoreError::Compacted`] when events after
    /// `from_revision` are no longer retained; the stream yields that error too if it falls so
    /// far behind that the events it missed were trimmed.
    async fn watch(&self, from_revision: u64) -> Result<WatchStream, StoreError>;

    /// Object counts by kind, size on disk and revision.
    async fn stats(&self) -> Result<Stats, StoreError>;

    /// Takes the lock `name`, shared by every process on this store, if no other process holds
    /// it: `Some` while this one does (until the [`Lease`] is dropped or [`Lease::is_held`] turns
    /// false), `None` when another does. Work that must run in one place at a time (expiries)
    /// runs under it. A store only one process opens (sled) always grants it.
    async fn try_lock(&self, name: &str) -> Result<Option<Lease>, StoreError> {
        let _ = name;
        Ok(Some(Lease::local()))
    }

    /// Applies a single [`Op::Put`].
    async fn put(&self, key: Key, data: serde_json::Value, precondition: Precondition) -> Result<Outcome, StoreError> {
        single(self.apply(vec![Op::put(key, data, precondition)]).await?)
    }

    /// Applies a single [`Op::Delete`].
    async fn delete(&self, key: Key, precondition: Precondition) -> Result<Outcome, StoreError> {
        single(self.apply(vec![Op::delete(key, precondition)]).await?)
    }
}

/// A lock held by this process (see [`Store::try_lock`]); dropping it releases the lock.
pub struct Lease {
    held: std::sync::Arc<std::sync::atomic::AtomicBool>,
    _keep: Option<Box<dyn std::any::Any + Send + Sync>>,
}

impl Lease {
    /// A lease nobody else can contend for (a store of one process).
    pub fn local() -> Lease {
        Lease { held: std::sync::Arc::new(std::sync::atomic::AtomicBool::new(true)), _keep: None }
    }

    /// A lease that lasts while `held` is true and `keep` (what holds it: a connection) lives.
    pub fn new(held: std::sync::Arc<std::sync::atomic::AtomicBool>, keep: Box<dyn std::any::Any + Send + Sync>) -> Lease {
        Lease { held, _keep: Some(keep) }
    }

    /// Whether the lock is still this process's (false once the connection holding it broke).
    pub fn is_held(&self) -> bool {
        self.held.load(std::sync::atomic::Ordering::Acquire)
    }
}

impl std::fmt::Debug for Lease {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Lease").field("held", &self.is_held()).finish()
    }
}

fn single(outcomes: Vec<Outcome>) -> Result<Outcome, StoreError> {
    let count = outcomes.len();
    let mut outcomes = outcomes.into_iter();
    match (outcomes.next(), count) {
        (Some(outcome), 1) => Ok(outcome),
        _ => Err(StoreError::Backend(format!("apply of one op returned {count} outcomes"))),
    }
}
