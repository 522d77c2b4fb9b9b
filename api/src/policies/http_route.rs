//! MeshHTTPRoute: HTTP routing of outbound traffic by path, header and method, with weighted
//! backends and header, redirect, rewrite and mirror filters.

use serde::{Deserialize, Serialize};

use super::{check_backends, check_header_name, check_percentage, check_status, BackendRef, HeaderValue};
use crate::validate::{Validate, Validator};

/// One rule: when any of `matches` matches (all when empty), apply `default`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct HttpRouteRule {
    /// Alternatives; a request matching any of them takes this rule.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub matches: Vec<HttpMatch>,
    /// What to do with matched requests.
    pub default: HttpRouteConf,
}

/// Conditions that must all hold.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct HttpMatch {
    /// Path condition.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<PathMatch>,
    /// Method, such as GET.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub method: Option<String>,
    /// Header conditions.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub headers: Vec<HeaderMatch>,
    /// Query parameter conditions.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub query_params: Vec<QueryMatch>,
}

/// How a path is compared.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub enum PathMatchType {
    /// The whole path.
    Exact,
    /// A prefix on `/` boundaries.
    PathPrefix,
    /// A regular expression over the whole path.
    RegularExpression,
}

/// A path condition.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct PathMatch {
    /// Comparison.
    #[serde(rename = "type")]
    pub kind: PathMatchType,
    /// Path, prefix or expression.
    pub value: String,
}

/// How a header is compared.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub enum HeaderMatchType {
    /// Equal to `value`.
    Exact,
    /// Starts with `value`.
    Prefix,
    /// Matches the regular expression `value`.
    RegularExpression,
    /// Present, any value.
    Present,
    /// Absent.
    Absent,
}

/// A header condition.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct HeaderMatch {
    /// Comparison (default Exact).
    #[serde(rename = "type", default = "exact_header")]
    pub kind: HeaderMatchType,
    /// Header name.
    pub name: String,
    /// Value for Exact, Prefix and RegularExpression.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<String>,
}

fn exact_header() -> HeaderMatchType {
    HeaderMatchType::Exact
}

/// A query parameter condition.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct QueryMatch {
    /// Exact or RegularExpression.
    #[serde(rename = "type")]
    pub kind: HeaderMatchType,
    /// Parameter name.
    pub name: String,
    /// Value or expression.
    pub value: String,
}

/// What a rule does.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct HttpRouteConf {
    /// Filters applied in order.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub filters: Vec<HttpFilter>,
    /// Weighted destinations (default: the targeted service).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub backend_refs: Vec<BackendRef>,
}

/// Filter kinds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub enum HttpFilterType {
    /// Set, add or remove request headers.
    RequestHeaderModifier,
    /// Set, add or remove response headers.
    ResponseHeaderModifier,
    /// Answer with a redirect.
    RequestRedirect,
    /// Rewrite the host or path before forwarding.
    URLRewrite,
    /// Send a copy of requests elsewhere, ignoring its answers.
    RequestMirror,
}

/// One filter; the field named after its type holds its settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct HttpFilter {
    /// Which filter.
    #[serde(rename = "type")]
    pub kind: HttpFilterType,
    /// Settings of RequestHeaderModifier.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_header_modifier: Option<HeaderModifier>,
    /// Settings of ResponseHeaderModifier.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub response_header_modifier: Option<HeaderModifier>,
    /// Settings of RequestRedirect.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_redirect: Option<RequestRedirect>,
    /// Settings of URLRewrite.
    #[serde(default, skip_serializing_if = "Option::is_none", rename = "urlRewrite")]
    pub url_rewrite: Option<UrlRewrite>,
    /// Settings of RequestMirror.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_mirror: Option<RequestMirror>,
}

/// Header changes.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct HeaderModifier {
    /// Headers set, replacing any value.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub set: Vec<HeaderValue>,
    /// Headers added.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub add: Vec<HeaderValue>,
    /// Header names removed.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub remove: Vec<String>,
}

/// A redirect answer.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RequestRedirect {
    /// `http` or `https`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scheme: Option<String>,
    /// New host.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hostname: Option<String>,
    /// New port.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<u16>,
    /// New path.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    /// 301, 302, 303, 307 or 308 (default 302).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status_code: Option<u16>,
}

/// A rewrite before forwarding.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct UrlRewrite {
    /// New Host header.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hostname: Option<String>,
    /// Replace the whole path with this.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replace_full_path: Option<String>,
    /// Replace the matched PathPrefix with this.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replace_prefix_match: Option<String>,
}

/// A traffic mirror.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RequestMirror {
    /// Where copies go.
    pub backend_ref: BackendRef,
    /// Share of requests copied (default 100).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub percentage: Option<f64>,
}

impl Validate for HttpRouteRule {
    fn validate(&self, v: &mut Validator) {
        v.each("matches", &self.matches, |v, m| m.validate(v));
        v.field("default", |v| self.default.validate(v));
        let prefix_match =
            !self.matches.is_empty() && self.matches.iter().all(|m| m.path.as_ref().is_some_and(|p| p.kind == PathMatchType::PathPrefix));
        let uses_prefix_rewrite =
            self.default.filters.iter().any(|f| f.url_rewrite.as_ref().is_some_and(|r| r.replace_prefix_match.is_some()));
        if uses_prefix_rewrite && !prefix_match {
            v.field("default", |v| v.error_at("filters", "replacePrefixMatch needs every match of the rule to have a PathPrefix path"));
        }
    }
}

