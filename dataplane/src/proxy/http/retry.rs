//! MeshRetry for HTTP: which failed attempts are tried again, how often, after what back-off,
//! and the budget that keeps retries from multiplying an outage.
//!
//! In: the merged MeshRetry conf of a destination. Out: a [`RetryPolicy`] the outbound path
//! asks after each attempt, and a [`Budget`] per destination (atomics: a retry takes a slot
//! only while retries in progress stay under `percent` of the requests in progress, or
//! `minRetryConcurrency`). Only requests that can be sent again are retried: idempotent
//! methods (GET, HEAD, OPTIONS, TRACE, PUT, DELETE) and, on a gRPC destination, calls. A body
//! is streamed to the first endpoint as it comes, and a copy kept up to [`MAX_KEPT_BODY`] for
//! the retries; a larger body is not retried. A gRPC destination follows the `grpc` section:
//! a call is retried on the `grpc-status` of a trailers-only answer (a status that comes after
//! response messages cannot be retried: they have reached the application), on a gateway
//! error of a sidecar (as `Unavailable`), and on the failures its conditions name.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use http::{HeaderMap, Method, StatusCode};
use rand::Rng;
use strait_api::policies::retry::RetryConf;
use strait_api::proxy_config::Protocol;

/// The largest request body kept for a retry, in bytes.
pub const MAX_KEPT_BODY: usize = 64 * 1024;

/// gRPC status codes MeshRetry names.
const GRPC_CODES: &[(&str, u32)] =
    &[("Canceled", 1), ("DeadlineExceeded", 4), ("ResourceExhausted", 8), ("Internal", 13), ("Unavailable", 14)];
const GRPC_UNAVAILABLE: u32 = 14;
const GRPC_DEADLINE_EXCEEDED: u32 = 4;

/// Why an attempt got no response.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Cause {
    /// No connection to an endpoint could be made (or none was available).
    Connect,
    /// The request was sent and the connection failed before a response.
    Reset,
    /// No response within the per-try timeout.
    Timeout,
    /// A MeshCircuitBreaker limit refused it: never retried (the retry would meet the limit).
    Overflow,
}

/// The retry rules of one destination.
#[derive(Debug, Clone, PartialEq)]
pub struct RetryPolicy {
    /// Retries after the first attempt.
    pub retries: u32,
    /// The time limit of each attempt.
    pub per_try: Option<Duration>,
    base: Duration,
    max: Duration,
    on_5xx: bool,
    on_gateway_error: bool,
    on_reset: bool,
    on_connect: bool,
    on_409: bool,
    statuses: Vec<u16>,
    /// `Some`: a gRPC destination, retried on these status codes.
    grpc: Option<Vec<u32>>,
    budget_percent: f64,
    budget_min: usize,
}

/// The conditions retried when a MeshRetry gives none (as Kuma's defaults).
const DEFAULT_ON: &[&str] = &["5xx", "GatewayError", "Reset", "ConnectFailure", "Retriable4xx", "RefusedStream"];
/// The gRPC conditions retried when a MeshRetry gives none.
const DEFAULT_GRPC_ON: &[&str] = &["Canceled", "DeadlineExceeded", "ResourceExhausted", "Unavailable"];

impl RetryPolicy {
    /// The policy of a merged MeshRetry conf for a destination speaking `protocol`: its `grpc`
    /// section for gRPC, else its `http` section; `None` without that section.
    pub fn from_conf(conf: Option<&RetryConf>, protocol: Protocol) -> Option<RetryPolicy> {
        let conf = conf?;
        let is_grpc = protocol == Protocol::Grpc;
        let http = if is_grpc { conf.grpc.as_ref()? } else { conf.http.as_ref()? };
        let base = http.back_off.as_ref().and_then(|b| b.base_interval).map_or(Duration::from_millis(25), |d| d.get());
        let max = http.back_off.as_ref().and_then(|b| b.max_interval).map_or(base * 10, |d| d.get());
        let on: Vec<&str> = match &http.retry_on {
            Some(list) => list.iter().map(String::as_str).collect(),
            None if is_grpc => DEFAULT_GRPC_ON.to_vec(),
            None => DEFAULT_ON.to_vec(),
        };
        let grpc = is_grpc.then(|| GRPC_CODES.iter().filter(|(name, _)| on.contains(name)).map(|(_, code)| *code).collect());
        let budget = http.budget.as_ref();
        Some(RetryPolicy {
            retries: http.num_retries.unwrap_or(1),
            per_try: http.per_try_timeout.map(|d| d.get()).filter(|d| !d.is_zero()),
            base,
            max,
            on_5xx: on.contains(&"5xx"),
            on_gateway_error: on.contains(&"GatewayError"),
            on_reset: on.contains(&"Reset") || on.contains(&"RefusedStream"),
            on_connect: on.contains(&"ConnectFailure"),
            on_409: on.contains(&"Retriable4xx"),
            statuses: on.iter().filter_map(|c| c.parse().ok()).collect(),
            grpc,
            budget_percent: budget.and_then(|b| b.percent).unwrap_or(20.0),
            budget_min: budget.and_then(|b| b.min_retry_concurrency).unwrap_or(3) as usize,
        })
    }

