//! Waiting for conditions: every wait in a scenario is a poll with a deadline that, when it
//! runs out, fails the test naming what it waited for and the last reason it was not there
//! yet. [`wait_for`] takes any closure returning `Option` or `Result`; [`wait_for_every`] polls
//! at a fixed pace, for measuring how long something takes; [`holds_for`] is the opposite, a
//! condition that must stay true for a while (polled, never a bare sleep); [`http_ready`] waits
//! for an HTTP endpoint to answer 200.

use std::fmt::Display;
use std::time::{Duration, Instant};

use reqwest::blocking::{Client, ClientBuilder};

use crate::process::Proc;

/// First pause between two polls; it doubles up to [`MAX_INTERVAL`].
const FIRST_INTERVAL: Duration = Duration::from_millis(10);
/// Longest pause between two polls.
const MAX_INTERVAL: Duration = Duration::from_millis(250);
/// Pause between two polls of [`holds_for`].
pub const HOLD_INTERVAL: Duration = Duration::from_millis(200);

/// The outcome of one poll: success with a value, or a reason to keep waiting.
pub trait Attempt {
    /// What a successful poll yields.
    type Value;
    /// `Ok` to stop waiting, `Err(reason)` to poll again.
    fn into_result(self) -> Result<Self::Value, String>;
}

impl<T> Attempt for Option<T> {
    type Value = T;
    fn into_result(self) -> Result<T, String> {
        self.ok_or_else(|| "condition not met yet (None)".to_owned())
    }
}

impl<T, E: Display> Attempt for Result<T, E> {
    type Value = T;
    fn into_result(self) -> Result<T, String> {
        self.map_err(|e| e.to_string())
    }
}

/// Polls `f` (at short, growing intervals) until it succeeds and returns its value; panics
/// if `deadline` passes first, naming `what` and the last error.
pub fn wait_for<A: Attempt>(what: &str, deadline: Duration, f: impl FnMut() -> A) -> A::Value {
    poll(what, deadline, FIRST_INTERVAL, |interval| (interval * 2).min(MAX_INTERVAL), f)
}

/// Like [`wait_for`], but polls every `interval` (after the poll itself), so that the time at
/// which the condition is first seen is accurate to about `interval`: for measurements.
pub fn wait_for_every<A: Attempt>(what: &str, deadline: Duration, interval: Duration, f: impl FnMut() -> A) -> A::Value {
    poll(what, deadline, interval, |_| interval, f)
}

/// Polls `f` until it succeeds or `deadline` passes; pauses `first`, then `next(previous pause)`.
fn poll<A: Attempt>(
    what: &str,
    deadline: Duration,
    first: Duration,
    next: impl Fn(Duration) -> Duration,
    mut f: impl FnMut() -> A,
) -> A::Value {
    let start = Instant::now();
    let mut interval = first;
    let mut attempts = 0u32;
    loop {
        attempts += 1;
        let last = match f().into_result() {
            Ok(v) => return v,
            Err(e) => e,
        };
        let elapsed = start.elapsed();
        if elapsed >= deadline {
            panic!(
                "timed out after {elapsed:.1?} (deadline {deadline:?}, {attempts} attempts) \
                 waiting for {what}; last error: {last}"
            );
        }
        std::thread::sleep(interval.min(deadline - elapsed));
        interval = next(interval);
    }
}

/// Polls `f` every [`HOLD_INTERVAL`] for `period` (the last poll at or after its end) and
/// panics at the first poll where it fails, naming `what`, when, and why: for conditions that
/// must *stay* true (a zone keeps serving while the global is down, a refused zone stays
/// refused). Returns how many polls passed.
pub fn holds_for<A: Attempt>(what: &str, period: Duration, mut f: impl FnMut() -> A) -> u32 {
    let start = Instant::now();
    let mut polls = 0u32;
    loop {
        if let Err(e) = f().into_result() {
            panic!("{what} stopped holding after {:.1?} (of {period:?}, {polls} polls passed): {e}", start.elapsed());
        }
        polls += 1;
        let elapsed = start.elapsed();
        if elapsed >= period {
            return polls;
        }
        std::thread::sleep(HOLD_INTERVAL.min(period - elapsed));
    }
}

/// Waits until `GET url` answers 200, from the test process's own network namespace (use
/// `Host::http_ready` to probe from inside a host).
pub fn http_ready(url: &str, deadline: Duration) {
    http_ready_with(&client_builder().build().expect("build reqwest client"), url, deadline);
}

/// Like [`http_ready`], with the given client (e.g. one living in a host's namespace).
pub fn http_ready_with(client: &Client, url: &str, deadline: Duration) {
    http_ready_watching(client, url, deadline, None);
}

/// Like [`http_ready_with`]; fails at once if `server` exits meanwhile, instead of waiting
/// out the deadline for a server that is gone.
pub(crate) fn http_ready_watching(client: &Client, url: &str, deadline: Duration, server: Option<&Proc>) {
    let what = format!("{url} to answer 200");
    wait_for(&what, deadline, || {
        if let Some(p) = server {
            p.assert_running(&what);
        }
        let resp = client.get(url).send().map_err(|e| error_chain(&e))?;
        let status = resp.status();
        if status == reqwest::StatusCode::OK {
            Ok(())
        } else {
            let body = resp.text().unwrap_or_default();
            Err(format!("status {status}: {}", body.trim()))
        }
    });
}

/// Client settings for the harness: no proxy from the environment, short timeouts.
pub(crate) fn client_builder() -> ClientBuilder {
    Client::builder().no_proxy().connect_timeout(Duration::from_secs(2)).timeout(Duration::from_secs(10))
}

/// An error with its sources ("error sending request: connection refused"), since reqwest's
/// top-level message alone rarely says what went wrong.
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut msg = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        msg.push_str(": ");
        msg.push_str(&s.to_string());
        source = s.source();
    }
    msg
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn returns_the_value_once_the_condition_holds() {
        let mut n = 0;
        let v = wait_for("n to reach 3", Duration::from_secs(5), || {
            n += 1;
            (n >= 3).then_some(n)
        });
        assert_eq!(v, 3);
    }

    #[test]
    fn fixed_pace_polls_at_the_given_interval() {
        let start = Instant::now();
        let mut n = 0;
        wait_for_every("n to reach 5", Duration::from_secs(5), Duration::from_millis(20), || {
            n += 1;
            (n >= 5).then_some(())
        });
        assert!(start.elapsed() >= Duration::from_millis(80), "{:?}", start.elapsed());
        assert!(start.elapsed() < Duration::from_millis(1000), "{:?}", start.elapsed());
    }

    #[test]
    fn holds_for_polls_until_the_end_of_the_period() {
        let start = Instant::now();
        let polls = holds_for("always", Duration::from_millis(500), || Some(()));
        assert!(start.elapsed() >= Duration::from_millis(500));
        assert!(polls >= 3, "{polls}");
    }

    #[test]
    fn holds_for_fails_at_the_first_failed_poll() {
        let mut n = 0;
        let err = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            holds_for("n below 2", Duration::from_secs(10), || {
                n += 1;
                (n < 2).then_some(())
            })
        }))
        .expect_err("must panic");
        let msg = err.downcast_ref::<String>().cloned().unwrap_or_default();
        assert!(msg.contains("n below 2 stopped holding") && msg.contains("1 polls passed"), "{msg}");
    }
}
