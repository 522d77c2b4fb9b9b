//! MeshHTTPRoute on the outbound side (and the weighted backends MeshTCPRoute shares): the rules of a destination, compiled once per
//! configuration, pick the rule a request matches (path, method, headers, query parameters),
//! edit the request and the response (header modifiers, URL rewrite), answer redirects
//! locally, choose the backend by weight (a service, or the endpoints of a service that
//! carry some tags, such as `version: v2`), and name the destinations a share of the requests
//! is copied to (RequestMirror).
//!
//! In: the merged routes of a destination (most specific first, as the zone orders them) and
//! the destination table. Out: per request, the [`Rule`] that applies, if any. Matching reads
//! the request in place: no allocation unless a rule edits the request.

use std::sync::Arc;

use http::header::{HeaderName, HeaderValue};
use http::{HeaderMap, Method, Request, Uri};
use rand::Rng;
use strait_api::policies::http_route::{
    HeaderMatchType, HeaderModifier, HttpFilter, HttpFilterType, HttpMatch, PathMatchType, RequestRedirect, UrlRewrite,
};
use strait_api::proxy_policies::HttpRoute;

use super::super::destinations::Destination;

/// The compiled rules of one destination, in the order they are tried.
#[derive(Debug, Default)]
pub struct Routes {
    rules: Vec<Rule>,
}

/// One rule: when a request matches, what is done to it and where it goes.
#[derive(Debug)]
pub struct Rule {
    matches: Vec<Match>,
    request_headers: Vec<HeaderOps>,
    response_headers: Vec<HeaderOps>,
    redirect: Option<Redirect>,
    rewrite: Option<Rewrite>,
    backends: Backends,
    mirrors: Vec<Mirror>,
    /// MeshTimeout of the requests this rule routes (a MeshTimeout on its route).
    timeout: Option<strait_api::policies::timeout::TimeoutConf>,
    /// The names of the MeshHTTPRoutes behind this rule, sent to the called sidecar in
    /// [`ROUTE_HEADER`] (its MeshRateLimits on a route apply to them).
    names: Option<http::HeaderValue>,
}

/// The header in which a caller's sidecar names the MeshHTTPRoutes a request matched (comma
/// separated), for the called sidecar's MeshRateLimits on routes. The caller's sidecar removes
/// what the application sent in it; the called one removes it before the application.
pub const ROUTE_HEADER: http::HeaderName = http::HeaderName::from_static("x-strait-route");

/// A RequestMirror filter: a share of the requests copied to another destination.
#[derive(Debug)]
struct Mirror {
    destination: Arc<Destination>,
    /// The chance that a request is copied, from 0 to 1.
    share: f64,
}

/// Weighted backends of a route rule (MeshHTTPRoute) or of a MeshTCPRoute: services, or the
/// endpoints of a service that carry some tags.
#[derive(Debug, Default)]
pub struct Backends {
    /// Each backend with the running total of the weights up to it.
    list: Vec<(u32, Arc<Destination>)>,
    total: u32,
}

impl Backends {
    /// Resolves `refs` (those of weight 0 are left out); `origin` names the policies for errors.
    pub fn compile(
        refs: &[strait_api::policies::BackendRef],
        origin: &str,
        resolve: &mut impl FnMut(&str, &std::collections::BTreeMap<String, String>) -> Option<Arc<Destination>>,
    ) -> Result<Backends, Unresolved> {
        let mut backends = Backends::default();
        for backend in refs.iter().filter(|b| b.weight > 0) {
            let destination = resolve(&backend.name, &backend.tags)
                .ok_or_else(|| format!("{origin}: backend {} {:?} is not a destination of this sidecar", backend.name, backend.tags))?;
            backends.total += backend.weight;
            backends.list.push((backends.total, destination));
        }
        Ok(backends)
    }

    /// A backend by weight; `None` when there is none.
    pub fn pick(&self) -> Option<&Arc<Destination>> {
        match self.list.len() {
            0 => None,
            1 => Some(&self.list[0].1),
            _ => {
                let ticket = rand::thread_rng().gen_range(0..self.total);
                self.list.iter().find(|(upto, _)| ticket < *upto).map(|(_, d)| d)
            }
        }
    }
}

