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
    for dp in resources.list(ResourceType::Dataplane, None).await? {
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

/// Publishes the zone's inventory; cheap to clone. Refreshes asked for at the same time share
/// one computation: in a registration storm, each new sidecar asks for one, and each
/// computation reads every Dataplane of the zone (with N sidecars, N reads of N Dataplanes at
/// once, most of the zone's memory at the peak, had each computed its own).
#[derive(Clone)]
pub struct Publisher {
    inner: std::sync::Arc<Shared>,
}

struct Shared {
    tx: watch::Sender<kds::Inventory>,
    /// Refreshes asked for so far.
    asked: std::sync::atomic::AtomicU64,
    /// Held while computing; the number of refreshes asked for before the last computation
    /// began (each of those is answered by it).
    answered: tokio::sync::Mutex<u64>,
}

impl Publisher {
    /// Starts publishing `first`; `subscribe` to follow it.
    pub fn new(first: kds::Inventory) -> Publisher {
        let (tx, _) = watch::channel(first);
        Publisher { inner: std::sync::Arc::new(Shared { tx, asked: Default::default(), answered: Default::default() }) }
    }

    /// The inventory now and its changes.
    pub fn subscribe(&self) -> watch::Receiver<kds::Inventory> {
        self.inner.tx.subscribe()
    }
}

/// Recomputes the inventory and publishes it if it changed. Returns once a computation that
/// began after this call has been published (the one of this call, or one shared with calls
/// made meanwhile).
pub async fn refresh(resources: &Resources, publisher: &Publisher) {
    use std::sync::atomic::Ordering;
    let shared = &publisher.inner;
    let mine = shared.asked.fetch_add(1, Ordering::SeqCst) + 1;
    let mut answered = shared.answered.lock().await;
    if *answered >= mine {
        return;
    }
    // Every refresh asked for up to now is answered by this computation, which begins now.
    let covers = shared.asked.load(Ordering::SeqCst);
    match compute(resources).await {
        Ok(inventory) => {
            shared.tx.send_if_modified(|current| {
                let changed = *current != inventory;
                *current = inventory;
                changed
            });
            *answered = covers;
        }
        Err(e) => tracing::warn!(error = %e, "could not compute the zone's inventory"),
    }
}