impl Validate for HttpMatch {
    fn validate(&self, v: &mut Validator) {
        if let Some(p) = &self.path {
            v.field("path", |v| match p.kind {
                PathMatchType::Exact | PathMatchType::PathPrefix => {
                    if !p.value.starts_with('/') {
                        v.error_at("value", format!("{:?} must start with '/'", p.value));
                    }
                }
                PathMatchType::RegularExpression => check_regex(v, "value", &p.value),
            });
        }
        if let Some(m) = &self.method {
            const METHODS: &[&str] = &["GET", "HEAD", "POST", "PUT", "DELETE", "CONNECT", "OPTIONS", "TRACE", "PATCH"];
            if !METHODS.contains(&m.as_str()) {
                v.error_at("method", format!("{m:?} is not an HTTP method; expected one of {}", METHODS.join(", ")));
            }
        }
        v.each("headers", &self.headers, |v, h| {
            check_header_name(v, &h.name);
            let needs_value = matches!(h.kind, HeaderMatchType::Exact | HeaderMatchType::Prefix | HeaderMatchType::RegularExpression);
            match (&h.value, needs_value) {
                (None, true) => v.error_at("value", format!("required when type is {:?}", h.kind)),
                (Some(_), false) => v.error_at("value", format!("not allowed when type is {:?}", h.kind)),
                (Some(val), true) if h.kind == HeaderMatchType::RegularExpression => check_regex(v, "value", val),
                _ => {}
            }
        });
        v.each("queryParams", &self.query_params, |v, q| {
            match q.kind {
                HeaderMatchType::Exact => {}
                HeaderMatchType::RegularExpression => check_regex(v, "value", &q.value),
                other => v.error_at("type", format!("{other:?} is not allowed here; expected Exact or RegularExpression")),
            }
            if q.name.is_empty() {
                v.error_at("name", "must not be empty");
            }
        });
    }
}

fn check_regex(v: &mut Validator, field: &'static str, re: &str) {
    if let Err(e) = regex::Regex::new(re) {
        v.error_at(field, format!("invalid regular expression: {e}"));
    }
}

impl Validate for HttpRouteConf {
    fn validate(&self, v: &mut Validator) {
        v.each("filters", &self.filters, |v, f| f.validate(v));
        if !self.backend_refs.is_empty() {
            check_backends(v, &self.backend_refs);
        }
    }
}

impl Validate for HttpFilter {
    fn validate(&self, v: &mut Validator) {
        use super::check_variant;
        use HttpFilterType::*;
        check_variant(
            v,
            "requestHeaderModifier",
            &self.request_header_modifier,
            self.kind == RequestHeaderModifier,
            "RequestHeaderModifier",
        );
        check_variant(
            v,
            "responseHeaderModifier",
            &self.response_header_modifier,
            self.kind == ResponseHeaderModifier,
            "ResponseHeaderModifier",
        );
        check_variant(v, "requestRedirect", &self.request_redirect, self.kind == RequestRedirect, "RequestRedirect");
        check_variant(v, "urlRewrite", &self.url_rewrite, self.kind == URLRewrite, "URLRewrite");
        check_variant(v, "requestMirror", &self.request_mirror, self.kind == RequestMirror, "RequestMirror");
        for (field, m) in
            [("requestHeaderModifier", &self.request_header_modifier), ("responseHeaderModifier", &self.response_header_modifier)]
        {
            if let Some(m) = m {
                v.field(field, |v| {
                    if m.set.is_empty() && m.add.is_empty() && m.remove.is_empty() {
                        v.error("needs set, add or remove");
                    }
                    v.each("set", &m.set, |v, h| h.validate(v));
                    v.each("add", &m.add, |v, h| h.validate(v));
                    v.each("remove", &m.remove, |v, name| {
                        let mut inner = Validator::default();
                        check_header_name(&mut inner, name);
                        if inner.finish().is_err() {
                            v.error(format!("{name:?} is not a valid HTTP header name"));
                        }
                    });
                });
            }
        }
        if let Some(r) = &self.request_redirect {
            v.field("requestRedirect", |v| {
                if let Some(s) = &r.scheme {
                    if s != "http" && s != "https" {
                        v.error_at("scheme", format!("{s:?} is not allowed; expected http or https"));
                    }
                }
                check_status(v, "statusCode", r.status_code);
                if let Some(code) = r.status_code {
                    if ![301, 302, 303, 307, 308].contains(&code) {
                        v.error_at("statusCode", format!("{code} is not a redirect; expected 301, 302, 303, 307 or 308"));
                    }
                }
                if let Some(p) = &r.path {
                    if !p.starts_with('/') {
                        v.error_at("path", format!("{p:?} must start with '/'"));
                    }
                }
            });
        }
        if let Some(r) = &self.url_rewrite {
            v.field("urlRewrite", |v| {
                if r.replace_full_path.is_some() && r.replace_prefix_match.is_some() {
                    v.error("replaceFullPath and replacePrefixMatch exclude each other");
                }
                if r.hostname.is_none() && r.replace_full_path.is_none() && r.replace_prefix_match.is_none() {
                    v.error("needs hostname, replaceFullPath or replacePrefixMatch");
                }
            });
        }
        if let Some(m) = &self.request_mirror {
            v.field("requestMirror", |v| {
                v.field("backendRef", |v| m.backend_ref.validate(v));
                check_percentage(v, "percentage", m.percentage);
            });
        }
    }
}

/// How specific a set of matches is, for ordering rules: Exact paths, then longer prefixes,
/// then regular expressions, then more header and query conditions.
pub fn match_specificity(m: &HttpMatch) -> (u8, usize, usize, bool) {
    let (kind_rank, len) = match &m.path {
        Some(p) => match p.kind {
            PathMatchType::Exact => (3, p.value.len()),
            PathMatchType::PathPrefix => (2, p.value.len()),
            PathMatchType::RegularExpression => (1, p.value.len()),
        },
        None => (0, 0),
    };
    (kind_rank, len, m.headers.len() + m.query_params.len(), m.method.is_some())
}
