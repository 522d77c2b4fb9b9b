//! MeshMetric: the sidecar's metrics, served to Prometheus on the Dataplane's own address.
//!
//! In: the MeshMetric conf of each configuration from the zone, the sidecar's registry and the
//! Dataplane's address. Out: one plain-HTTP listener per Prometheus backend (port 5670 and
//! path `/metrics` unless the backend says otherwise; a MeshMetric without backends gets that
//! one), answering in the Prometheus text format:
//!
//! - `sidecar.regex`: only the families whose exposed name matches (counters are exposed with
//!   their `_total` suffix);
//! - `sidecar.includeUnused` (off by default): without it, series still at zero are left out
//!   (for a histogram, each series whose count is zero);
//! - `applications`: each application endpoint (`http://<the first inbound's service
//!   address>:<port><path>`) is fetched on every scrape and appended, its names prefixed with
//!   `<name>_` when a name is given; `strait_dp_application_scrape_up{application,port}` says
//!   whether the fetch worked.
//!
//! The zone control plane lists the same address, port and path in its Prometheus HTTP
//! service discovery endpoint. Without a MeshMetric, nothing listens: the metrics stay on
//! the admin address only.

use std::collections::HashMap;
use std::convert::Infallible;
use std::fmt::Write as _;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use bytes::Bytes;
use http::{header, Method, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use prometheus_client::registry::Registry;
use regex::Regex;
use strait_api::policies::metric::{MetricBackendType, MetricConf};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::dps_client::ProxyState;

/// The port of a Prometheus backend that names none.
pub const DEFAULT_PORT: u16 = 5670;
/// The path of a Prometheus backend that names none.
pub const DEFAULT_PATH: &str = "/metrics";
/// An application endpoint's answer is cut beyond this.
const MAX_APPLICATION_BYTES: usize = 8 << 20;
/// An application endpoint must answer within this.
const APPLICATION_TIMEOUT: Duration = Duration::from_secs(3);

/// What one listener serves.
#[derive(Debug, Clone)]
struct Exposition {
    path: String,
    regex: Option<Regex>,
    include_unused: bool,
    applications: Vec<Application>,
}

#[derive(Debug, Clone, PartialEq)]
struct Application {
    name: Option<String>,
    address: SocketAddr,
    path: String,
}

/// The listeners a MeshMetric conf asks for, by port.
fn desired(conf: Option<&MetricConf>, app_ip: IpAddr) -> Result<HashMap<u16, Exposition>, String> {
    let Some(conf) = conf else { return Ok(HashMap::new()) };
    let sidecar = conf.sidecar.clone().unwrap_or_default();
    let regex = match &sidecar.regex {
        Some(re) => Some(Regex::new(re).map_err(|e| format!("sidecar.regex: {e}"))?),
        None => None,
    };
    let applications: Vec<Application> = conf
        .applications
        .iter()
        .map(|a| Application {
            name: a.name.clone(),
            address: SocketAddr::new(app_ip, a.port),
            path: a.path.clone().unwrap_or_else(|| DEFAULT_PATH.to_string()),
        })
        .collect();
    let exposition = |path: Option<&String>| Exposition {
        path: path.cloned().unwrap_or_else(|| DEFAULT_PATH.to_string()),
        regex: regex.clone(),
        include_unused: sidecar.include_unused.unwrap_or(false),
        applications: applications.clone(),
    };
    let mut out = HashMap::new();
    if conf.backends.is_empty() {
        out.insert(DEFAULT_PORT, exposition(None));
    }
    for backend in &conf.backends {
        match backend.kind {
            MetricBackendType::Prometheus => {
                let prometheus = backend.prometheus.as_ref();
                let port = prometheus.and_then(|p| p.port).unwrap_or(DEFAULT_PORT);
                out.insert(port, exposition(prometheus.and_then(|p| p.path.as_ref())));
            }
        }
    }
    Ok(out)
}

/// Follows the MeshMetric of each configuration: binds, changes and closes listeners on
/// `address` until `cancel`.
pub fn start(address: IpAddr, state: Arc<ProxyState>, registry: Arc<Registry>, cancel: CancellationToken, tasks: &TaskTracker) {
    let task_tracker = tasks.clone();
    tasks.spawn(async move {
        let mut changed = state.changed.subscribe();
        let mut serving: HashMap<u16, (Arc<ArcSwap<Exposition>>, CancellationToken)> = HashMap::new();
        let mut version = None;
        loop {
            let config = state.config.load_full();
            if config.as_ref().map(|c| c.0) != version {
                version = config.as_ref().map(|c| c.0);
                let app_ip = config
                    .as_ref()
                    .and_then(|c| c.1.inbounds.first())
                    .and_then(|i| i.service_address.parse().ok())
                    .unwrap_or(IpAddr::V4(Ipv4Addr::LOCALHOST));
                match desired(config.as_ref().and_then(|c| c.1.proxy.metric.as_ref()), app_ip) {
                    Ok(mut wanted) => {
                        serving.retain(|port, (current, stop)| match wanted.remove(port) {
                            Some(exposition) => {
                                current.store(Arc::new(exposition));
                                true
                            }
                            None => {
                                tracing::info!(port, "MeshMetric: no longer exposing metrics on this port");
                                stop.cancel();
                                false
                            }
                        });
                        for (port, exposition) in wanted {
                            let bind = SocketAddr::new(address, port);
                            // An address that is not this host's own (behind NAT): every interface.
                            let bound = match TcpListener::bind(bind).await {
                                Err(e) if e.kind() == std::io::ErrorKind::AddrNotAvailable => {
                                    TcpListener::bind(SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), port)).await
                                }
                                other => other,
                            };
                            match bound {
                                Ok(listener) => {
                                    tracing::info!(address = %bind, path = exposition.path, "MeshMetric: exposing metrics");
                                    let current = Arc::new(ArcSwap::from_pointee(exposition));
                                    let stop = cancel.child_token();
                                    task_tracker.spawn(serve(listener, current.clone(), registry.clone(), stop.clone()));
                                    serving.insert(port, (current, stop));
                                }
                                Err(error) => {
                                    tracing::error!(address = %bind, %error, "MeshMetric: cannot listen for Prometheus; metrics stay on the admin address only");
                                }
                            }
                        }
                    }
                    Err(error) => tracing::error!(error, "a MeshMetric that cannot be applied; keeping the previous exposition"),
                }
            }
            tokio::select! {
                () = cancel.cancelled() => return,
                r = changed.changed() => if r.is_err() { return },
            }
        }
    });
}

