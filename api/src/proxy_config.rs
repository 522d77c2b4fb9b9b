//! The whole configuration of one sidecar, as the zone control plane sends it over DPS.
//!
//! In: the sidecar's Dataplane, the policies of its mesh, the mesh's Dataplanes (endpoints),
//! and the mesh's trust bundle. Out: a [`ProxyConfig`]: its identity, inbounds with their
//! permission rules, outbounds with endpoints and merged policies, every conf typed
//! ([`crate::proxy_policies`]) and every protocol a [`Protocol`]. Pure and I/O-free, so the
//! zone can compute it for every sidecar and send only the ones that changed; a merged conf
//! that does not fit its type is a [`PolicyError`], not a silent default.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::dataplane::DataplaneSpec;
use crate::gateway_config::ZoneInventory;
use crate::names::{PROTOCOL_TAG, SERVICE_TAG};
use crate::policies::tcp_route::TcpRouteConf;
pub use crate::proxy_policies::PolicyError;
use crate::proxy_policies::{self, DestinationPolicies, HttpRoute, InboundPolicies, ProxyPolicies};
use crate::{Resource, ResourceType, Spec};

/// What a service speaks, from the `strait.io/protocol` tag of its inbounds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    /// Bytes, tunnelled over mTLS (the default).
    #[default]
    Tcp,
    /// HTTP/1.1 (an application may also send HTTP/2 without TLS).
    Http,
    /// HTTP/2 without TLS (h2c) on the application side.
    Http2,
    /// gRPC: HTTP/2 with trailers.
    Grpc,
}

impl Protocol {
    /// The protocol a tag names; no tag is TCP. Dataplane validation refuses unknown values,
    /// so anything else (an older zone's data) is TCP too, the one protocol that carries every
    /// other.
    pub fn from_tag(tag: Option<&str>) -> Protocol {
        match tag {
            Some("http") => Protocol::Http,
            Some("http2") => Protocol::Http2,
            Some("grpc") => Protocol::Grpc,
            _ => Protocol::Tcp,
        }
    }

    /// Whether requests are proxied one by one (L7) rather than as a byte stream.
    pub fn is_http(self) -> bool {
        self != Protocol::Tcp
    }

    /// The tag value.
    pub fn as_str(self) -> &'static str {
        match self {
            Protocol::Tcp => "tcp",
            Protocol::Http => "http",
            Protocol::Http2 => "http2",
            Protocol::Grpc => "grpc",
        }
    }
}

/// A sidecar's configuration.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ProxyConfig {
    /// The mesh.
    pub mesh: String,
    /// The Dataplane's name.
    pub dataplane: String,
    /// The zone the Dataplane runs in; its endpoints are preferred.
    #[serde(default)]
    pub zone: String,
    /// The workload identity (`spiffe://<mesh>/<service>`).
    pub identity: String,
    /// Services this proxy serves.
    pub inbounds: Vec<InboundConfig>,
    /// Services this proxy reaches.
    pub outbounds: Vec<OutboundConfig>,
    /// Roots and revoked intermediates of the mesh.
    pub trust_bundle: MeshTrust,
    /// Lifetime of workload certificates, in seconds.
    pub certificate_lifetime_secs: u64,
    /// Proxy-wide policies (MeshTrace, MeshMetric), merged.
    pub proxy: ProxyPolicies,
    /// Port of the transparent outbound listener, when the Dataplane uses transparent proxying.
    #[serde(default)]
    pub transparent_outbound_port: Option<u16>,
}

/// A mesh's trust bundle as the sidecar gets it: the root certificates (PEM) and the
/// fingerprints of revoked zone intermediates. The same shape as the stored `TrustBundle`;
/// fields a newer global may add are ignored (they cannot loosen what roots are trusted).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MeshTrust {
    /// Root certificates, PEM.
    pub roots: Vec<String>,
    /// Hex SHA-256 fingerprints of revoked intermediates.
    #[serde(default)]
    pub revoked: std::collections::BTreeSet<String>,
}

/// One inbound.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct InboundConfig {
    /// Port for mTLS traffic from other sidecars.
    pub port: u16,
    /// Where the application listens.
    pub service_address: String,
    /// The application's port.
    pub service_port: u16,
    /// The service.
    pub service: String,
    /// What the service speaks.
    pub protocol: Protocol,
    /// Per policy type, rules by caller (MeshTrafficPermission among them); no
    /// MeshTrafficPermission rule for a caller means it is denied.
    pub policies: InboundPolicies,
}

