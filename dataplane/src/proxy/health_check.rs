//! MeshHealthCheck: the sidecar checks the endpoints of its destinations itself, so that an
//! endpoint whose application is unhealthy leaves the pool before a request fails on it, and
//! comes back once it passes again.
//!
//! In: the destination table (each destination's merged MeshHealthCheck) and the data path's
//! identities and pools. Out: each endpoint's active health ([`super::endpoint::Health`]),
//! which picks respect. Checks go to the peer sidecar over mTLS, as requests do, so they see
//! what callers would: a gRPC destination gets the standard `grpc.health.v1.Health/Check`
//! call (healthy: `SERVING`) unless its `grpc` check is disabled; an HTTP destination gets
//! `GET <path>` on the pooled HTTP/2 connection
//! (healthy: one of `expectedStatuses`, 200-399 by default); a TCP destination (or an HTTP one
//! whose `http` check is disabled) gets a tunnel that must reach the application and, with
//! `send`/`receive`, answer the bytes expected. One timer task looks every 100 ms at the
//! checks that are due; each endpoint's checks are spaced by `interval`, with up to 10% of
//! jitter, so that sidecars started together do not check in step.

use std::sync::Arc;
use std::time::Duration;

use http::{Request, Version};
use rand::Rng;
use strait_api::policies::health_check::HealthCheckConf;
use strait_proxy_core::tls::ALPN_TCP;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::data_path::DataPath;
use super::destinations::{Destination, Protocol};
use super::endpoint::{now_ms, Endpoint};
use super::http::body::Counted;

/// How often the timer looks for due checks.
const TICK: Duration = Duration::from_millis(100);
/// How long a TCP check waits for the peer to close the tunnel (it could not reach the
/// application) when it has nothing to send.
const TCP_SETTLE: Duration = Duration::from_millis(300);

/// What a destination's MeshHealthCheck asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HealthCheckPolicy {
    interval: Duration,
    timeout: Duration,
    unhealthy: u32,
    healthy: u32,
    check: Check,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Check {
    Http {
        path: String,
        expected: Vec<u16>,
    },
    Tcp {
        send: Option<Vec<u8>>,
        receive: Vec<Vec<u8>>,
    },
    /// `grpc.health.v1.Health/Check` about `service`, addressed to `authority`.
    Grpc {
        service: String,
        authority: Option<String>,
    },
}

impl HealthCheckPolicy {
    /// The checks a merged MeshHealthCheck conf asks for on a destination speaking `protocol`
    /// (Kuma's defaults: every 1 m, 15 s timeout, 5 failures out, 1 pass back); `None` without
    /// a conf, or with the check of its protocol disabled.
    pub fn from_conf(conf: Option<&HealthCheckConf>, protocol: Protocol) -> Option<HealthCheckPolicy> {
        let conf = conf?;
        let http = conf.http.as_ref().filter(|h| h.disabled != Some(true));
        let tcp = conf.tcp.as_ref().filter(|t| t.disabled != Some(true));
        let grpc = conf.grpc.as_ref().filter(|g| g.disabled != Some(true));
        let grpc_disabled = conf.grpc.as_ref().is_some_and(|g| g.disabled == Some(true));
        let check = match (protocol.is_http(), conf.http.as_ref().is_some_and(|h| h.disabled == Some(true))) {
            _ if protocol == Protocol::Grpc && !grpc_disabled => Check::Grpc {
                service: grpc.and_then(|g| g.service_name.clone()).unwrap_or_default(),
                authority: grpc.and_then(|g| g.authority.clone()),
            },
            (true, false) => Check::Http {
                path: http.and_then(|h| h.path.clone()).unwrap_or_else(|| "/".into()),
                expected: http.and_then(|h| h.expected_statuses.clone()).unwrap_or_default(),
            },
            _ if conf.tcp.as_ref().is_some_and(|t| t.disabled == Some(true)) => return None,
            _ => Check::Tcp {
                send: tcp.and_then(|t| t.send.clone()).map(String::into_bytes),
                receive: tcp.and_then(|t| t.receive.clone()).unwrap_or_default().into_iter().map(String::into_bytes).collect(),
            },
        };
        Some(HealthCheckPolicy {
            interval: conf.interval.map_or(Duration::from_secs(60), |d| d.get()),
            timeout: conf.timeout.map_or(Duration::from_secs(15), |d| d.get()),
            unhealthy: conf.unhealthy_threshold.unwrap_or(5),
            healthy: conf.healthy_threshold.unwrap_or(1),
            check,
        })
    }
}

