//! The destination table: for each service this sidecar reaches, what it speaks, its
//! endpoints (see [`super::endpoint`]), how to pick one, its timeouts, the identity its
//! endpoints must present, and pre-built metrics.
//!
//! In: a [`ProxyConfig`] (rebuilt on every configuration change, off the request path) and
//! the previous table, whose endpoints are kept, with their pooled connections and request
//! counts, when they are still there. Out: an immutable [`Table`] that the data path reads
//! through an `ArcSwap` snapshot: a request in flight finishes on the table it started with.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::ServerName;
use strait_api::gateway_config::{instance_sni, sni};
use strait_api::policies::circuit_breaker::CircuitBreakerConf;
use strait_api::proxy_config::{OutboundConfig, ProxyConfig};
use strait_pki::Identity;

use super::balance::Balancer;
use super::endpoint::{now_ms, Endpoint, Outcome};
use super::hashing;
use super::health_check::HealthCheckPolicy;
use super::http::retry::{Budget, RetryPolicy};
use super::http::routes::{Backends, Routes};

/// Connection attempts of a TCP connection without a MeshRetry: a failed connect (nothing of
/// the application's has been sent yet) is tried once more on a fresh pick.
const DEFAULT_CONNECT_ATTEMPTS: u32 = 2;
use super::locality::{Locality, MAX_CANDIDATES};
use super::metrics::{Direction, Pair, PairMetrics, Peer, ProxyMetrics};

pub use super::timeouts::Timeouts;
pub use strait_api::proxy_config::Protocol;

/// A service this sidecar reaches.
#[derive(Debug)]
pub struct Destination {
    /// The service name.
    pub service: Arc<str>,
    /// What it speaks.
    pub protocol: Protocol,
    /// The SPIFFE ID its endpoints must present.
    pub expected: Identity,
    /// Endpoints in this sidecar's zone, preferred.
    local: Vec<Arc<Endpoint>>,
    /// Endpoints in other zones, used when no local one remains.
    remote: Vec<Arc<Endpoint>>,
    balancer: Balancer,
    locality: Locality,
    /// Connect and request timeouts.
    pub timeouts: Timeouts,
    /// Outbound metrics of requests to it: answered here (no endpoint reached), and of its
    /// policies (retries, ejections, limits).
    pub metrics: PairMetrics,
    /// Outbound metrics of requests answered by an endpoint, by the endpoint's zone.
    zone_metrics: Vec<(Arc<str>, PairMetrics)>,
    /// MeshRetry of HTTP requests to it.
    pub retry: Option<RetryPolicy>,
    /// Requests and retries in progress, for the retry budget.
    pub budget: Budget,
    /// Connection attempts of a TCP connection (MeshRetry `tcp.maxConnectAttempt`, else 2).
    pub connect_attempts: u32,
    /// MeshCircuitBreaker outlier detection of its endpoints.
    pub outlier: Option<OutlierPolicy>,
    /// MeshCircuitBreaker connection limits.
    pub limits: Limits,
    /// MeshHealthCheck: the active checks of its endpoints.
    pub health_check: Option<HealthCheckPolicy>,
    /// MeshFaultInjection `to`: faults given to its HTTP requests by this sidecar.
    pub faults: Option<super::inbound_policies::Faults>,
    /// MeshAccessLog `to`: where a line per request or connection goes.
    pub access_log: Option<Arc<super::access_log::AccessLog>>,
}

/// MeshCircuitBreaker `connectionLimits` of a destination.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Limits {
    /// Requests in progress (`maxRequests`); more are answered 503 at once.
    pub max_requests: Option<usize>,
    /// Retries in progress (`maxRetries`).
    pub max_retries: Option<usize>,
    /// Open connections (`maxConnections`): TCP tunnels, or pooled HTTP/2 connections (one per
    /// endpoint in use); a request or connection that would open one more fails at once.
    pub max_connections: Option<usize>,
    /// HTTP requests waiting for a connection to be opened (`maxPendingRequests`); more are
    /// answered 503 at once.
    pub max_pending: Option<usize>,
    /// HTTP requests a pooled connection carries before it is replaced
    /// (`maxRequestsPerConnection`).
    pub max_requests_per_connection: Option<u32>,
}

