//! The zone's inventory: the services of its Dataplanes, with endpoint counts (all, and those
//! whose application passes its sidecar's probe), protocol and each ready endpoint by id and
//! tags (other zones balance over them), and
//! its gateways' ingress addresses, as reported upstream so that other zones can reach them.
//!
//! In: the zone's Dataplanes, connected gateways and sidecars' NACKs (registered on this
//! zone). Out: a KDS
//! `Inventory`, published on a watch channel whenever it changes; the sync client sends the
//! latest one.

use std::collections::BTreeMap;
use std::time::Duration;

use strait_api::gateway_config::{instance_id, DataplaneNack};
use strait_api::kds;
use strait_api::names::PROTOCOL_TAG;
use strait_api::{ResourceType, Spec};
use strait_cp_core::kinds::DATAPLANE_NACK;
use strait_cp_core::resources::{Resources, ServiceError};
use tokio::sync::watch;

/// Computes the inventory from the zone's store.
pub async fn compute(resources: &Resources) -> Result<kds::Inventory, ServiceError> {
    let mut counts: BTreeMap<(String, String), kds::ServiceInventory> = BTreeMap::new();
    for dp in resources.list_shared(ResourceType::Dataplane, None).await? {
        let (Some(mesh), Spec::Dataplane(spec)) = (dp.mesh.as_deref(), &dp.spec) else { continue };
        let ip = spec.networking.address.parse::<std::net::IpAddr>().ok();
        for inbound in &spec.networking.inbound {
            let service = inbound.service();
            let entry = counts.entry((mesh.to_string(), service.to_string())).or_insert_with(|| kds::ServiceInventory {
                mesh: mesh.to_string(),
                name: service.to_string(),
                protocol: inbound.tags.get(PROTOCOL_TAG).cloned().unwrap_or_else(|| "tcp".into()),
                ..Default::default()
            });
            entry.endpoints += 1;
            // An inbound whose application fails its probe is counted, not offered.
            if !inbound.is_ready() {
                continue;
            }
            entry.healthy += 1;
            // Listed one by one under the id the gateways' ingress knows it by (see `gateways::config`).
            if let Some(ip) = ip {
                let id = instance_id(mesh, service, &std::net::SocketAddr::new(ip, inbound.port));
                entry.instances.push(kds::InstanceInventory { id, tags: inbound.tags.clone().into_iter().collect() });
            }
        }
    }
    let services = counts
        .into_values()
        .map(|mut service| {
            service.instances.sort_by(|a, b| a.id.cmp(&b.id));
            service
        })
        .collect();
    let ingress_addresses = crate::gateways::list(resources.store().as_ref()).await?.into_iter().map(|g| g.ingress_address).collect();
    let dataplane_nacks = resources
        .store()
        .list(DATAPLANE_NACK, None)
        .await?
        .into_iter()
        .filter_map(|o| serde_json::from_value::<DataplaneNack>(o.data).ok())
        .map(|n| kds::DataplaneNack { mesh: n.mesh, dataplane: n.dataplane, version: n.version, error: n.error })
        .collect();
    Ok(kds::Inventory { services, ingress_addresses, dataplane_nacks })
}

/// Publishes the zone's inventory; cheap to clone. One task computes it, when asked, for
/// every ask made before the computation begins: in a registration storm, each new sidecar
/// asks for one, and each computation reads (and parses) every Dataplane of the zone. The
/// task paces itself: after a computation that took `t`, the next begins no sooner than
/// [`PACE`] times `t` later (and at least [`LEAST_GAP`]), so the inventory takes at most a third
/// of a core however fast the asks come (back to back, the computations of a storm of 3,333
/// sidecars per zone took a third of the zone's CPU and grew with every sidecar), and a lone
/// ask after a quiet spell is answered at once.
#[derive(Clone)]
pub struct Publisher {
    inner: std::sync::Arc<Shared>,
}

/// The wait after a computation, in multiples of the time it took.
const PACE: u32 = 2;
/// The least wait after a computation before the next: each inventory published goes to
/// every other zone through the global, where it is stored and every sidecar's inputs are
/// read again. Computations made quick (Dataplanes parsed once) published one every few
/// milliseconds through a registration storm, and the other zones spent their time taking
/// them in.
const LEAST_GAP: Duration = Duration::from_millis(500);

struct Shared {
    tx: watch::Sender<kds::Inventory>,
    /// Asks so far.
    asked: std::sync::atomic::AtomicU64,
    /// Wakes the computing task.
    wake: std::sync::Arc<tokio::sync::Notify>,
    /// The number of asks made before the last computation began (each answered by it).
    answered: watch::Sender<u64>,
    /// Computations so far.
    computed: std::sync::atomic::AtomicU64,
    /// When each computation began and ended.
    #[cfg(test)]
    spans: std::sync::Mutex<Vec<(tokio::time::Instant, tokio::time::Instant)>>,
}

impl Drop for Shared {
    fn drop(&mut self) {
        // The computing task holds no reference: woken, it finds the publisher gone and ends.
        self.wake.notify_one();
    }
}

