//! Two-phase shutdown: stop accepting, let in-flight work finish until a deadline, then force.
//!
//! In: a [`Drain`] owned by whoever shuts the proxy down, and [`DrainWatcher`]s cloned into
//! every listener loop and every connection. Out: phase one ([`Drain::signal`], or the start
//! of [`Drain::drain`]) makes [`DrainWatcher::signaled`] complete, so accept loops stop and
//! HTTP connections stop taking new requests; in-flight connections keep running. When every
//! watcher has been dropped the drain is complete. If some are still alive at the deadline,
//! phase two makes [`DrainWatcher::forced`] complete and connections close at once. A watcher
//! alive is work not finished: hold one for exactly as long as the work lasts.

use std::future::Future;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// How long [`Drain::drain`] waits, after forcing, for watchers to notice and go away.
pub const FORCE_GRACE: Duration = Duration::from_secs(1);

/// The owner's side of a drain.
#[derive(Debug)]
pub struct Drain {
    stop: CancellationToken,
    force: CancellationToken,
    alive: mpsc::Sender<()>,
    done: mpsc::Receiver<()>,
}

/// How a drain ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DrainOutcome {
    /// Every watcher was dropped before the deadline.
    Completed,
    /// The deadline passed; the remaining work was told to close.
    Forced,
}

/// Held by accept loops and connections: tells them when to stop and when to give up.
#[derive(Clone, Debug)]
pub struct DrainWatcher {
    stop: CancellationToken,
    force: CancellationToken,
    _alive: mpsc::Sender<()>,
}

impl Drain {
    /// A drain with no watchers yet.
    pub fn new() -> Self {
        // Nothing is ever sent: the channel only counts live senders (the watchers).
        let (alive, done) = mpsc::channel(1);
        Drain { stop: CancellationToken::new(), force: CancellationToken::new(), alive, done }
    }

    /// A new watcher; the drain waits for it to be dropped.
    pub fn watcher(&self) -> DrainWatcher {
        DrainWatcher { stop: self.stop.clone(), force: self.force.clone(), _alive: self.alive.clone() }
    }

    /// Phase one without waiting: watchers see [`DrainWatcher::signaled`] complete.
    pub fn signal(&self) {
        self.stop.cancel();
    }

    /// Whether phase one has started.
    pub fn is_signaled(&self) -> bool {
        self.stop.is_cancelled()
    }

    /// Signals, waits up to `deadline` for every watcher to be dropped, then forces the rest
    /// (and waits up to [`FORCE_GRACE`] more for them to close).
    pub async fn drain(self, deadline: Duration) -> DrainOutcome {
        let Drain { stop, force, alive, mut done } = self;
        stop.cancel();
        drop(alive);
        if tokio::time::timeout(deadline, done.recv()).await.is_ok() {
            return DrainOutcome::Completed;
        }
        force.cancel();
        if tokio::time::timeout(FORCE_GRACE, done.recv()).await.is_err() {
            tracing::warn!(grace = ?FORCE_GRACE, "connections still open after being forced to close");
        }
        DrainOutcome::Forced
    }
}

impl Default for Drain {
    fn default() -> Self {
        Drain::new()
    }
}

impl DrainWatcher {
    /// Completes when draining starts: stop accepting new work.
    pub async fn signaled(&self) {
        self.stop.cancelled().await
    }

    /// Completes when the deadline has passed: close now.
    pub async fn forced(&self) {
        self.force.cancelled().await
    }

    /// Whether draining has started.
    pub fn is_signaled(&self) -> bool {
        self.stop.is_cancelled()
    }

    /// Runs `work` to completion unless the drain is forced first (then `None`).
    pub async fn unless_forced<F: Future>(&self, work: F) -> Option<F::Output> {
        tokio::select! {
            output = work => Some(output),
            () = self.forced() => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;
    use tokio::time::Instant;

    /// A connection that needs `work` more time once draining starts, and records whether it
    /// was cut.
    fn connection(watcher: DrainWatcher, work: Duration, cut: Arc<AtomicBool>) -> tokio::task::JoinHandle<()> {
        tokio::spawn(async move {
            watcher.signaled().await;
            if watcher.unless_forced(tokio::time::sleep(work)).await.is_none() {
                cut.store(true, Ordering::SeqCst);
            }
        })
    }

    #[tokio::test(start_paused = true)]
    async fn completes_at_once_without_watchers() {
        let started = Instant::now();
        assert_eq!(Drain::new().drain(Duration::from_secs(30)).await, DrainOutcome::Completed);
        assert_eq!(started.elapsed(), Duration::ZERO);
    }

    #[tokio::test(start_paused = true)]
    async fn lets_work_finish_within_the_deadline() {
        let drain = Drain::new();
        let cut = Arc::new(AtomicBool::new(false));
        let task = connection(drain.watcher(), Duration::from_secs(2), cut.clone());
        let started = Instant::now();
        assert_eq!(drain.drain(Duration::from_secs(10)).await, DrainOutcome::Completed);
        // It waited for the work (2 s), not for the deadline (10 s).
        assert_eq!(started.elapsed(), Duration::from_secs(2));
        assert!(!cut.load(Ordering::SeqCst));
        task.await.expect("task");
    }

    #[tokio::test(start_paused = true)]
    async fn forces_work_that_outlives_the_deadline() {
        let drain = Drain::new();
        let (short, long) = (Arc::new(AtomicBool::new(false)), Arc::new(AtomicBool::new(false)));
        let a = connection(drain.watcher(), Duration::from_secs(1), short.clone());
        let b = connection(drain.watcher(), Duration::from_secs(60), long.clone());
        let started = Instant::now();
        assert_eq!(drain.drain(Duration::from_secs(5)).await, DrainOutcome::Forced);
        assert_eq!(started.elapsed(), Duration::from_secs(5), "forced at the deadline, not after the work");
        assert!(!short.load(Ordering::SeqCst), "work within the deadline is not cut");
        assert!(long.load(Ordering::SeqCst), "work past the deadline is cut");
        a.await.expect("a");
        b.await.expect("b");
    }

    #[tokio::test(start_paused = true)]
    async fn a_watcher_that_ignores_force_does_not_block_shutdown_forever() {
        let drain = Drain::new();
        let stuck = drain.watcher();
        let started = Instant::now();
        assert_eq!(drain.drain(Duration::from_secs(5)).await, DrainOutcome::Forced);
        assert_eq!(started.elapsed(), Duration::from_secs(5) + FORCE_GRACE);
        drop(stuck);
    }

    #[tokio::test(start_paused = true)]
    async fn signal_reaches_existing_and_new_watchers() {
        let drain = Drain::new();
        let early = drain.watcher();
        assert!(!early.is_signaled());
        drain.signal();
        assert!(drain.is_signaled());
        early.signaled().await;
        let late = drain.watcher();
        assert!(late.is_signaled());
        late.signaled().await;
    }
}