impl Limits {
    /// The limits of a merged MeshCircuitBreaker conf.
    pub fn from_conf(conf: Option<&CircuitBreakerConf>) -> Limits {
        let Some(l) = conf.and_then(|c| c.connection_limits.as_ref()) else { return Limits::default() };
        let limit = |n: Option<u32>| n.map(|n| n as usize);
        Limits {
            max_requests: limit(l.max_requests),
            max_retries: limit(l.max_retries),
            max_connections: limit(l.max_connections),
            max_pending: limit(l.max_pending_requests),
            max_requests_per_connection: l.max_requests_per_connection,
        }
    }
}

/// The longest an outlier ejection lasts, however often the endpoint was ejected.
const MAX_EJECTION: Duration = Duration::from_secs(300);

/// Outlier detection (MeshCircuitBreaker `outlierDetection`): an endpoint with this many
/// failures in a row (of any kind, gateway failures, or failures of local origin: connect
/// errors, resets, timeouts) is ejected at once; every `interval`, an endpoint whose failed
/// share of at least `requestVolume` requests reaches the `failurePercentage` threshold is
/// ejected, when at least `minimumHosts` endpoints had that volume, and so is one whose
/// success rate is more than `successRate.standardDeviationFactor` standard deviations below
/// the mean of those endpoints' rates. An ejection lasts the base
/// time times the endpoint's ejections so far, while at most `maxEjectionPercent` of the
/// endpoints (at least one) are ejected; when every endpoint is ejected, picks use them anyway.
#[derive(Debug)]
pub struct OutlierPolicy {
    thresholds: [Option<u32>; 3],
    base: Duration,
    max_percent: u32,
    percentage: Option<FailureShare>,
    success_rate: Option<SuccessShare>,
    /// Time between looks of the interval detectors.
    interval: Duration,
    /// When the interval detectors look next (ms, [`now_ms`]).
    next_look_ms: std::sync::atomic::AtomicU64,
}

/// The failure-percentage detector.
#[derive(Debug, Clone, Copy, PartialEq)]
struct FailureShare {
    threshold: u32,
    volume: u32,
    minimum_hosts: usize,
}

/// The success-rate detector.
#[derive(Debug, Clone, Copy, PartialEq)]
struct SuccessShare {
    volume: u32,
    minimum_hosts: usize,
    factor: f64,
}

impl OutlierPolicy {
    /// The policy of a merged MeshCircuitBreaker conf; `None` without outlier detection.
    pub fn from_conf(conf: Option<&CircuitBreakerConf>) -> Option<OutlierPolicy> {
        let od = conf?.outlier_detection.as_ref().filter(|od| od.disabled != Some(true))?;
        let thresholds = match &od.detectors {
            Some(d) => [&d.total_failures, &d.gateway_failures, &d.local_origin_failures].map(|c| c.as_ref().map(|c| c.consecutive)),
            None => [Some(5); 3],
        };
        let interval = od.interval.map_or(Duration::from_secs(10), |d| d.get());
        let percentage = od.detectors.as_ref().and_then(|d| d.failure_percentage.as_ref()).map(|f| FailureShare {
            threshold: f.threshold,
            volume: f.request_volume.unwrap_or(50),
            minimum_hosts: f.minimum_hosts.unwrap_or(5) as usize,
        });
        let success_rate = od.detectors.as_ref().and_then(|d| d.success_rate.as_ref()).map(|s| SuccessShare {
            volume: s.request_volume.unwrap_or(100),
            minimum_hosts: s.minimum_hosts.unwrap_or(5) as usize,
            factor: s.standard_deviation_factor.unwrap_or(1.9),
        });
        Some(OutlierPolicy {
            thresholds,
            base: od.base_ejection_time.map_or(Duration::from_secs(30), |d| d.get()),
            max_percent: od.max_ejection_percent.unwrap_or(10),
            percentage,
            success_rate,
            interval,
            next_look_ms: std::sync::atomic::AtomicU64::new(now_ms() + interval.as_millis() as u64),
        })
    }
}

/// An endpoint's stable id for consistent hashing: its address and SNI (endpoints in other
/// zones share the egress address; the SNI tells them apart).
fn endpoint_id(e: &Endpoint) -> u64 {
    let sni = match &e.sni {
        ServerName::DnsName(name) => name.as_ref(),
        _ => "",
    };
    hashing::hash_bytes(format!("{} {sni}", e.address).as_bytes())
}

impl Destination {
    /// The metrics of requests answered by an endpoint in `zone`.
    pub fn metrics_in(&self, zone: &str) -> &PairMetrics {
        self.zone_metrics.iter().find(|(z, _)| **z == *zone).map_or(&self.metrics, |(_, m)| m)
    }