#[derive(Debug)]
struct Match {
    path: Option<PathCond>,
    method: Option<Method>,
    headers: Vec<(HeaderName, Cond)>,
    query: Vec<(String, Cond)>,
}

#[derive(Debug)]
enum PathCond {
    Exact(String),
    Prefix(String),
    Regex(regex::Regex),
}

#[derive(Debug)]
enum Cond {
    Exact(String),
    Prefix(String),
    Regex(regex::Regex),
    Present,
    Absent,
}

#[derive(Debug, Default)]
struct HeaderOps {
    set: Vec<(HeaderName, HeaderValue)>,
    add: Vec<(HeaderName, HeaderValue)>,
    remove: Vec<HeaderName>,
}

#[derive(Debug)]
struct Redirect {
    scheme: Option<String>,
    hostname: Option<String>,
    port: Option<u16>,
    path: Option<String>,
    status: http::StatusCode,
}

#[derive(Debug)]
struct Rewrite {
    hostname: Option<http::uri::Authority>,
    full_path: Option<String>,
    prefix: Option<String>,
}

/// A backend a rule names that this sidecar cannot reach; such a configuration is refused.
pub type Unresolved = String;

impl Routes {
    /// Compiles `routes`, finding each backend with `resolve(service, tags)`.
    pub fn compile(
        routes: &[HttpRoute],
        resolve: &mut impl FnMut(&str, &std::collections::BTreeMap<String, String>) -> Option<Arc<Destination>>,
    ) -> Result<Routes, Unresolved> {
        let mut rules = Vec::with_capacity(routes.len());
        for route in routes {
            rules.push(Rule::compile(route, resolve)?);
        }
        Ok(Routes { rules })
    }

    /// The first rule `request` matches, and the path prefix it matched (for prefix rewrites).
    pub fn find<B>(&self, request: &Request<B>) -> Option<(&Rule, Option<&str>)> {
        self.rules.iter().find_map(|rule| rule.matching(request).map(|prefix| (rule, prefix)))
    }
}

impl Rule {
    /// The value of [`ROUTE_HEADER`] for the requests this rule matches.
    pub fn names(&self) -> Option<&http::HeaderValue> {
        self.names.as_ref()
    }

    fn compile(
        route: &HttpRoute,
        resolve: &mut impl FnMut(&str, &std::collections::BTreeMap<String, String>) -> Option<Arc<Destination>>,
    ) -> Result<Rule, Unresolved> {
        let origin = route.origin.join(", ");
        let bad = |what: String| format!("MeshHTTPRoute {origin}: {what}");
        let matches = route.matches.iter().map(|m| compile_match(m).map_err(bad)).collect::<Result<Vec<_>, _>>()?;
        let mut rule = Rule {
            matches,
            request_headers: Vec::new(),
            response_headers: Vec::new(),
            redirect: None,
            rewrite: None,
            backends: Backends::default(),
            mirrors: Vec::new(),
            timeout: route.timeout.as_ref().map(|t| t.conf.clone()),
            names: http::HeaderValue::try_from(route.origin.join(",")).ok(),
        };
        for filter in &route.conf.filters {
            rule.add_filter(filter, resolve).map_err(bad)?;
        }
        rule.backends = Backends::compile(&route.conf.backend_refs, &format!("MeshHTTPRoute {origin}"), resolve)?;
        Ok(rule)
    }

