//! Dataplane config server (DPS) of the zone: one gRPC stream per sidecar over TLS,
//! authenticated by the sidecar's dataplane token, or on Kubernetes by its Pod's projected
//! service-account token.
//!
//! In: sidecar connections (`authorization: Bearer <token>`, Hello with the Dataplane, CSRs)
//! and the zone's store changes. Out: each sidecar's effective configuration, versioned and
//! sent again only when it changes; workload certificates signed by the zone's intermediate
//! CA; the Dataplane registered in the zone (and so in its inventory) while the sidecar is
//! connected. A sidecar that presents a service-account token sends no Dataplane: its
//! Dataplane is the one the zone's Kubernetes controller keeps for its Pod, which outlives
//! the stream.

pub mod changes;
pub mod cp_env;
pub mod framed;
pub mod gateway;
pub mod inputs;
pub mod sent;
pub mod session;
pub mod tls;

use std::collections::HashSet;
use std::sync::{Arc, Mutex};

use strait_api::dps::dataplane_sync_server::DataplaneSync;
use strait_api::dps::{dataplane_message, gateway_message, DataplaneMessage, GatewayMessage, ZoneMessage, PROTOCOL_VERSION};
use strait_api::{Resource, ResourceType, Spec};
use strait_cp_core::resources::Resources;
use strait_cp_core::revocations;
use strait_pki::token::{TokenClaims, TokenSubject, TokenVerifierKey};
use strait_store::{Key, Precondition};
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tonic::{Request, Response, Status, Streaming};
use tracing::Instrument;

/// What every DPS session shares.
#[derive(Clone)]
pub struct DpsShared {
    /// The zone's store, typed.
    pub resources: Resources,
    /// The zone's name.
    pub zone: Arc<String>,
    /// Publishes the zone's inventory after Dataplanes come and go.
    pub inventory: crate::inventory::Publisher,
    /// Dataplanes connected now, as `mesh/name`.
    pub connected: Arc<Mutex<HashSet<String>>>,
    /// Stops every session.
    pub shutdown: CancellationToken,
    /// `strait_zone_dps_*`.
    pub metrics: crate::metrics::DpsMetrics,
    /// Dataplane addresses accepted from any source (`--allow-dataplane-address`).
    pub allowed_addresses: Arc<Vec<crate::config::AddressRange>>,
    /// The Prometheus targets of the connected sidecars.
    pub targets: crate::discovery::Targets,
    /// The connected sidecars' channels for the global's questions (`straitctl inspect`).
    pub inspectors: crate::inspect::Inspectors,
    /// What the zone's sidecars served, for the global's traffic map.
    pub traffic: crate::traffic::Traffic,
    /// On Kubernetes: the API that verifies sidecars' service-account tokens.
    pub kubernetes: Option<kube::Client>,
    /// On Kubernetes: whether this replica leads (only the leader serves sidecars). `None`:
    /// always.
    pub leading: Option<watch::Receiver<bool>>,
    /// Each mesh's inputs, read once per change and shared by its sidecars' sessions.
    pub inputs: inputs::InputCache,
    /// The zone store's changes, watched once for every session.
    pub changes: changes::Changes,
}

impl DpsShared {
    /// Refuses a new stream while this replica stands by.
    fn check_leading(&self) -> Result<(), Status> {
        match &self.leading {
            Some(leading) if !*leading.borrow() => Err(Status::unavailable(STANDING_BY)),
            _ => Ok(()),
        }
    }
}

const STANDING_BY: &str = "this zone control plane replica stands by (another one holds the leader Lease); reconnect to reach the leader";

/// Resolves when this replica stops leading (never, if it always leads).
pub(crate) async fn lost_leadership(leading: &mut Option<watch::Receiver<bool>>) -> Status {
    match leading {
        Some(leading) => {
            // A closed channel means the election ended with the process: stop too.
            let _ = leading.wait_for(|leads| !*leads).await;
            Status::unavailable(STANDING_BY)
        }
        None => std::future::pending().await,
    }
}

/// The tonic service, and the framed transport's (see [`framed`]).
#[derive(Clone)]
pub struct DpsService {
    shared: DpsShared,
    tasks: TaskTracker,
}