/// One destination service.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct OutboundConfig {
    /// The service.
    pub service: String,
    /// The local port for explicit outbounds (None: reached through transparent proxying).
    pub port: Option<u16>,
    /// The local address of an explicit outbound.
    pub address: Option<String>,
    /// What the service speaks (from the endpoints' tags).
    pub protocol: Protocol,
    /// Where the service runs.
    pub endpoints: Vec<Endpoint>,
    /// Per policy type, the merged conf.
    pub policies: DestinationPolicies,
    /// HTTP routes, most specific first.
    pub http_routes: Vec<HttpRoute>,
    /// TCP route, if any.
    pub tcp_route: Option<TcpRouteConf>,
}

/// An endpoint of a service.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Endpoint {
    /// Address of the endpoint's sidecar.
    pub address: String,
    /// Its inbound port.
    pub port: u16,
    /// Its zone.
    pub zone: String,
    /// Its inbound tags.
    pub tags: BTreeMap<String, String>,
    /// In another zone: the endpoint behind the gateways (its [`crate::gateway_config::instance_id`]),
    /// named in the SNI so that the remote zone's ingress forwards to it; absent, the remote
    /// zone picks one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub instance: Option<String>,
}

/// The other zones, as a sidecar reaches them: their inventories, and this zone's egresses.
#[derive(Debug, Clone, Default)]
pub struct Remote {
    /// Every zone's inventory (this zone's own is skipped).
    pub inventories: Vec<ZoneInventory>,
    /// This zone's gateways' egresses (`ip:port`); without one, other zones are out of reach.
    pub egresses: Vec<String>,
}

/// What every Dataplane of one mesh in one zone is built from, prepared once per change and
/// shared by all of them: the policies (each converted once), every service's endpoints (this
/// zone's Dataplanes and the other zones behind the gateways), and which services each
/// service's routes may send to. Building one sidecar's configuration then costs what that
/// sidecar uses (its inbounds and the destinations it reaches), not the size of the mesh.
#[derive(Debug, Clone, Default)]
pub struct MeshView {
    zone: String,
    policies: crate::merge::Policies,
    endpoints: BTreeMap<String, Vec<Endpoint>>,
    /// Each service's endpoints as JSON, encoded the first time a sidecar needs them and then
    /// shared by every sidecar that reaches the service.
    encoded: BTreeMap<String, std::sync::OnceLock<prost::bytes::Bytes>>,
    route_backends: BTreeMap<String, std::collections::BTreeSet<String>>,
    /// Whether a policy selects a proxy by its Dataplane's name: sidecars alike then differ by
    /// name too (see [`MeshView::shape_of`]).
    names_matter: bool,
}

impl MeshView {
    /// The view of `mesh` in `zone` from its `resources` (policies and Dataplanes) and the
    /// other zones (`remote`).
    pub fn new<R: std::borrow::Borrow<Resource>>(mesh: &str, zone: &str, resources: &[R], remote: &Remote) -> MeshView {
        let mut endpoints = endpoints_by_service(resources, zone);
        add_remote_endpoints(&mut endpoints, remote, mesh, zone);
        let policies = crate::merge::Policies::new(resources);
        let encoded = endpoints.keys().map(|s| (s.clone(), std::sync::OnceLock::new())).collect();
        let names_matter = policies.specs().any(|(_, spec)| names_a_dataplane(spec));
        MeshView { zone: zone.to_string(), route_backends: route_backends(&policies), policies, endpoints, encoded, names_matter }
    }

    /// What the settings of `dp` ([`MeshView::build_settings`], but for the Dataplane's name)
    /// are made of in this view, as a key: its mesh, inbounds, outbounds and transparent
    /// proxying, and its name only when a policy selects a Dataplane by name. Sidecars of one
    /// shape (the replicas of a service, alike but for their address) get the same settings,
    /// computed once. `None` when `dp` is not a Dataplane of a mesh.
    pub fn shape_of(&self, dp: &Resource) -> Option<String> {
        let Spec::Dataplane(spec) = &dp.spec else { return None };
        let name = if self.names_matter { dp.name.as_str() } else { "" };
        let n = &spec.networking;
        serde_json::to_string(&(dp.mesh.as_deref()?, name, &n.inbound, &n.outbound, &n.transparent_proxying)).ok()
    }

    /// The endpoints of `service` as JSON (a list of [`Endpoint`]), encoded once per view;
    /// `None` when the service has none.
    pub fn encoded_endpoints(&self, service: &str) -> Option<prost::bytes::Bytes> {
        let list = self.endpoints.get(service)?;
        let encoded = self.encoded.get(service)?.get_or_init(|| {
            // A list of plain structs and string maps always serializes.
            serde_json::to_vec(list).map(prost::bytes::Bytes::from).unwrap_or_default()
        });
        Some(encoded.clone())
    }

    /// Every service with an endpoint, this zone's or another's.
    pub fn services(&self) -> impl Iterator<Item = &str> {
        self.endpoints.keys().map(String::as_str)
    }

