//! The Helm chart (deploy/k8s/strait), checked with the real Helm engine and run as written.
//!
//! No Kubernetes API server runs here, so: `scripts/k8s/check_chart.py` lints and renders the
//! chart in both modes with helm-python-sdk and validates every manifest and CRD with
//! `kubernetes-validate --strict`; and the rendered global StatefulSet, zone Deployment and
//! gateway Deployment are started as processes from their own command, arguments,
//! environment and Secrets (`strait_multizone::pods`), each "pod" on a host of its own, and
//! must form a working zone: a wrong flag, path or Secret key in a template fails here.

use std::process::Command;
use std::time::Duration;

use serde_json::{json, Value};
use strait_multizone::control_plane::Global;
use strait_multizone::pods::{find, helm_available, render_chart, run_container, secret_data, HostsFile};
use strait_multizone::{wait_for, Net};

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

#[test]
fn a_global_and_a_zone_run_as_the_chart_renders_them() {
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

    // Cluster DNS, for the gateway: the zone's Service name.
    let _dns = HostsFile::write(&gateway_host, &[("strait-zone.strait-system.svc", &zone_host)]);
    let zone = run_container(&net, &zone_host, find(&docs, "Deployment", "strait-zone"), "strait-zone", "strait-zone-7c9f-x2b4q", &secrets);
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
}
