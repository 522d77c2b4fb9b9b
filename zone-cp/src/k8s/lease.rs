//! One replica at a time: leader election with a `coordination.k8s.io/v1` Lease, so that
//! during a rolling update (the new Pod starts before the old one stops) only one replica
//! holds the zone's sync stream and runs the controllers.
//!
//! In: the Lease's name and namespace, this replica's identity (its Pod name), the lease
//! duration. Out: a `watch` of whether this replica leads. A replica takes the Lease when it
//! is free, released, or not renewed for its duration, and renews it every `renew_every`;
//! writes carry the Lease's resource version, so of two replicas racing only one wins (the
//! other gets a conflict). Expiry is judged by when this replica last saw the Lease change,
//! never by comparing another host's clock with ours. A leader that cannot renew for the
//! lease duration (the API server is away) stops leading before anyone else may start, and
//! one that shuts down releases the Lease so its successor starts at once.

use std::time::{Duration, Instant};

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use kube::api::PostParams;
use kube::Api;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// How this replica takes part in the election.
#[derive(Debug, Clone)]
pub struct LeaseConfig {
    /// The Lease's namespace (the control plane's own).
    pub namespace: String,
    /// The Lease's name.
    pub name: String,
    /// This replica (its Pod's name).
    pub identity: String,
    /// How long a Lease not renewed stays its holder's.
    pub duration: Duration,
    /// How often the leader renews it, and the others look at it.
    pub renew_every: Duration,
}

fn now() -> MicroTime {
    MicroTime(k8s_openapi::jiff::Timestamp::now())
}

fn is_conflict(error: &kube::Error) -> bool {
    matches!(error, kube::Error::Api(status) if status.code == 409)
}

/// What this replica last saw of the Lease, and when it saw it change.
#[derive(Default)]
struct Observed {
    record: String,
    since: Option<Instant>,
}

/// One round: takes, renews or leaves the Lease; whether this replica leads after it.
async fn step(api: &Api<Lease>, config: &LeaseConfig, observed: &mut Observed) -> Result<bool, kube::Error> {
    let duration_seconds = i32::try_from(config.duration.as_secs().max(1)).unwrap_or(i32::MAX);
    let Some(mut lease) = api.get_opt(&config.name).await? else {
        let lease = Lease {
            metadata: ObjectMeta { name: Some(config.name.clone()), namespace: Some(config.namespace.clone()), ..Default::default() },
            spec: Some(LeaseSpec {
                holder_identity: Some(config.identity.clone()),
                lease_duration_seconds: Some(duration_seconds),
                acquire_time: Some(now()),
                renew_time: Some(now()),
                lease_transitions: Some(0),
                ..Default::default()
            }),
        };
        return match api.create(&PostParams::default(), &lease).await {
            Ok(_) => Ok(true),
            Err(e) if is_conflict(&e) => Ok(false),
            Err(e) => Err(e),
        };
    };
    let spec = lease.spec.clone().unwrap_or_default();
    let holder = spec.holder_identity.clone().unwrap_or_default();
    let record = format!("{holder}|{:?}|{:?}", spec.renew_time, lease.metadata.resource_version);
    if observed.record != record || observed.since.is_none() {
        observed.record = record;
        observed.since = Some(Instant::now());
    }
    let held_for = Duration::from_secs(u64::try_from(spec.lease_duration_seconds.unwrap_or(duration_seconds)).unwrap_or(1));
    let expired = holder.is_empty() || observed.since.is_some_and(|since| since.elapsed() >= held_for);
    if holder != config.identity && !expired {
        return Ok(false);
    }
    let taking = holder != config.identity;
    let mut spec = spec;
    spec.holder_identity = Some(config.identity.clone());
    spec.lease_duration_seconds = Some(duration_seconds);
    spec.renew_time = Some(now());
    if taking {
        spec.acquire_time = Some(now());
        spec.lease_transitions = Some(spec.lease_transitions.unwrap_or(0) + 1);
    }
    lease.spec = Some(spec);
    // The resource version read above makes this a compare-and-swap.
    match api.replace(&config.name, &PostParams::default(), &lease).await {
        Ok(_) => {
            if taking {
                tracing::info!(lease = %config.name, previous = %holder, "took the lease: this replica leads");
            }
            Ok(true)
        }
        Err(e) if is_conflict(&e) => Ok(false),
        Err(e) => Err(e),
    }
}

