//! Sidecar injection: the zone's mutating admission webhook adds Strait's containers to the
//! Pods of the namespaces that ask for it.
//!
//! In: an `admission.k8s.io/v1` AdmissionReview for a Pod's creation. Out: the review's
//! answer, always allowing the Pod, with a JSONPatch that adds (at the front of its init
//! containers, so every later container's traffic goes through the mesh):
//!
//! - `strait-init`: `strait-dp transparent-proxy install`, with NET_ADMIN and NET_RAW only,
//!   which redirects the Pod's traffic to the sidecar (the sidecar's own user excepted);
//! - `strait-dp`: the sidecar, a native sidecar (`restartPolicy: Always`: it starts before the
//!   application and stops after it), which connects to the zone with the Pod's projected
//!   service-account token (audience `strait-zone`, a volume of its own) and the zone's CA in
//!   its environment (a Pod cannot mount a Secret of the control plane's namespace);
//!
//! and the annotation [`INJECTED`]. A Pod that already has a `strait-dp` container (the
//! webhook called again), that opts out (annotation or label [`INJECTION`]` = disabled`), or
//! that uses the node's network is left as it is. The application's probe ports are left out
//! of the inbound redirection, so that the kubelet's probes (plain HTTP or TCP from the node)
//! still reach it.

use base64::Engine as _;
use serde_json::{json, Value};

/// The label of a Namespace (or Pod) that turns injection on (`enabled`) or off (`disabled`).
pub const INJECTION: &str = "strait.io/sidecar-injection";
/// The annotation of an injected Pod.
pub const INJECTED: &str = "strait.io/sidecar-injected";
/// The user the sidecar runs as: its own connections are never redirected.
pub const PROXY_UID: u32 = 5678;
/// Where the sidecar finds its projected service-account token.
const TOKEN_DIR: &str = "/var/run/secrets/strait.io/token";

/// What an injected sidecar needs to reach its zone.
#[derive(Debug, Clone)]
pub struct Injector {
    /// The image with `strait-dp`.
    pub image: String,
    /// The zone's DPS address as sidecars reach it, such as
    /// https://strait-zone.strait-system.svc:7678.
    pub cp_address: String,
    /// The CA of the zone's DPS endpoint (PEM).
    pub cp_ca_pem: String,
}

/// Why a Pod is left as it is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Skipped {
    /// Not the creation of a Pod.
    NotAPodCreation,
    /// It already has the sidecar.
    AlreadyInjected,
    /// Its annotation or label says `disabled`.
    OptedOut,
    /// It runs in the node's network namespace, whose traffic is not the mesh's to redirect.
    HostNetwork,
}

/// A JSONPatch path segment (`~` and `/` escaped).
fn escape(key: &str) -> String {
    key.replace('~', "~0").replace('/', "~1")
}

/// The ports of the application's probes (HTTP and TCP; named ports resolved).
fn probe_ports(pod: &Value) -> Vec<u16> {
    let containers = pod["spec"]["containers"].as_array().cloned().unwrap_or_default();
    let named = |name: &str| {
        containers
            .iter()
            .flat_map(|c| c["ports"].as_array().cloned().unwrap_or_default())
            .find(|p| p["name"] == name)
            .and_then(|p| p["containerPort"].as_u64())
    };
    let mut ports: Vec<u16> = containers
        .iter()
        .flat_map(|c| ["readinessProbe", "livenessProbe", "startupProbe"].map(|p| c[p].clone()))
        .flat_map(|probe| [probe["httpGet"]["port"].clone(), probe["tcpSocket"]["port"].clone()])
        .filter_map(|port| match port {
            Value::Number(n) => n.as_u64(),
            Value::String(name) => name.parse().ok().or_else(|| named(&name)),
            _ => None,
        })
        .filter_map(|p| u16::try_from(p).ok())
        .collect();
    ports.sort_unstable();
    ports.dedup();
    ports
}

impl Injector {
    /// Whether `pod` gets the sidecar.
    pub fn decide(&self, pod: &Value) -> Result<(), Skipped> {
        let spec = &pod["spec"];
        let containers = spec["containers"].as_array().into_iter().flatten().chain(spec["initContainers"].as_array().into_iter().flatten());
        if containers.clone().any(|c| c["name"] == super::dataplanes::SIDECAR_CONTAINER) {
            return Err(Skipped::AlreadyInjected);
        }
        let says = |map: &Value| map[INJECTION].as_str().map(str::to_ascii_lowercase);
        if [says(&pod["metadata"]["annotations"]), says(&pod["metadata"]["labels"])]
            .iter()
            .flatten()
            .any(|v| v == "disabled" || v == "false")
        {
            return Err(Skipped::OptedOut);
        }
        if spec["hostNetwork"] == json!(true) {
            return Err(Skipped::HostNetwork);
        }
        Ok(())
    }