    /// The endpoint for the next request or connection: an available local one, else one of
    /// the zone the locality rules choose (see [`Locality`]).
    pub fn pick(&self) -> Option<&Arc<Endpoint>> {
        self.pick_for(None)
    }

    /// As [`Destination::pick`], for a request or connection with hash key `key` (see
    /// [`Destination::request_key`]): with RingHash or Maglev, the endpoint the table gives
    /// the key, the first there that locality and health allow now.
    pub fn pick_for(&self, key: Option<u64>) -> Option<&Arc<Endpoint>> {
        let mut candidates = [None; MAX_CANDIDATES];
        let n = self.locality.candidates(&self.local, &self.remote, &mut candidates);
        // No candidate: nothing in the table could be usable, so no walk through it.
        if let (Some(key), Balancer::Hash { table, .. }, true) = (key, &self.balancer, n > 0) {
            let at = |i: usize| self.local.get(i).or_else(|| self.remote.get(i - self.local.len()));
            let usable = |i: usize| at(i).is_some_and(|e| candidates[..n].iter().flatten().any(|c| Arc::ptr_eq(c, e)));
            if let Some(endpoint) = table.lookup(key, usable).and_then(at) {
                return Some(endpoint);
            }
        }
        let index = self.balancer.pick(n, |i| candidates[i].map_or(0, |e| e.load()))?;
        candidates[index]
    }

    /// The hash key of an HTTP request to this destination, when it balances by hash.
    pub fn request_key(&self, headers: &http::HeaderMap, uri: &http::Uri, client: Option<std::net::IpAddr>) -> Option<u64> {
        match &self.balancer {
            Balancer::Hash { policies, .. } => hashing::request_key(policies, headers, uri, client),
            _ => None,
        }
    }

    /// The hash key of a TCP connection from `client` to this destination, when it balances by
    /// the caller's address.
    pub fn connection_key(&self, client: std::net::IpAddr) -> Option<u64> {
        match &self.balancer {
            Balancer::Hash { policies, .. } => hashing::connection_key(policies, client),
            _ => None,
        }
    }

    /// Every endpoint, local first.
    pub fn endpoints(&self) -> impl Iterator<Item = &Arc<Endpoint>> {
        self.local.iter().chain(&self.remote)
    }

    /// Counts what became of a request to `endpoint`, and ejects it when outlier detection says so.
    pub fn record(&self, endpoint: &Endpoint, outcome: Outcome) {
        let Some(policy) = &self.outlier else { return };
        let counts = endpoint.health.record(outcome);
        if counts.iter().zip(&policy.thresholds).any(|(n, limit)| limit.is_some_and(|limit| *n >= limit)) {
            self.eject(endpoint, policy, &format!("consecutive failures (any, gateway, local origin) {counts:?}"));
        }
        if policy.percentage.is_none() && policy.success_rate.is_none() {
            return;
        }
        let now = now_ms();
        let due = policy.next_look_ms.load(std::sync::atomic::Ordering::Relaxed);
        let next = now + policy.interval.as_millis() as u64;
        // One caller looks per interval: whoever moves the time of the next look.
        if now < due
            || policy
                .next_look_ms
                .compare_exchange(due, next, std::sync::atomic::Ordering::Relaxed, std::sync::atomic::Ordering::Relaxed)
                .is_err()
        {
            return;
        }
        let counts: Vec<(&Arc<Endpoint>, (u32, u32))> = self.endpoints().map(|e| (e, e.health.take_interval())).collect();
        if let Some(share) = policy.percentage {
            let judged: Vec<&(&Arc<Endpoint>, (u32, u32))> =
                counts.iter().filter(|(_, (answered, _))| *answered >= share.volume.max(1)).collect();
            if judged.len() >= share.minimum_hosts {
                for (e, (answered, failed)) in judged {
                    if u64::from(*failed) * 100 >= u64::from(share.threshold) * u64::from(*answered) {
                        self.eject(e, policy, &format!("{failed} of {answered} requests failed in the last {:?}", policy.interval));
                    }
                }
            }
        }
        if let Some(rate) = policy.success_rate {
            let judged: Vec<(&Arc<Endpoint>, f64)> = counts
                .iter()
                .filter(|(_, (answered, _))| *answered >= rate.volume.max(1))
                .map(|(e, (answered, failed))| (*e, f64::from(answered - failed) * 100.0 / f64::from(*answered)))
                .collect();
            if judged.len() >= rate.minimum_hosts.max(1) {
                let n = judged.len() as f64;
                let mean = judged.iter().map(|(_, r)| r).sum::<f64>() / n;
                let deviation = (judged.iter().map(|(_, r)| (r - mean).powi(2)).sum::<f64>() / n).sqrt();
                let floor = mean - rate.factor * deviation;
                for (e, r) in judged.iter().filter(|(_, r)| *r < floor) {
                    let why = format!("a success rate of {r:.1}% against a mean of {mean:.1}% (ejected below {floor:.1}%)");
                    self.eject(e, policy, &why);
                }
            }
        }
    }

