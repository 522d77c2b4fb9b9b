//! One watch of the zone store for every sidecar and gateway session: the keys that changed,
//! fanned out.
//!
//! Each session used to watch the store itself. A store watch carries every event's whole
//! object, and one that falls behind its live channel re-reads a page of the event log into a
//! buffer of its own: in a registration storm (a write per new sidecar, every session busy
//! computing) thousands of sessions each held hundreds of Dataplanes, gigabytes in all. Here
//! one task watches and sends only keys; a session that falls behind is told so
//! ([`Change::Missed`]) and recomputes, which is always correct.
//!
//! In: the zone store. Out: a broadcast of [`Change`]s.

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use strait_store::{Key, Store};
use tokio::sync::broadcast;
use tokio_util::sync::CancellationToken;

/// What a session hears.
#[derive(Debug, Clone)]
pub enum Change {
    /// This key changed.
    Key(Arc<Key>),
    /// Changes were missed (the session fell behind, or the watch had to start again):
    /// anything may have changed.
    Missed,
}

/// Changes waiting for a session before it is told it missed some.
const BUFFER: usize = 4096;

/// The zone's changes; cheap to clone.
#[derive(Clone)]
pub struct Changes {
    tx: broadcast::Sender<Change>,
}

/// A session's subscription.
pub struct Subscription {
    rx: broadcast::Receiver<Change>,
}

impl Changes {
    /// Watches `store` until `shutdown`: every change committed after this returns is heard
    /// (the watch starts from the revision read here, not from whenever its task first runs).
    pub fn start(store: Arc<dyn Store>, shutdown: CancellationToken) -> Changes {
        let (tx, _) = broadcast::channel(BUFFER);
        let sender = tx.clone();
        let from = store.revision();
        tokio::spawn(async move {
            tokio::select! {
                () = shutdown.cancelled() => {}
                () = follow(store, from, sender) => {}
            }
        });
        Changes { tx }
    }

    /// Every change from now on. Subscribe before reading what the changes would change.
    pub fn subscribe(&self) -> Subscription {
        Subscription { rx: self.tx.subscribe() }
    }
}

async fn follow(store: Arc<dyn Store>, mut from: u64, tx: broadcast::Sender<Change>) {
    loop {
        match store.watch(from).await {
            Ok(mut events) => {
                while let Some(event) = events.next().await {
                    match event {
                        Ok(event) => {
                            let _ = tx.send(Change::Key(Arc::new(event.object.key)));
                        }
                        Err(error) => {
                            tracing::warn!(%error, "the zone store's watch failed; sessions recompute and it starts again");
                            break;
                        }
                    }
                }
            }
            Err(error) => tracing::warn!(%error, "cannot watch the zone store; retrying"),
        }
        // What happened meanwhile is not known event by event: everyone recomputes.
        from = store.revision();
        let _ = tx.send(Change::Missed);
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

impl Subscription {
    /// The next change, waiting for it; `None` once the zone stops.
    pub async fn next(&mut self) -> Option<Change> {
        match self.rx.recv().await {
            Ok(change) => Some(change),
            Err(broadcast::error::RecvError::Lagged(_)) => Some(Change::Missed),
            Err(broadcast::error::RecvError::Closed) => None,
        }
    }

    /// Takes `first` and every change already waiting behind it (one recomputation for a
    /// burst): whether any is of a key `affects` cares about, and whether any is a token
    /// revocation (the session then checks its token). A missed change may be either.
    pub fn burst(&mut self, first: Change, affects: impl Fn(&Key) -> bool) -> (bool, bool) {
        let (mut relevant, mut revoked) = (false, false);
        let mut next = Some(first);
        while let Some(change) = next {
            match change {
                Change::Missed => (relevant, revoked) = (true, true),
                Change::Key(key) if key.kind == strait_cp_core::kinds::REVOKED_TOKEN => revoked = true,
                Change::Key(key) => relevant |= affects(&key),
            }
            next = self.ready();
        }
        (relevant, revoked)
    }

    /// A change already waiting, if any.
    pub fn ready(&mut self) -> Option<Change> {
        match self.rx.try_recv() {
            Ok(change) => Some(change),
            Err(broadcast::error::TryRecvError::Lagged(_)) => Some(Change::Missed),
            Err(_) => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;
    use strait_store::{Precondition, SledStore};

    use super::*;

    #[tokio::test]
    async fn a_change_committed_before_the_watch_first_runs_is_heard() {
        let store: Arc<dyn Store> = Arc::new(SledStore::temporary().unwrap());
        let changes = Changes::start(store.clone(), CancellationToken::new());
        let mut session = changes.subscribe();
        // Written from another thread while this one does not yield: the watch's task has not
        // run yet when the write commits.
        let writer = store.clone();
        std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
            runtime.block_on(writer.put(Key::new("K", "m", "early"), json!(1), Precondition::None))
        })
        .join()
        .unwrap()
        .unwrap();
        let heard = tokio::time::timeout(Duration::from_secs(10), session.next()).await.expect("the change was heard");
        assert!(matches!(heard, Some(Change::Key(ref k)) if k.name == "early"), "{heard:?}");
    }

    #[tokio::test]
    async fn a_session_hears_each_key_and_one_that_falls_behind_is_told() {
        let store: Arc<dyn Store> = Arc::new(SledStore::temporary().unwrap());
        let changes = Changes::start(store.clone(), CancellationToken::new());
        let mut early = changes.subscribe();
        store.put(Key::new("K", "m", "a"), json!(1), Precondition::None).await.unwrap();
        let heard = tokio::time::timeout(Duration::from_secs(10), early.next()).await.unwrap();
        assert!(matches!(heard, Some(Change::Key(ref k)) if k.name == "a"), "{heard:?}");
        assert!(early.ready().is_none());
        store.put(Key::new("K", "m", "b"), json!(1), Precondition::None).await.unwrap();
        store.put(Key::new(strait_cp_core::kinds::REVOKED_TOKEN, "", "t"), json!(1), Precondition::None).await.unwrap();
        let first = tokio::time::timeout(Duration::from_secs(10), early.next()).await.unwrap().unwrap();
        while early.rx.is_empty() {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert_eq!(early.burst(first, |k| k.name == "b"), (true, true), "a burst: b, then a revocation");
        assert!(early.ready().is_none(), "the burst took every waiting change");

        // One that keeps up, to know when every change has gone out; one that reads nothing.
        let mut witness = changes.subscribe();
        let last = format!("o{}", BUFFER + 9);
        let everything_sent = tokio::spawn(async move {
            while let Some(change) = witness.next().await {
                if matches!(change, Change::Key(ref k) if k.name == last) {
                    return;
                }
            }
        });
        let mut slow = changes.subscribe();
        for n in 0..BUFFER + 10 {
            store.put(Key::new("K", "m", format!("o{n}")), json!(n), Precondition::None).await.unwrap();
        }
        tokio::time::timeout(Duration::from_secs(30), everything_sent).await.unwrap().unwrap();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        loop {
            match tokio::time::timeout_at(deadline, slow.next()).await.expect("told within 30 s") {
                Some(Change::Missed) => break,
                Some(Change::Key(_)) => continue,
                None => panic!("closed"),
            }
        }
    }
}