    /// The destinations `spec` gets besides its explicit outbounds: with transparent
    /// proxying, every service of the mesh, or only its `reachableServices` when it lists
    /// them; then, whatever it reaches, the services their routes may send to (a route's
    /// backends and mirrors), which the sidecar must know to follow the route. Only services
    /// with an endpoint: a route to a service that has none is refused by the sidecar (NACK)
    /// with the backend's name, as it was before routes were followed here.
    pub fn destinations<'a>(&'a self, spec: &'a DataplaneSpec) -> Vec<&'a str> {
        let mut reached: std::collections::BTreeSet<&str> = spec.networking.outbound.iter().map(|o| o.service()).collect();
        if let Some(t) = spec.networking.transparent_proxying.as_ref() {
            match &t.reachable_services {
                Some(listed) => reached.extend(listed.iter().map(String::as_str)),
                None => reached.extend(self.services()),
            }
        }
        let backends: Vec<&str> = reached.iter().filter_map(|s| self.route_backends.get(*s)).flatten().map(String::as_str).collect();
        reached.extend(backends);
        reached.into_iter().filter(|s| self.endpoints.contains_key(*s)).collect()
    }

    /// The policies behind the configuration [`MeshView::build`] makes for `dp`: per inbound,
    /// outbound and route, the policies that matched in merge order and the one that set each
    /// field.
    pub fn explain(&self, dp: &Resource) -> Option<crate::merge::EffectiveConfig> {
        let Spec::Dataplane(spec) = &dp.spec else { return None };
        Some(self.policies.explained(&dp.name, spec, &self.destinations(spec)))
    }

    /// Builds the configuration of Dataplane `dp` with the mesh's `trust_bundle` and
    /// certificate lifetime. `Ok(None)` when `dp` is not a Dataplane; an error when a merged
    /// conf does not fit its type.
    pub fn build(
        &self,
        dp: &Resource,
        trust_bundle: MeshTrust,
        certificate_lifetime_secs: u64,
    ) -> Result<Option<ProxyConfig>, PolicyError> {
        self.build_with(dp, trust_bundle, certificate_lifetime_secs, true)
    }

    /// [`MeshView::build`] without the outbounds' endpoints (each outbound's list is empty):
    /// the settings part of a configuration sent in parts, whose endpoints are
    /// [`MeshView::encoded_endpoints`], shared between sidecars.
    pub fn build_settings(
        &self,
        dp: &Resource,
        trust_bundle: MeshTrust,
        certificate_lifetime_secs: u64,
    ) -> Result<Option<ProxyConfig>, PolicyError> {
        self.build_with(dp, trust_bundle, certificate_lifetime_secs, false)
    }

    fn build_with(
        &self,
        dp: &Resource,
        trust_bundle: MeshTrust,
        certificate_lifetime_secs: u64,
        with_endpoints: bool,
    ) -> Result<Option<ProxyConfig>, PolicyError> {
        let Spec::Dataplane(spec) = &dp.spec else { return Ok(None) };
        let Some(mesh) = dp.mesh.clone() else { return Ok(None) };
        let effective = self.policies.effective(&dp.name, spec, &self.destinations(spec));
        let inbounds = spec
            .networking
            .inbound
            .iter()
            .zip(&effective.inbounds)
            .map(|(i, eff)| {
                Ok(InboundConfig {
                    port: i.port,
                    service_address: i.service_address.clone().unwrap_or_else(|| "127.0.0.1".into()),
                    service_port: i.service_port.unwrap_or(i.port),
                    service: i.service().to_string(),
                    protocol: Protocol::from_tag(i.tags.get(PROTOCOL_TAG).map(String::as_str)),
                    policies: InboundPolicies::from_merged(&eff.from)?.with_route_rate_limits(&eff.route_rate_limits)?,
                })
            })
            .collect::<Result<_, PolicyError>>()?;
        let outbounds = effective
            .outbounds
            .into_iter()
            .map(|o| {
                let explicit = spec.networking.outbound.iter().find(|x| x.service() == o.service);
                let all = self.endpoints.get(&o.service).map(Vec::as_slice).unwrap_or_default();
                let protocol = Protocol::from_tag(all.iter().find_map(|e| e.tags.get(PROTOCOL_TAG)).map(String::as_str));
                let eps = if with_endpoints { all.to_vec() } else { Vec::new() };
                Ok(OutboundConfig {
                    port: explicit.map(|x| x.port),
                    address: explicit.map(|x| x.address.clone().unwrap_or_else(|| "127.0.0.1".into())),
                    protocol,
                    endpoints: eps,
                    policies: DestinationPolicies::from_merged(o.to.iter().map(|(k, v)| (*k, &v.conf, v.origin.as_slice())))?,
                    http_routes: o.http_routes.iter().map(HttpRoute::from_merged).collect::<Result<_, _>>()?,
                    tcp_route: o.tcp_route.as_ref().map(|t| proxy_policies::tcp_route(&t.conf, &t.origin)).transpose()?,
                    service: o.service,
                })
            })
            .collect::<Result<_, PolicyError>>()?;
        let service = spec.networking.inbound.first().map(|i| i.service().to_string()).unwrap_or_default();
        Ok(Some(ProxyConfig {
            identity: format!("spiffe://{mesh}/{service}"),
            mesh,
            dataplane: dp.name.clone(),
            zone: self.zone.clone(),
            inbounds,
            outbounds,
            trust_bundle,
            certificate_lifetime_secs,
            proxy: ProxyPolicies::from_merged(effective.proxy.iter().map(|(k, v)| (*k, &v.conf, v.origin.as_slice())))?,
            transparent_outbound_port: spec.networking.transparent_proxying.as_ref().map(|t| t.redirect_port_outbound),
        }))
    }
}

