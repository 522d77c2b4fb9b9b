//! A Pod with a Strait sidecar, and the Services selecting it, as a Dataplane.
//!
//! In: the Pod, the Services of its namespace, its Namespace, the zone's name. Out: the
//! Dataplane (`<pod>.<namespace>`) in the Pod's mesh, or why the Pod has none (no sidecar, not
//! scheduled yet, being deleted). Deterministic: the same objects give the same Dataplane, so
//! a controller that recomputes after a restart or a relist neither loses nor duplicates one.
//!
//! - mesh: the Pod's annotation `strait.io/mesh`, else its Namespace's, else `default`;
//! - address: the Pod's IP;
//! - one inbound per port of each Service whose selector matches the Pod's labels: the port is
//!   the Service port's `targetPort` (a number, or the name of a container port), the service
//!   `<service>.<namespace>.svc.<port>`, the protocol from `appProtocol` (http, http2 or
//!   `kubernetes.io/h2c`, grpc; anything else tcp);
//! - tags: the Pod's labels (those that are valid tags), `strait.io/zone`,
//!   `k8s.strait.io/namespace`;
//! - none while no Service selects the Pod;
//! - in the pool while the Pod's `Ready` condition is true (the kubelet's probes decide),
//!   except for a Service whose EndpointSlice lists the Pod as not ready (a Pod terminating,
//!   or not ready by the Service's own terms: [`endpoint_readiness`]);
//! - transparent proxying on the sidecar's default ports (the injected init container
//!   redirects to them), reaching every service of the mesh, or only those the Pod's
//!   annotation `strait.io/reachable-services` lists (comma-separated service names).

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{Namespace, Pod, Service, ServicePort};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use strait_api::dataplane::{DataplaneSpec, Inbound, InboundHealth, Networking, TransparentProxying};
use strait_api::names::{self, PROTOCOL_TAG, SERVICE_TAG, ZONE_TAG};
use strait_api::{Resource, Spec};

/// The annotation that names a Pod's (or a Namespace's) mesh.
pub const MESH_ANNOTATION: &str = "strait.io/mesh";
/// The annotation that lists the services a Pod reaches (comma-separated); without it, every
/// service of its mesh.
pub const REACHABLE_ANNOTATION: &str = "strait.io/reachable-services";
/// The name of the injected sidecar container; a Pod with it has a Dataplane.
pub const SIDECAR_CONTAINER: &str = "strait-dp";
/// The tag that carries the Pod's namespace.
pub const NAMESPACE_TAG: &str = "k8s.strait.io/namespace";

/// Why a Pod has no Dataplane.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Skip {
    /// It has no Strait sidecar.
    NoSidecar,
    /// It has no IP yet (not scheduled, or not started).
    NoAddress,
    /// It is being deleted, or has ended.
    Gone,
    /// No Service selects it (on a TCP port it has): it serves nothing to the mesh.
    NoService,
}

