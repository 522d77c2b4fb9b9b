//! REST client of the global control plane (HTTPS, or plain HTTP to a global started with
//! `--api-plaintext`; reqwest with rustls).
//!
//! In: [`Settings`] (server URL, token source, CA file) and API paths. An https:// server must
//! present a certificate that chains to the CA file, for the URL's host or, for the certificate
//! strait-global issues itself, for the name `strait-global`; without a CA file nothing is
//! trusted. Out: JSON values as the server
//! returned them, the `strait-result` of PUTs, and [`ClientError`]s written for humans: an
//! unreachable server names its address, 401/403 say how to pass the token, and API errors
//! carry their message and each `field: message` detail.

use std::fmt;
use std::time::Duration;

use reqwest::{Method, StatusCode};
use serde::Deserialize;
use serde_json::Value;

use crate::config::{ConfigError, Settings, TokenSource};

const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
const REQUEST_TIMEOUT: Duration = Duration::from_secs(60);

/// One bad field, as the API reports it.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct Detail {
    /// Path of the field, such as `spec.to[0].default.idleTimeout`.
    #[serde(default)]
    pub field: String,
    /// What is wrong.
    #[serde(default)]
    pub message: String,
}

/// The JSON error body of the API.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct ApiErrorBody {
    /// Stable code, such as `invalid_resource` or `not_found`.
    #[serde(default)]
    pub code: String,
    /// For humans.
    #[serde(default)]
    pub message: String,
    /// Per-field problems.
    #[serde(default)]
    pub details: Vec<Detail>,
}

/// Why a request failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// No connection could be made.
    #[error("cannot reach the Strait control plane at {server}: {reason} (is strait-global running? set --server or STRAIT_SERVER)")]
    Unreachable {
        /// The base URL.
        server: String,
        /// Short cause, such as `connection refused`.
        reason: String,
    },
    /// The connection broke or the answer was not what the API sends.
    #[error("talking to the Strait control plane at {server}: {reason}")]
    Transport {
        /// The base URL.
        server: String,
        /// What happened.
        reason: String,
    },
    /// A write without a token (401).
    #[error(
        "the control plane at {server} needs the admin token for this: pass --token or --token-file (or set STRAIT_TOKEN / \
         STRAIT_TOKEN_FILE), or save it once with `straitctl config set --token-file FILE`; strait-global keeps it in \
         <data-dir>/admin-token (by default ~/.local/share/strait/global/admin-token)"
    )]
    Unauthorized {
        /// The base URL.
        server: String,
    },
    /// A write with a token that is not the admin token (403).
    #[error(
        "the control plane at {server} refused {token}: it is not the admin token of this server; pass the right one with \
         --token or --token-file (STRAIT_TOKEN / STRAIT_TOKEN_FILE) or fix it with `straitctl config set`"
    )]
    Forbidden {
        /// The base URL.
        server: String,
        /// Where the token came from.
        token: String,
    },
    /// Any other error answer of the API.
    #[error("{}", format_api_error(.body))]
    Api {
        /// HTTP status.
        status: StatusCode,
        /// The error body.
        body: ApiErrorBody,
    },
    /// The token could not be read.
    #[error(transparent)]
    Token(#[from] ConfigError),
    /// The server's certificate does not verify with the CA file.
    #[error(
        "the certificate of {server} does not verify with the CA in {}: {reason}; pass the CA of this server with --ca-file \
         (strait-global writes it as api-ca.pem next to its admin token)",
        .ca.display()
    )]
    Untrusted {
        /// The base URL.
        server: String,
        /// The CA file used.
        ca: std::path::PathBuf,
        /// What failed.
        reason: String,
    },
    /// An https:// server, and no CA to verify it with.
    #[error(
        "{server} serves HTTPS and straitctl has no CA to verify it: pass --ca-file (or STRAIT_CA_FILE), or save it once with \
         `straitctl config set --ca-file FILE`; strait-global writes it as api-ca.pem next to its admin token"
    )]
    NoCa {
        /// The base URL.
        server: String,
    },
    /// The CA file is unusable.
    #[error("CA file {path}: {reason}")]
    BadCa {
        /// The file.
        path: std::path::PathBuf,
        /// What is wrong.
        reason: String,
    },
}

/// rustls settings that trust only the certificates of `ca_file`.
fn tls_config(ca_file: &std::path::Path) -> Result<rustls::ClientConfig, ClientError> {
    let bad = |reason: String| ClientError::BadCa { path: ca_file.to_path_buf(), reason };
    let pem = std::fs::read(ca_file).map_err(|e| bad(e.to_string()))?;
    strait_pki::api_client::global_api_client_config(&pem).map_err(bad)
}

