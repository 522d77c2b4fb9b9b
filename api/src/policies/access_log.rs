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

fn check_format(v: &mut Validator, f: &Option<LogFormat>) {
    if let Some(f) = f {
        v.field("format", |v| {
            if f.plain.is_some() == f.json.is_some() {
                v.error("needs exactly one of plain, json");
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