/// The Dataplane of `pod` in zone `zone`, given the Services of its namespace and the
/// Namespace itself (for its mesh annotation).
pub fn dataplane(pod: &Pod, services: &[&Service], namespace: Option<&Namespace>, zone: &str) -> Result<Resource, Skip> {
    let spec = pod.spec.as_ref().ok_or(Skip::NoSidecar)?;
    let injected = spec.init_containers.iter().flatten().chain(spec.containers.iter()).any(|c| c.name == SIDECAR_CONTAINER);
    if !injected {
        return Err(Skip::NoSidecar);
    }
    if pod.metadata.deletion_timestamp.is_some() {
        return Err(Skip::Gone);
    }
    let status = pod.status.as_ref();
    if matches!(status.and_then(|s| s.phase.as_deref()), Some("Succeeded" | "Failed")) {
        return Err(Skip::Gone);
    }
    let address = status.and_then(|s| s.pod_ip.clone()).filter(|ip| !ip.is_empty()).ok_or(Skip::NoAddress)?;
    let pod_name = pod.metadata.name.clone().unwrap_or_default();
    let pod_namespace = pod.metadata.namespace.clone().unwrap_or_else(|| "default".into());
    let ready = status.and_then(|s| s.conditions.as_ref()).into_iter().flatten().any(|c| c.type_ == "Ready" && c.status == "True");

    let labels = pod.metadata.labels.clone().unwrap_or_default();
    let mut tags: BTreeMap<String, String> = labels
        .iter()
        .filter(|(k, v)| names::check_label_key(k).is_ok() && names::check_label_value(v).is_ok())
        .filter(|(k, _)| !k.starts_with("strait.io/"))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    tags.insert(ZONE_TAG.into(), zone.to_string());
    tags.insert(NAMESPACE_TAG.into(), pod_namespace.clone());

    let mut inbound: Vec<Inbound> = Vec::new();
    let mut selecting: Vec<&Service> = services
        .iter()
        .copied()
        .filter(|s| s.metadata.namespace.as_deref().unwrap_or("default") == pod_namespace)
        .filter(|s| selects(s, &labels))
        .collect();
    selecting.sort_by(|a, b| a.metadata.name.cmp(&b.metadata.name));
    for service in selecting {
        let service_name = service.metadata.name.clone().unwrap_or_default();
        for port in service.spec.as_ref().and_then(|s| s.ports.as_ref()).into_iter().flatten() {
            if port.protocol.as_deref().is_some_and(|p| p != "TCP") {
                continue;
            }
            let Some(target) = target_port(pod, port) else { continue };
            let mut inbound_tags = tags.clone();
            inbound_tags.insert(SERVICE_TAG.into(), format!("{service_name}.{pod_namespace}.svc.{}", port.port));
            inbound_tags.insert(PROTOCOL_TAG.into(), protocol(port).into());
            if inbound.iter().any(|i| i.port == target && i.service() == inbound_tags[SERVICE_TAG]) {
                continue;
            }
            inbound.push(Inbound {
                port: target,
                service_port: None,
                service_address: None,
                tags: inbound_tags,
                service_probe: None,
                // The kubelet's probes decide (the injected sidecar probes nothing itself): a
                // Pod that is Ready again is back in the pool.
                health: Some(InboundHealth { ready }),
            });
        }
    }
    if inbound.is_empty() {
        return Err(Skip::NoService);
    }
    let mesh = annotation(pod.metadata.annotations.as_ref())
        .or_else(|| namespace.and_then(|n| annotation(n.metadata.annotations.as_ref())))
        .unwrap_or_else(|| "default".into());
    let spec = DataplaneSpec {
        networking: Networking {
            address,
            inbound,
            outbound: Vec::new(),
            transparent_proxying: Some(TransparentProxying {
                redirect_port_outbound: 15001,
                redirect_port_inbound: 15006,
                reachable_services: reachable(pod.metadata.annotations.as_ref()),
            }),
        },
    };
    Ok(Resource::new(&format!("{pod_name}.{pod_namespace}"), Some(&mesh), Spec::Dataplane(spec)))
}

/// The label of an EndpointSlice that names its Service.
const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";

