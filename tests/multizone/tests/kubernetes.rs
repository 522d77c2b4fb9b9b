//! The Helm chart (deploy/k8s/strait), checked with the real Helm engine and run as written.
//!
//! No Kubernetes API server runs here, so: `scripts/k8s/check_chart.py` lints and renders the
//! chart in both modes with helm-python-sdk and validates every manifest and CRD with
//! `kubernetes-validate --strict`; and the rendered global StatefulSet, zone Deployment and
//! gateway Deployment are started as processes from their own command, arguments,
//! environment and Secrets (`strait_multizone::pods`), each "pod" on a host of its own, and
//! must form a working zone: a wrong flag, path or Secret key in a template fails here. The
//! zone talks to an API server that answers as Kubernetes does (`strait-kube-fake`, on a host
//! of its own); two application Pods go through the zone's injection webhook as the API
//! server would send them, the patched Pods pass `kubernetes-validate --strict`, and their
//! containers (the init container's iptables rules, the sidecar as its own user, the
//! application) run for real: one calls the other over mTLS, plain text to it is refused.

use std::net::SocketAddr;
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;
use serde_json::{json, Value};
use strait_kube_fake::FakeKube;
use strait_multizone::control_plane::Global;
use strait_multizone::pods::{find, helm_available, render_chart, run_container, run_container_in, secret_data, Cluster, HostsFile};
use strait_multizone::{wait_for, Host, Net, Proc};

const DEADLINE: Duration = Duration::from_secs(30);

#[test]
fn the_chart_passes_helm_lint_and_kubernetes_validate() {
    if !helm_available() {
        println!("SKIPPED: helm-python-sdk and kubernetes-validate are not installed (scripts/test.sh installs them)");
        return;
    }
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/../../scripts/k8s/check_chart.py");
    let out = Command::new("python3").arg(script).output().expect("run check_chart.py");
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    println!("{text}");
    assert!(out.status.success(), "check_chart.py failed:\n{text}");
    assert!(text.contains("the chart and the CRDs hold"), "{text}");
}

/// A projected service-account token as the kubelet writes it: a JWT of the cluster (RS256),
/// bound to the Pod; the API server (here, `kube`) is what verifies it.
fn projected_token(kube: &FakeKube, pod: &str, audience: &str) -> String {
    let stored = kube.get("Pod", "shop", pod).unwrap_or_else(|| panic!("Pod {pod} is not in the API server"));
    let encode = |v: Value| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v.to_string());
    let exp = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs() + 3600;
    let token = format!(
        "{}.{}.c2lnbmVkLWJ5LXRoZS1jbHVzdGVy",
        encode(json!({"alg": "RS256", "kid": "cluster-key"})),
        encode(
            json!({"aud": [audience], "exp": exp, "iss": "https://kubernetes.default.svc.cluster.local", "sub": "system:serviceaccount:shop:default",
            "kubernetes.io": {"namespace": "shop", "pod": {"name": pod, "uid": stored["metadata"]["uid"]}}})
        )
    );
    kube.bind_token(&token, &stored, &[audience]);
    token
}

/// Application Pod `name` of namespace shop: strait-demo-app as `service`, on port 8080.
fn app_pod(name: &str, service: &str, extra_args: &[String], probe: bool) -> Value {
    let mut args = vec![format!("--service={service}"), "--zone=zone-1".into(), "--listen=0.0.0.0:8080".into()];
    args.extend(extra_args.iter().cloned());
    let mut app = json!({"name": "app", "image": "registry.example/demo:1", "command": ["/usr/bin/strait-demo-app"], "args": args,
        "ports": [{"name": "http", "containerPort": 8080}],
        "resources": {"requests": {"cpu": "10m", "memory": "16Mi"}}});
    if probe {
        app["readinessProbe"] = json!({"httpGet": {"path": "/", "port": "http"}});
    }
    json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "namespace": "shop", "labels": {"app": service}},
        "spec": {"containers": [app]}})
}