    /// Ejects `endpoint` unless it is already, or `maxEjectionPercent` of the endpoints are.
    fn eject(&self, endpoint: &Endpoint, policy: &OutlierPolicy, why: &str) {
        let now = now_ms();
        let total = self.local.len() + self.remote.len();
        let ejected = self.endpoints().filter(|e| e.health.outlier_ejected(now)).count();
        if ejected >= (total * policy.max_percent as usize / 100).max(1) || endpoint.health.outlier_ejected(now) {
            return;
        }
        let time = endpoint.health.eject(policy.base, MAX_EJECTION);
        self.metrics.ejections.inc();
        tracing::warn!(service = &*self.service, endpoint = %endpoint.address, ?time, why, "outlier detection ejected an endpoint");
    }
}

/// Every destination of the sidecar, by service and by endpoint address, and the compiled
/// MeshHTTPRoute rules of each.
#[derive(Debug, Default)]
pub struct Table {
    by_service: HashMap<String, Arc<Destination>>,
    by_address: HashMap<SocketAddr, Arc<Destination>>,
    routes: HashMap<String, Routes>,
    tcp_routes: HashMap<String, Backends>,
    /// MeshRateLimit, MeshFaultInjection and MeshAccessLog of each inbound, by port.
    inbound: super::inbound_policies::ByPort,
    /// The access log backends in use, kept from one table to the next.
    sinks: super::access_log::Sinks,
    /// What every access log entry of this sidecar shares.
    pub local: super::access_log::Local,
    /// MeshTrace: this sidecar's spans, when it has one.
    pub tracer: Option<Arc<super::trace::Tracer>>,
}

/// What building a table shares across its destinations.
struct Build<'a> {
    config: &'a ProxyConfig,
    metrics: &'a ProxyMetrics,
    source: &'a str,
    /// Endpoints by address and SNI, kept from the previous table where they remain (endpoints
    /// in other zones share the egress address: the SNI tells them apart).
    known: HashMap<(SocketAddr, String), Arc<Endpoint>>,
    /// Access log backends: this table's, the previous one's, and whether to start new ones
    /// (not when only checking a configuration).
    sinks: super::access_log::Sinks,
    previous_sinks: &'a super::access_log::Sinks,
    start_sinks: bool,
}

