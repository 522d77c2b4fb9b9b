//! `straitctl demo traffic`: steady requests to the frontend, and a line per second of who
//! answered them (the backend's version and zone), how many succeeded and how many failed.
//!
//! In: the demo's state, a rate and a duration. Out: a table on stdout.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant};

use serde_json::Value;

use super::procs::State;

/// Who answered a request: `<service> <version>@<zone>` of the frontend's callee, or why
/// the request failed.
fn answered_by(answer: &Value) -> Option<String> {
    let callee = answer.get("calls")?;
    let field = |k: &str| callee.get(k).and_then(Value::as_str).unwrap_or("?").to_string();
    Some(format!("{} {}@{}", field("service"), field("version"), field("zone")))
}

/// Runs until `seconds` have passed (0: forever).
pub async fn run(dir: &Path, rate: u32, seconds: u64) -> anyhow::Result<()> {
    let state = State::load(dir)?;
    let url = format!("{}/api", state.frontend);
    let http = reqwest::Client::builder().timeout(Duration::from_secs(5)).build()?;
    let every = Duration::from_secs(1) / rate.max(1);
    let started = Instant::now();
    let mut next = tokio::time::Instant::now();
    let mut second = 1;
    let (mut ok, mut failed) = (0u32, 0u32);
    let mut by: BTreeMap<String, u32> = BTreeMap::new();
    let mut last_error = String::new();
    say!("{rate} requests per second to {url}; each line is one second");
    say!("{:>5}  {:>4}  {:>6}  answered by", "time", "ok", "failed");
    loop {
        tokio::time::sleep_until(next).await;
        next += every;
        match http.get(&url).send().await {
            Ok(response) => {
                let success = response.status().is_success();
                let body: Value = response.json().await.unwrap_or(Value::Null);
                if success {
                    ok += 1;
                    *by.entry(answered_by(&body).unwrap_or_else(|| "?".into())).or_default() += 1;
                } else {
                    failed += 1;
                    last_error = first_error(&body).unwrap_or_else(|| "no answer".into());
                }
            }
            Err(e) => {
                failed += 1;
                last_error = e.to_string();
            }
        }
        if started.elapsed() >= Duration::from_secs(second) {
            let who: Vec<String> = by.iter().map(|(k, n)| format!("{k}: {n}")).collect();
            let why = if failed > 0 { format!("   last failure: {last_error}") } else { String::new() };
            say!("{:>4}s  {ok:>4}  {failed:>6}  {}{why}", second, who.join(", "));
            (ok, failed) = (0, 0);
            by.clear();
            second += 1;
            if seconds > 0 && second > seconds {
                return Ok(());
            }
        }
    }
}

/// The first error along the chain of an answer.
fn first_error(answer: &Value) -> Option<String> {
    let mut hop = Some(answer);
    let mut found = None;
    while let Some(h) = hop {
        if let Some(e) = h.get("error").and_then(Value::as_str) {
            found = Some(format!("{}: {e}", h.get("service").and_then(Value::as_str).unwrap_or("?")));
        }
        hop = h.get("calls");
    }
    found
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn answers_name_the_backend_and_failures_the_deepest_error() {
        let ok = json!({"service": "frontend", "calls": {"service": "backend", "version": "v2", "zone": "zone-2", "calls": {"service": "store"}}});
        assert_eq!(answered_by(&ok).as_deref(), Some("backend v2@zone-2"));
        let failed = json!({"service": "frontend", "error": "backend answered 502",
            "calls": {"service": "backend", "error": "store answered 403: strait: denied"}});
        assert_eq!(first_error(&failed).as_deref(), Some("backend: store answered 403: strait: denied"));
    }
}
