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
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll, Wake, Waker};
use std::time::Duration;

use tokio::sync::mpsc;
use tokio_util::sync::{CancellationToken, WaitForCancellationFuture};

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
    /// Completes when draining starts: stop accepting new work. Meant to be raced against a
    /// connection (`select!`) for its whole life: polled with the connection on each of its
    /// wake-ups, it looks at the token only when the token woke it (the token's own poll takes
    /// two locks, and a busy connection is woken several times per request).
    pub fn signaled(&self) -> Signaled<'_> {
        Signaled { token: &self.stop, waiting: None }
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

/// [`DrainWatcher::signaled`]'s future.
pub struct Signaled<'a> {
    token: &'a CancellationToken,
    /// Once polled: the token's future, polled with a waker of ours, and what that waker sets.
    waiting: Option<(Pin<Box<WaitForCancellationFuture<'a>>>, Arc<Woken>, Waker)>,
}

/// The waker the token's future is given: notes that it was woken, and wakes the task.
struct Woken {
    woken: AtomicBool,
    task: Mutex<Option<Waker>>,
}

impl Wake for Woken {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.woken.store(true, Ordering::Release);
        if let Some(task) = self.task.lock().unwrap_or_else(PoisonError::into_inner).as_ref() {
            task.wake_by_ref();
        }
    }
}

#[cfg(test)]
static TOKEN_POLLS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

impl Future for Signaled<'_> {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let this = self.get_mut();
        let token = this.token;
        let (future, woken, task) = this.waiting.get_or_insert_with(|| {
            let woken = Arc::new(Woken { woken: AtomicBool::new(true), task: Mutex::new(Some(cx.waker().clone())) });
            (Box::pin(token.cancelled()), woken, cx.waker().clone())
        });
        // The task to wake, updated only when it changed (the future moved to another task).
        if !task.will_wake(cx.waker()) {
            *task = cx.waker().clone();
            *woken.task.lock().unwrap_or_else(PoisonError::into_inner) = Some(cx.waker().clone());
        }
        if !woken.woken.swap(false, Ordering::Acquire) {
            return Poll::Pending;
        }
        #[cfg(test)]
        TOKEN_POLLS.fetch_add(1, Ordering::Relaxed);
        let waker = Waker::from(woken.clone());
        future.as_mut().poll(&mut Context::from_waker(&waker))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
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

    #[tokio::test]
    async fn a_signaled_future_looks_at_the_token_only_when_the_token_woke_it() {
        let drain = Drain::new();
        let watcher = drain.watcher();
        let mut signaled = std::pin::pin!(watcher.signaled());
        let waker = Waker::noop();
        let mut cx = Context::from_waker(waker);
        let before = TOKEN_POLLS.load(Ordering::Relaxed);
        // Polled again and again with its connection, as a busy connection's task is.
        for _ in 0..1000 {
            assert!(signaled.as_mut().poll(&mut cx).is_pending());
        }
        assert_eq!(TOKEN_POLLS.load(Ordering::Relaxed) - before, 1, "the token is polled once until it wakes us");
        drain.signal();
        assert!(signaled.as_mut().poll(&mut cx).is_ready());
    }

    #[tokio::test]
    async fn a_signaled_future_wakes_its_task_when_draining_starts_even_after_moving_to_another() {
        let drain = Drain::new();
        // A watcher that outlives the tasks, so that its future can move between them.
        let watcher: &'static DrainWatcher = Box::leak(Box::new(drain.watcher()));
        let (moved, arrive) = tokio::sync::oneshot::channel();
        // Polled first in one task, then raced to completion in another.
        let first = tokio::spawn(async move {
            let mut signaled = Box::pin(watcher.signaled());
            let once = std::future::poll_fn(|cx| Poll::Ready(signaled.as_mut().poll(cx))).await;
            assert!(once.is_pending());
            let _ = moved.send(signaled);
        });
        first.await.expect("first task");
        let signaled = arrive.await.expect("moved");
        let second = tokio::spawn(signaled);
        tokio::task::yield_now().await;
        drain.signal();
        tokio::time::timeout(Duration::from_secs(5), second).await.expect("woken by the drain").expect("second task");
    }
}
