//! MeshRateLimit and MeshFaultInjection on an inbound: what the server's sidecar does to a
//! caller's requests (and, for a TCP inbound, connections) before the application sees them.
//!
//! In: each inbound's merged caller rules, compiled once per configuration (a rule whose conf
//! did not change keeps its limiter, so a configuration push does not refill a bucket). Out:
//! per caller, the [`Limiter`] of its rule and its [`Faults`]. Callers are known by the
//! service their certificate names. A limiter is a counter per interval in one atomic word:
//! `num` requests (or connections) per `interval`, counted from the limiter's start, as
//! Envoy's token bucket refilled whole each interval; no lock, no allocation per request.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{HeaderName, HeaderValue, StatusCode};
use rand::Rng;
use strait_api::names::SERVICE_TAG;
use strait_api::policies::fault_injection::{parse_bandwidth, FaultInjectionConf};
use strait_api::policies::rate_limit::{Rate, RateLimitConf};
use strait_api::proxy_config::InboundConfig;
use strait_api::proxy_policies::CallerRule;

use super::access_log::AccessLog;

/// `num` events per `interval`.
#[derive(Debug)]
pub struct Limiter {
    num: u32,
    interval: Duration,
    started: Instant,
    /// The interval's index (high 32 bits) and the events counted in it (low 32 bits).
    window: AtomicU64,
}

impl Limiter {
    fn new(rate: &Rate) -> Limiter {
        Limiter { num: rate.num, interval: rate.interval.get(), started: Instant::now(), window: AtomicU64::new(0) }
    }

    /// Counts one event: `Ok` if the interval has room for it, else how long until the next
    /// interval starts.
    pub fn acquire(&self) -> Result<(), Duration> {
        let elapsed = self.started.elapsed();
        let interval_ns = self.interval.as_nanos().max(1);
        let index = (elapsed.as_nanos() / interval_ns) as u64 & 0xffff_ffff;
        let mut current = self.window.load(Ordering::Relaxed);
        loop {
            let count = if current >> 32 == index { current & 0xffff_ffff } else { 0 };
            if count >= u64::from(self.num) {
                let next = Duration::from_nanos(((index as u128 + 1) * interval_ns) as u64);
                return Err(next.saturating_sub(elapsed));
            }
            match self.window.compare_exchange_weak(current, index << 32 | (count + 1), Ordering::Relaxed, Ordering::Relaxed) {
                Ok(_) => return Ok(()),
                Err(now) => current = now,
            }
        }
    }

    fn describe(&self) -> String {
        format!("{} per {:?}", self.num, self.interval)
    }
}

/// The HTTP answer to a limited request.
#[derive(Debug)]
pub struct LimitedAnswer {
    /// Its status (429 by default).
    pub status: StatusCode,
    /// Headers added to it.
    pub headers: Vec<(HeaderName, HeaderValue)>,
    /// Its body; by default, a line that names the limit.
    pub body: Option<Bytes>,
}

/// One rule's rate limits.
#[derive(Debug)]
pub struct RateLimit {
    /// Requests (HTTP).
    pub requests: Option<Limiter>,
    /// Connections (TCP).
    pub connections: Option<Limiter>,
    answer: LimitedAnswer,
    conf: RateLimitConf,
}

impl RateLimit {
    fn compile(conf: &RateLimitConf) -> RateLimit {
        let http = conf.local.http.as_ref().filter(|h| h.disabled != Some(true));
        let tcp = conf.local.tcp.as_ref().filter(|t| t.disabled != Some(true));
        let on = http.and_then(|h| h.on_rate_limit.as_ref());
        let headers = on
            .map(|o| {
                o.headers
                    .iter()
                    .filter_map(|h| Some((HeaderName::try_from(h.name.as_str()).ok()?, HeaderValue::try_from(h.value.as_str()).ok()?)))
                    .collect()
            })
            .unwrap_or_default();
        RateLimit {
            requests: http.and_then(|h| h.request_rate.as_ref()).map(Limiter::new),
            connections: tcp.and_then(|t| t.connection_rate.as_ref()).map(Limiter::new),
            answer: LimitedAnswer {
                status: on.and_then(|o| o.status).and_then(|s| StatusCode::from_u16(s).ok()).unwrap_or(StatusCode::TOO_MANY_REQUESTS),
                headers,
                body: on.and_then(|o| o.body.clone()).map(Bytes::from),
            },
            conf: conf.clone(),
        }
    }

    /// The answer to a request refused by `requests`, `wait` before the next interval.
    pub fn refusal<H>(&self, service: &str, caller: &str, wait: Duration) -> http::Response<super::http::body::Body<H>> {
        let limit = self.requests.as_ref().map(Limiter::describe).unwrap_or_default();
        let mut response = match &self.answer.body {
            Some(body) => {
                let mut r = super::http::body::local_response(self.answer.status, String::new());
                *r.body_mut() = http_body_util::Either::Right(http_body_util::Full::new(body.clone()));
                r
            }
            None => super::http::body::local_response(
                self.answer.status,
                format!("strait: {caller} is over the rate limit of {service}: {limit} (MeshRateLimit)\n"),
            ),
        };
        let headers = response.headers_mut();
        let seconds = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
        headers.insert(http::header::RETRY_AFTER, HeaderValue::from(seconds.max(1)));
        for (name, value) in &self.answer.headers {
            headers.insert(name.clone(), value.clone());
        }
        response
    }