impl Publisher {
    /// Starts publishing `first`, and a task that recomputes it from `resources` when asked;
    /// `subscribe` to follow it. The task ends with the last clone of the publisher.
    pub fn start(first: kds::Inventory, resources: Resources) -> Publisher {
        let wake = std::sync::Arc::new(tokio::sync::Notify::new());
        let shared = std::sync::Arc::new(Shared {
            tx: watch::channel(first).0,
            asked: Default::default(),
            wake: wake.clone(),
            answered: watch::channel(0).0,
            computed: Default::default(),
            #[cfg(test)]
            spans: Default::default(),
        });
        tokio::spawn(compute_when_asked(std::sync::Arc::downgrade(&shared), wake, resources));
        Publisher { inner: shared }
    }

    /// The inventory now and its changes.
    pub fn subscribe(&self) -> watch::Receiver<kds::Inventory> {
        self.inner.tx.subscribe()
    }

    /// Asks for a new computation without waiting for it; returns the ask's number.
    pub fn ask(&self) -> u64 {
        let mine = self.inner.asked.fetch_add(1, std::sync::atomic::Ordering::SeqCst) + 1;
        self.inner.wake.notify_one();
        mine
    }

    /// The computations made so far.
    pub fn computations(&self) -> u64 {
        self.inner.computed.load(std::sync::atomic::Ordering::Relaxed)
    }
}

async fn compute_when_asked(shared: std::sync::Weak<Shared>, wake: std::sync::Arc<tokio::sync::Notify>, resources: Resources) {
    use std::sync::atomic::Ordering;
    let mut next_start = tokio::time::Instant::now();
    loop {
        wake.notified().await;
        tokio::time::sleep_until(next_start).await;
        let Some(shared) = shared.upgrade() else { return };
        // Every ask made up to now is answered by this computation, which begins now.
        let covers = shared.asked.load(Ordering::SeqCst);
        if covers <= *shared.answered.borrow() {
            continue;
        }
        let began = tokio::time::Instant::now();
        match compute(&resources).await {
            Ok(inventory) => {
                shared.tx.send_if_modified(|current| {
                    let changed = *current != inventory;
                    *current = inventory;
                    changed
                });
            }
            Err(e) => tracing::warn!(error = %e, "could not compute the zone's inventory"),
        }
        shared.computed.fetch_add(1, Ordering::Relaxed);
        let ended = tokio::time::Instant::now();
        #[cfg(test)]
        shared.spans.lock().unwrap().push((began, ended));
        next_start = ended + ((ended - began) * PACE).max(LEAST_GAP);
        shared.answered.send_replace(covers);
        // Asks made while computing wake the task again (a `Notify` keeps one wake-up).
    }
}

/// Recomputes the inventory and publishes it if it changed. Returns once a computation that
/// began after this call has been published (or failed, logged).
pub async fn refresh(publisher: &Publisher) {
    let mine = publisher.ask();
    let mut answered = publisher.inner.answered.subscribe();
    let _ = answered.wait_for(|n| *n >= mine).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dataplane(n: usize) -> strait_api::Resource {
        let yaml = format!(
            "type: Dataplane\nname: dp-{n}\nmesh: default\nspec:\n  networking:\n    address: 10.0.{}.{}\n    inbound: [{{port: 8080, tags: {{strait.io/service: svc-{}}}}}]\n",
            n / 250,
            n % 250 + 1,
            n % 3
        );
        strait_api::parse_documents(&yaml).pop().unwrap().unwrap()
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn asks_made_together_share_computations_and_each_refresh_sees_what_came_before_it() {
        let store: std::sync::Arc<dyn strait_store::Store> = std::sync::Arc::new(strait_store::SledStore::temporary().unwrap());
        let resources = Resources::new(store);
        let mesh = strait_api::parse_documents("type: Mesh\nname: default\n").pop().unwrap().unwrap();
        resources.put(&mesh).await.unwrap();
        let publisher = Publisher::start(compute(&resources).await.unwrap(), resources.clone());
        let mut inventory = publisher.subscribe();
        // 200 sidecars register at once, each asking without waiting (as sessions do).
        let registering: Vec<_> = (0..200)
            .map(|n| {
                let (resources, publisher) = (resources.clone(), publisher.clone());
                tokio::spawn(async move {
                    resources.put(&dataplane(n)).await.unwrap();
                    publisher.ask();
                })
            })
            .collect();
        for r in registering {
            r.await.unwrap();
        }
        // A refresh asked now sees all of them.
        refresh(&publisher).await;
        let endpoints: u32 = inventory.borrow_and_update().services.iter().map(|s| s.endpoints).sum();
        assert_eq!(endpoints, 200);
        let computed = publisher.computations();
        assert!(computed < 100, "200 asks took {computed} computations: they are not shared");
        // A lone ask after a quiet spell is answered by one more computation.
        refresh(&publisher).await;
        assert_eq!(publisher.computations(), computed + 1);
        // However fast the asks came, each computation began at least PACE times the previous
        // one's length after it ended, and never sooner than LEAST_GAP.
        let spans = publisher.inner.spans.lock().unwrap().clone();
        for pair in spans.windows(2) {
            let ((began, ended), (next, _)) = (pair[0], pair[1]);
            assert!(
                next >= ended + ((ended - began) * PACE).max(LEAST_GAP),
                "a computation began {:?} after the previous one, which took {:?}",
                next - ended,
                ended - began
            );
        }
    }
}