    /// The containers and volume added to `pod`.
    fn additions(&self, pod: &Value) -> (Value, Value, Value) {
        let security = |user: u32, add: &[&str]| {
            json!({"runAsUser": user, "runAsGroup": user, "runAsNonRoot": user != 0, "allowPrivilegeEscalation": false,
                "readOnlyRootFilesystem": true, "capabilities": {"drop": ["ALL"], "add": add}})
        };
        let resources = json!({"requests": {"cpu": "50m", "memory": "32Mi"}, "limits": {"cpu": "1", "memory": "256Mi"}});
        let mut install = vec!["transparent-proxy".to_string(), "install".into(), format!("--proxy-uid={PROXY_UID}")];
        let probes = probe_ports(pod);
        if !probes.is_empty() {
            let list: Vec<String> = probes.iter().map(u16::to_string).collect();
            install.push(format!("--exclude-inbound-ports={}", list.join(",")));
        }
        let init = json!({"name": "strait-init", "image": self.image, "command": ["/usr/bin/strait-dp"], "args": install,
            "securityContext": security(0, &["NET_ADMIN", "NET_RAW"]), "resources": resources});
        let sidecar = json!({"name": super::dataplanes::SIDECAR_CONTAINER, "image": self.image, "restartPolicy": "Always",
            "command": ["/usr/bin/strait-dp"],
            "args": ["run", format!("--cp-address={}", self.cp_address), format!("--kubernetes-token-file={TOKEN_DIR}/token")],
            "env": [
                {"name": "STRAIT_POD_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}},
                {"name": "STRAIT_CP_CA", "value": self.cp_ca_pem},
            ],
            "securityContext": security(PROXY_UID, &[]), "resources": resources,
            "volumeMounts": [{"name": "strait-token", "mountPath": TOKEN_DIR, "readOnly": true}]});
        let volume = json!({"name": "strait-token", "projected": {"sources": [
            {"serviceAccountToken": {"audience": super::identity::AUDIENCE, "expirationSeconds": 3600, "path": "token"}}]}});
        (init, sidecar, volume)
    }

    /// The JSONPatch that injects `pod`.
    pub fn patch(&self, pod: &Value) -> Value {
        let (init, sidecar, volume) = self.additions(pod);
        let mut ops = Vec::new();
        if pod["spec"]["initContainers"].as_array().is_some_and(|a| !a.is_empty()) {
            // Inserted at the front, in reverse: strait-init, then strait-dp, then the Pod's own.
            ops.push(json!({"op": "add", "path": "/spec/initContainers/0", "value": sidecar}));
            ops.push(json!({"op": "add", "path": "/spec/initContainers/0", "value": init}));
        } else {
            ops.push(json!({"op": "add", "path": "/spec/initContainers", "value": [init, sidecar]}));
        }
        if pod["spec"]["volumes"].as_array().is_some_and(|a| !a.is_empty()) {
            ops.push(json!({"op": "add", "path": "/spec/volumes/-", "value": volume}));
        } else {
            ops.push(json!({"op": "add", "path": "/spec/volumes", "value": [volume]}));
        }
        if pod["metadata"]["annotations"].is_object() {
            ops.push(json!({"op": "add", "path": format!("/metadata/annotations/{}", escape(INJECTED)), "value": "true"}));
        } else {
            ops.push(json!({"op": "add", "path": "/metadata/annotations", "value": {INJECTED: "true"}}));
        }
        Value::Array(ops)
    }

    /// The answer to an AdmissionReview: always allowed (a webhook that refuses Pods would
    /// stop the cluster's workloads), patched when the Pod gets the sidecar. Err: the review
    /// itself is malformed.
    pub fn review(&self, review: &Value) -> Result<Value, String> {
        let request = &review["request"];
        let uid = request["uid"].as_str().ok_or("request.uid: missing")?;
        let mut response = json!({"uid": uid, "allowed": true});
        let pod = &request["object"];
        let creating_a_pod = request["kind"]["kind"] == "Pod" && request["operation"] == "CREATE" && pod.is_object();
        let decision = if creating_a_pod { self.decide(pod) } else { Err(Skipped::NotAPodCreation) };
        let name = pod["metadata"]["name"].as_str().or(pod["metadata"]["generateName"].as_str()).unwrap_or_default();
        let namespace = request["namespace"].as_str().unwrap_or_default();
        match decision {
            Ok(()) => {
                let patch = serde_json::to_vec(&self.patch(pod)).map_err(|e| e.to_string())?;
                response["patchType"] = json!("JSONPatch");
                response["patch"] = json!(base64::engine::general_purpose::STANDARD.encode(patch));
                tracing::info!(namespace, pod = name, "injected the sidecar");
            }
            Err(reason) => tracing::debug!(namespace, pod = name, ?reason, "not injected"),
        }
        Ok(json!({"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "response": response}))
    }
}

/// Makes the `caBundle` of every webhook of the MutatingWebhookConfiguration `name` the CA of
/// the zone's DPS endpoint (which serves the webhook), so that the API server trusts the
/// webhook whatever the chart wrote; whether it changed anything. A configuration that does
/// not exist (injection installed otherwise, or not at all) is left alone.
pub async fn keep_ca_bundle(client: &kube::Client, name: &str, ca_pem: &str) -> Result<bool, kube::Error> {
    use k8s_openapi::api::admissionregistration::v1::MutatingWebhookConfiguration;
    use k8s_openapi::ByteString;
    let api: kube::Api<MutatingWebhookConfiguration> = kube::Api::all(client.clone());
    let Some(mut configuration) = api.get_opt(name).await? else { return Ok(false) };
    let wanted = ByteString(ca_pem.as_bytes().to_vec());
    let mut changed = false;
    for webhook in configuration.webhooks.iter_mut().flatten() {
        if webhook.client_config.ca_bundle.as_ref() != Some(&wanted) {
            webhook.client_config.ca_bundle = Some(wanted.clone());
            changed = true;
        }
    }
    if changed {
        // The resource version read above makes this a compare-and-swap.
        api.replace(name, &kube::api::PostParams::default(), &configuration).await?;
        tracing::info!(webhook = name, "set the injection webhook's caBundle to the zone's DPS CA");
    }
    Ok(changed)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn injector() -> Injector {
        Injector {
            image: "registry.example/strait:1.0".into(),
            cp_address: "https://strait-zone.strait-system.svc:7678".into(),
            cp_ca_pem: "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n".into(),
        }
    }

    fn review(pod: Value) -> Value {
        json!({"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "request": {"uid": "705ab4f5-6393-11e8-b7cc-42010a800002",
            "kind": {"group": "", "version": "v1", "kind": "Pod"}, "resource": {"group": "", "version": "v1", "resource": "pods"},
            "namespace": "shop", "operation": "CREATE", "object": pod}})
    }

    fn web() -> Value {
        json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"generateName": "web-7d9f-", "namespace": "shop", "labels": {"app": "web"}},
            "spec": {"containers": [{"name": "app", "image": "web:1", "ports": [{"name": "http", "containerPort": 8080}],
                "readinessProbe": {"httpGet": {"path": "/ready", "port": "http"}}, "livenessProbe": {"tcpSocket": {"port": 8080}}}]}})
    }

