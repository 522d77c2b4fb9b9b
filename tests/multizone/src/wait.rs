//! Waiting for conditions: every wait in a scenario is a poll with a deadline that, when it
//! runs out, fails the test naming what it waited for and the last reason it was not there
//! yet. [`wait_for`] takes any closure returning `Option` or `Result`; [`http_ready`] waits
//! for an HTTP endpoint to answer 200.

use std::fmt::Display;
use std::time::{Duration, Instant};

use reqwest::blocking::{Client, ClientBuilder};

use crate::process::Proc;

/// First pause between two polls; it doubles up to [`MAX_INTERVAL`].
const FIRST_INTERVAL: Duration = Duration::from_millis(10);
/// Longest pause between two polls.
const MAX_INTERVAL: Duration = Duration::from_millis(250);

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
pub fn wait_for<A: Attempt>(what: &str, deadline: Duration, mut f: impl FnMut() -> A) -> A::Value {
    let start = Instant::now();
    let mut interval = FIRST_INTERVAL;
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
        interval = (interval * 2).min(MAX_INTERVAL);
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
}
