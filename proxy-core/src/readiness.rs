//! Readiness latch: a proxy is ready only when every subsystem that blocks readiness says so.
//!
//! In: [`Ready::register`] calls at start-up, one per thing to wait for ("workload
//! certificate", "first config"), each returning a [`BlockReady`] guard handed to the task that
//! will do it. Out: [`Ready::is_ready`] (served on the admin `/ready`) turns true when every
//! guard has been dropped, and [`Ready::pending`] names what is still missing. Dropping a guard
//! is the only way to report progress, so a task that fails or panics never reports ready.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use tokio::sync::watch;

/// The readiness of a process: cheap to clone, shared by everything that registers or reads it.
#[derive(Clone)]
pub struct Ready(Arc<Inner>);

struct Inner {
    pending: Mutex<BTreeMap<u64, String>>,
    next_id: AtomicU64,
    state: watch::Sender<bool>,
}

/// Holds readiness back until dropped.
#[must_use = "readiness is blocked only while the guard is alive"]
pub struct BlockReady {
    ready: Ready,
    id: u64,
}

impl Ready {
    /// A latch with nothing to wait for (ready until something registers).
    pub fn new() -> Self {
        let (state, _) = watch::channel(true);
        Ready(Arc::new(Inner { pending: Mutex::new(BTreeMap::new()), next_id: AtomicU64::new(0), state }))
    }

    /// Blocks readiness until the returned guard is dropped; `what` names it in [`Ready::pending`].
    pub fn register(&self, what: impl Into<String>) -> BlockReady {
        let id = self.0.next_id.fetch_add(1, Ordering::Relaxed);
        let mut pending = self.lock();
        pending.insert(id, what.into());
        self.0.state.send_replace(false);
        BlockReady { ready: self.clone(), id }
    }

    /// True when no guard is alive.
    pub fn is_ready(&self) -> bool {
        *self.0.state.borrow()
    }

    /// What readiness is still waiting for, in registration order.
    pub fn pending(&self) -> Vec<String> {
        self.lock().values().cloned().collect()
    }

    /// Completes once ready.
    pub async fn wait(&self) {
        let mut state = self.0.state.subscribe();
        // The sender lives in `self`, so the channel cannot close while we wait.
        let _ = state.wait_for(|ready| *ready).await;
    }

    fn lock(&self) -> MutexGuard<'_, BTreeMap<u64, String>> {
        // A panic while holding this lock cannot leave the map inconsistent: keep going.
        self.0.pending.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

impl Default for Ready {
    fn default() -> Self {
        Ready::new()
    }
}

impl fmt::Debug for Ready {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Ready").field("pending", &self.pending()).finish()
    }
}

impl Drop for BlockReady {
    fn drop(&mut self) {
        let mut pending = self.ready.lock();
        pending.remove(&self.id);
        if pending.is_empty() {
            self.ready.0.state.send_replace(true);
        }
    }
}

impl fmt::Debug for BlockReady {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BlockReady").field("id", &self.id).finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn ready_only_when_every_guard_is_dropped() {
        let ready = Ready::new();
        assert!(ready.is_ready());
        let cert = ready.register("workload certificate");
        let config = ready.register("first config");
        assert!(!ready.is_ready());
        assert_eq!(ready.pending(), ["workload certificate", "first config"]);
        drop(cert);
        assert!(!ready.is_ready());
        assert_eq!(ready.pending(), ["first config"]);
        let waiter = tokio::spawn({
            let ready = ready.clone();
            async move { ready.wait().await }
        });
        tokio::task::yield_now().await;
        assert!(!waiter.is_finished());
        drop(config);
        assert!(ready.is_ready());
        tokio::time::timeout(std::time::Duration::from_secs(5), waiter).await.expect("wait completes").expect("join");
    }
}