async fn serve(listener: TcpListener, current: Arc<ArcSwap<Exposition>>, registry: Arc<Registry>, stop: CancellationToken) {
    loop {
        let (stream, _) = tokio::select! {
            () = stop.cancelled() => return,
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(error) => {
                    tracing::warn!(%error, "MeshMetric: accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let (current, registry) = (current.clone(), registry.clone());
        tokio::spawn(async move {
            let service = service_fn(move |request: Request<Incoming>| {
                let (current, registry) = (current.clone(), registry.clone());
                async move { Ok::<_, Infallible>(answer(&request, &current.load_full(), &registry).await) }
            });
            let mut builder = hyper::server::conn::http1::Builder::new();
            builder.timer(TokioTimer::new()).header_read_timeout(Duration::from_secs(10));
            let _ = builder.serve_connection(TokioIo::new(stream), service).await;
        });
    }
}

async fn answer(request: &Request<Incoming>, exposition: &Exposition, registry: &Registry) -> Response<Full<Bytes>> {
    let reply = |status: StatusCode, content_type: &'static str, body: String| {
        let mut response = Response::new(Full::new(Bytes::from(body)));
        *response.status_mut() = status;
        response.headers_mut().insert(header::CONTENT_TYPE, header::HeaderValue::from_static(content_type));
        response
    };
    if request.uri().path() != exposition.path {
        return reply(StatusCode::NOT_FOUND, "text/plain", format!("metrics are at {}\n", exposition.path));
    }
    if request.method() != Method::GET && request.method() != Method::HEAD {
        return reply(StatusCode::METHOD_NOT_ALLOWED, "text/plain", "GET only\n".to_string());
    }
    let mut text = String::new();
    if let Err(error) = prometheus_client::encoding::text::encode(&mut text, registry) {
        return reply(StatusCode::INTERNAL_SERVER_ERROR, "text/plain", format!("encoding the metrics: {error}\n"));
    }
    let mut body = render(&text, exposition.regex.as_ref(), exposition.include_unused);
    if !exposition.applications.is_empty() {
        let mut up = String::from("# HELP strait_dp_application_scrape_up whether the application's metrics endpoint answered (MeshMetric applications)\n# TYPE strait_dp_application_scrape_up gauge\n");
        let mut fetched = String::new();
        for app in &exposition.applications {
            let ok = match fetch(app).await {
                Ok(text) => {
                    fetched.push_str(&prefixed(&text, app.name.as_deref()));
                    true
                }
                Err(error) => {
                    tracing::debug!(application = %app.address, error, "MeshMetric: the application's metrics could not be fetched");
                    false
                }
            };
            let _ = writeln!(
                up,
                "strait_dp_application_scrape_up{{application=\"{}\",port=\"{}\"}} {}",
                app.name.as_deref().unwrap_or(""),
                app.address.port(),
                u8::from(ok)
            );
        }
        body.push_str(&up);
        body.push_str(&fetched);
    }
    reply(StatusCode::OK, "text/plain; version=0.0.4; charset=utf-8", body)
}

/// An OpenMetrics exposition of the registry as Prometheus text: counters named with their
/// `_total`, no `# EOF`, families filtered by `regex`, and zero series left out unless
/// `include_unused`.
fn render(openmetrics: &str, regex: Option<&Regex>, include_unused: bool) -> String {
    let mut out = String::with_capacity(openmetrics.len());
    for family in families(openmetrics) {
        let (name, kind) = family.name_and_type();
        let exposed = if kind == "counter" { format!("{name}_total") } else { name.to_string() };
        if regex.is_some_and(|re| !re.is_match(&exposed)) {
            continue;
        }
        let samples: Vec<&str> = if include_unused { family.samples.clone() } else { used(&family.samples, kind) };
        if samples.is_empty() {
            continue;
        }
        for meta in &family.meta {
            if meta.starts_with("# UNIT") {
                continue;
            }
            if kind == "counter" {
                let _ = writeln!(out, "{}", meta.replacen(&format!(" {name} "), &format!(" {exposed} "), 1));
            } else {
                let _ = writeln!(out, "{meta}");
            }
        }
        for s in samples {
            let _ = writeln!(out, "{s}");
        }
    }
    out
}

/// One family of an exposition: its `#` lines and its samples.
struct Family<'a> {
    meta: Vec<&'a str>,
    samples: Vec<&'a str>,
}

impl Family<'_> {
    /// The family's name and type, from its `# TYPE` line (`untyped` without one).
    fn name_and_type(&self) -> (&str, &str) {
        self.meta
            .iter()
            .find_map(|m| {
                let mut words = m.strip_prefix("# TYPE ")?.split_whitespace();
                Some((words.next()?, words.next()?))
            })
            .unwrap_or(("", "untyped"))
    }
}

