//! MeshAccessLog: where each proxy writes a line per request or connection (`from` and `to`).

use serde::{Deserialize, Serialize};

use super::PolicyConf;
use crate::validate::{Validate, Validator};

/// The `default` of a MeshAccessLog item.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct AccessLogConf {
    /// Where the lines go.
    pub backends: Vec<AccessLogBackend>,
}

/// One destination for access logs: exactly one of `file`, `tcp`.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct AccessLogBackend {
    /// A file on the proxy's host (`/dev/stdout` works).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub file: Option<FileBackend>,
    /// A TCP collector, one line per entry.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tcp: Option<TcpBackend>,
}

/// A file destination.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct FileBackend {
    /// Absolute path.
    pub path: String,
    /// Line format (default: plain text with the standard fields).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub format: Option<LogFormat>,
}

/// A TCP destination.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct TcpBackend {
    /// `host:port` of the collector.
    pub address: String,
    /// Line format.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub format: Option<LogFormat>,
}

/// A line format: exactly one of `plain` (a template with `%FIELD%` placeholders) or `json`.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct LogFormat {
    /// A text template such as `%START_TIME% %SOURCE_SERVICE% %RESPONSE_CODE%`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub plain: Option<String>,
    /// JSON fields, each a key and a template.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub json: Option<Vec<JsonField>>,
}

/// One JSON field of a log line.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct JsonField {
    /// Field name.
    pub key: String,
    /// Template of its value.
    pub value: String,
}

/// The placeholders (`%NAME%`) a template may use, with what each holds.
pub const PLACEHOLDERS: &[(&str, &str)] = &[
    ("START_TIME", "when the request or connection started (RFC 3339, UTC)"),
    ("DIRECTION", "inbound or outbound"),
    ("MESH", "the mesh"),
    ("SOURCE_SERVICE", "the caller's service"),
    ("DESTINATION_SERVICE", "the called service"),
    ("SOURCE_ZONE", "the caller's zone (- on the inbound side, which does not know it)"),
    ("DESTINATION_ZONE", "the zone of the endpoint that answered (- when none did)"),
    ("PROTOCOL", "tcp, http, http2 or grpc"),
    ("METHOD", "the HTTP method (- for TCP)"),
    ("PATH", "the HTTP path and query (- for TCP)"),
    ("AUTHORITY", "the HTTP host (- for TCP)"),
    ("RESPONSE_CODE", "the HTTP status (0 for TCP)"),
    ("RESPONSE_FLAGS", "local when the sidecar answered itself, - otherwise"),
    ("RESPONSE_DURATION", "milliseconds until the response headers (HTTP)"),
    ("DURATION", "milliseconds until the response or the connection ended"),
    ("BYTES_RECEIVED", "body bytes from the caller (HTTP), or bytes from it (TCP)"),
    ("BYTES_SENT", "body bytes to the caller (HTTP), or bytes to it (TCP)"),
    ("UPSTREAM_HOST", "the address the sidecar sent to (- when none)"),
    ("TRACE_ID", "the trace id of the request's traceparent (or b3) header, - without one"),
];

/// The placeholders of `template` that are not known, if any (a `%` that opens no known
/// placeholder is one).
pub fn unknown_placeholders(template: &str) -> Vec<String> {
    let mut unknown = Vec::new();
    let mut rest = template;
    while let Some(open) = rest.find('%') {
        let after = &rest[open + 1..];
        let Some(close) = after.find('%') else {
            unknown.push(after.to_string());
            break;
        };
        let name = &after[..close];
        if !PLACEHOLDERS.iter().any(|(n, _)| *n == name) {
            unknown.push(name.to_string());
        }
        rest = &after[close + 1..];
    }
    unknown
}

/// The pattern a template matches when all its placeholders are known.
pub fn template_pattern() -> String {
    let names: Vec<&str> = PLACEHOLDERS.iter().map(|(n, _)| *n).collect();
    format!("^([^%]|%({})%)*$", names.join("|"))
}

fn check_template(v: &mut Validator, field: &'static str, template: &str) {
    let unknown = unknown_placeholders(template);
    if !unknown.is_empty() {
        let known: Vec<&str> = PLACEHOLDERS.iter().map(|(n, _)| *n).collect();
        v.error_at(field, format!("unknown placeholder %{}%: expected %NAME% with NAME one of {}", unknown[0], known.join(", ")));
    }
}

fn check_format(v: &mut Validator, f: &Option<LogFormat>) {
    if let Some(f) = f {
        v.field("format", |v| {
            if f.plain.is_some() == f.json.is_some() {
                v.error("needs exactly one of plain, json");
            }
            if let Some(plain) = &f.plain {
                check_template(v, "plain", plain);
            }
            if let Some(json) = &f.json {
                v.each("json", json, |v, field| check_template(v, "value", &field.value));
            }
        });
    }
}

impl Validate for AccessLogConf {
    fn validate(&self, v: &mut Validator) {
        if self.backends.is_empty() {
            v.error_at("backends", "needs at least one backend");
        }
        v.each("backends", &self.backends, |v, b| {
            if b.file.is_some() == b.tcp.is_some() {
                v.error("needs exactly one of file, tcp");
            }
            if let Some(file) = &b.file {
                v.field("file", |v| {
                    if !file.path.starts_with('/') {
                        v.error_at("path", format!("{:?} must be an absolute path", file.path));
                    }
                    check_format(v, &file.format);
                });
            }
            if let Some(tcp) = &b.tcp {
                v.field("tcp", |v| {
                    let ok = tcp.address.rsplit_once(':').is_some_and(|(h, p)| !h.is_empty() && p.parse::<u16>().is_ok_and(|p| p > 0));
                    if !ok {
                        v.error_at("address", format!("{:?} is not host:port", tcp.address));
                    }
                    check_format(v, &tcp.format);
                });
            }
        });
    }
}

impl PolicyConf for AccessLogConf {
    const FROM: bool = true;
    const TO: bool = true;
}