/// The Service `name` of namespace shop, selecting `app: name`, HTTP on port 80 to `http`.
fn app_service(name: &str) -> Value {
    json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": name, "namespace": "shop"},
        "spec": {"selector": {"app": name}, "ports": [{"name": "http", "port": 80, "targetPort": "http", "appProtocol": "http"}]}})
}

/// `pod` as the API server admits it: sent to the webhook of `hook` (the rendered
/// MutatingWebhookConfiguration) at `zone_host`, patched with its answer, checked with
/// kubernetes-validate, and stored with the status the kubelet gives it on `host`.
fn admit(net: &Net, kube: &FakeKube, hook: &Value, webhook_client: &reqwest::blocking::Client, mut pod: Value, host: &Host) -> Value {
    let config = &hook["webhooks"][0];
    let name = pod["metadata"]["name"].as_str().unwrap().to_string();
    let review = json!({"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "request": {"uid": format!("review-{name}"),
        "kind": {"group": "", "version": "v1", "kind": "Pod"}, "resource": {"group": "", "version": "v1", "resource": "pods"},
        "namespace": "shop", "operation": "CREATE", "object": pod}});
    let service = &config["clientConfig"]["service"];
    let url = format!(
        "https://{}.{}.svc:{}{}",
        service["name"].as_str().unwrap(),
        service["namespace"].as_str().unwrap(),
        service["port"],
        service["path"].as_str().unwrap()
    );
    let answer: Value = webhook_client
        .post(&url)
        .json(&review)
        .send()
        .and_then(|r| r.error_for_status())
        .and_then(|r| r.json())
        .unwrap_or_else(|e| panic!("the webhook at {url}: {e}"));
    assert_eq!(answer["response"]["allowed"], true, "{answer}");
    let patch = base64::engine::general_purpose::STANDARD.decode(answer["response"]["patch"].as_str().expect("a patch")).unwrap();
    let patch: json_patch::Patch = serde_json::from_slice(&patch).unwrap();
    json_patch::patch(&mut pod, &patch).unwrap_or_else(|e| panic!("applying the webhook's patch: {e}"));

    let file = net.write_file(&format!("{name}.pod.json"), serde_json::to_vec_pretty(&pod).unwrap());
    let validated = Command::new("python3")
        .args(["-m", "kubernetes_validate", "--strict", "--kubernetes-version", "1.34.0"])
        .arg(&file)
        .output()
        .expect("run kubernetes-validate");
    assert!(
        validated.status.success(),
        "the injected Pod is not valid:\n{}{}",
        String::from_utf8_lossy(&validated.stdout),
        String::from_utf8_lossy(&validated.stderr)
    );

    let mut stored = pod.clone();
    stored["status"] = json!({"phase": "Running", "podIP": host.addr().to_string(), "conditions": [{"type": "Ready", "status": "True"}]});
    kube.apply(stored);
    pod
}

/// Runs an admitted Pod's containers as the kubelet does: the init containers in order (each to
/// success, a native sidecar left running), then the application.
fn start_pod(net: &Net, host: &Host, pod: &Value, cluster: &Cluster) -> Vec<Proc> {
    let name = pod["metadata"]["name"].as_str().unwrap();
    let mut running = Vec::new();
    for init in pod["spec"]["initContainers"].as_array().into_iter().flatten() {
        let container = init["name"].as_str().unwrap();
        let proc = run_container_in(net, host, pod, container, name, &[], Some(cluster));
        if init["restartPolicy"] == "Always" {
            running.push(proc);
        } else {
            let status = proc.wait_exit(DEADLINE);
            assert!(status.success(), "init container {container} of {name} failed ({status}):\n{}", proc.log());
        }
    }
    running.push(run_container_in(net, host, pod, "app", name, &[], Some(cluster)));
    running
}