/// Starts the checker of `path`; it ends with the drain.
pub fn spawn(path: &Arc<DataPath>) {
    let task_path = path.clone();
    path.tasks.spawn(async move {
        let path = task_path;
        loop {
            tokio::select! {
                () = path.drain.signaled() => return,
                () = tokio::time::sleep(TICK) => {}
            }
            let table = path.table.load_full();
            let now = now_ms();
            for destination in table.destinations() {
                let Some(policy) = &destination.health_check else {
                    destination.endpoints().for_each(|e| e.health.unchecked());
                    continue;
                };
                for endpoint in destination.endpoints() {
                    let jitter = policy.interval.mul_f64(rand::thread_rng().gen_range(0.9..=1.1));
                    if !endpoint.health.claim_check(now, jitter) {
                        continue;
                    }
                    let (path, destination, endpoint, policy) = (path.clone(), destination.clone(), endpoint.clone(), policy.clone());
                    path.tasks.clone().spawn(async move {
                        // However the check ends (a drain included), the next one may run.
                        let _claim = Claim(&endpoint);
                        let checked = tokio::time::timeout(policy.timeout, probe(&path, &destination, &endpoint, &policy));
                        let result = tokio::select! {
                            () = path.drain.signaled() => return,
                            checked = checked => match checked {
                                Ok(result) => result,
                                Err(_) => Err(format!("no answer within {:?}", policy.timeout)),
                            },
                        };
                        let passed = result.is_ok();
                        match endpoint.health.checked(passed, policy.unhealthy, policy.healthy) {
                            Some(true) => tracing::info!(service = &*destination.service, endpoint = %endpoint.address, "active health check passed: the endpoint is back in the pool"),
                            Some(false) => tracing::warn!(
                                service = &*destination.service,
                                endpoint = %endpoint.address,
                                reason = result.err().unwrap_or_default(),
                                failures = policy.unhealthy,
                                "active health check failed: the endpoint leaves the pool"
                            ),
                            None => {}
                        }
                    });
                }
            }
        }
    });
}

/// Releases an endpoint's claim on its next check when the check ends.
struct Claim<'a>(&'a Endpoint);

impl Drop for Claim<'_> {
    fn drop(&mut self) {
        self.0.health.release_check();
    }
}