/// Gives the Lease up, if this replica holds it, so the next holder need not wait for expiry.
async fn release(api: &Api<Lease>, config: &LeaseConfig) {
    let Ok(Some(mut lease)) = api.get_opt(&config.name).await else { return };
    let Some(spec) = lease.spec.as_mut() else { return };
    if spec.holder_identity.as_deref() != Some(config.identity.as_str()) {
        return;
    }
    spec.holder_identity = None;
    spec.lease_duration_seconds = Some(1);
    spec.renew_time = Some(now());
    match api.replace(&config.name, &PostParams::default(), &lease).await {
        Ok(_) => tracing::info!(lease = %config.name, "released the lease"),
        Err(error) => tracing::warn!(lease = %config.name, %error, "could not release the lease; the next replica waits for it to expire"),
    }
}

/// Takes part in the election until `shutdown` (in a task of `tasks`, so that waiting for
/// them waits for the Lease's release); the returned watch says whether this replica leads.
pub fn elect(client: kube::Client, config: LeaseConfig, shutdown: CancellationToken, tasks: &TaskTracker) -> watch::Receiver<bool> {
    let (tx, rx) = watch::channel(false);
    let api: Api<Lease> = Api::namespaced(client, &config.namespace);
    tasks.spawn(async move {
        let mut observed = Observed::default();
        let mut renewed: Option<Instant> = None;
        loop {
            match step(&api, &config, &mut observed).await {
                Ok(true) => {
                    renewed = Some(Instant::now());
                    tx.send_if_modified(|leads| !std::mem::replace(leads, true));
                }
                Ok(false) => {
                    renewed = None;
                    if tx.send_if_modified(|leads| std::mem::replace(leads, false)) {
                        tracing::warn!(lease = %config.name, "another replica holds the lease: this one stops leading");
                    }
                }
                Err(error) => {
                    tracing::warn!(lease = %config.name, %error, "cannot read or renew the lease");
                    // Stop well before the Lease can expire for the others (at two thirds of
                    // its duration, as Kubernetes' own controllers renew within 10 s of 15).
                    let deadline = config.duration * 2 / 3;
                    if renewed.is_some_and(|at| at.elapsed() >= deadline) && tx.send_if_modified(|leads| std::mem::replace(leads, false)) {
                        tracing::warn!(lease = %config.name, "the lease could not be renewed in time: this replica stops leading");
                    }
                }
            }
            tokio::select! {
                _ = shutdown.cancelled() => {
                    if *tx.borrow() {
                        tx.send_replace(false);
                        release(&api, &config).await;
                    }
                    return;
                }
                _ = tokio::time::sleep(config.renew_every) => {}
            }
        }
    });
    rx
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::{Arc, Mutex};

    use serde_json::{json, Value};

    /// The Lease as the API server keeps it (with its resource version), shared by the
    /// replicas' clients.
    #[derive(Default)]
    struct Server {
        lease: Option<Value>,
        version: u64,
    }

    fn status(code: u16, reason: &str) -> Value {
        json!({ "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure", "reason": reason, "code": code, "message": reason })
    }

    /// A client of `server` that answers 500 while `cut` is set (a replica cut off from the
    /// API server).
    fn client(server: Arc<Mutex<Server>>, cut: Arc<AtomicBool>) -> kube::Client {
        crate::k8s::test_client("strait-system", move |method, path, bytes| {
            if cut.load(Ordering::SeqCst) {
                return (500, status(500, "InternalError"));
            }
            let mut s = server.lock().unwrap();
            assert!(path.starts_with("/apis/coordination.k8s.io/v1/namespaces/strait-system/leases"), "{path}");
            match method {
                http::Method::GET => match &s.lease {
                    Some(l) => (200, l.clone()),
                    None => (404, status(404, "NotFound")),
                },
                http::Method::POST if s.lease.is_some() => (409, status(409, "AlreadyExists")),
                http::Method::POST | http::Method::PUT => {
                    let mut lease: Value = serde_json::from_slice(&bytes).unwrap();
                    let sent = lease["metadata"]["resourceVersion"].as_str().map(str::to_string);
                    if method == http::Method::PUT && sent != Some(s.version.to_string()) {
                        return (409, status(409, "Conflict"));
                    }
                    s.version += 1;
                    lease["metadata"]["resourceVersion"] = json!(s.version.to_string());
                    lease["apiVersion"] = json!("coordination.k8s.io/v1");
                    lease["kind"] = json!("Lease");
                    s.lease = Some(lease.clone());
                    (if method == http::Method::POST { 201 } else { 200 }, lease)
                }
                other => panic!("unexpected {other} {path}"),
            }
        })
    }

    struct Replica {
        leads: watch::Receiver<bool>,
        cut: Arc<AtomicBool>,
        stop: CancellationToken,
    }

    fn replica(server: &Arc<Mutex<Server>>, identity: &str) -> Replica {
        let cut = Arc::new(AtomicBool::new(false));
        let stop = CancellationToken::new();
        let config = LeaseConfig {
            namespace: "strait-system".into(),
            name: "strait-zone".into(),
            identity: identity.into(),
            duration: Duration::from_millis(3000),
            renew_every: Duration::from_millis(100),
        };
        let leads = elect(client(server.clone(), cut.clone()), config, stop.clone(), &TaskTracker::new());
        Replica { leads, cut, stop }
    }

    fn leading(replicas: &[&Replica]) -> Vec<usize> {
        replicas.iter().enumerate().filter(|(_, r)| *r.leads.borrow()).map(|(n, _)| n).collect()
    }

    /// Waits until exactly replica `who` leads, checking all the while that never two do.
    async fn until_leads(replicas: &[&Replica], who: usize, within: Duration) -> Duration {
        let start = Instant::now();
        loop {
            let now = leading(replicas);
            assert!(now.len() <= 1, "two replicas lead at once: {now:?}");
            if now == [who] {
                return start.elapsed();
            }
            assert!(start.elapsed() < within, "replica {who} does not lead after {within:?} (leading: {now:?})");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    #[tokio::test]
    async fn one_replica_leads_hands_over_on_release_and_after_a_silent_leader_expires() {
        let server = Arc::new(Mutex::new(Server::default()));
        let a = replica(&server, "strait-zone-a");
        until_leads(&[&a], 0, Duration::from_secs(2)).await;
        // The new Pod of a rolling update starts while the old one still runs: it waits.
        let b = replica(&server, "strait-zone-b");
        let start = Instant::now();
        while start.elapsed() < Duration::from_millis(500) {
            assert_eq!(leading(&[&a, &b]), [0], "the first replica keeps leading");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        // The old Pod stops and releases: the new one leads at once, not after the duration.
        a.stop.cancel();
        let handover = until_leads(&[&a, &b], 1, Duration::from_secs(2)).await;
        assert!(handover < Duration::from_millis(2000), "a released lease is taken without waiting for expiry ({handover:?})");

        // The leader is cut off from the API server: it stops leading on its own before the
        // lease expires for the others, and only then does another take it.
        let c = replica(&server, "strait-zone-c");
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert_eq!(leading(&[&b, &c]), [0]);
        b.cut.store(true, Ordering::SeqCst);
        until_leads(&[&b, &c], 1, Duration::from_secs(8)).await;
        // Back in touch, it sees the other holds the lease and stays a follower.
        b.cut.store(false, Ordering::SeqCst);
        let start = Instant::now();
        while start.elapsed() < Duration::from_millis(500) {
            assert_eq!(leading(&[&b, &c]), [1]);
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let transitions = server.lock().unwrap().lease.as_ref().unwrap()["spec"]["leaseTransitions"].as_i64().unwrap();
        assert_eq!(transitions, 2, "a -> b -> c");
        b.stop.cancel();
        c.stop.cancel();
    }
}