/// The policies behind the configuration [`build`] makes for `dp` (see [`MeshView::explain`]).
pub fn explain(dp: &Resource, zone: &str, resources: &[Resource], remote: &Remote) -> Option<crate::merge::EffectiveConfig> {
    MeshView::new(dp.mesh.as_deref()?, zone, resources, remote).explain(dp)
}

/// Builds the configuration of Dataplane `dp` (in `zone`) from the mesh's `resources`
/// (policies and Dataplanes), the other zones' services reached through `remote`, its
/// `trust_bundle` and certificate lifetime (see [`MeshView::build`]; a zone building many
/// sidecars makes the view once).
pub fn build(
    dp: &Resource,
    zone: &str,
    resources: &[Resource],
    remote: &Remote,
    trust_bundle: MeshTrust,
    certificate_lifetime_secs: u64,
) -> Result<Option<ProxyConfig>, PolicyError> {
    let Some(mesh) = dp.mesh.as_deref() else { return Ok(None) };
    MeshView::new(mesh, zone, resources, remote).build(dp, trust_bundle, certificate_lifetime_secs)
}

/// For each service, the services the routes to it (MeshHTTPRoute and MeshTCPRoute rules,
/// their backends and request mirrors) may send to, whichever sidecars they select: a
/// sidecar that reaches the service gets these too.
fn route_backends(policies: &crate::merge::Policies) -> BTreeMap<String, std::collections::BTreeSet<String>> {
    use crate::target_ref::TargetKind;
    let mut out: BTreeMap<String, std::collections::BTreeSet<String>> = BTreeMap::new();
    let routes = policies.specs().filter(|(p, _)| matches!(p.kind, ResourceType::MeshHTTPRoute | ResourceType::MeshTCPRoute));
    for (_, spec) in routes {
        for item in spec.get("to").and_then(serde_json::Value::as_array).into_iter().flatten() {
            let target = item.get("targetRef").and_then(|t| serde_json::from_value::<crate::target_ref::TargetRef>(t.clone()).ok());
            let Some(service) = target.filter(|t| t.kind == TargetKind::MeshService).and_then(|t| t.name) else { continue };
            let mut named = Vec::new();
            backend_names(item, &mut named);
            out.entry(service).or_default().extend(named);
        }
    }
    out
}

/// Whether a `targetRef` under `value` selects a Dataplane (by name).
fn names_a_dataplane(value: &serde_json::Value) -> bool {
    use serde_json::Value;
    match value {
        Value::Object(map) => map.iter().any(|(key, inner)| {
            (key == "targetRef" && inner.get("kind").and_then(Value::as_str) == Some("Dataplane")) || names_a_dataplane(inner)
        }),
        Value::Array(list) => list.iter().any(names_a_dataplane),
        _ => false,
    }
}

/// The `name` of every `backendRef` and `backendRefs` entry under `value`.
fn backend_names(value: &serde_json::Value, out: &mut Vec<String>) {
    use serde_json::Value;
    match value {
        Value::Object(map) => {
            for (key, inner) in map {
                match (key.as_str(), inner) {
                    ("backendRef", Value::Object(b)) => out.extend(b.get("name").and_then(Value::as_str).map(str::to_string)),
                    ("backendRefs", Value::Array(list)) => {
                        out.extend(list.iter().filter_map(|b| b.get("name").and_then(Value::as_str)).map(str::to_string))
                    }
                    _ => backend_names(inner, out),
                }
            }
        }
        Value::Array(list) => list.iter().for_each(|v| backend_names(v, out)),
        _ => {}
    }
}