impl DpsService {
    /// A service over `shared`; sessions are tracked in `tasks`.
    pub fn new(shared: DpsShared, tasks: TaskTracker) -> Self {
        DpsService { shared, tasks }
    }
}

fn unix_now() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or_default()
}

/// The claims of `token` (a `what`), verified with the token keys synced from the global and
/// checked against the revocations synced with them.
async fn verify_token(resources: &Resources, token: &str, what: &str) -> Result<TokenClaims, Status> {
    let keys = resources
        .store()
        .get(&Key::new(strait_cp_core::kinds::TOKEN_KEYS, "", "dataplane"))
        .await
        .map_err(|e| Status::unavailable(e.to_string()))?
        .ok_or_else(|| Status::unavailable("this zone has not received the token keys from the global control plane yet"))?;
    let keys: Vec<TokenVerifierKey> =
        serde_json::from_value(keys.data["keys"].clone()).map_err(|e| Status::internal(format!("token keys: {e}")))?;
    let claims =
        strait_pki::token::verify(token, &keys, unix_now()).map_err(|e| Status::unauthenticated(format!("{what} refused: {e}")))?;
    check_revoked(resources, &claims, what).await?;
    Ok(claims)
}

/// Refuses the token of `claims` if the global revoked it.
async fn check_revoked(resources: &Resources, claims: &TokenClaims, what: &str) -> Result<(), Status> {
    match revocations::check(resources.store().as_ref(), claims).await {
        Ok(None) => Ok(()),
        Ok(Some(reason)) => Err(Status::unauthenticated(format!("{what} refused: {reason}"))),
        Err(e) => Err(Status::unavailable(format!("zone store: {e}"))),
    }
}

/// Who a sidecar is, by the credential it presents.
enum Credential {
    /// A dataplane token: the mesh and service it was issued for; the Hello brings the Dataplane.
    Token { mesh: String, service: String, claims: TokenClaims },
    /// Its Pod's service-account token, verified by the API server; the Dataplane is the one
    /// the controller keeps for that Pod.
    Pod { pod: crate::k8s::identity::PodIdentity, expires_at: u64 },
}

/// Authenticates a sidecar's bearer token: a Strait dataplane token, or (on Kubernetes) any
/// other token is taken for a service-account token and reviewed by the API server.
async fn authenticate(shared: &DpsShared, token: &str) -> Result<Credential, Status> {
    if let Some(client) = shared.kubernetes.as_ref().filter(|_| !strait_pki::token::is_strait_token(token)) {
        use crate::k8s::identity::{review, Refused};
        let pod = review(client, token).await.map_err(|e| match e {
            Refused::Invalid(_) => Status::unauthenticated(e.to_string()),
            Refused::Unavailable(_) => Status::unavailable(e.to_string()),
        })?;
        // The API server checked it; its expiry says when to stop trusting the stream (the
        // kubelet rotates the file well before, and the sidecar reads it at each connection).
        let expires_at = strait_pki::token::unverified_expiry(token).unwrap_or_else(|| unix_now() + 600);
        return Ok(Credential::Pod { pod, expires_at });
    }
    let claims = verify_token(&shared.resources, token, "dataplane token").await?;
    match &claims.subject {
        TokenSubject::Dataplane { mesh, service } => Ok(Credential::Token { mesh: mesh.clone(), service: service.clone(), claims }),
        TokenSubject::Zone { .. } => Err(Status::unauthenticated("this is a zone token, not a dataplane token")),
        TokenSubject::ZoneProxy { .. } => Err(Status::unauthenticated("this is a zone-proxy token (for gateways), not a dataplane token")),
    }
}

/// How long a sidecar whose Pod has no Dataplane yet waits for the controller to write it.
const POD_DATAPLANE_WAIT: std::time::Duration = std::time::Duration::from_secs(10);