    fn add_filter(
        &mut self,
        filter: &HttpFilter,
        resolve: &mut impl FnMut(&str, &std::collections::BTreeMap<String, String>) -> Option<Arc<Destination>>,
    ) -> Result<(), String> {
        match filter.kind {
            HttpFilterType::RequestHeaderModifier => {
                self.request_headers.push(header_ops(filter.request_header_modifier.as_ref())?);
            }
            HttpFilterType::ResponseHeaderModifier => {
                self.response_headers.push(header_ops(filter.response_header_modifier.as_ref())?);
            }
            HttpFilterType::RequestRedirect => {
                let r: &RequestRedirect = filter.request_redirect.as_ref().ok_or("a RequestRedirect filter without requestRedirect")?;
                let status = http::StatusCode::from_u16(r.status_code.unwrap_or(302)).map_err(|e| e.to_string())?;
                self.redirect =
                    Some(Redirect { scheme: r.scheme.clone(), hostname: r.hostname.clone(), port: r.port, path: r.path.clone(), status });
            }
            HttpFilterType::URLRewrite => {
                let r: &UrlRewrite = filter.url_rewrite.as_ref().ok_or("a URLRewrite filter without urlRewrite")?;
                let hostname = match &r.hostname {
                    Some(h) => Some(h.parse::<http::uri::Authority>().map_err(|e| format!("urlRewrite.hostname {h:?}: {e}"))?),
                    None => None,
                };
                self.rewrite = Some(Rewrite { hostname, full_path: r.replace_full_path.clone(), prefix: r.replace_prefix_match.clone() });
            }
            HttpFilterType::RequestMirror => {
                let m = filter.request_mirror.as_ref().ok_or("a RequestMirror filter without requestMirror")?;
                let backend = &m.backend_ref;
                let destination = resolve(&backend.name, &backend.tags).ok_or_else(|| {
                    format!("RequestMirror backend {} {:?} is not a destination of this sidecar", backend.name, backend.tags)
                })?;
                self.mirrors.push(Mirror { destination, share: m.percentage.unwrap_or(100.0).clamp(0.0, 100.0) / 100.0 });
            }
        }
        Ok(())
    }

    /// `Some(matched prefix)` when the request matches (the prefix is `None` unless a
    /// PathPrefix matched); `None` otherwise.
    fn matching<B>(&self, request: &Request<B>) -> Option<Option<&str>> {
        if self.matches.is_empty() {
            return Some(None);
        }
        self.matches.iter().find_map(|m| m.matching(request))
    }

    /// The timeouts of a request this rule routes to `destination`: the destination's, with
    /// what a MeshTimeout on the route sets instead.
    pub fn timeouts(&self, destination: &Destination) -> crate::proxy::timeouts::Timeouts {
        match &self.timeout {
            Some(conf) => destination.timeouts.overridden_by(conf),
            None => destination.timeouts,
        }
    }

    /// The destinations this request is copied to (RequestMirror), each by its share.
    pub fn mirrors(&self) -> impl Iterator<Item = &Arc<Destination>> {
        self.mirrors.iter().filter(|m| m.share >= 1.0 || rand::thread_rng().gen_bool(m.share)).map(|m| &m.destination)
    }

    /// The backend for this request, by weight; `None`: the route's own destination.
    pub fn backend(&self) -> Option<&Arc<Destination>> {
        self.backends.pick()
    }

    /// The local answer of a redirect rule, if this is one.
    pub fn redirect<B>(&self, request: &Request<B>) -> Option<(http::StatusCode, HeaderValue)> {
        let r = self.redirect.as_ref()?;
        let uri = request.uri();
        let host = r.hostname.as_deref().or_else(|| uri.host()).unwrap_or("localhost");
        let scheme = r.scheme.as_deref().unwrap_or("http");
        let path = match &r.path {
            Some(p) => p.as_str(),
            None => uri.path_and_query().map_or("/", |p| p.as_str()),
        };
        let location = match r.port.or_else(|| if r.hostname.is_none() { uri.port_u16() } else { None }) {
            Some(port) => format!("{scheme}://{host}:{port}{path}"),
            None => format!("{scheme}://{host}{path}"),
        };
        Some((r.status, HeaderValue::from_str(&location).ok()?))
    }

