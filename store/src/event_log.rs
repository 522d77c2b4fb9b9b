//! The retained event history in the sled `events` tree (revision → JSON [`Event`]).
//!
//! In: a revision to read from, or a revision up to which to trim. Out: contiguous pages of
//! events for watchers catching up, [`StoreError::Compacted`] when the requested events were
//! trimmed. Events are appended by the store's apply transaction, not here.

use std::collections::VecDeque;

use crate::codec::{from_json, revision_from_bytes, revision_to_bytes};
use crate::error::StoreError;
use crate::object::Event;

/// How many events a watcher reads from disk at a time while catching up.
pub(crate) const PAGE_SIZE: usize = 512;

/// A handle on the events tree; cheap to clone.
#[derive(Clone)]
pub(crate) struct EventLog {
    tree: sled::Tree,
}

impl EventLog {
    /// Wraps the `events` tree.
    pub(crate) fn new(tree: sled::Tree) -> Self {
        EventLog { tree }
    }

    /// The oldest retained revision, or `None` when the log is empty. Blocking.
    pub(crate) fn oldest(&self) -> Result<Option<u64>, StoreError> {
        match self.tree.first().map_err(|e| StoreError::backend("reading the event log", e))? {
            Some((key, _)) => Ok(Some(revision_from_bytes(&key, "an event revision")?)),
            None => Ok(None),
        }
    }

    /// Up to `limit` events from revision `next` on, contiguous and starting exactly at
    /// `next`; [`StoreError::Compacted`] if `next` was trimmed while later events remain.
    /// Blocking.
    pub(crate) fn read_page(&self, next: u64, limit: usize) -> Result<VecDeque<Event>, StoreError> {
        let mut page = VecDeque::new();
        let entries = self.tree.range(revision_to_bytes(next)..).take(limit);
        for (expected, entry) in (next..).zip(entries) {
            let (key, value) = entry.map_err(|e| StoreError::backend("reading the event log", e))?;
            let revision = revision_from_bytes(&key, "an event revision")?;
            if revision != expected {
                // Trimming removes a prefix, so only the first event can be late.
                return Err(if page.is_empty() {
                    StoreError::Compacted { requested: next.saturating_sub(1), oldest: revision }
                } else {
                    StoreError::Backend(format!("event log has a gap between revisions {} and {revision}", expected - 1))
                });
            }
            let event: Event = from_json(&value, format_args!("event {revision}"))?;
            if event.revision != revision {
                return Err(StoreError::Backend(format!("event stored under revision {revision} says {}", event.revision)));
            }
            page.push_back(event);
        }
        Ok(page)
    }

    /// Removes every event with a revision below `keep_from`. Blocking.
    pub(crate) fn trim_below(&self, keep_from: u64) -> Result<usize, StoreError> {
        let mut batch = sled::Batch::default();
        let mut removed = 0;
        for key in self.tree.range(..revision_to_bytes(keep_from)).keys() {
            batch.remove(key.map_err(|e| StoreError::backend("reading the event log", e))?);
            removed += 1;
        }
        self.tree.apply_batch(batch).map_err(|e| StoreError::backend("trimming the event log", e))?;
        Ok(removed)
    }

    /// [`EventLog::read_page`] on a blocking thread.
    pub(crate) async fn read_page_async(&self, next: u64, limit: usize) -> Result<VecDeque<Event>, StoreError> {
        let log = self.clone();
        crate::sled_store::blocking(move || log.read_page(next, limit)).await
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;
    use time::OffsetDateTime;

    use super::*;
    use crate::codec::to_json;
    use crate::key::Key;
    use crate::object::{EventKind, Object};

    fn log_with(revisions: impl IntoIterator<Item = u64>) -> EventLog {
        let db = sled::Config::new().temporary(true).open().unwrap();
        let tree = db.open_tree("events").unwrap();
        for revision in revisions {
            let now = OffsetDateTime::now_utc();
            let object = Object {
                key: Key::new("K", "", "n"),
                version: revision,
                creation_time: now,
                modification_time: now,
                data: json!(revision),
            };
            let event = Event { revision, kind: EventKind::Put, object };
            tree.insert(revision_to_bytes(revision), to_json(&event, "event").unwrap()).unwrap();
        }
        EventLog::new(tree)
    }

    fn revisions(page: &VecDeque<Event>) -> Vec<u64> {
        page.iter().map(|e| e.revision).collect()
    }

    #[test]
    fn pages_are_bounded_and_start_where_asked() {
        let log = log_with(1..=10);
        assert_eq!(revisions(&log.read_page(1, 4).unwrap()), vec![1, 2, 3, 4]);
        assert_eq!(revisions(&log.read_page(8, 4).unwrap()), vec![8, 9, 10]);
        assert!(log.read_page(11, 4).unwrap().is_empty());
    }

    #[test]
    fn trimmed_start_is_compacted() {
        let log = log_with(1..=10);
        assert_eq!(log.trim_below(6).unwrap(), 5);
        assert_eq!(log.oldest().unwrap(), Some(6));
        assert!(matches!(log.read_page(5, 4), Err(StoreError::Compacted { requested: 4, oldest: 6 })));
        assert_eq!(revisions(&log.read_page(6, 4).unwrap()), vec![6, 7, 8, 9]);
    }

    #[test]
    fn a_hole_in_the_middle_is_a_backend_error() {
        let log = log_with([1, 2, 4]);
        assert!(matches!(log.read_page(1, 10), Err(StoreError::Backend(m)) if m.contains("gap")));
    }

    #[test]
    fn a_mislabelled_event_is_a_backend_error() {
        let log = log_with([1]);
        let bytes = log.tree.get(revision_to_bytes(1)).unwrap().unwrap();
        log.tree.insert(revision_to_bytes(2), bytes).unwrap();
        assert!(matches!(log.read_page(1, 10), Err(StoreError::Backend(m)) if m.contains("says 1")));
    }
}