impl Build<'_> {
    /// Compiles a MeshAccessLog conf; one that cannot be (the API refuses it first) is logged
    /// and left out.
    fn access_log(
        &mut self,
        conf: Option<&strait_api::policies::access_log::AccessLogConf>,
        what: &str,
    ) -> Option<Arc<super::access_log::AccessLog>> {
        let conf = conf?;
        match self.sinks.compile(conf, self.previous_sinks, &self.metrics.access_log_dropped, self.start_sinks) {
            Ok(log) => Some(Arc::new(log)),
            Err(error) => {
                tracing::error!(what, error, "a MeshAccessLog that cannot be applied; leaving it out");
                None
            }
        }
    }

    /// The destination of `outbound`, with only the endpoints whose tags include `subset`.
    fn destination(&mut self, outbound: &OutboundConfig, subset: &BTreeMap<String, String>) -> Option<Arc<Destination>> {
        let zone = self.config.zone.as_str();
        let Ok(expected) = Identity::parse(&strait_pki::spiffe_id(&self.config.mesh, &outbound.service)) else {
            tracing::warn!(service = outbound.service, "no SPIFFE ID can be made for this service; skipping it");
            return None;
        };
        let (mut local, mut remote) = (Vec::new(), Vec::new());
        for e in outbound.endpoints.iter().filter(|e| subset.iter().all(|(k, v)| e.tags.get(k) == Some(v))) {
            let Ok(ip) = e.address.parse::<std::net::IpAddr>() else {
                tracing::warn!(service = outbound.service, address = e.address, "an endpoint address is not an IP address; skipping it");
                continue;
            };
            let is_local = e.zone == zone;
            let name = match (&e.instance, is_local) {
                (Some(instance), false) => instance_sni(instance, &outbound.service, &self.config.mesh, &e.zone),
                _ => sni(&outbound.service, &self.config.mesh, (!is_local).then_some(e.zone.as_str())),
            };
            let Ok(server_name) = ServerName::try_from(name.clone()) else {
                tracing::warn!(service = outbound.service, sni = name, "not a valid SNI; skipping the endpoint");
                continue;
            };
            let address = SocketAddr::new(ip, e.port);
            let endpoint = self
                .known
                .entry((address, name))
                .and_modify(|kept| {
                    if *kept.zone != *e.zone {
                        *kept = Arc::new(Endpoint::new(address, e.zone.as_str().into(), server_name.clone()));
                    }
                })
                .or_insert_with(|| Arc::new(Endpoint::new(address, e.zone.as_str().into(), server_name)))
                .clone();
            if is_local {
                local.push(endpoint)
            } else {
                remote.push(endpoint)
            }
        }
        let lb = outbound.policies.load_balancing.as_ref();
        let ids: Vec<u64> = local.iter().chain(&remote).map(|e| endpoint_id(e)).collect();
        let balancer = Balancer::from_conf(lb, &ids).unwrap_or_else(|reason| {
            // `check` refuses such a configuration before it is stored; kept for safety.
            tracing::error!(service = outbound.service, reason, "a balancer that cannot be applied; using the default");
            Balancer::default()
        });
        let mesh = self.config.mesh.as_str();
        let source = Peer { service: self.source, zone };
        let metrics = self.metrics;
        let pair = |destination: Peer<'_>| {
            metrics.pair(Pair { direction: Direction::Outbound, mesh, source, destination, protocol: outbound.protocol.as_str() })
        };
        let mut zone_metrics: Vec<(Arc<str>, PairMetrics)> = Vec::new();
        for endpoint in local.iter().chain(&remote) {
            if !zone_metrics.iter().any(|(z, _)| *z == endpoint.zone) {
                zone_metrics.push((endpoint.zone.clone(), pair(Peer { service: &outbound.service, zone: &endpoint.zone })));
            }
        }
        Some(Arc::new(Destination {
            service: outbound.service.as_str().into(),
            protocol: outbound.protocol,
            expected,
            local,
            remote,
            balancer,
            locality: Locality::from_conf(lb, zone),
            timeouts: Timeouts::from_conf(outbound.policies.timeout.as_ref()),
            metrics: pair(Peer { service: &outbound.service, zone: "" }),
            zone_metrics,
            retry: RetryPolicy::from_conf(outbound.policies.retry.as_ref(), outbound.protocol),
            budget: Budget::default(),
            outlier: OutlierPolicy::from_conf(outbound.policies.circuit_breaker.as_ref()),
            limits: Limits::from_conf(outbound.policies.circuit_breaker.as_ref()),
            health_check: HealthCheckPolicy::from_conf(outbound.policies.health_check.as_ref(), outbound.protocol),
            faults: outbound.policies.fault_injection.as_ref().map(super::inbound_policies::Faults::compile),
            access_log: self.access_log(outbound.policies.access_log.as_ref(), &outbound.service),
            connect_attempts: outbound
                .policies
                .retry
                .as_ref()
                .and_then(|r| r.tcp.as_ref())
                .map_or(DEFAULT_CONNECT_ATTEMPTS, |t| t.max_connect_attempt.unwrap_or(DEFAULT_CONNECT_ATTEMPTS).max(1)),
        }))
    }
}

impl Build<'_> {
    /// A route backend: service `service` (from `by_service`), or the endpoints of it whose
    /// tags include `tags`.
    fn backend(
        &mut self,
        by_service: &HashMap<String, Arc<Destination>>,
        service: &str,
        tags: &BTreeMap<String, String>,
    ) -> Option<Arc<Destination>> {
        if tags.is_empty() {
            return by_service.get(service).cloned();
        }
        let outbound = self.config.outbounds.iter().find(|o| o.service == service)?;
        self.destination(outbound, tags)
    }
}

/// Keeps the compiled routes of `service`; one that cannot be compiled fails a strict build
/// (`check`, which refuses the configuration) and is left out of any other, logged.
fn keep<T>(compiled: Result<T, String>, strict: bool, service: &str, into: &mut HashMap<String, T>) -> Result<(), String> {
    match compiled {
        Ok(routes) => {
            into.insert(service.to_string(), routes);
            Ok(())
        }
        Err(e) if strict => Err(e),
        Err(e) => {
            tracing::error!(service, error = e, "routes that cannot be applied; leaving them out");
            Ok(())
        }
    }
}