/// The Dataplane the controller keeps for `pod` (the Pod itself, not an earlier one of the
/// same name), waiting a little for a Pod the controller has not seen yet.
async fn pod_dataplane(shared: &DpsShared, pod: &crate::k8s::identity::PodIdentity) -> Result<Resource, Status> {
    use crate::k8s::controller::{ORIGIN_LABEL, POD_UID_LABEL};
    let name = format!("{}.{}", pod.pod, pod.namespace);
    let deadline = tokio::time::Instant::now() + POD_DATAPLANE_WAIT;
    loop {
        let found = shared
            .resources
            .list(ResourceType::Dataplane, None)
            .await
            .map_err(|e| Status::unavailable(e.to_string()))?
            .into_iter()
            .find(|dp| dp.name == name && dp.labels.contains_key(ORIGIN_LABEL));
        let seen_uid = found.as_ref().and_then(|dp| dp.labels.get(POD_UID_LABEL).cloned());
        if let Some(dp) = found.filter(|_| seen_uid.as_deref() == Some(pod.pod_uid.as_str())) {
            return Ok(dp);
        }
        if tokio::time::Instant::now() >= deadline {
            let why = match seen_uid {
                Some(uid) => {
                    format!("the zone's Dataplane {name} is of an earlier Pod of that name (uid {uid}, this one is {})", pod.pod_uid)
                }
                None => format!("the zone has no Dataplane {name}: the Pod needs an IP and a Service selecting it"),
            };
            return Err(Status::unavailable(format!("Pod {}/{} is not in the mesh yet: {why}; retrying", pod.namespace, pod.pod)));
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
}

/// The claims of a gateway's zone-proxy token, which must be for `zone`.
async fn authenticate_gateway(resources: &Resources, zone: &str, token: &str) -> Result<TokenClaims, Status> {
    let claims = verify_token(resources, token, "zone-proxy token").await.map_err(|s| {
        if s.code() != tonic::Code::Unauthenticated {
            return s;
        }
        Status::unauthenticated(format!(
            "{} (a gateway presents the zone-proxy token that `straitctl zone register` writes as zone-proxy-token, not the zone token)",
            s.message()
        ))
    })?;
    match &claims.subject {
        TokenSubject::ZoneProxy { zone: z } if z == zone => Ok(claims),
        TokenSubject::ZoneProxy { zone: z } => {
            Err(Status::permission_denied(format!("this zone-proxy token is for zone {z:?}, not {zone:?}")))
        }
        _ => Err(Status::unauthenticated("this is not a zone-proxy token")),
    }
}

/// Holds while a session's token is neither expired nor revoked; the session ends when it stops
/// holding, so an expired or revoked token gets no more configuration or certificates.
pub(crate) struct TokenHold {
    pub(crate) expires_at: u64,
    /// The claims of a Strait token, which the global may revoke (a service-account token is
    /// revoked by deleting its Pod, which removes the Dataplane).
    pub(crate) revocable: Option<TokenClaims>,
    pub(crate) what: &'static str,
}

impl TokenHold {
    /// A Strait token, `what`.
    pub(crate) fn strait(claims: TokenClaims, what: &'static str) -> Self {
        TokenHold { expires_at: claims.expires_at, revocable: Some(claims), what }
    }

    /// Resolves when the token expires.
    pub(crate) async fn expired(&self) -> Status {
        let left = self.expires_at.saturating_sub(unix_now());
        tokio::time::sleep(std::time::Duration::from_secs(left)).await;
        Status::unauthenticated(format!("the {} expired at {} (unix seconds); give it a new one", self.what, self.expires_at))
    }

    /// Fails when the global revoked the token.
    pub(crate) async fn check(&self, resources: &Resources) -> Result<(), Status> {
        match &self.revocable {
            Some(claims) => check_revoked(resources, claims, self.what).await,
            None => Ok(()),
        }
    }
}

/// Binds the name `name` in `mesh` to `service` until `expires_at`: a name another service
/// holds with a token that has not expired is refused, so no token can take over (or lock out)
/// another service's Dataplane.
async fn bind_name(resources: &Resources, mesh: &str, name: &str, service: &str, expires_at: u64) -> Result<(), Status> {
    let store = resources.store();
    let key = Key::new(strait_cp_core::kinds::DATAPLANE_BINDING, mesh, name);
    let unavailable = |e: strait_store::StoreError| Status::unavailable(format!("zone store: {e}"));
    let existing = store.get(&key).await.map_err(unavailable)?;
    let mut until = expires_at;
    let precondition = match &existing {
        None => {
            // No binding yet: a Dataplane stored under that name (written through the zone's
            // API, or registered before bindings existed) still belongs to its own service.
            let stored = resources.get(ResourceType::Dataplane, Some(mesh), name).await.map_err(|e| Status::unavailable(e.to_string()))?;
            if let Some(Resource { spec: Spec::Dataplane(spec), .. }) = stored {
                if let Some(holder) = spec.networking.inbound.iter().map(|i| i.service()).find(|s| *s != service) {
                    return Err(Status::permission_denied(format!(
                        "dataplane name {name:?} in mesh {mesh:?} belongs to service {holder:?}; this token is for service {service:?}: give the sidecar another name"
                    )));
                }
            }
            Precondition::MustNotExist
        }
        Some(obj) => {
            let holder = obj.data.get("service").and_then(serde_json::Value::as_str).unwrap_or_default();
            let held_until = obj.data.get("expiresAt").and_then(serde_json::Value::as_u64).unwrap_or_default();
            if holder != service && held_until > unix_now() {
                return Err(Status::permission_denied(format!(
                    "dataplane name {name:?} in mesh {mesh:?} belongs to service {holder:?} (until {held_until}, unix seconds); this token is for service {service:?}: give the sidecar another name"
                )));
            }
            if holder == service {
                until = until.max(held_until);
            }
            Precondition::Version(obj.version)
        }
    };
    match store.put(key, serde_json::json!({"service": service, "expiresAt": until}), precondition).await {
        Ok(_) => Ok(()),
        Err(strait_store::StoreError::Conflict { .. }) => {
            Err(Status::aborted(format!("dataplane name {name:?} was just claimed by another connection; retry")))
        }
        Err(e) => Err(unavailable(e)),
    }
}

/// Checks the Hello's Dataplane against the token: same mesh, and only the token's service.
fn check_dataplane(json: &[u8], mesh: &str, service: &str) -> Result<Resource, Status> {
    let value: serde_json::Value =
        serde_json::from_slice(json).map_err(|e| Status::invalid_argument(format!("the Dataplane is not JSON: {e}")))?;
    let dp = Resource::from_value(value).map_err(|e| Status::invalid_argument(format!("invalid Dataplane: {e}")))?;
    let Spec::Dataplane(spec) = &dp.spec else {
        return Err(Status::invalid_argument(format!("expected a Dataplane, got {}", dp.kind)));
    };
    if dp.mesh.as_deref() != Some(mesh) {
        return Err(Status::permission_denied(format!("this token is for mesh {mesh:?}, not {:?}", dp.mesh.as_deref().unwrap_or(""))));
    }
    if let Some(other) = spec.networking.inbound.iter().map(|i| i.service()).find(|s| *s != service) {
        return Err(Status::permission_denied(format!("this token is for service {service:?}; it cannot register service {other:?}")));
    }
    Ok(dp)
}

/// Checks that the Dataplane declares the address its connection comes from (or one the
/// operator allowed): the zone's gateways forward other zones' traffic to that address, so a
/// workload must not point it at another host, the gateway's own loopback or the control plane.
fn check_address(dp: &Resource, peer: Option<std::net::IpAddr>, allowed: &[crate::config::AddressRange]) -> Result<(), Status> {
    let Spec::Dataplane(spec) = &dp.spec else { return Ok(()) };
    let declared = &spec.networking.address;
    let Ok(ip) = declared.parse::<std::net::IpAddr>() else {
        return Err(Status::invalid_argument(format!("networking.address {declared:?}: must be an IP address")));
    };
    if allowed.iter().any(|r| r.contains(ip)) {
        return Ok(());
    }
    match peer {
        // The declared address as written (an IPv4-mapped form of the peer is refused: the
        // gateways would not recognise it as the peer's).
        Some(peer) if peer == ip => Ok(()),
        Some(peer) => Err(Status::permission_denied(format!(
            "networking.address {declared} is not the address this sidecar connects from ({peer}); other zones' traffic for it would go there. Declare {peer}, or allow {declared} with strait-zone --allow-dataplane-address"
        ))),
        None => Err(Status::permission_denied("the address this sidecar connects from is unknown; allow its Dataplane address with strait-zone --allow-dataplane-address")),
    }
}

/// The bearer token of a request.
fn bearer<T>(request: &Request<T>, what: &str) -> Result<String, Status> {
    request
        .metadata()
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::to_string)
        .ok_or_else(|| Status::unauthenticated(format!("missing {what}: send `authorization: Bearer <token>`")))
}

/// A proxy's configuration as a `Config` message at `version`, unless its JSON is what was
/// sent last (then `None`); `last` keeps the SHA-256 of the JSON sent.
fn changed_config(config: &impl serde::Serialize, version: u64, last: &mut Option<Vec<u8>>) -> Result<Option<ZoneMessage>, Status> {
    use strait_api::dps::{zone_message, Config};
    let json = serde_json::to_vec(config).map_err(|e| Status::internal(e.to_string()))?;
    // The session keeps the digest of what it sent, not the configuration: with thousands of
    // sidecars, a copy of each one's configuration would be most of the zone's memory.
    let digest = strait_pki::pem::sha256(&json);
    if last.as_ref() == Some(&digest) {
        return Ok(None);
    }
    *last = Some(digest);
    Ok(Some(ZoneMessage { message: Some(zone_message::Message::Config(Config { version, json })) }))
}

/// The first message of a stream (the Hello), within 10 s.
async fn first_message<T, S>(inbound: &mut S) -> Result<Option<T>, Status>
where
    S: futures::Stream<Item = Result<T, Status>> + Unpin,
{
    use futures::StreamExt as _;
    tokio::time::timeout(std::time::Duration::from_secs(10), inbound.next())
        .await
        .map_err(|_| Status::deadline_exceeded("no Hello within 10s"))?
        .transpose()
        .map_err(|s| Status::aborted(format!("reading Hello: {}", s.message())))
}

/// A sidecar's messages, from gRPC or the framed transport.
pub type Inbound = std::pin::Pin<Box<dyn futures::Stream<Item = Result<DataplaneMessage, Status>> + Send>>;

/// Where a session puts its messages to its proxy. Each message is boxed: a channel holds its
/// slots in blocks of 32, allocated when it is made and kept for the session's life, and a
/// slot of the message itself is the size of tonic's `Status` (about 180 bytes): 5.6 KB per
/// connected proxy, against 256 bytes boxed.
pub(crate) type Outbox = mpsc::Sender<Box<Result<ZoneMessage, Status>>>;

/// A session's messages as the stream tonic sends.
pub struct Outbound(mpsc::Receiver<Box<Result<ZoneMessage, Status>>>);

impl futures::Stream for Outbound {
    type Item = Result<ZoneMessage, Status>;

    fn poll_next(mut self: std::pin::Pin<&mut Self>, cx: &mut std::task::Context<'_>) -> std::task::Poll<Option<Self::Item>> {
        self.0.poll_recv(cx).map(|message| message.map(|boxed| *boxed))
    }
}

fn outbox() -> (Outbox, Outbound) {
    let (tx, rx) = mpsc::channel(16);
    (tx, Outbound(rx))
}

#[tonic::async_trait]
impl DataplaneSync for DpsService {
    type StreamStream = Outbound;
    type GatewayStream = Outbound;

    async fn gateway(&self, request: Request<Streaming<GatewayMessage>>) -> Result<Response<Self::GatewayStream>, Status> {
        let peer = request.remote_addr().map(|a| a.to_string()).unwrap_or_else(|| "unknown".into());
        self.shared.check_leading()?;
        let token = bearer(&request, "zone-proxy token")?;
        let claims = authenticate_gateway(&self.shared.resources, &self.shared.zone, &token)
            .await
            .inspect_err(|s| tracing::warn!(peer, reason = s.message(), "gateway refused"))?;
        let mut inbound = request.into_inner();
        let first = first_message(&mut inbound).await?;
        let Some(GatewayMessage { message: Some(gateway_message::Message::Hello(hello)) }) = first else {
            return Err(Status::invalid_argument("the first message must be GatewayHello"));
        };
        let registration = gateway::check_hello(&hello).inspect_err(|s| tracing::warn!(peer, reason = s.message(), "gateway refused"))?;
        let id = format!("gateway/{}", registration.name);
        if !self.shared.connected.lock().unwrap_or_else(|p| p.into_inner()).insert(id.clone()) {
            return Err(Status::already_exists(format!("gateway {:?} is already connected", registration.name)));
        }
        // Every line of the session, to its end, names the gateway and its zone.
        let span = tracing::info_span!("dps_session", gateway = %registration.name, zone = %self.shared.zone, peer);
        span.in_scope(
            || tracing::info!(ingress = %registration.ingress_address, egress = %registration.egress_address, "gateway connected"),
        );
        let (tx, rx) = outbox();
        let token = TokenHold::strait(claims, "zone-proxy token");
        let session = gateway::GatewaySession { shared: self.shared.clone(), registration, token, tx };
        self.tasks.spawn(session.run(inbound).instrument(span));
        Ok(Response::new(rx))
    }

    async fn stream(&self, request: Request<Streaming<DataplaneMessage>>) -> Result<Response<Self::StreamStream>, Status> {
        let peer = request.remote_addr();
        let token = bearer(&request, "dataplane token")?;
        let inbound: Inbound = Box::pin(request.into_inner());
        self.open_stream(&token, peer, inbound).await.map(Response::new)
    }
}

impl DpsService {
    /// Opens a sidecar's stream, over gRPC or the framed transport: authenticates its `token`,
    /// reads its Hello from `inbound`, registers it and starts its session; the session's
    /// messages to the sidecar come out of the returned [`Outbound`].
    pub(crate) async fn open_stream(
        &self,
        token: &str,
        peer: Option<std::net::SocketAddr>,
        mut inbound: Inbound,
    ) -> Result<Outbound, Status> {
        let peer_ip = peer.map(|a| a.ip().to_canonical());
        let peer = peer.map(|a| a.to_string()).unwrap_or_else(|| "unknown".into());
        let refused = |s: &Status| tracing::warn!(peer, reason = s.message(), "sidecar refused");
        self.shared.check_leading()?;
        let credential = authenticate(&self.shared, token).await.inspect_err(refused)?;
        let first = first_message(&mut inbound).await?;
        let Some(DataplaneMessage { message: Some(dataplane_message::Message::Hello(hello)) }) = first else {
            return Err(Status::invalid_argument("the first message must be Hello"));
        };
        if hello.protocol != PROTOCOL_VERSION {
            return Err(Status::failed_precondition(format!(
                "protocol {} is not supported; this zone speaks {PROTOCOL_VERSION}",
                hello.protocol
            )));
        }
        let (dp, mesh, service, token, from_pod) = match credential {
            Credential::Token { mesh, service, claims } => {
                let dp = check_dataplane(&hello.dataplane, &mesh, &service)
                    .and_then(|dp| check_address(&dp, peer_ip, &self.shared.allowed_addresses).map(|()| dp))
                    .inspect_err(refused)?;
                (dp, mesh, service, TokenHold::strait(claims, "dataplane token"), false)
            }
            Credential::Pod { pod, expires_at } => {
                if !hello.dataplane.is_empty() {
                    let status = Status::invalid_argument(
                        "a sidecar that presents its Pod's service-account token sends no Dataplane: the zone keeps the Pod's Dataplane from its Services (start strait-dp with --kubernetes-token-file and without --dataplane-file)",
                    );
                    refused(&status);
                    return Err(status);
                }
                let dp = pod_dataplane(&self.shared, &pod)
                    .await
                    .and_then(|dp| check_address(&dp, peer_ip, &self.shared.allowed_addresses).map(|()| dp))
                    .inspect_err(refused)?;
                let mesh = dp.mesh.clone().unwrap_or_default();
                // Its workload certificate names the first of its services.
                let service = match &dp.spec {
                    Spec::Dataplane(spec) => spec.networking.inbound.first().map(|i| i.service().to_string()).unwrap_or_default(),
                    _ => String::new(),
                };
                tracing::info!(peer, namespace = %pod.namespace, pod = %pod.pod, service_account = %pod.service_account, "sidecar authenticated by its Pod's service-account token");
                (dp, mesh, service, TokenHold { expires_at, revocable: None, what: "service-account token" }, true)
            }
        };
        if self.shared.resources.get(ResourceType::Mesh, None, &mesh).await.map_err(|e| Status::unavailable(e.to_string()))?.is_none() {
            return Err(Status::failed_precondition(format!("mesh {mesh:?} is not known in this zone yet")));
        }
        if !from_pod {
            bind_name(&self.shared.resources, &mesh, &dp.name, &service, token.expires_at).await.inspect_err(refused)?;
        }
        let id = format!("{mesh}/{}", dp.name);
        if !self.shared.connected.lock().unwrap_or_else(|p| p.into_inner()).insert(id.clone()) {
            return Err(Status::already_exists(format!("dataplane {id} is already connected")));
        }
        // Every line of the session, to its end, names the Dataplane, its mesh and service.
        let span =
            tracing::info_span!("dps_session", dataplane = %dp.name, mesh = %mesh, service = %service, zone = %self.shared.zone, peer);
        span.in_scope(|| tracing::info!("sidecar connected"));
        let (tx, rx) = outbox();
        let session = session::Session {
            shared: self.shared.clone(),
            dp,
            from_pod,
            mesh,
            service,
            id,
            token,
            tx,
            in_parts: hello.deltas,
            in_pieces: hello.deltas && hello.pieces,
            nacked: Default::default(),
            sent: Default::default(),
            inspecting: Default::default(),
        };
        self.tasks.spawn(Box::new(session).run(inbound).instrument(span));
        Ok(rx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_dataplane_declares_the_address_it_connects_from_or_an_allowed_one() {
        let dp = |address: &str| {
            Resource::from_value(serde_json::json!({"type": "Dataplane", "name": "x", "mesh": "default",
                "spec": {"networking": {"address": address, "inbound": [{"port": 8000, "tags": {"strait.io/service": "web"}}]}}}))
            .unwrap()
        };
        let from = |ip: &str| Some(ip.parse().unwrap());
        assert!(check_address(&dp("10.0.0.5"), from("10.0.0.5"), &[]).is_ok());
        let spoofed = check_address(&dp("127.0.0.1"), from("10.0.0.5"), &[]).unwrap_err();
        assert_eq!(spoofed.code(), tonic::Code::PermissionDenied);
        assert!(spoofed.message().contains("connects from (10.0.0.5)"), "{spoofed:?}");
        let allowed = [crate::config::AddressRange::parse("192.0.2.0/24").unwrap()];
        assert!(check_address(&dp("192.0.2.9"), from("10.0.0.5"), &allowed).is_ok(), "behind NAT, allowed by the operator");
        assert!(check_address(&dp("10.0.0.6"), from("10.0.0.5"), &allowed).is_err());
    }

    #[test]
    fn a_token_registers_only_its_mesh_and_service() {
        let dp = |mesh: &str, services: &[&str]| {
            let inbound: Vec<serde_json::Value> =
                services.iter().enumerate().map(|(i, s)| serde_json::json!({"port": 8000 + i, "tags": {"strait.io/service": s}})).collect();
            serde_json::to_vec(&serde_json::json!({"type": "Dataplane", "name": "x", "mesh": mesh, "spec": {"networking": {"address": "192.0.2.1", "inbound": inbound}}}))
                .unwrap()
        };
        assert!(check_dataplane(&dp("default", &["web"]), "default", "web").is_ok());
        let cases = [
            (dp("default", &["api"]), tonic::Code::PermissionDenied, "cannot register service \"api\""),
            (dp("default", &["web", "api"]), tonic::Code::PermissionDenied, "cannot register service \"api\""),
            (dp("other", &["web"]), tonic::Code::PermissionDenied, "for mesh \"default\""),
            (b"not json".to_vec(), tonic::Code::InvalidArgument, "not JSON"),
            (serde_json::to_vec(&serde_json::json!({"type": "Dataplane", "name": "x", "mesh": "default", "spec": {"networking": {"address": "1.2.3.4", "inbound": []}}})).unwrap(), tonic::Code::InvalidArgument, "spec.networking.inbound"),
        ];
        for (json, code, message) in cases {
            let err = check_dataplane(&json, "default", "web").unwrap_err();
            assert_eq!(err.code(), code, "{err:?}");
            assert!(err.message().contains(message), "{err:?}");
        }
    }
}
