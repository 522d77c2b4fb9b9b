//! `straitctl demo traffic`: steady requests to the frontend, and a line per second of who
//! answered them (the backend's version and zone), how many succeeded and how many failed,
//! and the 5xx the sidecars saw between services (from the global's traffic map), which
//! shows failures that the callers' retries hide.
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

/// The edges of the traffic map (`/map/data`) with 5xx answers, as
/// `frontend→backend@zone-2 48%`, worst first; empty when none.
fn sidecar_errors(map: &Value) -> String {
    let mut failing: Vec<(f64, String)> = map
        .get("edges")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|e| {
            let ratio = e.get("errorRatio").and_then(Value::as_f64)?;
            let rps = e.get("rps").and_then(Value::as_f64)?;
            let end = |k: &str, f: &str| e.get(k).and_then(|v| v.get(f)).and_then(Value::as_str).unwrap_or("?").to_string();
            (ratio > 0.0 && rps > 0.0).then(|| {
                (
                    ratio,
                    format!(
                        "{}→{}@{} {:.0}%",
                        end("source", "service"),
                        end("destination", "service"),
                        end("destination", "zone"),
                        ratio * 100.0
                    ),
                )
            })
        })
        .collect();
    failing.sort_by(|a, b| b.0.total_cmp(&a.0).then_with(|| a.1.cmp(&b.1)));
    failing.into_iter().map(|(_, edge)| edge).collect::<Vec<_>>().join(", ")
}

/// Keeps the 5xx the sidecars saw (see [`sidecar_errors`]) up to date, once a second.
fn watch_sidecar_errors(dir: &Path, api: &str) -> anyhow::Result<tokio::sync::watch::Receiver<String>> {
    let http = super::demo_client(dir, Duration::from_secs(2))?;
    let url = format!("{api}/map/data");
    let (tx, rx) = tokio::sync::watch::channel(String::new());
    tokio::spawn(async move {
        let mut every = tokio::time::interval(Duration::from_secs(1));
        while !tx.is_closed() {
            every.tick().await;
            let map = match http.get(&url).send().await {
                Ok(response) if response.status().is_success() => response.json::<Value>().await.ok(),
                _ => None,
            };
            // An unreachable global leaves the last figures rather than claiming no errors.
            if let Some(map) = map {
                tx.send_replace(sidecar_errors(&map));
            }
        }
    });
    Ok(rx)
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
    let errors = watch_sidecar_errors(dir, &state.api)?;
    say!("{rate} requests per second to {url}; each line is one second");
    say!("(5xx at the sidecars: the share of answers that were 5xx between two services, over the last 10 s, from the traffic map)");
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
            let seen = errors.borrow().clone();
            let seen = if seen.is_empty() { seen } else { format!("   5xx at the sidecars: {seen}") };
            say!("{:>4}s  {ok:>4}  {failed:>6}  {}{why}{seen}", second, who.join(", "));
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

    #[test]
    fn sidecar_errors_name_the_failing_edges_worst_first() {
        let edge = |from: &str, to: &str, zone: &str, rps: f64, ratio: f64| {
            json!({"mesh": "default", "source": {"service": from, "zone": "zone-1"},
                "destination": {"service": to, "zone": zone}, "protocol": "http", "rps": rps, "errorRatio": ratio})
        };
        let map = json!({"zones": [], "edges": [
            edge("frontend", "backend", "zone-1", 5.0, 0.0),
            edge("frontend", "backend", "zone-2", 7.5, 0.48),
            edge("backend", "store", "zone-2", 4.0, 0.9),
            edge("old", "gone", "zone-1", 0.0, 1.0),
        ]});
        assert_eq!(sidecar_errors(&map), "backend→store@zone-2 90%, frontend→backend@zone-2 48%");
        assert_eq!(sidecar_errors(&json!({"zones": [], "edges": [edge("a", "b", "z", 1.0, 0.0)]})), "");
        assert_eq!(sidecar_errors(&json!({})), "");
    }
}
