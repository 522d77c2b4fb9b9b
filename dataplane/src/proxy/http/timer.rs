//! Timers kept by a connection and lent to its requests in turn.
//!
//! A tokio `Sleep` made for one request is filed in the runtime's timer wheel when first
//! polled and taken out when dropped, each under the timer driver's lock. An HTTP/1.1
//! connection's requests come one after the other, each with a later deadline than the last:
//! moving a filed timer later is only marked on it (tokio re-files it when its old time comes),
//! so one timer per connection, moved to each request's deadline, costs the wheel nothing per
//! request. A request that finds its connection's timer lent (an HTTP/2 stream beside others)
//! makes its own, as before.
//!
//! [`HeaderReads`] gives hyper's HTTP/1.1 server the same for its wait for each request head,
//! and reads the coarse clock for it: that deadline is 60 s or more away.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use tokio::time::Sleep;

/// A connection's timer while no request holds it.
#[derive(Default)]
pub struct Spare(Mutex<Option<Pin<Box<Sleep>>>>);

impl Spare {
    /// A timer that fires at `at`: this connection's, unless a request holds it now.
    pub fn lend(self: &Arc<Self>, at: impl Into<tokio::time::Instant>) -> Lent {
        let at = at.into();
        let spare = self.0.lock().unwrap_or_else(PoisonError::into_inner).take();
        let sleep = match spare {
            Some(mut sleep) => {
                sleep.as_mut().reset(at);
                sleep
            }
            None => Box::pin(tokio::time::sleep_until(at)),
        };
        Lent { sleep: Some(sleep), home: Some(self.clone()) }
    }
}

/// A timer that fires at its deadline; a connection's goes back to it when dropped.
pub struct Lent {
    /// Always `Some` until dropped.
    sleep: Option<Pin<Box<Sleep>>>,
    home: Option<Arc<Spare>>,
}

impl Lent {
    /// A timer of its own, firing at `at`.
    pub fn until(at: impl Into<tokio::time::Instant>) -> Lent {
        Lent { sleep: Some(Box::pin(tokio::time::sleep_until(at.into()))), home: None }
    }

    /// Moves it to fire at `at` (later than before: without touching the timer wheel).
    pub fn reset(&mut self, at: impl Into<tokio::time::Instant>) {
        if let Some(sleep) = self.sleep.as_mut() {
            sleep.as_mut().reset(at.into());
        }
    }
}

impl Future for Lent {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        match self.sleep.as_mut() {
            Some(sleep) => sleep.as_mut().poll(cx),
            None => Poll::Ready(()),
        }
    }
}

impl Drop for Lent {
    fn drop(&mut self) {
        let (Some(sleep), Some(home)) = (self.sleep.take(), self.home.take()) else { return };
        let mut spare = home.0.lock().unwrap_or_else(PoisonError::into_inner);
        if spare.is_none() {
            *spare = Some(sleep);
        }
    }
}

/// hyper's HTTP/1.1 server timer for one connection (its wait for each request head): one
/// tokio timer, lent to each wait, and the coarse clock.
#[derive(Clone, Default)]
pub struct HeaderReads(Arc<Spare>);

/// A wait for a request head, as hyper takes it.
struct HeaderRead(Lent);

impl Future for HeaderRead {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        Pin::new(&mut self.0).poll(cx)
    }
}

impl hyper::rt::Sleep for HeaderRead {}

impl hyper::rt::Timer for HeaderReads {
    fn sleep(&self, duration: Duration) -> Pin<Box<dyn hyper::rt::Sleep>> {
        self.sleep_until(self.now() + duration)
    }

    fn sleep_until(&self, deadline: Instant) -> Pin<Box<dyn hyper::rt::Sleep>> {
        Box::pin(HeaderRead(self.0.lend(deadline)))
    }

    fn now(&self) -> Instant {
        strait_runtime::clock::coarse_now()
    }
}

#[cfg(test)]
#[path = "timer_tests.rs"]
pub(super) mod tests;