#[test]
fn a_global_a_zone_and_injected_pods_run_as_the_chart_and_the_webhook_render_them() {
    if !helm_available() {
        println!("SKIPPED: helm-python-sdk is not installed (scripts/test.sh installs it)");
        return;
    }
    let net = Net::new();
    if !net.is_namespaced() {
        println!("SKIPPED: the manifests' fixed ports need a network namespace per pod ({})", net.mode_reason());
        return;
    }
    let global_host = net.host("global");
    let values = json!({ "mode": "global", "logFormat": "text", "global": { "tlsNames": [global_host.addr().to_string()] } });
    let docs = render_chart(&net, &values).unwrap_or_else(|e| panic!("rendering the global: {e}"));
    let secrets: Vec<&Value> = docs.iter().filter(|d| d["kind"] == "Secret").collect();
    let proc = run_container(&net, &global_host, find(&docs, "StatefulSet", "strait-global"), "strait-global", "strait-global-0", &secrets);

    // What NOTES.txt tells the operator to take from the Secrets is what straitctl needs.
    let text = |secret: &str, key: &str| String::from_utf8(secret_data(find(&docs, "Secret", secret))[key].clone()).unwrap();
    let ca_pem = text("strait-global-api-tls", "ca.crt");
    let token = text("strait-global-admin-token", "admin-token").trim().to_string();
    let ca_file = net.write_file("api-ca.pem", &ca_pem);
    let client = global_host.https_client(&ca_pem);
    let global = Global { server: global_host.https_url(7680, ""), host: global_host.clone(), proc, token, ca_file, client };
    global.wait_ready();

    // Registering a cluster is two commands: these values, then helm install.
    let registered = global.straitctl(&net, &["zone", "register", "zone-1", "--output-format", "helm-values"]);
    registered.assert_success();
    let mut values: Value = serde_yaml::from_str(&registered.stdout).unwrap_or_else(|e| panic!("helm values: {e}\n{}", registered.stdout));
    let zone_host = net.host("zone");
    let gateway_host = net.host("gateway");
    let advertised = format!("{}:10001", gateway_host.addr());
    values["gateway"]["advertiseIngressAddress"] = json!(advertised);
    values["logFormat"] = json!("text");
    let docs = render_chart(&net, &values).unwrap_or_else(|e| panic!("rendering zone-1: {e}"));
    let secrets: Vec<&Value> = docs.iter().filter(|d| d["kind"] == "Secret").collect();

    // The cluster's API server, on a host of its own; the kubelet's part: tokens bound to Pods.
    let api_host = net.host("apiserver");
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().unwrap();
    let kube = Arc::new(api_host.within(|| runtime.block_on(FakeKube::start(SocketAddr::new(api_host.addr(), 6443)))));
    let kubeconfig = net.dir().join("kubeconfig");
    kube.write_kubeconfig(&kubeconfig);
    let issuer = kube.clone();
    let cluster = Cluster { kubeconfig, issue_token: Box::new(move |pod, audience| projected_token(&issuer, pod, audience)) };

    // Cluster DNS, for the gateway: the zone's Service name.
    let _dns = HostsFile::write(&gateway_host, &[("strait-zone.strait-system.svc", &zone_host)]);
    let zone = run_container_in(
        &net,
        &zone_host,
        find(&docs, "Deployment", "strait-zone"),
        "strait-zone",
        "strait-zone-7c9f-x2b4q",
        &secrets,
        Some(&cluster),
    );
    wait_for("the zone to take the leader Lease", DEADLINE, || {
        zone.assert_running("the zone to lead");
        match kube.get("Lease", "strait-system", "strait-zone-leader") {
            Some(lease) if lease["spec"]["holderIdentity"] == "strait-zone-7c9f-x2b4q" => Ok(()),
            other => Err(format!("lease: {other:?}")),
        }
    });
    let gateway = run_container(
        &net,
        &gateway_host,
        find(&docs, "Deployment", "strait-gateway"),
        "strait-gateway",
        "strait-gateway-5d8-k7m2p",
        &secrets,
    );

    wait_for("the global to show zone-1 connected", DEADLINE, || {
        zone.assert_running("zone-1 to connect");
        global.proc.assert_running("zone-1 to connect");
        let status = global.zone_status("zone-1")?;
        if status["connected"] == true {
            Ok(())
        } else {
            Err(format!("status: {status}"))
        }
    });
    // The gateway's readiness probe, as the manifest has it: it registered with its zone.
    let ready = gateway_host.url(9902, "/ready");
    wait_for("the gateway's readiness probe", DEADLINE, || {
        gateway.assert_running("the gateway to become ready");
        zone.assert_running("the gateway to become ready");
        match gateway_host.http_client().get(&ready).send() {
            Ok(r) if r.status().is_success() => Ok(()),
            Ok(r) => Err(format!("{} {}", r.status(), r.text().unwrap_or_default())),
            Err(e) => Err(e.to_string()),
        }
    });
    // Other zones are told the advertised ingress address.
    wait_for("the global to know zone-1's ingress", DEADLINE, || {
        let status = global.zone_status("zone-1")?;
        let addresses = status["inventory"]["ingressAddresses"].to_string();
        if addresses.contains(&advertised) {
            Ok(())
        } else {
            Err(format!("ingress addresses: {addresses}"))
        }
    });
    // The zone's own probe path answers over HTTPS, verified with the CA of its Secret.
    let dps_ca = String::from_utf8(secret_data(find(&docs, "Secret", "strait-zone-dps-ca"))["ca.crt"].clone()).unwrap();
    let readyz = "https://strait-zone:7681/readyz";
    let builder = reqwest::blocking::Client::builder()
        .tls_built_in_root_certs(false)
        .add_root_certificate(reqwest::Certificate::from_pem(dps_ca.as_bytes()).unwrap())
        .resolve("strait-zone", std::net::SocketAddr::new(zone_host.addr(), 7681))
        .timeout(Duration::from_secs(5))
        .no_proxy();
    // Its I/O thread starts in the gateway's namespace, which reaches the zone.
    let zone_client = gateway_host.within(|| builder.build()).unwrap();
    wait_for("the zone's readiness probe", DEADLINE, || {
        zone.assert_running("the zone's /readyz");
        match zone_client.get(readyz).send() {
            Ok(r) if r.status().is_success() => Ok(()),
            Ok(r) => Err(r.status().to_string()),
            Err(e) => Err(strait_multizone::wait::error_chain(&e)),
        }
    });

    // Injected Pods: frontend calls backend through both sidecars.
    global.apply(&net, "mesh.yaml", "type: Mesh\nname: default\n").assert_success();
    kube.apply(json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "shop", "labels": {"strait.io/sidecar-injection": "enabled"}}}));
    kube.apply(app_service("backend"));
    kube.apply(app_service("frontend"));
    let hook = find(&docs, "MutatingWebhookConfiguration", "strait-sidecar-injector-strait-system");
    let ca_bundle =
        base64::engine::general_purpose::STANDARD.decode(hook["webhooks"][0]["clientConfig"]["caBundle"].as_str().unwrap()).unwrap();
    let webhook_port = find(&docs, "Service", "strait-zone")["spec"]["ports"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["port"] == hook["webhooks"][0]["clientConfig"]["service"]["port"])
        .map(|p| p["targetPort"].as_str().unwrap().to_string())
        .expect("the Service port the webhook calls");
    assert_eq!(webhook_port, "webhook");
    let webhook_client = reqwest::blocking::Client::builder()
        .tls_built_in_root_certs(false)
        .add_root_certificate(reqwest::Certificate::from_pem(&ca_bundle).unwrap())
        .resolve("strait-zone.strait-system.svc", SocketAddr::new(zone_host.addr(), 7443))
        .timeout(Duration::from_secs(5))
        .no_proxy();
    let webhook_client = gateway_host.within(|| webhook_client.build()).unwrap();

    let backend_host = net.host("backend");
    let frontend_host = net.host("frontend");
    let _backend_dns = HostsFile::write(&backend_host, &[("strait-zone.strait-system.svc", &zone_host)]);
    let _frontend_dns = HostsFile::write(&frontend_host, &[("strait-zone.strait-system.svc", &zone_host)]);
    let backend = admit(&net, &kube, hook, &webhook_client, app_pod("backend-6c4d-2xk9q", "backend", &[], false), &backend_host);
    let call = format!("--call=http://{}:8080", backend_host.addr());
    let frontend = admit(&net, &kube, hook, &webhook_client, app_pod("frontend-7f9b-m2c4d", "frontend", &[call], true), &frontend_host);
    let _backend = start_pod(&net, &backend_host, &backend, &cluster);
    let _frontend = start_pod(&net, &frontend_host, &frontend, &cluster);

    // The frontend's probe port is left out of the redirection, so a client (here the
    // gateway's host) reaches it as the kubelet would; its call to the backend crosses both
    // sidecars.
    let frontend_url = frontend_host.url(8080, "/api");
    let answer = wait_for("frontend to reach backend through the mesh", Duration::from_secs(60), || {
        zone.assert_running("the injected Pods to connect");
        let response = gateway_host.http_client().get(&frontend_url).send().map_err(|e| strait_multizone::wait::error_chain(&e))?;
        let status = response.status();
        let body: Value = response.json().map_err(|e| e.to_string())?;
        if status.is_success() && body["calls"]["service"] == "backend" {
            Ok(body)
        } else {
            Err(format!("{status}: {body}"))
        }
    });
    assert_eq!(answer["service"], "frontend");
    // The backend's sidecar served it, from the frontend's identity.
    let metrics = backend_host
        .within(|| reqwest::blocking::Client::new().get("http://127.0.0.1:9901/metrics").send().and_then(|r| r.text()))
        .expect("the backend sidecar's metrics");
    let served = metrics.lines().find(|l| {
        l.starts_with("strait_dp_http_requests_total")
            && l.contains("source_service=\"frontend.shop.svc.80\"")
            && l.contains("direction=\"inbound\"")
    });
    assert!(served.is_some(), "the backend's sidecar counted no request from frontend:\n{metrics}");
    // The backend's own port takes only mTLS: plain text from outside the mesh is refused.
    let plain = gateway_host.http_client().get(backend_host.url(8080, "/api")).send();
    assert!(plain.is_err() || !plain.as_ref().unwrap().status().is_success(), "plain text reached the backend: {plain:?}");
    // The zone keeps their Dataplanes from the Pods and Services.
    let dataplanes = wait_for("the zone to list both Dataplanes", DEADLINE, || {
        let listed = zone_client
            .get("https://strait-zone:7681/meshes/default/dataplanes")
            .send()
            .and_then(|r| r.json::<Value>())
            .map_err(|e| strait_multizone::wait::error_chain(&e))?;
        let text = listed.to_string();
        if text.contains("backend-6c4d-2xk9q.shop") && text.contains("frontend-7f9b-m2c4d.shop") {
            Ok(text)
        } else {
            Err(text)
        }
    });
    assert!(dataplanes.contains("backend.shop.svc.80"), "{dataplanes}");
    // And the global shows the injected sidecar, through the zone's sync stream.
    let inspected = global.straitctl(&net, &["inspect", "dataplane", "backend-6c4d-2xk9q.shop", "--mesh", "default"]);
    inspected.assert_success();
    println!("straitctl inspect dataplane backend-6c4d-2xk9q.shop --mesh default:\n{}", inspected.stdout);
    assert!(inspected.stdout.contains("backend.shop.svc.80"), "{}", inspected.stdout);
}