fn families(text: &str) -> Vec<Family<'_>> {
    let mut out: Vec<Family> = Vec::new();
    for line in text.lines() {
        if line == "# EOF" || line.is_empty() {
            continue;
        }
        if line.starts_with('#') {
            // A family's `#` lines come before its samples: a `#` line after samples starts the next.
            if out.last().is_none_or(|f| !f.samples.is_empty()) {
                out.push(Family { meta: Vec::new(), samples: Vec::new() });
            }
            if let Some(f) = out.last_mut() {
                f.meta.push(line);
            }
        } else {
            if out.is_empty() {
                out.push(Family { meta: Vec::new(), samples: Vec::new() });
            }
            if let Some(f) = out.last_mut() {
                f.samples.push(line);
            }
        }
    }
    out
}

/// The samples of series that moved: non-zero values; for a histogram, every line of a series
/// whose count is not zero.
fn used<'a>(samples: &[&'a str], kind: &str) -> Vec<&'a str> {
    let value_of = |s: &str| s.rsplit_once(' ').map_or(0.0, |(_, v)| v.trim().parse::<f64>().unwrap_or(1.0));
    if kind != "histogram" {
        return samples.iter().copied().filter(|s| value_of(s) != 0.0).collect();
    }
    // A series is its labels without `le`.
    let series = |s: &str| -> String {
        let labels = s.split_once('{').map_or("", |(_, rest)| rest.rsplit_once('}').map_or("", |(l, _)| l));
        labels.split(',').filter(|l| !l.starts_with("le=")).collect::<Vec<_>>().join(",")
    };
    let unused: Vec<String> = samples
        .iter()
        .filter(|s| s.split(['{', ' ']).next().is_some_and(|n| n.ends_with("_count")) && value_of(s) == 0.0)
        .map(|s| series(s))
        .collect();
    samples.iter().copied().filter(|s| !unused.contains(&series(s))).collect()
}