/// One check of `endpoint`: `Ok` if it passed, else why not.
async fn probe(path: &DataPath, destination: &Destination, endpoint: &Arc<Endpoint>, policy: &HealthCheckPolicy) -> Result<(), String> {
    match &policy.check {
        Check::Http { path: uri_path, expected } => {
            let connector = super::http::outbound::connector(path, destination, endpoint);
            let mut sender = endpoint.pool.sender(endpoint.address, &connector).await.map_err(|e| e.to_string())?;
            let mut request = Request::new(Counted::empty(destination.metrics.request_bytes.clone()));
            *request.uri_mut() = format!("http://{}{uri_path}", destination.service).parse().map_err(|e| format!("{e}"))?;
            *request.version_mut() = Version::HTTP_2;
            sender.ready().await.map_err(|e| e.to_string())?;
            let response = sender.send_request(request).await.map_err(|e| e.to_string())?;
            let status = response.status().as_u16();
            let healthy = if expected.is_empty() { (200..400).contains(&status) } else { expected.contains(&status) };
            if healthy {
                Ok(())
            } else {
                Err(format!("GET {uri_path} answered {status}"))
            }
        }
        Check::Grpc { service, authority } => {
            let connector = super::http::outbound::connector(path, destination, endpoint);
            let mut sender = endpoint.pool.sender(endpoint.address, &connector).await.map_err(|e| e.to_string())?;
            let body = Counted::full(grpc_health_request(service), destination.metrics.request_bytes.clone());
            let mut request = Request::new(body);
            *request.method_mut() = http::Method::POST;
            let authority = authority.as_deref().unwrap_or(&destination.service);
            *request.uri_mut() = format!("http://{authority}/grpc.health.v1.Health/Check").parse().map_err(|e| format!("{e}"))?;
            *request.version_mut() = Version::HTTP_2;
            let headers = request.headers_mut();
            headers.insert(http::header::CONTENT_TYPE, http::HeaderValue::from_static("application/grpc"));
            headers.insert(http::header::TE, http::HeaderValue::from_static("trailers"));
            sender.ready().await.map_err(|e| e.to_string())?;
            let response = sender.send_request(request).await.map_err(|e| e.to_string())?;
            if response.status() != http::StatusCode::OK {
                return Err(format!("the health check call answered HTTP {}", response.status()));
            }
            let early = grpc_status(response.headers());
            let collected = http_body_util::BodyExt::collect(response.into_body()).await.map_err(|e| e.to_string())?;
            let status = early.or_else(|| collected.trailers().and_then(grpc_status));
            match status {
                Some(0) => {}
                Some(code) => return Err(format!("the health check call failed with grpc-status {code}")),
                None => return Err("the health check call ended without a grpc-status".into()),
            }
            match serving_status(&collected.to_bytes()) {
                Some(1) => Ok(()),
                Some(status) => Err(format!("the server answered {} for {service:?}", serving_name(status))),
                None => Err("the health check answer is not a HealthCheckResponse".into()),
            }
        }
        Check::Tcp { send, receive } => {
            let config = path.identities.current().client_config(&destination.expected, ALPN_TCP);
            let mut tunnel =
                strait_proxy_core::tunnel::outbound::connect(endpoint.address, config, endpoint.sni.clone(), destination.timeouts.connect)
                    .await
                    .map_err(|e| e.to_string())?;
            let mut buf = vec![0u8; 4096];
            let Some(send) = send else {
                // The peer closes the tunnel at once when it cannot reach the application.
                return match tokio::time::timeout(TCP_SETTLE.min(policy.timeout / 2), tunnel.read(&mut buf)).await {
                    Ok(Ok(0)) | Ok(Err(_)) => Err("the peer closed the tunnel: the application is not reachable".into()),
                    Ok(Ok(_)) | Err(_) => Ok(()),
                };
            };
            tunnel.write_all(send).await.map_err(|e| e.to_string())?;
            let mut got = Vec::new();
            loop {
                if receive.iter().all(|r| r.is_empty() || got.windows(r.len()).any(|w| w == r.as_slice())) {
                    return Ok(());
                }
                match tunnel.read(&mut buf).await {
                    Ok(0) | Err(_) => return Err("the tunnel closed before the expected answer".into()),
                    Ok(n) => got.extend_from_slice(&buf[..n]),
                }
            }
        }
    }
}

/// The framed `HealthCheckRequest { service }` of a gRPC health check.
fn grpc_health_request(service: &str) -> bytes::Bytes {
    let mut message = Vec::with_capacity(service.len() + 6);
    if !service.is_empty() {
        // Field 1, length-delimited.
        message.push(0x0a);
        let mut len = service.len();
        while len >= 0x80 {
            message.push((len as u8) | 0x80);
            len >>= 7;
        }
        message.push(len as u8);
        message.extend_from_slice(service.as_bytes());
    }
    let mut framed = Vec::with_capacity(message.len() + 5);
    framed.push(0);
    framed.extend_from_slice(&(message.len() as u32).to_be_bytes());
    framed.extend_from_slice(&message);
    framed.into()
}

/// The `grpc-status` in `headers`, if any.
fn grpc_status(headers: &http::HeaderMap) -> Option<u32> {
    headers.get("grpc-status")?.to_str().ok()?.trim().parse().ok()
}

/// The `status` of the framed `HealthCheckResponse` in `body` (0 when the field is absent, as
/// protobuf leaves out defaults); `None` if it is not one.
fn serving_status(body: &[u8]) -> Option<u64> {
    let (header, message) = (body.get(..5)?, body.get(5..)?);
    let len = u32::from_be_bytes([header[1], header[2], header[3], header[4]]) as usize;
    let mut message = message.get(..len)?;
    if header[0] != 0 {
        return None;
    }
    let mut status = 0;
    while let Some((&tag, rest)) = message.split_first() {
        let (value, rest) = varint(rest)?;
        match (tag >> 3, tag & 7) {
            (1, 0) => status = value,
            (_, 0) => {}
            // Another length-delimited field: skip it.
            (_, 2) => {
                let skip = usize::try_from(value).ok()?;
                message = rest.get(skip..)?;
                continue;
            }
            _ => return None,
        }
        message = rest;
    }
    Some(status)
}