    /// Applies a JSONPatch made of `add` operations, as the API server does.
    fn apply(mut doc: Value, patch: &Value) -> Value {
        for op in patch.as_array().unwrap() {
            assert_eq!(op["op"], "add");
            let path: Vec<String> =
                op["path"].as_str().unwrap().split('/').skip(1).map(|s| s.replace("~1", "/").replace("~0", "~")).collect();
            let (last, parents) = path.split_last().unwrap();
            let mut target = &mut doc;
            for p in parents {
                target = match target {
                    Value::Array(a) => &mut a[p.parse::<usize>().unwrap()],
                    other => &mut other[p.as_str()],
                };
            }
            match target {
                Value::Array(a) if last == "-" => a.push(op["value"].clone()),
                Value::Array(a) => a.insert(last.parse().unwrap(), op["value"].clone()),
                Value::Object(o) => {
                    o.insert(last.clone(), op["value"].clone());
                }
                other => panic!("cannot add to {other}"),
            }
        }
        doc
    }

    fn patched(pod: Value) -> Value {
        let answer = injector().review(&review(pod.clone())).unwrap();
        assert_eq!(answer["response"]["allowed"], true);
        assert_eq!(answer["response"]["uid"], "705ab4f5-6393-11e8-b7cc-42010a800002");
        let Some(patch) = answer["response"]["patch"].as_str() else { return pod };
        assert_eq!(answer["response"]["patchType"], "JSONPatch");
        let patch: Value = serde_json::from_slice(&base64::engine::general_purpose::STANDARD.decode(patch).unwrap()).unwrap();
        apply(pod, &patch)
    }