/// `text` with every metric name prefixed by `<name>_` (unchanged without a name).
fn prefixed(text: &str, name: Option<&str>) -> String {
    let Some(name) = name.filter(|n| !n.is_empty()) else {
        let mut out = text.to_string();
        if !out.ends_with('\n') {
            out.push('\n');
        }
        return out;
    };
    let mut out = String::with_capacity(text.len());
    for line in text.lines() {
        if line == "# EOF" {
            continue;
        }
        let renamed = if let Some(rest) = line.strip_prefix("# HELP ").or_else(|| line.strip_prefix("# TYPE ")) {
            format!("{} {name}_{rest}", &line[..6])
        } else if line.starts_with('#') || line.is_empty() {
            line.to_string()
        } else {
            format!("{name}_{line}")
        };
        out.push_str(&renamed);
        out.push('\n');
    }
    out
}

/// The metrics text of an application endpoint (HTTP/1.0, so the answer ends with the connection).
async fn fetch(app: &Application) -> Result<String, String> {
    let exchange = async {
        let mut stream = tokio::net::TcpStream::connect(app.address).await.map_err(|e| e.to_string())?;
        let request = format!("GET {} HTTP/1.0\r\nHost: {}\r\nAccept: text/plain\r\n\r\n", app.path, app.address);
        stream.write_all(request.as_bytes()).await.map_err(|e| e.to_string())?;
        let mut answer = Vec::new();
        stream.take(MAX_APPLICATION_BYTES as u64).read_to_end(&mut answer).await.map_err(|e| e.to_string())?;
        Ok::<_, String>(answer)
    };
    let answer = tokio::time::timeout(APPLICATION_TIMEOUT, exchange).await.map_err(|_| "no answer in time".to_string())??;
    let text = String::from_utf8_lossy(&answer);
    let (head, body) = text.split_once("\r\n\r\n").ok_or("not an HTTP answer")?;
    let status = head.split_whitespace().nth(1).unwrap_or_default();
    if status != "200" {
        return Err(format!("answered {status}"));
    }
    Ok(body.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEXT: &str = "# HELP a requests.\n# TYPE a counter\na_total{x=\"1\"} 0\na_total{x=\"2\"} 3\n# HELP g a gauge.\n# TYPE g gauge\ng 0\n# HELP h latency.\n# TYPE h histogram\nh_bucket{x=\"1\",le=\"0.1\"} 0\nh_bucket{x=\"1\",le=\"+Inf\"} 0\nh_sum{x=\"1\"} 0.0\nh_count{x=\"1\"} 0\nh_bucket{x=\"2\",le=\"0.1\"} 1\nh_bucket{x=\"2\",le=\"+Inf\"} 2\nh_sum{x=\"2\"} 0.3\nh_count{x=\"2\"} 2\n# EOF\n";

    #[test]
    fn unused_series_are_left_out_unless_asked_for() {
        let out = render(TEXT, None, false);
        assert_eq!(
            out,
            "# HELP a_total requests.\n# TYPE a_total counter\na_total{x=\"2\"} 3\n# HELP h latency.\n# TYPE h histogram\nh_bucket{x=\"2\",le=\"0.1\"} 1\nh_bucket{x=\"2\",le=\"+Inf\"} 2\nh_sum{x=\"2\"} 0.3\nh_count{x=\"2\"} 2\n"
        );
        let all = render(TEXT, None, true);
        assert!(all.contains("a_total{x=\"1\"} 0\n") && all.contains("g 0\n") && all.contains("h_count{x=\"1\"} 0\n"), "{all}");
        assert!(!all.contains("# EOF"), "{all}");
    }

    #[test]
    fn the_regex_keeps_only_matching_families() {
        let out = render(TEXT, Some(&Regex::new("^a_total$").unwrap()), true);
        assert!(out.contains("a_total{x=\"1\"}") && !out.contains("g 0") && !out.contains("h_bucket"), "{out}");
    }

    #[test]
    fn application_metrics_are_prefixed_with_their_name() {
        let text = "# HELP hits served.\n# TYPE hits counter\nhits_total 4\n";
        assert_eq!(prefixed(text, Some("shop")), "# HELP shop_hits served.\n# TYPE shop_hits counter\nshop_hits_total 4\n");
        assert_eq!(prefixed(text, None), text);
    }

    #[test]
    fn a_conf_without_backends_exposes_on_the_default_port() {
        let conf = MetricConf::default();
        let wanted = desired(Some(&conf), IpAddr::V4(Ipv4Addr::LOCALHOST)).unwrap();
        assert_eq!(wanted.keys().copied().collect::<Vec<_>>(), [DEFAULT_PORT]);
        assert_eq!(wanted[&DEFAULT_PORT].path, "/metrics");
        assert!(desired(None, IpAddr::V4(Ipv4Addr::LOCALHOST)).unwrap().is_empty());
    }
}