/// Takes the EndpointSlices' word on `pod` into `dp` (its Dataplane): an inbound of a Service
/// whose EndpointSlice lists the Pod with `ready: false` leaves the pool. A Pod no slice lists
/// (not yet, or a Service without slices) keeps what its own readiness says.
pub fn endpoint_readiness(dp: &mut Resource, pod: &Pod, slices: &[&EndpointSlice]) {
    let Spec::Dataplane(spec) = &mut dp.spec else { return };
    let namespace = pod.metadata.namespace.as_deref().unwrap_or("default");
    let name = pod.metadata.name.as_deref().unwrap_or_default();
    for slice in slices.iter().filter(|s| s.metadata.namespace.as_deref().unwrap_or("default") == namespace) {
        let Some(service) = slice.metadata.labels.as_ref().and_then(|l| l.get(SERVICE_NAME_LABEL)) else { continue };
        let not_ready = slice.endpoints.iter().any(|e| {
            e.target_ref.as_ref().is_some_and(|t| t.kind.as_deref() == Some("Pod") && t.name.as_deref() == Some(name))
                && e.conditions.as_ref().and_then(|c| c.ready) == Some(false)
        });
        if !not_ready {
            continue;
        }
        let prefix = format!("{service}.{namespace}.svc.");
        for inbound in spec.networking.inbound.iter_mut().filter(|i| i.service().starts_with(&prefix)) {
            inbound.health = Some(InboundHealth { ready: false });
        }
    }
}

/// The services `strait.io/reachable-services` lists, if the Pod has it.
fn reachable(annotations: Option<&BTreeMap<String, String>>) -> Option<Vec<String>> {
    let listed = annotations?.get(REACHABLE_ANNOTATION)?;
    Some(listed.split(',').map(str::trim).filter(|s| !s.is_empty()).map(str::to_string).collect())
}

fn annotation(annotations: Option<&BTreeMap<String, String>>) -> Option<String> {
    annotations.and_then(|a| a.get(MESH_ANNOTATION)).filter(|m| !m.is_empty()).cloned()
}

/// Whether `service` selects a Pod with `labels` (a Service without a selector selects none).
fn selects(service: &Service, labels: &BTreeMap<String, String>) -> bool {
    match service.spec.as_ref().and_then(|s| s.selector.as_ref()) {
        Some(selector) if !selector.is_empty() => selector.iter().all(|(k, v)| labels.get(k) == Some(v)),
        _ => false,
    }
}

/// The Pod's port behind a Service port: `targetPort` as a number, or the container port of
/// that name; `port` when it has none.
fn target_port(pod: &Pod, port: &ServicePort) -> Option<u16> {
    match &port.target_port {
        None => u16::try_from(port.port).ok(),
        Some(IntOrString::Int(n)) => u16::try_from(*n).ok().filter(|n| *n > 0),
        Some(IntOrString::String(name)) => pod
            .spec
            .as_ref()?
            .containers
            .iter()
            .flat_map(|c| c.ports.iter().flatten())
            .find(|p| p.name.as_deref() == Some(name.as_str()))
            .and_then(|p| u16::try_from(p.container_port).ok()),
    }
}