fn varint(bytes: &[u8]) -> Option<(u64, &[u8])> {
    let mut value = 0u64;
    for (i, b) in bytes.iter().enumerate().take(10) {
        value |= u64::from(b & 0x7f) << (7 * i);
        if b & 0x80 == 0 {
            return Some((value, &bytes[i + 1..]));
        }
    }
    None
}

fn serving_name(status: u64) -> &'static str {
    match status {
        0 => "UNKNOWN",
        2 => "NOT_SERVING",
        3 => "SERVICE_UNKNOWN",
        _ => "a status other than SERVING",
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn grpc_health_messages_are_framed_and_read() {
        assert_eq!(&grpc_health_request("")[..], &[0, 0, 0, 0, 0]);
        assert_eq!(&grpc_health_request("api")[..], &[0, 0, 0, 0, 5, 0x0a, 3, b'a', b'p', b'i']);
        let long = "s".repeat(200);
        assert_eq!(&grpc_health_request(&long)[4..8], &[203, 0x0a, 0xc8, 0x01], "a two-byte length");
        assert_eq!(serving_status(&[0, 0, 0, 0, 2, 0x08, 1]), Some(1));
        assert_eq!(serving_status(&[0, 0, 0, 0, 0]), Some(0), "UNKNOWN is left out");
        assert_eq!(serving_status(&[0, 0, 0, 0, 2, 0x08, 2]), Some(2));
        assert_eq!(serving_status(&[0, 0, 0, 0, 5, 0x12, 1, b'x', 0x08, 1]), Some(1), "other fields are skipped");
        assert_eq!(serving_status(&[1, 0, 0, 0, 2, 0x08, 1]), None, "a compressed message");
        assert_eq!(serving_status(&[0, 0, 0]), None);
        let conf: HealthCheckConf = serde_json::from_value(json!({"grpc": {"serviceName": "api"}})).unwrap();
        let policy = HealthCheckPolicy::from_conf(Some(&conf), Protocol::Grpc).unwrap();
        assert_eq!(policy.check, Check::Grpc { service: "api".into(), authority: None });
        let off: HealthCheckConf = serde_json::from_value(json!({"grpc": {"disabled": true}, "http": {"disabled": true}})).unwrap();
        assert!(matches!(HealthCheckPolicy::from_conf(Some(&off), Protocol::Grpc).unwrap().check, Check::Tcp { .. }));
    }

    #[test]
    fn confs_pick_the_check_of_the_destination_protocol() {
        let conf = |v: serde_json::Value| -> HealthCheckConf { serde_json::from_value(v).unwrap() };
        let http =
            HealthCheckPolicy::from_conf(Some(&conf(json!({"interval": "2s", "http": {"path": "/healthz"}}))), Protocol::Http).unwrap();
        assert_eq!(http.interval, Duration::from_secs(2));
        assert_eq!((http.timeout, http.unhealthy, http.healthy), (Duration::from_secs(15), 5, 1));
        assert_eq!(http.check, Check::Http { path: "/healthz".into(), expected: vec![] });
        let tcp = HealthCheckPolicy::from_conf(Some(&conf(json!({"tcp": {"send": "ping", "receive": ["pong"]}}))), Protocol::Tcp).unwrap();
        assert_eq!(tcp.check, Check::Tcp { send: Some(b"ping".to_vec()), receive: vec![b"pong".to_vec()] });
        let http_off = conf(json!({"http": {"disabled": true}}));
        assert!(matches!(HealthCheckPolicy::from_conf(Some(&http_off), Protocol::Http).unwrap().check, Check::Tcp { .. }));
        let both_off = conf(json!({"http": {"disabled": true}, "tcp": {"disabled": true}}));
        assert_eq!(HealthCheckPolicy::from_conf(Some(&both_off), Protocol::Http), None);
        assert_eq!(HealthCheckPolicy::from_conf(None, Protocol::Http), None);
    }
}