    /// The limit, described for logs.
    pub fn describe_connections(&self) -> String {
        self.connections.as_ref().map(Limiter::describe).unwrap_or_default()
    }
}

/// One injected fault, as compiled.
#[derive(Debug, Clone)]
struct Fault {
    abort: Option<(StatusCode, f64)>,
    delay: Option<(Duration, f64)>,
    bandwidth: Option<(u64, f64)>,
}

/// One rule's faults.
#[derive(Debug)]
pub struct Faults {
    faults: Vec<Fault>,
}

/// What a request gets from the faults of its rule.
#[derive(Debug, Default, PartialEq)]
pub struct Injected {
    /// Wait this long first.
    pub delay: Option<Duration>,
    /// Then answer this status instead of forwarding.
    pub abort: Option<StatusCode>,
    /// Or send the response at most this many bytes per second.
    pub bytes_per_second: Option<u64>,
}

fn chance(percentage: f64) -> bool {
    percentage >= 100.0 || (percentage > 0.0 && rand::thread_rng().gen_bool((percentage / 100.0).clamp(0.0, 1.0)))
}

impl Faults {
    /// Compiles `conf`.
    pub fn compile(conf: &FaultInjectionConf) -> Faults {
        let faults = conf
            .http
            .iter()
            .map(|f| Fault {
                abort: f.abort.as_ref().and_then(|a| Some((StatusCode::from_u16(a.http_status).ok()?, a.percentage))),
                delay: f.delay.as_ref().map(|d| (d.value.get(), d.percentage)),
                bandwidth: f.response_bandwidth.as_ref().and_then(|b| Some((parse_bandwidth(&b.limit)? / 8, b.percentage))),
            })
            .collect();
        Faults { faults }
    }

    /// Draws what this request gets: each fault independently, each part by its percentage;
    /// delays add up, the first abort and the lowest bandwidth win.
    pub fn draw(&self) -> Injected {
        let mut injected = Injected::default();
        for fault in &self.faults {
            if let Some((d, p)) = fault.delay {
                if chance(p) {
                    injected.delay = Some(injected.delay.unwrap_or_default() + d);
                }
            }
            if let Some((status, p)) = fault.abort {
                if injected.abort.is_none() && chance(p) {
                    injected.abort = Some(status);
                }
            }
            if let Some((bps, p)) = fault.bandwidth {
                if chance(p) {
                    injected.bytes_per_second = Some(injected.bytes_per_second.map_or(bps, |b| b.min(bps)).max(1));
                }
            }
        }
        injected
    }
}

/// The compiled caller rules of one inbound.
#[derive(Debug, Default)]
pub struct InboundRules {
    rate_limits: Limits,
    /// MeshRateLimits on routes to this inbound, by route name.
    route_rate_limits: Vec<(String, Limits)>,
    faults: Vec<(CallerRule<()>, Arc<Faults>)>,
    access_logs: Vec<(CallerRule<()>, Arc<AccessLog>)>,
}

/// Rate limits by caller.
type Limits = Vec<(CallerRule<()>, Arc<RateLimit>)>;

/// Whether a rule on caller tags selects the caller of service `caller` (callers are known by
/// their service only: the API refuses selectors on other tags).
fn selects(rule: &CallerRule<()>, caller: &str) -> bool {
    rule.matches.iter().all(|(k, v)| k == SERVICE_TAG && v == caller)
}

/// `rule` without its conf.
pub fn bare<C>(rule: &CallerRule<C>) -> CallerRule<()> {
    CallerRule { matches: rule.matches.clone(), conf: (), origin: rule.origin.clone() }
}

impl InboundRules {
    /// Compiles the rules of `inbound`, keeping `previous`'s limiters where a rule is unchanged.
    pub fn compile(
        inbound: &InboundConfig,
        previous: Option<&InboundRules>,
        access_logs: Vec<(CallerRule<()>, Arc<AccessLog>)>,
    ) -> InboundRules {
        let limits = |rules: &[CallerRule<RateLimitConf>], before: Option<&Limits>| {
            rules
                .iter()
                .map(|rule| {
                    let kept = before
                        .and_then(|b| b.iter().find(|(r, l)| r.matches == rule.matches && l.conf == rule.conf))
                        .map(|(_, l)| l.clone());
                    (bare(rule), kept.unwrap_or_else(|| Arc::new(RateLimit::compile(&rule.conf))))
                })
                .collect::<Vec<_>>()
        };
        let rate_limits = limits(&inbound.policies.rate_limit, previous.map(|p| &p.rate_limits));
        let route_rate_limits = inbound
            .policies
            .route_rate_limit
            .iter()
            .map(|(route, rules)| {
                let before = previous.and_then(|p| p.route_rate_limits.iter().find(|(r, _)| r == route)).map(|(_, l)| l);
                (route.clone(), limits(rules, before))
            })
            .collect();
        let faults = inbound.policies.fault_injection.iter().map(|rule| (bare(rule), Arc::new(Faults::compile(&rule.conf)))).collect();
        InboundRules { rate_limits, route_rate_limits, faults, access_logs }
    }

