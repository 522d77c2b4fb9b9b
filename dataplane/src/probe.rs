//! The sidecar's probes of its own application: is anything answering behind each inbound?
//! The zone learns the answers over DPS and takes an inbound that is not ready out of every
//! pool, in its zone and in the inventory other zones balance over, so a zone whose endpoints
//! all fail their probes stops receiving traffic from the others.
//!
//! In: the registered Dataplane (each inbound's application address and `serviceProbe`).
//! Out: a watch of each inbound's readiness (by inbound port, with the last failure), changed
//! only when an inbound crosses its threshold. A probe is a TCP connect to the application, or
//! with `http`, an HTTP/1.1 `GET` that must answer 2xx or 3xx. Probes are spaced by their
//! interval with up to 10% of jitter, so that sidecars started together do not probe in step.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use rand::Rng;
use strait_api::dataplane::{Inbound, ServiceProbe};
use strait_api::{Resource, Spec};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// An inbound's readiness: `Ok` or why not.
pub type Readiness = Result<(), String>;

/// Every inbound's readiness, by inbound port.
pub type Readinesses = BTreeMap<u16, Readiness>;

/// What one inbound's probe does.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Probe {
    target: SocketAddr,
    interval: Duration,
    timeout: Duration,
    unhealthy: u32,
    healthy: u32,
    http_path: Option<String>,
}

impl Probe {
    /// The probe of `inbound` (its defaults: every 5 s, 1 s timeout, out after 2 failures,
    /// back after 1 pass); `None` when it is disabled.
    fn of(inbound: &Inbound) -> Option<Probe> {
        let default = ServiceProbe::default();
        let conf = inbound.service_probe.as_ref().unwrap_or(&default);
        if conf.disabled == Some(true) {
            return None;
        }
        let ip: IpAddr = inbound.service_address.as_deref().and_then(|a| a.parse().ok()).unwrap_or(IpAddr::from([127, 0, 0, 1]));
        Some(Probe {
            target: SocketAddr::new(ip, inbound.service_port.unwrap_or(inbound.port)),
            interval: conf.interval.map_or(Duration::from_secs(5), |d| d.get()),
            timeout: conf.timeout.map_or(Duration::from_secs(1), |d| d.get()),
            unhealthy: conf.unhealthy_threshold.unwrap_or(2).max(1),
            healthy: conf.healthy_threshold.unwrap_or(1).max(1),
            http_path: conf.http.as_ref().map(|h| h.path.clone()),
        })
    }

    /// One probe: `Ok` if the application answered as it should.
    async fn run(&self) -> Readiness {
        match tokio::time::timeout(self.timeout, self.attempt()).await {
            Ok(result) => result,
            Err(_) => Err(format!("no answer from {} within {:?}", self.target, self.timeout)),
        }
    }

    async fn attempt(&self) -> Readiness {
        let mut stream = TcpStream::connect(self.target).await.map_err(|e| format!("cannot connect to {}: {e}", self.target))?;
        let Some(path) = &self.http_path else { return Ok(()) };
        let request = format!("GET {path} HTTP/1.1\r\nHost: {}\r\nUser-Agent: strait-probe\r\nConnection: close\r\n\r\n", self.target);
        stream.write_all(request.as_bytes()).await.map_err(|e| format!("GET {path}: {e}"))?;
        let mut head = Vec::with_capacity(64);
        let mut buf = [0u8; 64];
        while !head.windows(2).any(|w| w == b"\r\n") && head.len() < 1024 {
            match stream.read(&mut buf).await {
                Ok(0) => break,
                Ok(n) => head.extend_from_slice(&buf[..n]),
                Err(e) => return Err(format!("GET {path}: {e}")),
            }
        }
        let line = String::from_utf8_lossy(&head);
        let status = line.split_whitespace().nth(1).and_then(|s| s.parse::<u16>().ok());
        match status {
            Some(s) if (200..400).contains(&s) => Ok(()),
            Some(s) => Err(format!("GET {path} answered {s}")),
            None => Err(format!("GET {path}: not an HTTP answer")),
        }
    }
}

/// The readiness each inbound of `dataplane` is registered with.
pub fn registered(dataplane: &Resource) -> Readinesses {
    let Spec::Dataplane(spec) = &dataplane.spec else { return Readinesses::new() };
    spec.networking
        .inbound
        .iter()
        .map(|i| (i.port, if i.is_ready() { Ok(()) } else { Err("registered as not ready".to_string()) }))
        .collect()
}

/// Starts a probe per inbound of `dataplane` (its application addresses as registered); they
/// end with `cancel`.
pub fn start(dataplane: &Resource, cancel: &CancellationToken, tasks: &TaskTracker) -> watch::Receiver<Readinesses> {
    let (tx, rx) = watch::channel(registered(dataplane));
    let Spec::Dataplane(spec) = &dataplane.spec else { return rx };
    for inbound in &spec.networking.inbound {
        let Some(probe) = Probe::of(inbound) else { continue };
        let (tx, cancel, port, service) = (tx.clone(), cancel.clone(), inbound.port, inbound.service().to_string());
        tasks.spawn(async move {
            let (mut passed, mut failed) = (0u32, 0u32);
            loop {
                let wait = probe.interval.mul_f64(rand::thread_rng().gen_range(0.9..=1.1));
                tokio::select! {
                    () = cancel.cancelled() => return,
                    () = tokio::time::sleep(wait) => {}
                }
                let result = probe.run().await;
                if result.is_ok() {
                    (passed, failed) = (passed.saturating_add(1), 0);
                } else {
                    (passed, failed) = (0, failed.saturating_add(1));
                }
                let ready = tx.borrow().get(&port).is_none_or(Result::is_ok);
                let flip = match &result {
                    Ok(()) => !ready && passed >= probe.healthy,
                    Err(_) => ready && failed >= probe.unhealthy,
                };
                if !flip {
                    continue;
                }
                match &result {
                    Ok(()) => tracing::info!(port, service, target = %probe.target, "the application answers its probe again: the inbound is ready"),
                    Err(reason) => tracing::warn!(
                        port, service, target = %probe.target, reason, failures = failed,
                        "the application fails its probe: the inbound is not ready, and the zone takes it out of the pool"
                    ),
                }
                tx.send_modify(|all| {
                    all.insert(port, result);
                });
            }
        });
    }
    rx
}