fn endpoints_by_service<R: std::borrow::Borrow<Resource>>(resources: &[R], zone: &str) -> BTreeMap<String, Vec<Endpoint>> {
    let mut out: BTreeMap<String, Vec<Endpoint>> = BTreeMap::new();
    for r in resources.iter().map(R::borrow).filter(|r| r.kind == ResourceType::Dataplane) {
        let Spec::Dataplane(DataplaneSpec { networking }) = &r.spec else { continue };
        // An inbound whose application fails its sidecar's probe gets no traffic.
        for inbound in networking.inbound.iter().filter(|i| i.is_ready()) {
            let Some(service) = inbound.tags.get(SERVICE_TAG) else { continue };
            out.entry(service.clone()).or_default().push(Endpoint {
                address: networking.address.clone(),
                port: inbound.port,
                zone: zone.to_string(),
                tags: inbound.tags.clone(),
                instance: None,
            });
        }
    }
    out
}

/// For each other zone that has a healthy endpoint of the service and a gateway to reach it
/// by, its endpoints one by one (with their tags, for subsets), each through every egress of
/// this zone; a zone that reports only counts is one endpoint per egress: the sidecar prefers
/// its own zone, orders the others, and spreads over the remote endpoints (and fails over
/// between the egresses).
fn add_remote_endpoints(out: &mut BTreeMap<String, Vec<Endpoint>>, remote: &Remote, mesh: &str, zone: &str) {
    let egresses: Vec<(String, u16)> = remote
        .egresses
        .iter()
        .filter_map(|e| e.rsplit_once(':'))
        .filter_map(|(a, p)| Some((a.trim_start_matches('[').trim_end_matches(']').to_string(), p.parse().ok()?)))
        .collect();
    if egresses.is_empty() {
        return;
    }
    for inventory in remote.inventories.iter().filter(|i| i.zone != zone && !i.ingress_addresses.is_empty()) {
        for service in inventory.services.iter().filter(|s| s.mesh == mesh && s.healthy > 0) {
            let tags =
                BTreeMap::from([(SERVICE_TAG.to_string(), service.name.clone()), (PROTOCOL_TAG.to_string(), service.protocol.clone())]);
            let endpoints = out.entry(service.name.clone()).or_default();
            for (address, port) in &egresses {
                let endpoint = |tags: BTreeMap<String, String>, instance: Option<String>| Endpoint {
                    address: address.clone(),
                    port: *port,
                    zone: inventory.zone.clone(),
                    tags,
                    instance,
                };
                if service.instances.is_empty() {
                    endpoints.push(endpoint(tags.clone(), None));
                }
                for instance in &service.instances {
                    // The service and protocol the inventory states win over the instance's own tags.
                    let mut own = instance.tags.clone();
                    own.extend(tags.clone());
                    endpoints.push(endpoint(own, Some(instance.id.clone())));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gateway_config::InventoryInstance;
    use crate::parse_documents;

    #[test]
    fn a_sidecar_gets_its_inbounds_permissions_and_destinations() {
        let docs = r#"
type: Dataplane
name: web-1
mesh: default
spec:
  networking:
    address: 192.0.2.1
    inbound: [{port: 8080, servicePort: 80, tags: {strait.io/service: web, strait.io/protocol: http}}]
    outbound: [{port: 10001, tags: {strait.io/service: api}}]
---
type: Dataplane
name: api-1
mesh: default
spec:
  networking:
    address: 192.0.2.2
    inbound: [{port: 9090, tags: {strait.io/service: api, strait.io/protocol: http, version: v1}}]
---
type: MeshTrafficPermission
name: allow-all
mesh: default
spec:
  from: [{targetRef: {kind: Mesh}, default: {action: Allow}}]
---
type: MeshTimeout
name: t
mesh: default
spec:
  to: [{targetRef: {kind: MeshService, name: api}, default: {idleTimeout: 5s}}]
"#;
        let resources: Vec<Resource> = parse_documents(docs).into_iter().map(|r| r.unwrap()).collect();
        let cfg = build(&resources[0], "zone-1", &resources, &Remote::default(), MeshTrust::default(), 3600).unwrap().unwrap();
        assert_eq!(cfg.identity, "spiffe://default/web");
        assert_eq!(cfg.inbounds[0].service_port, 80);
        assert_eq!(cfg.inbounds[0].protocol, Protocol::Http);
        let mtp = &cfg.inbounds[0].policies.traffic_permission;
        assert_eq!(mtp[0].conf.action, crate::policies::traffic_permission::Action::Allow);
        let api = cfg.outbounds.iter().find(|o| o.service == "api").unwrap();
        assert_eq!(api.port, Some(10001));
        assert_eq!(api.protocol, Protocol::Http);
        assert_eq!(
            api.endpoints,
            vec![Endpoint {
                address: "192.0.2.2".into(),
                port: 9090,
                zone: "zone-1".into(),
                tags: resources[1].clone().spec_value()["networking"]["inbound"][0]["tags"]
                    .as_object()
                    .unwrap()
                    .iter()
                    .map(|(k, v)| (k.clone(), v.as_str().unwrap().to_string()))
                    .collect(),
                instance: None,
            }]
        );
        let timeout = api.policies.timeout.as_ref().expect("the MeshTimeout, typed");
        assert_eq!(serde_json::to_value(timeout).unwrap()["idleTimeout"], "5s");
        let wire = serde_json::to_value(&cfg).unwrap();
        assert_eq!(wire["outbounds"][0]["policies"]["MeshTimeout"]["idleTimeout"], "5s", "keyed by policy type on the wire");
        assert_eq!(serde_json::from_value::<ProxyConfig>(wire).unwrap(), cfg, "what the zone sends is what the sidecar reads");
        assert!(cfg.outbounds.iter().all(|o| o.service != "web"), "no explicit outbound and no transparent proxying: not a destination");
    }

    #[test]
    fn sidecars_alike_but_for_address_and_name_share_a_shape_until_a_policy_names_one() {
        let dataplane = |name: &str, address: &str, outbound: &str| {
            format!(
                "type: Dataplane\nname: {name}\nmesh: default\nspec:\n  networking:\n    address: {address}\n    inbound: [{{port: 8080, tags: {{strait.io/service: web}}}}]\n    outbound: [{{port: 10001, tags: {{strait.io/service: {outbound}}}}}]\n---\n"
            )
        };
        let docs =
            dataplane("web-1", "192.0.2.1", "api") + &dataplane("web-2", "192.0.2.2", "api") + &dataplane("web-3", "192.0.2.3", "db");
        let mut resources: Vec<Resource> = parse_documents(&docs).into_iter().map(|r| r.unwrap()).collect();
        let view = MeshView::new("default", "zone-1", &resources, &Remote::default());
        let shapes: Vec<String> = resources.iter().map(|r| view.shape_of(r).unwrap()).collect();
        assert_eq!(shapes[0], shapes[1], "replicas differ by address and name only");
        assert_ne!(shapes[0], shapes[2], "another outbound is another shape");

        let named = "type: MeshTimeout\nname: t\nmesh: default\nspec:\n  targetRef: {kind: Dataplane, name: web-1}\n  to: [{targetRef: {kind: Mesh}, default: {idleTimeout: 5s}}]\n";
        resources.extend(parse_documents(named).into_iter().map(|r| r.unwrap()));
        let view = MeshView::new("default", "zone-1", &resources, &Remote::default());
        assert_ne!(view.shape_of(&resources[0]).unwrap(), view.shape_of(&resources[1]).unwrap(), "a policy selects web-1 by name");
        let settings = |dp: &Resource| view.build_settings(dp, MeshTrust::default(), 60).unwrap().unwrap();
        assert_ne!(settings(&resources[0]).outbounds, settings(&resources[1]).outbounds);
        assert_eq!(view.shape_of(&resources[3]), None, "not a Dataplane");
    }

    #[test]
    fn a_sidecar_gets_only_the_destinations_it_can_use() {
        let dataplane = |name: &str, service: &str, networking_extra: &str| {
            format!(
                "type: Dataplane\nname: {name}\nmesh: default\nspec:\n  networking:\n    address: 192.0.2.1\n    inbound: [{{port: 8080, tags: {{strait.io/service: {service}, strait.io/protocol: http}}}}]\n{networking_extra}---\n"
            )
        };
        let mut docs = String::new();
        docs += &dataplane("web-1", "web", "    outbound: [{port: 10001, tags: {strait.io/service: api}}]\n");
        docs += &dataplane("tp-all", "tp", "    transparentProxying: {}\n");
        docs += &dataplane("tp-some", "tp", "    transparentProxying: {reachableServices: [db, ghost]}\n");
        for service in ["api", "api-v2", "mirror", "db", "search", "other"] {
            docs += &dataplane(&format!("{service}-1"), service, "");
        }
        docs += r#"type: MeshHTTPRoute
name: api-split
mesh: default
spec:
  targetRef: {kind: Mesh}
  to:
    - targetRef: {kind: MeshService, name: api}
      rules:
        - matches: [{path: {type: PathPrefix, value: /v2}}]
          default:
            backendRefs: [{kind: MeshService, name: api-v2}]
            filters: [{type: RequestMirror, requestMirror: {backendRef: {kind: MeshService, name: mirror}}}]
---
type: MeshTCPRoute
name: db-move
mesh: default
spec:
  targetRef: {kind: Mesh}
  to:
    - targetRef: {kind: MeshService, name: db}
      rules: [{default: {backendRefs: [{kind: MeshService, name: search}]}}]
"#;
        let resources: Vec<Resource> = parse_documents(&docs).into_iter().map(|r| r.unwrap()).collect();
        let view = MeshView::new("default", "zone-1", &resources, &Remote::default());
        let destinations = |name: &str| -> Vec<String> {
            let dp = resources.iter().find(|r| r.name == name).unwrap();
            let cfg = view.build(dp, MeshTrust::default(), 3600).unwrap().unwrap();
            assert_eq!(cfg, build(dp, "zone-1", &resources, &Remote::default(), MeshTrust::default(), 3600).unwrap().unwrap());
            cfg.outbounds.iter().map(|o| o.service.clone()).collect()
        };
        assert_eq!(destinations("web-1"), ["api", "api-v2", "mirror"], "its explicit outbound and where that one's route sends");
        assert_eq!(destinations("tp-all"), ["api", "api-v2", "db", "mirror", "other", "search", "tp", "web"], "transparent: every service");
        assert_eq!(
            destinations("tp-some"),
            ["db", "search"],
            "transparent with reachableServices: those that have endpoints, and their route's backends"
        );
        let explained = view.explain(resources.iter().find(|r| r.name == "tp-some").unwrap()).unwrap();
        let explained: Vec<&str> = explained.outbounds.iter().map(|o| o.service.as_str()).collect();
        assert_eq!(explained, ["db", "search"], "inspect explains what the sidecar gets");
        let db = view.build(resources.iter().find(|r| r.name == "tp-some").unwrap(), MeshTrust::default(), 3600).unwrap().unwrap();
        let db = db.outbounds.iter().find(|o| o.service == "db").unwrap();
        assert_eq!(db.endpoints.len(), 1, "with its endpoints");
        assert!(db.tcp_route.is_some(), "and its route");
    }

    #[test]
    fn services_of_other_zones_are_reached_through_the_egress() {
        let docs = r#"
type: Dataplane
name: web-1
mesh: default
spec:
  networking:
    address: 192.0.2.1
    inbound: [{port: 8080, tags: {strait.io/service: web}}]
    transparentProxying: {}
---
type: Dataplane
name: api-1
mesh: default
spec:
  networking:
    address: 192.0.2.2
    inbound: [{port: 9090, tags: {strait.io/service: api, strait.io/protocol: http}}]
"#;
        let resources: Vec<Resource> = parse_documents(docs).into_iter().map(|r| r.unwrap()).collect();
        let inventory = |zone: &str, services: serde_json::Value| -> ZoneInventory {
            serde_json::from_value(serde_json::json!({"zone": zone, "services": services, "ingressAddresses": ["192.0.2.200:10001"]}))
                .unwrap()
        };
        let remote = Remote {
            inventories: vec![
                inventory(
                    "zone-1",
                    serde_json::json!([{"mesh": "default", "name": "api", "endpoints": 1, "healthy": 1, "protocol": "http"}]),
                ),
                inventory(
                    "zone-2",
                    serde_json::json!([
                        {"mesh": "default", "name": "api", "endpoints": 2, "healthy": 2, "protocol": "http"},
                        {"mesh": "default", "name": "db", "endpoints": 1, "healthy": 1, "protocol": "tcp"},
                        {"mesh": "default", "name": "down", "endpoints": 1, "healthy": 0, "protocol": "tcp"},
                        {"mesh": "other", "name": "elsewhere", "endpoints": 1, "healthy": 1, "protocol": "tcp"},
                    ]),
                ),
            ],
            egresses: vec!["192.0.2.100:10002".into()],
        };
        let cfg = build(&resources[0], "zone-1", &resources, &remote, MeshTrust::default(), 3600).unwrap().unwrap();
        let zones = |service: &str| -> Vec<(String, String, u16)> {
            cfg.outbounds
                .iter()
                .find(|o| o.service == service)
                .map(|o| o.endpoints.iter().map(|e| (e.zone.clone(), e.address.clone(), e.port)).collect())
                .unwrap_or_default()
        };
        assert_eq!(
            zones("api"),
            vec![("zone-1".into(), "192.0.2.2".into(), 9090), ("zone-2".into(), "192.0.2.100".into(), 10002)],
            "this zone's own inventory adds nothing: its endpoints are the Dataplanes"
        );
        assert_eq!(zones("db"), vec![("zone-2".into(), "192.0.2.100".into(), 10002)], "a service only in another zone is reachable");
        assert_eq!(cfg.outbounds.iter().find(|o| o.service == "db").unwrap().protocol, Protocol::Tcp);
        assert!(zones("down").is_empty(), "a zone with no healthy endpoint is not used");
        assert!(zones("elsewhere").is_empty(), "other meshes stay apart");

        // A zone that lists its endpoints one by one: each is an endpoint, with its tags.
        let mut listed = remote.clone();
        listed.inventories[1].services[1].instances = vec![
            InventoryInstance { id: "e1".into(), tags: BTreeMap::from([("version".to_string(), "v1".to_string())]) },
            InventoryInstance { id: "e2".into(), tags: BTreeMap::from([(SERVICE_TAG.to_string(), "spoofed".to_string())]) },
        ];
        let cfg = build(&resources[0], "zone-1", &resources, &listed, MeshTrust::default(), 3600).unwrap().unwrap();
        let db = cfg.outbounds.iter().find(|o| o.service == "db").unwrap();
        let seen: Vec<(Option<&str>, Option<&str>, &str)> = db
            .endpoints
            .iter()
            .map(|e| (e.instance.as_deref(), e.tags.get("version").map(String::as_str), e.tags[SERVICE_TAG].as_str()))
            .collect();
        assert_eq!(seen, [(Some("e1"), Some("v1"), "db"), (Some("e2"), None, "db")], "the inventory's service tag wins");
        assert!(db.endpoints.iter().all(|e| e.address == "192.0.2.100" && e.port == 10002), "through the egress");

        let mut no_gateway = remote.clone();
        no_gateway.inventories[1].ingress_addresses.clear();
        let cfg = build(&resources[0], "zone-1", &resources, &no_gateway, MeshTrust::default(), 3600).unwrap().unwrap();
        assert!(cfg.outbounds.iter().all(|o| o.service != "db"), "a zone whose gateways are all gone is out of reach");

        let two = Remote { egresses: vec!["192.0.2.100:10002".into(), "192.0.2.101:10002".into()], ..remote.clone() };
        let cfg = build(&resources[0], "zone-1", &resources, &two, MeshTrust::default(), 3600).unwrap().unwrap();
        let db = cfg.outbounds.iter().find(|o| o.service == "db").unwrap();
        let via: Vec<_> = db.endpoints.iter().map(|e| (e.zone.as_str(), e.address.as_str())).collect();
        assert_eq!(via, [("zone-2", "192.0.2.100"), ("zone-2", "192.0.2.101")], "one endpoint per egress of this zone");

        let no_egress = Remote { egresses: vec![], ..remote };
        let cfg = build(&resources[0], "zone-1", &resources, &no_egress, MeshTrust::default(), 3600).unwrap().unwrap();
        assert!(cfg.outbounds.iter().all(|o| o.service != "db"), "without a gateway in this zone, other zones are out of reach");
    }
}

#[cfg(test)]
mod contract_tests {
    use super::*;

    fn minimal() -> serde_json::Value {
        serde_json::json!({
            "mesh": "default", "dataplane": "web-1", "zone": "zone-1", "identity": "spiffe://default/web",
            "inbounds": [{"port": 8080, "serviceAddress": "127.0.0.1", "servicePort": 80, "service": "web", "protocol": "http",
                          "policies": {"MeshTrafficPermission": [{"matches": {}, "conf": {"action": "Allow"}, "origin": ["allow-all"]}]}}],
            "outbounds": [{"service": "api", "port": 10001, "address": "127.0.0.1", "protocol": "grpc", "endpoints": [],
                           "policies": {"MeshTimeout": {"connectionTimeout": "2s"}}, "httpRoutes": [], "tcpRoute": null}],
            "trustBundle": {"roots": []}, "certificateLifetimeSecs": 3600, "proxy": {}
        })
    }

    /// What a sidecar cannot apply must fail to parse (and be NACKed), never turn into a default.
    #[test]
    fn a_configuration_that_does_not_fit_the_types_is_refused_naming_the_field() {
        assert!(serde_json::from_value::<ProxyConfig>(minimal()).is_ok());
        let cases = [
            ("unknown variant `quic`", "/outbounds/0/protocol", serde_json::json!("quic")),
            ("invalid duration", "/outbounds/0/policies/MeshTimeout/connectionTimeout", serde_json::json!("soon")),
            ("unknown field `MeshTimeouts`", "/outbounds/0/policies", serde_json::json!({"MeshTimeouts": {}})),
            ("unknown variant `Maybe`", "/inbounds/0/policies/MeshTrafficPermission/0/conf/action", serde_json::json!("Maybe")),
        ];
        for (expected, pointer, spoiled) in cases {
            let mut v = minimal();
            *v.pointer_mut(pointer).unwrap() = spoiled;
            let err = serde_json::from_value::<ProxyConfig>(v).unwrap_err().to_string();
            assert!(err.contains(expected), "{expected}: {err}");
        }
    }

    #[test]
    fn protocols_read_from_tags() {
        for (tag, p) in
            [(None, Protocol::Tcp), (Some("http"), Protocol::Http), (Some("http2"), Protocol::Http2), (Some("grpc"), Protocol::Grpc)]
        {
            assert_eq!(Protocol::from_tag(tag), p);
            assert_eq!(Protocol::from_tag(Some(p.as_str())), p);
        }
    }
}