    /// Whether a response with `status` and `headers` is tried again.
    pub fn retries_response(&self, status: StatusCode, headers: &HeaderMap) -> bool {
        let Some(codes) = &self.grpc else { return self.retries_status(status) };
        match headers.get("grpc-status").and_then(|v| v.to_str().ok()).and_then(|v| v.parse::<u32>().ok()) {
            Some(code) => codes.contains(&code),
            None => matches!(status.as_u16(), 502..=504) && codes.contains(&GRPC_UNAVAILABLE),
        }
    }

    /// Whether a response with `status` is tried again (HTTP).
    fn retries_status(&self, status: StatusCode) -> bool {
        let code = status.as_u16();
        (self.on_5xx && status.is_server_error())
            || (self.on_gateway_error && matches!(code, 502..=504))
            || (self.on_409 && code == 409)
            || self.statuses.contains(&code)
    }

    /// Whether an attempt that got no response is tried again.
    pub fn retries_failure(&self, cause: Cause) -> bool {
        if let Some(codes) = &self.grpc {
            return match cause {
                // It never reached an application.
                Cause::Connect => true,
                Cause::Reset => codes.contains(&GRPC_UNAVAILABLE),
                Cause::Timeout => codes.contains(&GRPC_DEADLINE_EXCEEDED),
                Cause::Overflow => false,
            };
        }
        match cause {
            Cause::Connect => self.on_connect || self.on_5xx || self.on_gateway_error,
            Cause::Reset => self.on_reset || self.on_5xx || self.on_gateway_error,
            Cause::Timeout => self.on_reset || self.on_5xx || self.on_gateway_error,
            Cause::Overflow => false,
        }
    }

    /// The wait before retry number `n` (from 1): exponential from the base interval, capped
    /// at the maximum, with jitter (between half of it and all of it).
    pub fn back_off(&self, n: u32) -> Duration {
        let exp = self.base.saturating_mul(1u32 << n.saturating_sub(1).min(16));
        let upper = exp.min(self.max);
        upper.mul_f64(rand::thread_rng().gen_range(0.5..=1.0))
    }

    /// Whether a request with `method` may be sent again (its body, if any, kept).
    pub fn replayable(&self, method: &Method) -> bool {
        self.grpc.is_some()
            || matches!(*method, Method::GET | Method::HEAD | Method::OPTIONS | Method::TRACE | Method::PUT | Method::DELETE)
    }
}

/// Requests and retries in progress to one destination.
#[derive(Debug, Default)]
pub struct Budget {
    active: AtomicUsize,
    retrying: AtomicUsize,
}

/// A request in progress, counted until dropped.
pub struct Active<'a>(&'a Budget);

impl Drop for Active<'_> {
    fn drop(&mut self) {
        self.0.active.fetch_sub(1, Ordering::Relaxed);
    }
}

/// A retry in progress, holding its budget slot until dropped.
pub struct Retrying<'a>(&'a Budget);

impl Drop for Retrying<'_> {
    fn drop(&mut self) {
        self.0.retrying.fetch_sub(1, Ordering::Relaxed);
    }
}

impl Budget {
    /// Counts a request in progress; also returns how many are in progress with it.
    pub fn start(&self) -> (Active<'_>, usize) {
        let n = self.active.fetch_add(1, Ordering::Relaxed) + 1;
        (Active(self), n)
    }