    #[test]
    fn a_pod_gets_the_init_container_and_the_native_sidecar_with_its_token() {
        let pod = patched(web());
        let init = &pod["spec"]["initContainers"];
        assert_eq!(init[0]["name"], "strait-init");
        assert_eq!(
            init[0]["args"],
            json!(["transparent-proxy", "install", "--proxy-uid=5678", "--exclude-inbound-ports=8080"]),
            "the kubelet's probes reach the application"
        );
        assert_eq!(init[0]["securityContext"]["capabilities"], json!({"drop": ["ALL"], "add": ["NET_ADMIN", "NET_RAW"]}));
        let sidecar = &init[1];
        assert_eq!(sidecar["name"], "strait-dp");
        assert_eq!(sidecar["restartPolicy"], "Always", "a native sidecar");
        assert_eq!(sidecar["securityContext"]["runAsUser"], 5678);
        let args: Vec<&str> = sidecar["args"].as_array().unwrap().iter().filter_map(Value::as_str).collect();
        assert!(args.contains(&"--kubernetes-token-file=/var/run/secrets/strait.io/token/token"), "{args:?}");
        assert!(args.contains(&"--cp-address=https://strait-zone.strait-system.svc:7678"), "{args:?}");
        let env = sidecar["env"].as_array().unwrap();
        assert!(env.iter().any(|e| e["name"] == "STRAIT_CP_CA" && e["value"].as_str().unwrap().contains("BEGIN CERTIFICATE")));
        assert!(env.iter().any(|e| e["name"] == "STRAIT_POD_IP" && e["valueFrom"]["fieldRef"]["fieldPath"] == "status.podIP"));
        let token = &pod["spec"]["volumes"][0]["projected"]["sources"][0]["serviceAccountToken"];
        assert_eq!(token["audience"], "strait-zone");
        assert_eq!(pod["metadata"]["annotations"][INJECTED], "true");
        assert_eq!(pod["spec"]["containers"], web()["spec"]["containers"], "the application is untouched");
    }

    #[test]
    fn the_pods_own_init_containers_and_volumes_come_after_and_are_kept() {
        let mut pod = web();
        pod["spec"]["initContainers"] = json!([{"name": "migrate", "image": "web:1"}]);
        pod["spec"]["volumes"] = json!([{"name": "data", "emptyDir": {}}]);
        pod["metadata"]["annotations"] = json!({"team": "shop"});
        let pod = patched(pod);
        let names: Vec<&str> = pod["spec"]["initContainers"].as_array().unwrap().iter().filter_map(|c| c["name"].as_str()).collect();
        assert_eq!(names, ["strait-init", "strait-dp", "migrate"]);
        let volumes: Vec<&str> = pod["spec"]["volumes"].as_array().unwrap().iter().filter_map(|v| v["name"].as_str()).collect();
        assert_eq!(volumes, ["data", "strait-token"]);
        assert_eq!(pod["metadata"]["annotations"], json!({"team": "shop", INJECTED: "true"}));
    }

    #[test]
    fn injection_is_idempotent_and_respects_opt_outs() {
        let once = patched(web());
        assert_eq!(patched(once.clone()), once, "a second call adds nothing");
        let mut annotated = web();
        annotated["metadata"]["annotations"] = json!({INJECTION: "disabled"});
        assert_eq!(patched(annotated.clone()), annotated);
        let mut labelled = web();
        labelled["metadata"]["labels"][INJECTION] = json!("disabled");
        assert_eq!(patched(labelled.clone()), labelled);
        let mut host = web();
        host["spec"]["hostNetwork"] = json!(true);
        assert_eq!(patched(host.clone()), host);
        let mut update = review(web());
        update["request"]["operation"] = json!("UPDATE");
        assert!(injector().review(&update).unwrap()["response"].get("patch").is_none());
        assert!(injector().review(&json!({"request": {}})).is_err(), "a review without a uid cannot be answered");
    }
}