    /// The rate limit of `caller`'s requests on route `route`, if a rule selects it.
    pub fn route_rate_limit(&self, route: &str, caller: &str) -> Option<&RateLimit> {
        let (_, rules) = self.route_rate_limits.iter().find(|(r, _)| r == route)?;
        rules.iter().find(|(rule, _)| selects(rule, caller)).map(|(_, l)| &**l)
    }

    /// Whether there is nothing to do.
    pub fn is_empty(&self) -> bool {
        self.rate_limits.is_empty() && self.route_rate_limits.is_empty() && self.faults.is_empty() && self.access_logs.is_empty()
    }

    /// The access log of `caller`'s requests, if a rule selects it.
    pub fn access_log(&self, caller: &str) -> Option<&Arc<AccessLog>> {
        self.access_logs.iter().find(|(rule, _)| selects(rule, caller)).map(|(_, l)| l)
    }

    /// The rate limit of `caller`, if a rule selects it.
    pub fn rate_limit(&self, caller: &str) -> Option<&RateLimit> {
        self.rate_limits.iter().find(|(rule, _)| selects(rule, caller)).map(|(_, l)| &**l)
    }

    /// The faults of `caller`, if a rule selects it.
    pub fn faults(&self, caller: &str) -> Option<&Faults> {
        self.faults.iter().find(|(rule, _)| selects(rule, caller)).map(|(_, f)| &**f)
    }
}

/// Every inbound's rules, by inbound port.
pub type ByPort = HashMap<u16, InboundRules>;

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn a_limiter_allows_num_per_interval_and_says_when_the_next_starts() {
        let limiter = Limiter::new(&serde_json::from_value(json!({"num": 3, "interval": "200ms"})).unwrap());
        assert!((0..3).all(|_| limiter.acquire().is_ok()));
        let wait = limiter.acquire().unwrap_err();
        assert!(wait > Duration::ZERO && wait <= Duration::from_millis(200), "{wait:?}");
        std::thread::sleep(wait);
        assert!((0..3).all(|_| limiter.acquire().is_ok()), "a new interval, a new count");
        assert!(limiter.acquire().is_err());
    }

    #[test]
    fn rules_pick_the_caller_and_keep_their_count_across_rebuilds() {
        let inbound: InboundConfig = serde_json::from_value(json!({
            "port": 8080, "serviceAddress": "127.0.0.1", "servicePort": 80, "service": "backend", "protocol": "http",
            "policies": {"MeshRateLimit": [
                {"matches": {"strait.io/service": "web"}, "conf": {"local": {"http": {"requestRate": {"num": 1, "interval": "1h"}}}}, "origin": ["web"]},
                {"matches": {}, "conf": {"local": {"http": {"requestRate": {"num": 5, "interval": "1h"}}}}, "origin": ["all"]}]}}))
        .unwrap();
        let rules = InboundRules::compile(&inbound, None, Vec::new());
        assert!(rules.rate_limit("web").unwrap().requests.as_ref().unwrap().acquire().is_ok());
        assert!(rules.rate_limit("web").unwrap().requests.as_ref().unwrap().acquire().is_err(), "web: 1 per hour");
        assert!(rules.rate_limit("other").unwrap().requests.as_ref().unwrap().acquire().is_ok(), "others: 5 per hour");
        let rebuilt = InboundRules::compile(&inbound, Some(&rules), Vec::new());
        assert!(rebuilt.rate_limit("web").unwrap().requests.as_ref().unwrap().acquire().is_err(), "a push does not refill");
    }

    #[test]
    fn faults_are_drawn_by_percentage() {
        let conf: FaultInjectionConf = serde_json::from_value(json!({"http": [
            {"abort": {"httpStatus": 503, "percentage": 100}},
            {"delay": {"value": "10ms", "percentage": 0}, "responseBandwidth": {"limit": "80kbps", "percentage": 100}}]}))
        .unwrap();
        let drawn = Faults::compile(&conf).draw();
        assert_eq!(drawn, Injected { delay: None, abort: Some(StatusCode::SERVICE_UNAVAILABLE), bytes_per_second: Some(10_000) });
        let half: FaultInjectionConf = serde_json::from_value(json!({"http": [{"abort": {"httpStatus": 500, "percentage": 50}}]})).unwrap();
        let faults = Faults::compile(&half);
        let aborted = (0..2000).filter(|_| faults.draw().abort.is_some()).count();
        assert!((800..=1200).contains(&aborted), "{aborted}");
    }
}