impl Table {
    /// Builds the table of `config`, keeping the endpoints of `previous` that remain. A route
    /// that cannot be compiled is left out (`check` refuses such a configuration first).
    pub fn build(config: &ProxyConfig, previous: &Table, metrics: &ProxyMetrics) -> Table {
        Self::try_build(config, previous, metrics, false).unwrap_or_default()
    }

    fn try_build(config: &ProxyConfig, previous: &Table, metrics: &ProxyMetrics, strict: bool) -> Result<Table, String> {
        let known = previous.by_service.values().flat_map(|d| d.endpoints()).map(|e| ((e.address, e.sni.to_str().into_owned()), e.clone()));
        let source = config.inbounds.first().map_or("", |i| i.service.as_str());
        let mut build = Build {
            config,
            metrics,
            source,
            known: known.collect(),
            sinks: Default::default(),
            previous_sinks: &previous.sinks,
            start_sinks: !strict,
        };
        let mut table = Table::default();
        for inbound in &config.inbounds {
            let logs = inbound.policies.access_log.iter().filter_map(|rule| {
                let log = build.access_log(Some(&rule.conf), &inbound.service)?;
                Some((super::inbound_policies::bare(rule), log))
            });
            let logs: Vec<_> = logs.collect();
            let rules = super::inbound_policies::InboundRules::compile(inbound, previous.inbound.get(&inbound.port), logs);
            if !rules.is_empty() {
                table.inbound.insert(inbound.port, rules);
            }
        }
        table.local =
            super::access_log::Local { mesh: config.mesh.as_str().into(), zone: config.zone.as_str().into(), service: source.into() };
        for outbound in &config.outbounds {
            let Some(destination) = build.destination(outbound, &BTreeMap::new()) else { continue };
            // Transparent interception finds a destination by the address the application
            // dialled: a sidecar of this zone (other zones are reached only by service).
            for e in &destination.local {
                table.by_address.insert(e.address, destination.clone());
            }
            table.by_service.insert(outbound.service.clone(), destination);
        }
        let Table { by_service, routes, tcp_routes, .. } = &mut table;
        let mut resolve = |service: &str, tags: &BTreeMap<String, String>| build.backend(by_service, service, tags);
        for outbound in config.outbounds.iter().filter(|o| o.tcp_route.is_some() && !o.protocol.is_http()) {
            let refs = outbound.tcp_route.as_ref().map(|r| r.backend_refs.as_slice()).unwrap_or_default();
            let compiled = Backends::compile(refs, &format!("MeshTCPRoute to {}", outbound.service), &mut resolve);
            keep(compiled, strict, &outbound.service, tcp_routes)?;
        }
        for outbound in config.outbounds.iter().filter(|o| !o.http_routes.is_empty() || (o.tcp_route.is_some() && o.protocol.is_http())) {
            // A MeshTCPRoute to an HTTP service splits its requests, unless a MeshHTTPRoute says more.
            let from_tcp;
            let http_routes = match (&outbound.tcp_route, outbound.http_routes.is_empty()) {
                (Some(tcp), true) => {
                    let conf = strait_api::policies::http_route::HttpRouteConf { filters: vec![], backend_refs: tcp.backend_refs.clone() };
                    from_tcp = [strait_api::proxy_policies::HttpRoute {
                        matches: vec![],
                        conf,
                        origin: vec!["MeshTCPRoute".into()],
                        timeout: None,
                    }];
                    &from_tcp[..]
                }
                _ => &outbound.http_routes[..],
            };
            let compiled = if outbound.protocol.is_http() {
                Routes::compile(http_routes, &mut resolve)
            } else {
                Err(format!(
                    "MeshHTTPRoute on {}, which speaks TCP: tag its inbounds strait.io/protocol: http (or http2, grpc) to route its requests",
                    outbound.service
                ))
            };
            keep(compiled, strict, &outbound.service, routes)?;
        }
        table.sinks = std::mem::take(&mut build.sinks);
        table.tracer = config.proxy.trace.as_ref().map(|conf| {
            let previous = previous.tracer.as_deref();
            Arc::new(super::trace::Tracer::compile(conf, table.local.clone(), previous, &metrics.spans_dropped, !strict))
        });
        Ok(table)
    }