/// The protocol tag of a Service port, from its `appProtocol`.
fn protocol(port: &ServicePort) -> &'static str {
    match port.app_protocol.as_deref().map(str::to_ascii_lowercase).as_deref() {
        Some("http") => "http",
        Some("http2" | "h2c" | "kubernetes.io/h2c") => "http2",
        Some("grpc") => "grpc",
        _ => "tcp",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn pod(value: serde_json::Value) -> Pod {
        serde_json::from_value(value).unwrap()
    }

    fn service(value: serde_json::Value) -> Service {
        serde_json::from_value(value).unwrap()
    }

    fn web_pod() -> Pod {
        pod(json!({
            "metadata": { "name": "web-7d9f-abcde", "namespace": "shop", "labels": { "app": "web", "version": "v2", "pod-template-hash": "7d9f" } },
            "spec": {
                "initContainers": [{ "name": "strait-dp", "image": "strait:0.1.0", "restartPolicy": "Always" }],
                "containers": [{ "name": "app", "image": "web", "ports": [{ "name": "http", "containerPort": 8080 }, { "name": "metrics", "containerPort": 9090 }] }],
            },
            "status": { "phase": "Running", "podIP": "10.1.2.3", "conditions": [{ "type": "Ready", "status": "True" }] },
        }))
    }

    fn web_service() -> Service {
        service(json!({
            "metadata": { "name": "web", "namespace": "shop" },
            "spec": { "selector": { "app": "web" }, "ports": [
                { "name": "http", "port": 80, "targetPort": "http", "appProtocol": "http" },
                { "name": "grpc", "port": 9000, "targetPort": 9000, "appProtocol": "grpc" },
                { "name": "dns", "port": 53, "protocol": "UDP" },
            ] },
        }))
    }

    #[test]
    fn a_pod_with_a_sidecar_becomes_a_dataplane_with_an_inbound_per_service_port() {
        let others = service(
            json!({ "metadata": { "name": "other", "namespace": "shop" }, "spec": { "selector": { "app": "other" }, "ports": [{ "port": 1 }] } }),
        );
        let elsewhere = service(
            json!({ "metadata": { "name": "web", "namespace": "prod" }, "spec": { "selector": { "app": "web" }, "ports": [{ "port": 2 }] } }),
        );
        let headless = service(json!({ "metadata": { "name": "manual", "namespace": "shop" }, "spec": { "ports": [{ "port": 3 }] } }));
        let dp = dataplane(&web_pod(), &[&web_service(), &others, &elsewhere, &headless], None, "zone-1").unwrap();
        assert_eq!(dp.name, "web-7d9f-abcde.shop");
        assert_eq!(dp.mesh.as_deref(), Some("default"));
        let Spec::Dataplane(spec) = &dp.spec else { panic!("not a Dataplane") };
        assert_eq!(spec.networking.address, "10.1.2.3");
        let inbounds: Vec<(u16, &str, &str)> =
            spec.networking.inbound.iter().map(|i| (i.port, i.service(), i.tags[PROTOCOL_TAG].as_str())).collect();
        assert_eq!(inbounds, [(8080, "web.shop.svc.80", "http"), (9000, "web.shop.svc.9000", "grpc")]);
        let tags = &spec.networking.inbound[0].tags;
        assert_eq!(tags["version"], "v2");
        assert_eq!(tags[ZONE_TAG], "zone-1");
        assert_eq!(tags[NAMESPACE_TAG], "shop");
        assert!(spec.networking.inbound.iter().all(|i| i.is_ready()));
        assert!(spec.networking.transparent_proxying.is_some());
        // What the zone stores passes the same validation as a Dataplane written to its API.
        strait_api::Resource::from_value(dp.to_value()).unwrap();
    }

    #[test]
    fn the_reachable_services_annotation_limits_the_destinations() {
        let tp = |p: &Pod| match dataplane(p, &[&web_service()], None, "z").unwrap().spec {
            Spec::Dataplane(spec) => spec.networking.transparent_proxying.unwrap(),
            _ => panic!("not a Dataplane"),
        };
        assert_eq!(tp(&web_pod()).reachable_services, None, "without the annotation, every service");
        let mut p = web_pod();
        p.metadata.annotations = Some([(REACHABLE_ANNOTATION.to_string(), " backend.shop.svc.80,, db.shop.svc.5432 ".to_string())].into());
        assert_eq!(tp(&p).reachable_services, Some(vec!["backend.shop.svc.80".to_string(), "db.shop.svc.5432".to_string()]));
        let dp = dataplane(&p, &[&web_service()], None, "z").unwrap();
        strait_api::Resource::from_value(dp.to_value()).unwrap();
        p.metadata.annotations = Some([(REACHABLE_ANNOTATION.to_string(), "Not_A_Service".to_string())].into());
        let err = strait_api::Resource::from_value(dataplane(&p, &[&web_service()], None, "z").unwrap().to_value()).unwrap_err();
        assert!(err.to_string().contains("transparentProxying.reachableServices[0]"), "{err}");
    }

    #[test]
    fn readiness_mesh_and_skips_follow_the_pod() {
        let mut p = web_pod();
        p.status.as_mut().unwrap().conditions.as_mut().unwrap()[0].status = "False".into();
        p.metadata.annotations = Some([(MESH_ANNOTATION.to_string(), "payments".to_string())].into());
        let dp = dataplane(&p, &[&web_service()], None, "zone-1").unwrap();
        assert_eq!(dp.mesh.as_deref(), Some("payments"));
        let Spec::Dataplane(spec) = &dp.spec else { panic!() };
        assert!(spec.networking.inbound.iter().all(|i| !i.is_ready()), "a pod that is not Ready gets no traffic");

        let ns: Namespace =
            serde_json::from_value(json!({ "metadata": { "name": "shop", "annotations": { "strait.io/mesh": "team-a" } } })).unwrap();
        assert_eq!(dataplane(&web_pod(), &[&web_service()], Some(&ns), "z").unwrap().mesh.as_deref(), Some("team-a"));
        assert_eq!(dataplane(&web_pod(), &[], None, "z").unwrap_err(), Skip::NoService, "a Pod no Service selects serves nothing");

        let mut plain = web_pod();
        plain.spec.as_mut().unwrap().init_containers = None;
        assert_eq!(dataplane(&plain, &[], None, "z").unwrap_err(), Skip::NoSidecar);
        let mut pending = web_pod();
        pending.status.as_mut().unwrap().pod_ip = None;
        assert_eq!(dataplane(&pending, &[], None, "z").unwrap_err(), Skip::NoAddress);
        let mut deleting = web_pod();
        deleting.metadata.deletion_timestamp = Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(Default::default()));
        assert_eq!(dataplane(&deleting, &[], None, "z").unwrap_err(), Skip::Gone);
        let mut done = web_pod();
        done.status.as_mut().unwrap().phase = Some("Succeeded".into());
        assert_eq!(dataplane(&done, &[], None, "z").unwrap_err(), Skip::Gone);
    }

    #[test]
    fn an_endpoint_slice_that_lists_the_pod_as_not_ready_takes_its_service_out() {
        let mut two_services = web_service();
        two_services.metadata.name = Some("web-admin".into());
        let mut dp = dataplane(&web_pod(), &[&web_service(), &two_services], None, "zone-1").unwrap();
        let slice = |service: &str, pod: &str, ready: bool| -> EndpointSlice {
            serde_json::from_value(json!({"metadata": {"name": format!("{service}-abc"), "namespace": "shop",
                "labels": {"kubernetes.io/service-name": service}}, "addressType": "IPv4",
                "endpoints": [{"addresses": ["10.1.2.3"], "conditions": {"ready": ready, "serving": true, "terminating": !ready},
                    "targetRef": {"kind": "Pod", "name": pod, "namespace": "shop"}}]}))
            .unwrap()
        };
        let ready = |dp: &Resource| -> Vec<(String, bool)> {
            let Spec::Dataplane(spec) = &dp.spec else { panic!() };
            spec.networking.inbound.iter().map(|i| (i.service().to_string(), i.is_ready())).collect()
        };
        let before = ready(&dp);
        endpoint_readiness(&mut dp, &web_pod(), &[&slice("web", "another-pod", false), &slice("web-admin", "web-7d9f-abcde", true)]);
        assert_eq!(ready(&dp), before, "slices of other Pods, or that say ready, change nothing");
        endpoint_readiness(&mut dp, &web_pod(), &[&slice("web-admin", "web-7d9f-abcde", false)]);
        let after = ready(&dp);
        assert!(after.iter().any(|(s, r)| s.starts_with("web-admin.shop.svc.") && !r), "{after:?}");
        assert!(after.iter().any(|(s, r)| s.starts_with("web.shop.svc.") && *r), "{after:?}");
    }

    #[test]
    fn the_same_objects_give_the_same_dataplane() {
        let a = dataplane(&web_pod(), &[&web_service()], None, "zone-1").unwrap();
        let b = dataplane(&web_pod(), &[&web_service()], None, "zone-1").unwrap();
        assert_eq!(a.to_value(), b.to_value());
    }
}
