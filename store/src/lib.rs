//! Strait's versioned object store: JSON payloads under (kind, mesh, name) keys, written in
//! atomic batches with optimistic-concurrency preconditions, and watched as an ordered stream
//! of change events.
//!
//! In: [`Op`] batches, reads by key, kind or mesh, and watch requests from a revision. Out:
//! [`Object`]s stamped with a version and times, one [`Outcome`] per op, and [`Event`]s in
//! revision order. Callers hold a [`Store`] (the trait); [`SledStore`] is the embedded backend,
//! [`PgStore`] the PostgreSQL one that several processes share.
//! The store knows nothing of the resource model: validation and typing live in `strait-api`.
#![forbid(unsafe_code)]

mod apply;
mod codec;
mod error;
mod event_log;
mod key;
mod object;
mod pg_store;
mod pg_tls;
mod sled_store;
mod store;
mod watch;

pub use error::StoreError;
pub use key::Key;
pub use object::{Event, EventKind, Object, Op, Outcome, Precondition};
pub use pg_store::{redact as redact_url, PgOptions, PgStore};
pub use sled_store::{SledOptions, SledStore};
pub use store::{Lease, Stats, Store, WatchStream};