    /// What in `config` this sidecar cannot apply, if anything: such a configuration is
    /// refused (NACKed) as a whole and the one in force stays.
    pub fn check(config: &ProxyConfig) -> Result<(), String> {
        for outbound in &config.outbounds {
            Balancer::from_conf(outbound.policies.load_balancing.as_ref(), &[])
                .map_err(|e| format!("outbound {}: {e}", outbound.service))?;
        }
        if config.outbounds.iter().any(|o| !o.http_routes.is_empty() || o.tcp_route.is_some()) {
            let metrics = ProxyMetrics::register(&mut prometheus_client::registry::Registry::default());
            Self::try_build(config, &Table::default(), &metrics, true)?;
        }
        Ok(())
    }

    /// Where a TCP connection to `destination` goes: a backend of its MeshTCPRoute, by
    /// weight, or the destination itself.
    pub fn tcp_backend(&self, destination: Arc<Destination>) -> Arc<Destination> {
        match self.tcp_routes.get(&*destination.service).and_then(Backends::pick) {
            Some(backend) => backend.clone(),
            None => destination,
        }
    }

    /// The MeshRateLimit and MeshFaultInjection rules of inbound `port`, if it has any.
    pub fn inbound(&self, port: u16) -> Option<&super::inbound_policies::InboundRules> {
        self.inbound.get(&port)
    }

    /// The compiled MeshHTTPRoute rules of `service`, if it has any.
    pub fn routes(&self, service: &str) -> Option<&Routes> {
        self.routes.get(service)
    }

    /// Every destination by service.
    pub fn destinations(&self) -> impl Iterator<Item = &Arc<Destination>> {
        self.by_service.values()
    }

    /// Whether a connection to `service` has somewhere to go now: HTTP (whose requests are
    /// answered, with 503 when nothing can take them), or a TCP destination with an endpoint
    /// or a MeshTCPRoute. Right after start, an outbound's destination is named with no
    /// endpoint (no instance registered yet, its protocol not known yet).
    pub fn can_serve(&self, service: &str) -> bool {
        self.by_service
            .get(service)
            .is_some_and(|d| d.protocol.is_http() || d.endpoints().next().is_some() || self.tcp_routes.contains_key(service))
    }

    /// The destination named `service`.
    pub fn service(&self, service: &str) -> Option<&Arc<Destination>> {
        self.by_service.get(service)
    }