    /// Edits the request as the rule says: headers, then the URL (`prefix` is the path prefix
    /// the request matched).
    pub fn edit_request<B>(&self, request: &mut Request<B>, prefix: Option<&str>) {
        for ops in &self.request_headers {
            ops.apply(request.headers_mut());
        }
        let Some(rewrite) = &self.rewrite else { return };
        let uri = request.uri();
        let query = uri.query();
        let path = match (&rewrite.full_path, &rewrite.prefix, prefix) {
            (Some(full), _, _) => Some(full.clone()),
            (None, Some(to), Some(matched)) => {
                let rest = &uri.path()[matched.len().min(uri.path().len())..];
                let joined = match (to.ends_with('/'), rest.starts_with('/')) {
                    (true, true) => format!("{to}{}", &rest[1..]),
                    (false, false) if !rest.is_empty() => format!("{to}/{rest}"),
                    _ => format!("{to}{rest}"),
                };
                Some(if joined.is_empty() { "/".into() } else { joined })
            }
            _ => None,
        };
        let mut parts = uri.clone().into_parts();
        if let Some(path) = path {
            let with_query = match query {
                Some(q) => format!("{path}?{q}"),
                None => path,
            };
            if let Ok(pq) = with_query.parse() {
                parts.path_and_query = Some(pq);
            }
        }
        if let Some(authority) = &rewrite.hostname {
            parts.authority = Some(authority.clone());
        }
        if let Ok(uri) = Uri::from_parts(parts) {
            *request.uri_mut() = uri;
        }
    }

    /// Edits the response headers as the rule says.
    pub fn edit_response(&self, headers: &mut HeaderMap) {
        for ops in &self.response_headers {
            ops.apply(headers);
        }
    }
}

impl Match {
    fn matching<B>(&self, request: &Request<B>) -> Option<Option<&str>> {
        if self.method.as_ref().is_some_and(|m| m != request.method()) {
            return None;
        }
        let path = request.uri().path();
        let prefix = match &self.path {
            None => None,
            Some(PathCond::Exact(p)) => (path == p).then_some(None)?,
            Some(PathCond::Prefix(p)) => prefix_matches(path, p).then_some(Some(p.as_str()))?,
            Some(PathCond::Regex(re)) => re.is_match(path).then_some(None)?,
        };
        let headers = request.headers();
        // The request is already in its mesh form: its Host is the URI's authority.
        let authority = request.uri().authority().map(|a| a.as_str());
        for (name, cond) in &self.headers {
            let present = if name == http::header::HOST { authority.is_some() } else { headers.contains_key(name) };
            let ok = match cond {
                Cond::Present => present,
                Cond::Absent => !present,
                _ if name == http::header::HOST => authority.is_some_and(|a| cond.accepts(a)),
                _ => headers.get_all(name).iter().filter_map(|v| v.to_str().ok()).any(|v| cond.accepts(v)),
            };
            if !ok {
                return None;
            }
        }
        if !self.query.is_empty() {
            let query = request.uri().query().unwrap_or("");
            for (name, cond) in &self.query {
                let value = query.split('&').filter_map(|kv| kv.split_once('=').or(Some((kv, "")))).find(|(k, _)| k == name);
                if !value.is_some_and(|(_, v)| cond.accepts(v)) {
                    return None;
                }
            }
        }
        Some(prefix)
    }
}

impl Cond {
    fn accepts(&self, value: &str) -> bool {
        match self {
            Cond::Exact(v) => value == v,
            Cond::Prefix(p) => value.starts_with(p.as_str()),
            Cond::Regex(re) => re.is_match(value),
            Cond::Present => true,
            Cond::Absent => false,
        }
    }
}

/// A path prefix matches whole segments: `/api` matches `/api` and `/api/x`, not `/apix`.
fn prefix_matches(path: &str, prefix: &str) -> bool {
    let prefix = if prefix.len() > 1 { prefix.trim_end_matches('/') } else { prefix };
    path == prefix || (path.starts_with(prefix) && (prefix.ends_with('/') || path.as_bytes().get(prefix.len()) == Some(&b'/')))
}

/// A regular expression that must match the whole value, as Gateway API and Kuma read them.
fn whole(re: &str) -> Result<regex::Regex, String> {
    regex::Regex::new(&format!("^(?:{re})$")).map_err(|e| format!("invalid regular expression {re:?}: {e}"))
}

