//! Watch streams: retained history from the event log, then live events from a broadcast
//! channel, stitched together without gaps or duplicates.
//!
//! In: a broadcast receiver subscribed *before* the history is read (so nothing committed in
//! between is missed), the [`EventLog`] and the revision to start after. Out: a
//! [`WatchStream`]. When the receiver lags or sees a gap, the stream re-reads the missed range
//! from the log, and yields [`StoreError::Compacted`] if that range was trimmed.

use std::collections::VecDeque;

use tokio::sync::broadcast::{self, error::RecvError};

use crate::error::StoreError;
use crate::event_log::{EventLog, PAGE_SIZE};
use crate::object::Event;
use crate::store::WatchStream;

/// Starts a stream of events after `from_revision`; fails now if they were already trimmed.
pub(crate) async fn start(log: EventLog, live: broadcast::Receiver<Event>, from_revision: u64) -> Result<WatchStream, StoreError> {
    let next = from_revision.saturating_add(1);
    let first_page = log.read_page_async(next, PAGE_SIZE).await?;
    let state = Watch { catching_up: first_page.len() == PAGE_SIZE, buffer: first_page, log, live, next, failed: false };
    Ok(Box::pin(futures::stream::unfold(state, Watch::next_item)))
}

/// The state of one watch stream.
struct Watch {
    log: EventLog,
    live: broadcast::Receiver<Event>,
    /// The revision to deliver next; everything below it has been delivered.
    next: u64,
    /// Events read from the log, contiguous from `next` (or below it: those are skipped).
    buffer: VecDeque<Event>,
    /// Whether the log may hold events past `buffer` that the channel will not deliver.
    catching_up: bool,
    /// Set after yielding an error, which ends the stream.
    failed: bool,
}

impl Watch {
    async fn next_item(mut self) -> Option<(Result<Event, StoreError>, Self)> {
        loop {
            if self.failed {
                return None;
            }
            if let Some(event) = self.buffer.pop_front() {
                if let Some(event) = self.accept(event) {
                    return Some((Ok(event), self));
                }
                continue;
            }
            if self.catching_up {
                match self.log.read_page_async(self.next, PAGE_SIZE).await {
                    Ok(page) => {
                        self.catching_up = page.len() == PAGE_SIZE;
                        self.buffer = page;
                    }
                    Err(err) => {
                        self.failed = true;
                        return Some((Err(err), self));
                    }
                }
                continue;
            }
            let missed = match self.live.recv().await {
                Ok(event) if event.revision <= self.next => {
                    if let Some(event) = self.accept(event) {
                        return Some((Ok(event), self));
                    }
                    continue;
                }
                // Events before this one were committed but not received (a writer that failed
                // to flush publishes nothing); the log has them.
                Ok(event) => event.revision - self.next,
                // The channel dropped events this receiver had not read; so does the one
                // received next, which also leaves a gap.
                Err(RecvError::Lagged(missed)) => missed,
                Err(RecvError::Closed) => return None,
            };
            tracing::debug!(next = self.next, missed, "watch fell behind, re-reading the event log");
            self.catching_up = true;
        }
    }

    /// Returns the event if it is the next one, or `None` for a duplicate already delivered.
    fn accept(&mut self, event: Event) -> Option<Event> {
        if event.revision < self.next {
            return None;
        }
        self.next = event.revision + 1;
        Some(event)
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use futures::StreamExt;
    use serde_json::json;
    use time::OffsetDateTime;

    use super::*;
    use crate::codec::{revision_to_bytes, to_json};
    use crate::key::Key;
    use crate::object::{EventKind, Object};

    fn event(revision: u64) -> Event {
        let now = OffsetDateTime::now_utc();
        let object =
            Object { key: Key::new("K", "", "n"), version: revision, creation_time: now, modification_time: now, data: json!(revision) };
        Event { revision, kind: EventKind::Put, object }
    }

    fn append(tree: &sled::Tree, revisions: impl IntoIterator<Item = u64>) {
        for revision in revisions {
            tree.insert(revision_to_bytes(revision), to_json(&event(revision), "event").unwrap()).unwrap();
        }
    }

    async fn next_revision(stream: &mut WatchStream) -> u64 {
        match tokio::time::timeout(Duration::from_secs(10), stream.next()).await {
            Ok(Some(Ok(event))) => event.revision,
            other => panic!("expected an event, got {other:?}"),
        }
    }

    fn events_tree() -> sled::Tree {
        sled::Config::new().temporary(true).open().unwrap().open_tree("events").unwrap()
    }

    #[tokio::test]
    async fn events_both_in_history_and_on_the_channel_are_delivered_once() {
        let tree = events_tree();
        let (tx, rx) = broadcast::channel(16);
        append(&tree, 1..=3);
        for revision in 1..=3 {
            tx.send(event(revision)).unwrap();
        }
        let mut stream = start(EventLog::new(tree), rx, 0).await.unwrap();
        tx.send(event(4)).unwrap();
        for want in 1..=4 {
            assert_eq!(next_revision(&mut stream).await, want);
        }
        drop(tx);
        assert!(stream.next().await.is_none(), "the stream ends when the sender is gone");
    }

    #[tokio::test]
    async fn a_gap_on_the_channel_is_filled_from_the_log() {
        let tree = events_tree();
        let (tx, rx) = broadcast::channel(16);
        let mut stream = start(EventLog::new(tree.clone()), rx, 0).await.unwrap();
        // Revisions 1 and 2 were committed but never published.
        append(&tree, 1..=3);
        tx.send(event(3)).unwrap();
        for want in 1..=3 {
            assert_eq!(next_revision(&mut stream).await, want);
        }
    }

    #[tokio::test]
    async fn a_lagging_receiver_catches_up_from_the_log_across_pages() {
        let tree = events_tree();
        let (tx, rx) = broadcast::channel(2);
        let mut stream = start(EventLog::new(tree.clone()), rx, 0).await.unwrap();
        let total = PAGE_SIZE as u64 * 2 + 7;
        append(&tree, 1..=total);
        for revision in 1..=total {
            let _ = tx.send(event(revision));
        }
        for want in 1..=total {
            assert_eq!(next_revision(&mut stream).await, want);
        }
    }

    #[tokio::test]
    async fn history_longer_than_a_page_is_read_in_pages() {
        let tree = events_tree();
        let total = PAGE_SIZE as u64 + 3;
        append(&tree, 1..=total);
        let (tx, rx) = broadcast::channel(4);
        let mut stream = start(EventLog::new(tree), rx, 0).await.unwrap();
        for want in 1..=total {
            assert_eq!(next_revision(&mut stream).await, want);
        }
        tx.send(event(total + 1)).unwrap();
        assert_eq!(next_revision(&mut stream).await, total + 1);
    }

    #[tokio::test]
    async fn lagging_past_the_retained_log_yields_compacted_then_ends() {
        let tree = events_tree();
        let (tx, rx) = broadcast::channel(2);
        let log = EventLog::new(tree.clone());
        let mut stream = start(log.clone(), rx, 0).await.unwrap();
        append(&tree, 1..=20);
        for revision in 1..=20 {
            let _ = tx.send(event(revision));
        }
        log.trim_below(16).unwrap();
        match tokio::time::timeout(Duration::from_secs(10), stream.next()).await {
            Ok(Some(Err(StoreError::Compacted { requested: 0, oldest: 16 }))) => {}
            other => panic!("expected Compacted, got {other:?}"),
        }
        assert!(stream.next().await.is_none());
    }
}