/// The JSON of `dataplane` with the `health` of each inbound whose readiness now differs from
/// how it was registered (for the registration; left as it is otherwise). Only the Dataplane's
/// spec is copied and written: copying or writing a whole resource takes the code of every type.
pub fn with_health(dataplane: &Resource, readiness: &Readinesses) -> Vec<u8> {
    let Spec::Dataplane(spec) = &dataplane.spec else { return Vec::new() };
    let mut spec = spec.clone();
    for inbound in &mut spec.networking.inbound {
        if let Some(r) = readiness.get(&inbound.port).filter(|r| r.is_ok() != inbound.is_ready()) {
            inbound.health = Some(strait_api::dataplane::InboundHealth { ready: r.is_ok() });
        }
    }
    dataplane.to_json_with_spec(&spec).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dataplane(inbound: serde_json::Value) -> Resource {
        Resource::from_value(serde_json::json!({"type": "Dataplane", "name": "dp", "mesh": "default",
            "spec": {"networking": {"address": "127.0.0.1", "inbound": [inbound]}}}))
        .unwrap()
    }

    /// An application that accepts connections and answers HTTP with `status`, until dropped.
    async fn app(status: u16) -> (SocketAddr, tokio::task::JoinHandle<()>) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let task = tokio::spawn(async move {
            while let Ok((mut s, _)) = listener.accept().await {
                let mut buf = [0u8; 1024];
                let _ = s.read(&mut buf).await;
                let _ = s.write_all(format!("HTTP/1.1 {status} X\r\ncontent-length: 0\r\n\r\n").as_bytes()).await;
            }
        });
        (addr, task)
    }

    async fn wait_for(rx: &mut watch::Receiver<Readinesses>, port: u16, ready: bool) -> Readiness {
        tokio::time::timeout(Duration::from_secs(5), rx.wait_for(|r| r.get(&port).is_some_and(|r| r.is_ok() == ready)))
            .await
            .unwrap_or_else(|_| panic!("inbound {port} never became ready={ready}"))
            .unwrap()
            .get(&port)
            .cloned()
            .unwrap()
    }

    #[tokio::test]
    async fn an_application_that_stops_answering_makes_its_inbound_not_ready_and_back() {
        let (addr, task) = app(200).await;
        let probe = serde_json::json!({"interval": "50ms", "timeout": "500ms", "unhealthyThreshold": 2});
        let dp = dataplane(
            serde_json::json!({"port": 9000, "servicePort": addr.port(), "tags": {"strait.io/service": "web"}, "serviceProbe": probe}),
        );
        let (cancel, tasks) = (CancellationToken::new(), TaskTracker::new());
        let mut rx = start(&dp, &cancel, &tasks);
        assert_eq!(rx.borrow().get(&9000), Some(&Ok(())), "ready as registered");
        task.abort();
        let _ = task.await;
        let reason = wait_for(&mut rx, 9000, false).await.unwrap_err();
        assert!(reason.contains("cannot connect"), "{reason}");
        // The same port answers again.
        let health = |json: Vec<u8>| {
            let sent: serde_json::Value = serde_json::from_slice(&json).unwrap();
            assert_eq!(Resource::from_value(sent.clone()).unwrap().name, "dp", "a whole resource: {sent}");
            sent.pointer("/spec/networking/inbound/0/health/ready").cloned()
        };
        assert_eq!(health(with_health(&dp, &rx.borrow())), Some(serde_json::json!(false)), "registered as the probe finds it");
        let listener = tokio::net::TcpListener::bind(addr).await.unwrap();
        wait_for(&mut rx, 9000, true).await.unwrap();
        drop(listener);
        assert_eq!(health(with_health(&dp, &rx.borrow())), None, "ready, as registered: the registration is unchanged");
        cancel.cancel();
    }

    #[tokio::test]
    async fn an_http_probe_needs_a_success_status() {
        let (ok, _ok_task) = app(204).await;
        let (sick, _sick_task) = app(503).await;
        let probe = |app: SocketAddr| {
            let inbound: Inbound = serde_json::from_value(serde_json::json!({"port": 1, "servicePort": app.port(),
                "tags": {"strait.io/service": "web"}, "serviceProbe": {"http": {"path": "/healthz"}}}))
            .unwrap();
            Probe::of(&inbound).unwrap()
        };
        assert_eq!(probe(ok).run().await, Ok(()), "a 204 passes");
        assert_eq!(probe(sick).run().await, Err("GET /healthz answered 503".to_string()));
    }

    #[test]
    fn a_disabled_probe_runs_nothing_and_registration_sets_the_start() {
        let inbound: Inbound = serde_json::from_value(serde_json::json!({"port": 1, "tags": {"strait.io/service": "web"},
            "serviceProbe": {"disabled": true}, "health": {"ready": false}}))
        .unwrap();
        assert!(Probe::of(&inbound).is_none());
        let dp = dataplane(serde_json::to_value(&inbound).unwrap());
        assert!(registered(&dp)[&1].is_err(), "registered not ready");
    }
}
