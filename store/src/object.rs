//! The values that go in and out of a store: objects, write operations, their outcomes and
//! change events.
//!
//! In: a caller's JSON payload under a [`Key`], wrapped in an [`Op`] with a [`Precondition`].
//! Out: the stored [`Object`] (payload plus server-set version and times), an [`Outcome`] per
//! op, and an [`Event`] per change for watchers.

use std::fmt;

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use crate::key::Key;

/// A stored object: the caller's payload plus what the store sets.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Object {
    /// Where the object is stored.
    pub key: Key,
    /// The store revision of this object's last change (like a Kubernetes resourceVersion); > 0.
    pub version: u64,
    /// When the object was created; kept across updates.
    #[serde(with = "time::serde::rfc3339")]
    pub creation_time: OffsetDateTime,
    /// When the payload last changed; a write of identical data does not move it.
    #[serde(with = "time::serde::rfc3339")]
    pub modification_time: OffsetDateTime,
    /// The caller's payload, opaque to the store.
    pub data: serde_json::Value,
}

/// What must be true of the stored object for a write to proceed.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Precondition {
    /// No check: create or replace.
    None,
    /// The key must not exist (create only).
    MustNotExist,
    /// The object must exist at exactly this version (optimistic concurrency).
    Version(u64),
}

impl fmt::Display for Precondition {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Precondition::None => f.write_str("any version"),
            Precondition::MustNotExist => f.write_str("no existing object"),
            Precondition::Version(version) => write!(f, "version {version}"),
        }
    }
}

/// One write in a batch given to [`crate::Store::apply`].
#[derive(Clone, Debug)]
pub enum Op {
    /// Create or replace the object at `key` with `data`.
    Put {
        /// Where to write.
        key: Key,
        /// The new payload.
        data: serde_json::Value,
        /// What must hold before writing.
        precondition: Precondition,
    },
    /// Remove the object at `key`; a missing key fails with [`crate::StoreError::NotFound`].
    Delete {
        /// What to remove.
        key: Key,
        /// What must hold before removing.
        precondition: Precondition,
    },
}

impl Op {
    /// Builds an [`Op::Put`].
    pub fn put(key: Key, data: serde_json::Value, precondition: Precondition) -> Self {
        Op::Put { key, data, precondition }
    }

    /// Builds an [`Op::Delete`].
    pub fn delete(key: Key, precondition: Precondition) -> Self {
        Op::Delete { key, precondition }
    }

    /// The key the op writes.
    pub fn key(&self) -> &Key {
        match self {
            Op::Put { key, .. } | Op::Delete { key, .. } => key,
        }
    }
}

/// What an [`Op`] did.
#[derive(Clone, Debug, PartialEq)]
pub enum Outcome {
    /// The key did not exist; this is the new object.
    Created(Object),
    /// The payload changed; this is the new object.
    Updated(Object),
    /// The payload equals what is stored: nothing written, no revision bump, no event.
    Unchanged(Object),
    /// The object was removed; this is the object as it was before deletion.
    Deleted(Object),
}

impl Outcome {
    /// The object the outcome carries (for [`Outcome::Deleted`], as it was before deletion).
    pub fn object(&self) -> &Object {
        match self {
            Outcome::Created(o) | Outcome::Updated(o) | Outcome::Unchanged(o) | Outcome::Deleted(o) => o,
        }
    }

    /// Consumes the outcome and returns its object.
    pub fn into_object(self) -> Object {
        match self {
            Outcome::Created(o) | Outcome::Updated(o) | Outcome::Unchanged(o) | Outcome::Deleted(o) => o,
        }
    }
}

/// Whether an event wrote or removed an object.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum EventKind {
    /// The object was created or updated.
    Put,
    /// The object was deleted.
    Delete,
}

/// One change to one object, as delivered to watchers.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Event {
    /// The store revision of this change; revisions increase by exactly 1 per event.
    pub revision: u64,
    /// Put or delete.
    pub kind: EventKind,
    /// For a put, the new object (its `version` equals `revision`); for a delete, the object as
    /// it was before deletion (its `version` is older than `revision`).
    pub object: Object,
}