impl ClientError {
    /// Whether the server said the thing does not exist.
    pub fn is_not_found(&self) -> bool {
        matches!(self, ClientError::Api { status, .. } if *status == StatusCode::NOT_FOUND)
    }

    /// Whether the server reported a version conflict.
    pub fn is_conflict(&self) -> bool {
        matches!(self, ClientError::Api { status, .. } if *status == StatusCode::CONFLICT)
    }
}

/// The message, then each detail on its own line; details the message already spells out
/// (`x is invalid: a: b; c: d`) are not repeated in it.
pub fn format_api_error(body: &ApiErrorBody) -> String {
    if body.details.is_empty() {
        return body.message.clone();
    }
    let joined = body.details.iter().map(detail_line).collect::<Vec<_>>().join("; ");
    let head = body.message.strip_suffix(&joined).map(|h| h.trim_end().trim_end_matches(':')).unwrap_or(&body.message);
    let mut out = head.to_string();
    for d in &body.details {
        out.push_str("\n  ");
        out.push_str(&detail_line(d));
    }
    out
}

fn detail_line(d: &Detail) -> String {
    if d.field.is_empty() {
        d.message.clone()
    } else {
        format!("{}: {}", d.field, d.message)
    }
}

/// What a PUT did, from the `strait-result` header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PutResult {
    /// The resource is new.
    Created,
    /// The resource changed.
    Configured,
    /// The resource was already so.
    Unchanged,
}

impl fmt::Display for PutResult {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            PutResult::Created => "created",
            PutResult::Configured => "configured",
            PutResult::Unchanged => "unchanged",
        })
    }
}

/// A client of one control plane.
pub struct Client {
    http: reqwest::Client,
    server: String,
    token: Option<TokenSource>,
    ca_file: Option<std::path::PathBuf>,
}

impl Client {
    /// A client for the settings in effect.
    pub fn new(settings: &Settings) -> Result<Client, ClientError> {
        let mut builder = reqwest::Client::builder()
            .connect_timeout(CONNECT_TIMEOUT)
            .timeout(REQUEST_TIMEOUT)
            .user_agent(concat!("straitctl/", env!("CARGO_PKG_VERSION")));
        if settings.server.starts_with("https://") {
            let Some(ca_file) = &settings.ca_file else { return Err(ClientError::NoCa { server: settings.server.clone() }) };
            builder = builder.use_preconfigured_tls(tls_config(ca_file)?);
        }
        let http = builder.build().map_err(|e| ClientError::Transport { server: settings.server.clone(), reason: chain(&e) })?;
        Ok(Client { http, server: settings.server.clone(), token: settings.token.clone(), ca_file: settings.ca_file.clone() })
    }

    /// The base URL.
    pub fn server(&self) -> &str {
        &self.server
    }

    /// GET `path` and return its JSON.
    pub async fn get(&self, path: &str) -> Result<Value, ClientError> {
        let resp = self.send(Method::GET, path, None).await?;
        self.json(resp).await
    }

    /// PUT `body` at `path`; returns what happened and the stored resource.
    pub async fn put(&self, path: &str, body: &Value) -> Result<(PutResult, Value), ClientError> {
        let resp = self.send(Method::PUT, path, Some(body)).await?;
        let result = match resp.headers().get("strait-result").and_then(|v| v.to_str().ok()) {
            Some("created") => PutResult::Created,
            Some("unchanged") => PutResult::Unchanged,
            Some(_) => PutResult::Configured,
            None if resp.status() == StatusCode::CREATED => PutResult::Created,
            None => PutResult::Configured,
        };
        Ok((result, self.json(resp).await?))
    }

    /// POST to `path` (no body); returns the JSON answer.
    pub async fn post(&self, path: &str) -> Result<Value, ClientError> {
        let resp = self.send(Method::POST, path, None).await?;
        self.json(resp).await
    }

    /// DELETE `path`; returns the deleted resource.
    pub async fn delete(&self, path: &str) -> Result<Value, ClientError> {
        let resp = self.send(Method::DELETE, path, None).await?;
        self.json(resp).await
    }