fn compile_match(m: &HttpMatch) -> Result<Match, String> {
    let path = match &m.path {
        None => None,
        Some(p) => Some(match p.kind {
            PathMatchType::Exact => PathCond::Exact(p.value.clone()),
            PathMatchType::PathPrefix => PathCond::Prefix(p.value.clone()),
            PathMatchType::RegularExpression => PathCond::Regex(whole(&p.value)?),
        }),
    };
    let method = match &m.method {
        Some(name) => Some(Method::from_bytes(name.as_bytes()).map_err(|e| format!("method {name:?}: {e}"))?),
        None => None,
    };
    let cond = |kind: HeaderMatchType, value: Option<&str>| -> Result<Cond, String> {
        let value = || value.map(str::to_string).ok_or_else(|| format!("a {kind:?} match needs a value"));
        Ok(match kind {
            HeaderMatchType::Exact => Cond::Exact(value()?),
            HeaderMatchType::Prefix => Cond::Prefix(value()?),
            HeaderMatchType::RegularExpression => Cond::Regex(whole(&value()?)?),
            HeaderMatchType::Present => Cond::Present,
            HeaderMatchType::Absent => Cond::Absent,
        })
    };
    let mut headers = Vec::with_capacity(m.headers.len());
    for h in &m.headers {
        let name = HeaderName::from_bytes(h.name.as_bytes()).map_err(|e| format!("header {:?}: {e}", h.name))?;
        headers.push((name, cond(h.kind, h.value.as_deref())?));
    }
    let mut query = Vec::with_capacity(m.query_params.len());
    for q in &m.query_params {
        query.push((q.name.clone(), cond(q.kind, Some(&q.value))?));
    }
    Ok(Match { path, method, headers, query })
}

fn header_ops(modifier: Option<&HeaderModifier>) -> Result<HeaderOps, String> {
    let modifier = modifier.ok_or("a header modifier filter without its modifier")?;
    let pair = |h: &strait_api::policies::HeaderValue| -> Result<(HeaderName, HeaderValue), String> {
        Ok((
            HeaderName::from_bytes(h.name.as_bytes()).map_err(|e| format!("header {:?}: {e}", h.name))?,
            HeaderValue::from_str(&h.value).map_err(|e| format!("header {:?} value: {e}", h.name))?,
        ))
    };
    Ok(HeaderOps {
        set: modifier.set.iter().map(pair).collect::<Result<_, _>>()?,
        add: modifier.add.iter().map(pair).collect::<Result<_, _>>()?,
        remove: modifier
            .remove
            .iter()
            .map(|n| HeaderName::from_bytes(n.as_bytes()).map_err(|e| format!("header {n:?}: {e}")))
            .collect::<Result<_, _>>()?,
    })
}

impl HeaderOps {
    fn apply(&self, headers: &mut HeaderMap) {
        for (name, value) in &self.set {
            headers.insert(name.clone(), value.clone());
        }
        for (name, value) in &self.add {
            headers.append(name.clone(), value.clone());
        }
        for name in &self.remove {
            headers.remove(name);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_host_match_reads_the_authority_of_the_mesh_request() {
        let m: HttpMatch =
            serde_json::from_value(serde_json::json!({"headers": [{"type": "Exact", "name": "Host", "value": "shop.example"}]})).unwrap();
        let m = compile_match(&m).unwrap();
        let request = |uri: &str| Request::builder().uri(uri).body(()).unwrap();
        assert!(m.matching(&request("http://shop.example/cart")).is_some());
        assert!(m.matching(&request("http://other.example/cart")).is_none());
    }

    #[test]
    fn path_prefixes_match_whole_segments() {
        for (path, prefix, expected) in [
            ("/api", "/api", true),
            ("/api/x", "/api", true),
            ("/apix", "/api", false),
            ("/api/x", "/api/", true),
            ("/anything", "/", true),
            ("/ap", "/api", false),
        ] {
            assert_eq!(prefix_matches(path, prefix), expected, "{path} {prefix}");
        }
    }
}