    /// A slot for one more retry, if `policy`'s budget has one and fewer than `max` (the
    /// circuit breaker's `maxRetries`) are in progress.
    pub fn retry(&self, policy: &RetryPolicy, max: Option<usize>) -> Option<Retrying<'_>> {
        let share = (self.active.load(Ordering::Relaxed) as f64 * policy.budget_percent / 100.0) as usize;
        let allowed = share.max(policy.budget_min).min(max.unwrap_or(usize::MAX));
        let taken = self.retrying.fetch_add(1, Ordering::Relaxed);
        if taken < allowed {
            Some(Retrying(self))
        } else {
            self.retrying.fetch_sub(1, Ordering::Relaxed);
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(conf: serde_json::Value) -> RetryPolicy {
        RetryPolicy::from_conf(Some(&serde_json::from_value(conf).unwrap()), Protocol::Http).unwrap()
    }

    #[test]
    fn conditions_decide_what_is_retried() {
        let gateway = policy(serde_json::json!({"http": {"retryOn": ["GatewayError"]}}));
        assert!(gateway.retries_status(StatusCode::SERVICE_UNAVAILABLE));
        assert!(!gateway.retries_status(StatusCode::INTERNAL_SERVER_ERROR));
        let codes = policy(serde_json::json!({"http": {"retryOn": ["429", "ConnectFailure"]}}));
        assert!(codes.retries_status(StatusCode::TOO_MANY_REQUESTS) && !codes.retries_status(StatusCode::BAD_GATEWAY));
        assert!(codes.retries_failure(Cause::Connect) && !codes.retries_failure(Cause::Reset));
        let defaults = policy(serde_json::json!({"http": {}}));
        assert_eq!(defaults.retries, 1);
        assert!(defaults.retries_status(StatusCode::CONFLICT) && defaults.retries_failure(Cause::Timeout));
        assert!(RetryPolicy::from_conf(Some(&serde_json::from_value(serde_json::json!({"tcp": {}})).unwrap()), Protocol::Http).is_none());
    }

    #[test]
    fn a_grpc_destination_follows_the_grpc_section_and_its_status_codes() {
        let conf: RetryConf = serde_json::from_value(
            serde_json::json!({"http": {"retryOn": ["5xx"]}, "grpc": {"retryOn": ["Unavailable", "ResourceExhausted"]}}),
        )
        .unwrap();
        let grpc = RetryPolicy::from_conf(Some(&conf), Protocol::Grpc).unwrap();
        let status = |code: &str| HeaderMap::from_iter([(http::HeaderName::from_static("grpc-status"), code.parse().unwrap())]);
        assert!(grpc.retries_response(StatusCode::OK, &status("14")) && grpc.retries_response(StatusCode::OK, &status("8")));
        assert!(!grpc.retries_response(StatusCode::OK, &status("13")), "Internal is not listed");
        assert!(!grpc.retries_response(StatusCode::OK, &status("0")));
        assert!(grpc.retries_response(StatusCode::BAD_GATEWAY, &HeaderMap::new()), "a sidecar's gateway error is Unavailable");
        assert!(!grpc.retries_response(StatusCode::OK, &HeaderMap::new()), "a status in the trailers comes too late");
        assert!(grpc.retries_failure(Cause::Connect) && grpc.retries_failure(Cause::Reset) && !grpc.retries_failure(Cause::Timeout));
        assert!(grpc.replayable(&Method::POST), "calls are retried with their kept message");
        let http = RetryPolicy::from_conf(Some(&conf), Protocol::Http).unwrap();
        assert!(http.retries_response(StatusCode::INTERNAL_SERVER_ERROR, &status("14")), "HTTP ignores grpc-status");
        assert!(!http.replayable(&Method::POST));
        let only_http: RetryConf = serde_json::from_value(serde_json::json!({"http": {}})).unwrap();
        assert!(RetryPolicy::from_conf(Some(&only_http), Protocol::Grpc).is_none(), "gRPC calls follow the grpc section only");
        let defaults: RetryConf = serde_json::from_value(serde_json::json!({"grpc": {}})).unwrap();
        let defaults = RetryPolicy::from_conf(Some(&defaults), Protocol::Grpc).unwrap();
        assert!(defaults.retries_failure(Cause::Timeout) && defaults.retries_response(StatusCode::OK, &status("1")));
    }

    #[test]
    fn back_off_grows_to_the_cap_with_jitter() {
        let p = policy(serde_json::json!({"http": {"backOff": {"baseInterval": "10ms", "maxInterval": "50ms"}}}));
        for (n, upper) in [(1, 10), (2, 20), (3, 40), (4, 50), (30, 50)] {
            let d = p.back_off(n);
            assert!(d >= Duration::from_millis(upper) / 2 && d <= Duration::from_millis(upper), "retry {n}: {d:?}");
        }
    }

    #[test]
    fn the_budget_allows_a_share_of_live_requests_or_the_minimum() {
        let p = policy(serde_json::json!({"http": {"budget": {"percent": 50, "minRetryConcurrency": 1}}}));
        let budget = Budget::default();
        let live: Vec<_> = (0..4).map(|_| budget.start()).collect();
        assert_eq!(live[3].1, 4);
        let capped: Vec<_> = (0..5).filter_map(|_| budget.retry(&p, Some(1))).collect();
        assert_eq!(capped.len(), 1, "maxRetries caps the budget");
        drop(capped);
        let slots: Vec<_> = (0..5).filter_map(|_| budget.retry(&p, None)).collect();
        assert_eq!(slots.len(), 2, "half of 4 requests in progress");
        drop(slots);
        drop(live);
        let one = budget.retry(&p, None);
        assert!(one.is_some() && budget.retry(&p, None).is_none(), "with nothing in progress, the minimum");
    }
}