    async fn send(&self, method: Method, path: &str, body: Option<&Value>) -> Result<reqwest::Response, ClientError> {
        let write = method != Method::GET;
        let mut req = self.http.request(method, format!("{}{path}", self.server));
        if write {
            if let Some(source) = &self.token {
                req = req.bearer_auth(source.load()?);
            }
        }
        if let Some(body) = body {
            req = req.json(body);
        }
        let resp = req.send().await.map_err(|e| self.transport_error(&e))?;
        let status = resp.status();
        if status.is_success() {
            return Ok(resp);
        }
        Err(match status {
            StatusCode::UNAUTHORIZED => ClientError::Unauthorized { server: self.server.clone() },
            StatusCode::FORBIDDEN => ClientError::Forbidden {
                server: self.server.clone(),
                token: self.token.as_ref().map(TokenSource::describe).unwrap_or_else(|| "the request".into()),
            },
            _ => {
                let text = resp.text().await.unwrap_or_default();
                let body = serde_json::from_str::<ApiErrorBody>(&text).unwrap_or_else(|_| ApiErrorBody {
                    code: String::new(),
                    message: format!("{status}: {}", text.trim()),
                    details: Vec::new(),
                });
                ClientError::Api { status, body }
            }
        })
    }

    async fn json(&self, resp: reqwest::Response) -> Result<Value, ClientError> {
        let bytes = resp.bytes().await.map_err(|e| self.transport_error(&e))?;
        serde_json::from_slice(&bytes).map_err(|e| ClientError::Transport {
            server: self.server.clone(),
            reason: format!("the answer is not JSON ({e}); is this a Strait control plane?"),
        })
    }

    fn transport_error(&self, e: &reqwest::Error) -> ClientError {
        let server = self.server.clone();
        let reason = chain(e);
        if reason.contains("certificate") {
            return ClientError::Untrusted { server, ca: self.ca_file.clone().unwrap_or_default(), reason };
        }
        if e.is_connect() {
            ClientError::Unreachable { server, reason: connect_reason(e) }
        } else if e.is_timeout() {
            ClientError::Unreachable { server, reason: format!("no answer within {}s", REQUEST_TIMEOUT.as_secs()) }
        } else {
            ClientError::Transport { server, reason: chain(e) }
        }
    }
}

/// The short cause of a failed connection, from the innermost error.
fn connect_reason(e: &(dyn std::error::Error + 'static)) -> String {
    let mut current: Option<&(dyn std::error::Error + 'static)> = Some(e);
    let mut innermost = e.to_string();
    while let Some(err) = current {
        if let Some(io) = err.downcast_ref::<std::io::Error>() {
            return match io.kind() {
                std::io::ErrorKind::ConnectionRefused => "connection refused".into(),
                std::io::ErrorKind::TimedOut => "connection timed out".into(),
                _ => io.to_string(),
            };
        }
        innermost = err.to_string();
        current = err.source();
    }
    innermost
}

fn chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut parts = vec![e.to_string()];
    let mut current = e.source();
    while let Some(err) = current {
        let s = err.to_string();
        if !parts.last().is_some_and(|last| last.contains(&s)) {
            parts.push(s);
        }
        current = err.source();
    }
    parts.join(": ")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn body(message: &str, details: &[(&str, &str)]) -> ApiErrorBody {
        ApiErrorBody {
            code: "invalid_resource".into(),
            message: message.into(),
            details: details.iter().map(|(f, m)| Detail { field: f.to_string(), message: m.to_string() }).collect(),
        }
    }

    #[test]
    fn api_errors_show_each_detail_once() {
        let b = body("meshtimeout/t is invalid: spec.a: bad; spec.b: worse", &[("spec.a", "bad"), ("spec.b", "worse")]);
        assert_eq!(format_api_error(&b), "meshtimeout/t is invalid\n  spec.a: bad\n  spec.b: worse");
        let b = body("conflict on X", &[("version", "expected 3")]);
        assert_eq!(format_api_error(&b), "conflict on X\n  version: expected 3");
        assert_eq!(format_api_error(&body("gone", &[])), "gone");
    }

    #[test]
    fn connection_causes_are_short() {
        let refused = std::io::Error::from(std::io::ErrorKind::ConnectionRefused);
        assert_eq!(connect_reason(&refused), "connection refused");
    }

    #[test]
    fn unreachable_names_the_address_and_the_fix() {
        let e = ClientError::Unreachable { server: "http://127.0.0.1:7680".into(), reason: "connection refused".into() };
        assert_eq!(
            e.to_string(),
            "cannot reach the Strait control plane at http://127.0.0.1:7680: connection refused (is strait-global running? set --server or STRAIT_SERVER)"
        );
    }
}