    /// The destination that `address` is an endpoint of.
    pub fn by_address(&self, address: SocketAddr) -> Option<&Arc<Destination>> {
        self.by_address.get(&address)
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use prometheus_client::registry::Registry;
    use strait_api::proxy_config::{Endpoint as ConfigEndpoint, OutboundConfig};

    use super::*;

    fn config(endpoints: &[(&str, u16, &str)], protocol: &str) -> ProxyConfig {
        ProxyConfig {
            mesh: "default".into(),
            dataplane: "web-1".into(),
            zone: "zone-1".into(),
            identity: "spiffe://default/web".into(),
            inbounds: vec![],
            outbounds: vec![OutboundConfig {
                service: "backend".into(),
                port: Some(10001),
                address: Some("127.0.0.1".into()),
                protocol: Protocol::from_tag(Some(protocol)),
                endpoints: endpoints
                    .iter()
                    .map(|(a, p, z)| ConfigEndpoint {
                        address: a.to_string(),
                        port: *p,
                        zone: z.to_string(),
                        tags: BTreeMap::new(),
                        instance: None,
                    })
                    .collect(),
                policies: Default::default(),
                http_routes: vec![],
                tcp_route: None,
            }],
            trust_bundle: Default::default(),
            certificate_lifetime_secs: 3600,
            proxy: Default::default(),
            transparent_outbound_port: None,
        }
    }

    #[test]
    fn endpoints_survive_a_rebuild_and_local_ones_come_first() {
        let metrics = ProxyMetrics::register(&mut Registry::default());
        let first = Table::build(&config(&[("10.0.0.1", 80, "zone-1"), ("10.0.0.2", 80, "zone-2")], "http"), &Table::default(), &metrics);
        let backend = first.service("backend").unwrap();
        assert_eq!(backend.protocol, Protocol::Http);
        assert_eq!(backend.expected.as_str(), "spiffe://default/backend");
        for _ in 0..4 {
            assert_eq!(backend.pick().unwrap().address, "10.0.0.1:80".parse().unwrap(), "the local endpoint is preferred");
        }
        let kept = backend.pick().unwrap().clone();
        let _busy = kept.start();

        let second = Table::build(
            &config(&[("10.0.0.2", 80, "zone-2"), ("10.0.0.1", 80, "zone-1"), ("bad", 1, "zone-1")], "http"),
            &first,
            &metrics,
        );
        let again = second.by_address("10.0.0.1:80".parse().unwrap()).unwrap().pick().unwrap();
        assert!(Arc::ptr_eq(again, &kept), "an endpoint that remains keeps its state");
        assert_eq!(again.in_flight(), 1);

        let third = Table::build(&config(&[("10.0.0.2", 80, "zone-2")], "tcp"), &second, &metrics);
        let backend = third.service("backend").unwrap();
        assert_eq!(&*backend.pick().unwrap().zone, "zone-2", "with no local endpoint left, other zones are used");
        assert_eq!(backend.protocol, Protocol::Tcp);
        assert!(third.by_address("10.0.0.1:80".parse().unwrap()).is_none());
    }

    #[test]
    fn mesh_retry_sets_connect_attempts_and_the_http_policy() {
        let metrics = ProxyMetrics::register(&mut Registry::default());
        let mut with_retry = config(&[("10.0.0.1", 80, "zone-1")], "tcp");
        let table = Table::build(&with_retry, &Table::default(), &metrics);
        let plain = table.service("backend").unwrap();
        assert_eq!((plain.connect_attempts, plain.retry.is_none()), (DEFAULT_CONNECT_ATTEMPTS, true));
        with_retry.outbounds[0].policies.retry =
            Some(serde_json::from_value(json!({"tcp": {"maxConnectAttempt": 4}, "http": {"numRetries": 2}})).unwrap());
        let table = Table::build(&with_retry, &table, &metrics);
        let retried = table.service("backend").unwrap();
        assert_eq!(retried.connect_attempts, 4);
        assert_eq!(retried.retry.as_ref().map(|r| r.retries), Some(2));
    }

    #[test]
    fn failed_tcp_connects_count_for_outlier_detection() {
        let metrics = ProxyMetrics::register(&mut Registry::default());
        let mut conf = config(&[("10.0.0.1", 80, "zone-1"), ("10.0.0.2", 80, "zone-1")], "tcp");
        conf.outbounds[0].policies.circuit_breaker =
            Some(serde_json::from_value(json!({"outlierDetection": {"detectors": {"localOriginFailures": {"consecutive": 2}}}})).unwrap());
        let table = Table::build(&conf, &Table::default(), &metrics);
        let backend = table.service("backend").unwrap();
        let first = backend.endpoints().next().unwrap().clone();
        backend.record(&first, Outcome::LocalOrigin);
        backend.record(&first, Outcome::Connected);
        backend.record(&first, Outcome::LocalOrigin);
        assert!(!first.health.outlier_ejected(now_ms()), "a connect in between clears the count");
        backend.record(&first, Outcome::LocalOrigin);
        assert!(first.health.outlier_ejected(now_ms()), "two failed connects in a row eject it");
    }

    #[test]
    fn the_success_rate_detector_ejects_an_endpoint_far_below_the_others() {
        let metrics = ProxyMetrics::register(&mut Registry::default());
        let addresses: Vec<String> = (1..=6).map(|i| format!("10.0.0.{i}")).collect();
        let endpoints: Vec<(&str, u16, &str)> = addresses.iter().map(|a| (a.as_str(), 80, "zone-1")).collect();
        let mut conf = config(&endpoints, "http");
        conf.outbounds[0].policies.circuit_breaker = Some(
            serde_json::from_value(json!({"outlierDetection": {"interval": "20ms", "detectors": {
                "totalFailures": {"consecutive": 1000},
                "successRate": {"requestVolume": 10, "minimumHosts": 5, "standardDeviationFactor": 1.5}}}}))
            .unwrap(),
        );
        let table = Table::build(&conf, &Table::default(), &metrics);
        let backend = table.service("backend").unwrap();
        let all: Vec<Arc<Endpoint>> = backend.endpoints().cloned().collect();
        // Five endpoints answer 19 of 20, the sixth 12 of 20: the mean is 89.2%, the deviation
        // 13.0%, so the floor is 69.6%: the sixth (60%) is below it, the others (95%) are not.
        for (i, e) in all.iter().enumerate() {
            let failures = if i == 5 { 8 } else { 1 };
            for n in 0..20 {
                backend.record(e, Outcome::Status(if n < failures { 500 } else { 200 }));
            }
        }
        // The detector looks once its interval has passed, at the next outcome.
        std::thread::sleep(Duration::from_millis(25));
        backend.record(&all[0], Outcome::Status(200));
        let ejected: Vec<bool> = all.iter().map(|e| e.health.outlier_ejected(now_ms())).collect();
        assert_eq!(ejected, [false, false, false, false, false, true]);
    }
}
