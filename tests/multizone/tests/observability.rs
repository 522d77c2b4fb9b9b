//! Scenario: a real Prometheus (Debian's `prometheus`) scrapes a two-zone mesh through the
//! zones' HTTP service discovery endpoints, with nothing configured per sidecar: a
//! MeshMetric applied on the global makes every sidecar expose its metrics, each zone lists
//! its sidecars and gateways, and the request counts Prometheus then holds between two
//! services, by zone, are the requests the test sent.
//!
//! The same mesh is inspected from the global with `straitctl inspect` (a sidecar of either
//! zone, the policies behind its configuration, a service, a zone), and traced: an OTLP
//! receiver gets the spans of both sidecars of one cross-zone request, in one trace.
//!
//! Without the `prometheus` binary the scenario is skipped with its reason, except in CI
//! (`CI=true`), where `.ci/run` installs it and its absence fails.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::time::Duration;

use serde_json::Value;
use strait_multizone::control_plane::{get_json, Global, Zone, API_PORT, SYNC, ZONE_API_PORT};
use strait_multizone::gateway::start_zones;
use strait_multizone::sidecar::{http_get, local_ip, Workload};
use strait_multizone::{wait_for, Cmd, Host, Net, Proc};

const WEB_INBOUND: u16 = 8001;
const WEB_APP: u16 = 9001;
const BACKEND_INBOUND: u16 = 8002;
const BACKEND_APP: u16 = 9002;
const TO_BACKEND: u16 = 10011;
const PROMETHEUS_PORT: u16 = 9090;
/// Requests web sends to backend.
const REQUESTS: usize = 37;

/// A Prometheus on its own host, with the shipped `deploy/observability/prometheus.yml`:
/// only the addresses, CA files and intervals changed.
fn start_prometheus(net: &Net, binary: &std::path::Path, global: &Global, zones: &[&Zone]) -> (Host, Proc) {
    let host = net.host("prometheus");
    let shipped = concat!(env!("CARGO_MANIFEST_DIR"), "/../../deploy/observability/prometheus.yml");
    let mut config = std::fs::read_to_string(shipped).expect("the shipped Prometheus configuration");
    let global_ca = std::fs::read_to_string(&global.ca_file).expect("the global's CA");
    let mut bundle = global_ca.clone();
    let global_ca = net.write_file("global-ca.pem", global_ca);
    config = config.replace("strait-global.example:7680", &global.host.socket_addr(API_PORT).to_string());
    config = config.replace("/etc/prometheus/strait/global-ca.pem", &global_ca.display().to_string());
    for zone in zones {
        let ca = zone.dps_ca_file();
        bundle.push_str(&std::fs::read_to_string(&ca).expect("the zone's CA"));
        config = config.replace(&format!("{}.example:7681", zone.name), &zone.host.socket_addr(ZONE_API_PORT).to_string());
        config = config.replace(&format!("/etc/prometheus/strait/{}-ca.pem", zone.name), &ca.display().to_string());
    }
    let bundle = net.write_file("control-planes.pem", bundle);
    config = config.replace("/etc/prometheus/strait/control-planes.pem", &bundle.display().to_string());
    for (shipped, fast) in [
        ("scrape_interval: 15s", "scrape_interval: 1s"),
        ("scrape_timeout: 10s", "scrape_timeout: 900ms"),
        ("refresh_interval: 30s", "refresh_interval: 2s"),
    ] {
        assert!(config.contains(shipped), "the shipped configuration sets {shipped}");
        config = config.replace(shipped, fast);
    }
    assert!(!config.contains(".example") && !config.contains("/etc/prometheus"), "every placeholder replaced:\n{config}");
    let file = net.write_file("prometheus.yml", config);
    let data = net.mkdir("prometheus-data");
    let cmd = Cmd::new(binary)
        .arg(format!("--config.file={}", file.display()))
        .arg(format!("--storage.tsdb.path={}", data.display()))
        .arg(format!("--web.listen-address={}", host.socket_addr(PROMETHEUS_PORT)));
    let proc = host.spawn_cmd("prometheus", cmd);
    wait_for("prometheus to be ready", SYNC, || match get_json(&host, &host.url(PROMETHEUS_PORT, "/-/ready"), None) {
        Ok((status, _)) if status.is_success() => Ok(()),
        other => Err(format!("{other:?}")),
    });
    (host, proc)
}

/// The sample names every family of an exposition may have (`# TYPE` lines: counters with
/// `_total`, histograms with `_bucket`, `_sum` and `_count`).
fn sample_names(text: &str, into: &mut BTreeSet<String>) {
    for line in text.lines() {
        let Some(rest) = line.strip_prefix("# TYPE ") else { continue };
        let mut words = rest.split_whitespace();
        let (Some(name), Some(kind)) = (words.next(), words.next()) else { continue };
        match kind {
            "counter" => into.extend([name.to_string(), format!("{}_total", name.trim_end_matches("_total"))]),
            "histogram" => into.extend(["_bucket", "_sum", "_count"].map(|s| format!("{name}{s}"))),
            _ => drop(into.insert(name.to_string())),
        }
    }
}

/// Every shipped Grafana dashboard's queries name only metrics the components expose, and
/// are valid PromQL for the Prometheus that scrapes them.
fn dashboards_query_what_is_exposed(prometheus: &Host, exposed: &BTreeSet<String>) {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../../deploy/observability/dashboards");
    let mut files: Vec<_> = std::fs::read_dir(dir).expect("the dashboards").map(|e| e.expect("entry").path()).collect();
    files.sort();
    let titles: Vec<String> = files.iter().filter_map(|f| f.file_stem()?.to_str().map(str::to_owned)).collect();
    assert_eq!(titles, ["gateways", "mesh", "service", "zone"], "a dashboard for the mesh, a service, a zone and the gateways");
    for file in files {
        let dashboard: Value = serde_json::from_str(&std::fs::read_to_string(&file).expect("read")).expect("a dashboard is JSON");
        let panels = dashboard["panels"].as_array().expect("panels");
        assert!(!panels.is_empty(), "{}", file.display());
        for panel in panels {
            for target in panel["targets"].as_array().expect("targets") {
                let expr = target["expr"].as_str().expect("expr");
                for metric in metric_names(expr) {
                    assert!(
                        exposed.contains(&metric),
                        "{}: panel {:?} queries {metric}, which nothing exposes",
                        file.display(),
                        panel["title"]
                    );
                }
                let promql = expr
                    .replace("$__rate_interval", "1m")
                    .replace("$mesh", "default")
                    .replace("$service", "backend")
                    .replace("$zone", "zone-1");
                query(prometheus, &promql).unwrap_or_else(|e| panic!("{}: panel {:?}: {e}", file.display(), panel["title"]));
            }
        }
    }
}

/// The `strait_...` metric names in a PromQL expression.
fn metric_names(expr: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut rest = expr;
    while let Some(i) = rest.find("strait_") {
        let tail = &rest[i..];
        let end = tail.find(|c: char| !(c.is_ascii_alphanumeric() || c == '_')).unwrap_or(tail.len());
        out.push(tail[..end].to_string());
        rest = &tail[end..];
    }
    out
}

/// The result vector of an instant PromQL query.
fn query(host: &Host, promql: &str) -> Result<Vec<Value>, String> {
    let mut url = reqwest::Url::parse(&host.url(PROMETHEUS_PORT, "/api/v1/query")).map_err(|e| e.to_string())?;
    url.query_pairs_mut().append_pair("query", promql);
    let (status, body) = get_json(host, url.as_str(), None)?;
    if !status.is_success() || body["status"] != "success" {
        return Err(format!("{promql}: {status}: {body}"));
    }
    Ok(body["data"]["result"].as_array().cloned().unwrap_or_default())
}

/// The value of a one-element result, with its labels.
fn single(result: &[Value]) -> Result<(f64, Value), String> {
    match result {
        [one] => {
            let value = one["value"][1].as_str().and_then(|v| v.parse::<f64>().ok()).ok_or_else(|| format!("no value in {one}"))?;
            Ok((value, one["metric"].clone()))
        }
        other => Err(format!("{} series: {other:?}", other.len())),
    }
}

#[test]
fn a_two_zone_mesh_is_inspected_from_the_global_and_scraped_by_prometheus() {
    let binary = strait_multizone::system_program(&["prometheus"], "prometheus");
    let net = Net::new();
    let (global, zones) = start_zones(&net, &["zone-1", "zone-2"]);
    let ((zone1, _), (zone2, _)) = (&zones[0], &zones[1]);
    let example =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../../deploy/examples/meshmetric.yaml")).expect("the example");
    global.apply(&net, "meshmetric.yaml", &example);
    let files = [("who.txt", "backend\n")];
    let _backend = Workload::start_on(&net, &global, zone2, "backend", "backend", BACKEND_INBOUND, BACKEND_APP, &[], Some(&files));
    let web = Workload::start_on(&net, &global, zone1, "web", "web", WEB_INBOUND, WEB_APP, &[(TO_BACKEND, "backend")], None);

    // Each zone lists its own sidecar (with the MeshMetric's port and path) and gateway.
    for (zone, dataplane) in [(zone1, "web-1"), (zone2, "backend-1")] {
        let groups = wait_for(&format!("{}'s discovery endpoint to list {dataplane}", zone.name), SYNC, || {
            let (_, body) = zone.get("/prometheus/targets")?;
            let groups = body.as_array().cloned().unwrap_or_default();
            if groups.iter().any(|g| g["labels"]["dataplane"] == dataplane) {
                Ok(groups)
            } else {
                Err(format!("{body}"))
            }
        });
        let sidecar = groups.iter().find(|g| g["labels"]["dataplane"] == dataplane).expect("listed");
        assert_eq!(sidecar["labels"]["__metrics_path__"], "/metrics", "{sidecar}");
        assert_eq!(sidecar["labels"]["zone"], zone.name.as_str(), "{sidecar}");
        assert!(sidecar["targets"][0].as_str().is_some_and(|t| t.ends_with(":5670")), "{sidecar}");
        assert!(groups.iter().any(|g| g["labels"]["component"] == "gateway"), "the zone's gateway is listed: {groups:?}");
    }

    let target = SocketAddr::new(local_ip(&web.host), TO_BACKEND);
    for i in 0..REQUESTS {
        let answer = wait_for(&format!("request {i} from web (zone-1) to backend (zone-2)"), SYNC, || {
            match http_get(&web.host, target, "backend", "/who.txt")? {
                (200, body) => Ok(body),
                (status, body) => Err(format!("{status}: {body}")),
            }
        });
        assert_eq!(answer, "backend\n");
    }

    inspect_from_the_global(&net, &global);

    // Tracing sends requests of its own: after Prometheus has counted the ones above.
    let Some(binary) = binary else {
        spans_of_one_cross_zone_request(&net, &global, &web);
        return;
    };
    let (prometheus, _proc) = start_prometheus(&net, &binary, &global, &[zone1, zone2]);
    // Every target is scraped: two sidecars, two gateways, two zone control planes and the global.
    wait_for("prometheus to scrape 2 sidecars, 2 gateways and 3 control planes", Duration::from_secs(60), || {
        let (up, _) = single(&query(&prometheus, "count(up == 1)")?)?;
        if up == 7.0 {
            Ok(())
        } else {
            Err(format!("{up} targets up: {:?}", query(&prometheus, "up")))
        }
    });
    // The requests, as backend's sidecar counted them (inbound) and as web's did (outbound),
    // by source and destination zone.
    for direction in ["inbound", "outbound"] {
        let promql = format!(
            "sum by (source_zone, destination_zone) (strait_dp_http_requests_total{{direction=\"{direction}\",mesh=\"default\",\
             source_service=\"web\",destination_service=\"backend\",status=\"200\"}})"
        );
        let (count, labels) = wait_for(&format!("prometheus to hold the {direction} count"), Duration::from_secs(30), || {
            let (count, labels) = single(&query(&prometheus, &promql)?)?;
            if count >= REQUESTS as f64 {
                Ok((count, labels))
            } else {
                Err(format!("{count} so far"))
            }
        });
        assert_eq!(count, REQUESTS as f64, "{direction}: every request counted once");
        assert_eq!((labels["source_zone"].as_str(), labels["destination_zone"].as_str()), (Some("zone-1"), Some("zone-2")), "{labels}");
    }
    // The control planes' own figures: each zone counts its connected sidecar, and the global
    // how far behind each zone is.
    for zone in ["zone-1", "zone-2"] {
        let (sidecars, _) =
            single(&query(&prometheus, &format!("strait_zone_dps_connected_proxies{{kind=\"sidecar\",zone=\"{zone}\"}}")).expect("query"))
                .expect("one series");
        assert_eq!(sidecars, 1.0, "{zone}");
        let (lag, _) = single(&query(&prometheus, &format!("strait_global_kds_zone_sync_lag_seconds{{zone=\"{zone}\"}}")).expect("query"))
            .expect("one series");
        assert!(lag < 30.0, "{zone}: {lag}");
        for counted in ["strait_zone_dps_config_push_latency_seconds_count", "strait_zone_dps_certificates_issued_total"] {
            let (n, _) = single(&query(&prometheus, &format!("sum({counted}{{zone=\"{zone}\"}})")).expect("query")).expect("one series");
            assert!(n >= 1.0, "{zone}: {counted} {n}");
        }
    }
    // The shipped dashboards: every metric they query is exposed by a sidecar, a gateway or a
    // control plane, and every query runs.
    let mut exposed = BTreeSet::new();
    for text in [
        web.sidecar.get("/metrics").map(|(_, body)| body),
        zones[0].1.metrics_text(),
        zone1.get("/metrics").map(|(_, body)| body),
        global.get("/metrics").map(|(_, body)| body),
    ] {
        sample_names(text.expect("a /metrics").as_str().unwrap_or_default(), &mut exposed);
    }
    dashboards_query_what_is_exposed(&prometheus, &exposed);
    // The gateways' series carry the same names.
    let (streams, _) = single(
        &query(&prometheus, "sum(strait_gateway_streams_total{direction=\"egress\",source_zone=\"zone-1\",destination_zone=\"zone-2\",destination_service=\"backend\"})")
            .expect("query"),
    )
    .expect("the egress of zone-1 counted its tunnels to backend");
    assert!(streams >= 1.0, "{streams}");
    spans_of_one_cross_zone_request(&net, &global, &web);
}

/// `straitctl inspect`, on the global's host: a sidecar of zone-2 found without naming its
/// zone, its live configuration from the sidecar itself, the policy behind a field of web's
/// configuration, its metrics, a service across zones and a zone.
fn inspect_from_the_global(net: &Net, global: &Global) {
    let json = |args: &[&str]| -> Value {
        let out = global.straitctl(net, args);
        out.assert_success();
        serde_json::from_str(&out.stdout).unwrap_or_else(|e| panic!("{e}: {}", out.stdout))
    };
    let config = json(&["inspect", "dataplane", "backend-1", "--mesh", "default", "-o", "json"]);
    assert_eq!(config["zone"], "zone-2", "{config}");
    assert_eq!(config["result"]["config"]["dataplane"], "backend-1", "the sidecar's own dump: {config}");
    assert!(config["result"]["version"].as_u64().is_some_and(|v| v > 0), "{config}");
    assert!(config["result"]["certificate"]["chain"].as_str().is_some_and(|c| c.contains("BEGIN CERTIFICATE")), "{config}");

    let stats = json(&["inspect", "dataplane", "backend-1", "--stats", "-o", "json"]);
    let metrics = stats["result"]["metrics"].as_str().unwrap_or_default();
    assert!(metrics.contains("strait_dp_http_requests_total{"), "{metrics}");

    // A MeshTimeout for web's calls to backend: --policies names it behind the field it sets,
    // and the mesh's default MeshTimeout behind the others.
    global.apply(
        net,
        "web-timeout.yaml",
        "type: MeshTimeout\nname: web-to-backend\nmesh: default\nspec:\n  targetRef: {kind: MeshService, name: web}\n  to:\n    \
         - targetRef: {kind: MeshService, name: backend}\n      default: {http: {requestTimeout: 7s}}\n",
    );
    let explained = wait_for("zone-1 to explain web's timeout to backend", SYNC, || {
        let out = global.straitctl(net, &["inspect", "dataplane", "web-1", "--policies"]);
        if out.status.success() && out.stdout.contains("/http/requestTimeout = \"7s\"  ← web-to-backend") {
            Ok(out.stdout)
        } else {
            Err(format!("{}{}", out.stdout, out.stderr))
        }
    });
    println!("straitctl inspect dataplane web-1 --policies:\n{explained}");
    assert!(explained.contains("in zone zone-1") && explained.contains("outbound backend"), "{explained}");
    let policies = json(&["inspect", "dataplane", "web-1", "--policies", "-o", "json"]);
    let backend = policies["result"]["outbounds"].as_array().and_then(|o| o.iter().find(|o| o["service"] == "backend")).cloned();
    let timeout = backend.map(|b| b["to"]["MeshTimeout"].clone()).unwrap_or_default();
    assert_eq!(timeout["fields"]["/http/requestTimeout"], "web-to-backend", "{timeout}");
    assert!(timeout["origin"].as_array().is_some_and(|o| o.len() >= 2), "the default timeout merged first: {timeout}");

    let missing = global.straitctl(net, &["inspect", "dataplane", "nobody-1"]);
    assert!(!missing.status.success() && missing.stderr.contains("no connected zone has dataplane \"nobody-1\""), "{missing:?}");

    let service = json(&["inspect", "service", "backend", "-o", "json"]);
    assert_eq!((service["endpoints"].as_u64(), service["healthy"].as_u64()), (Some(1), Some(1)), "{service}");
    assert_eq!(service["zones"][0]["zone"], "zone-2", "{service}");
    let text = global.straitctl(net, &["inspect", "service", "backend"]);
    text.assert_success();
    assert!(text.stdout.contains("ZONE") && text.stdout.contains("zone-2"), "{}", text.stdout);

    let zone = global.straitctl(net, &["inspect", "zone", "zone-2"]);
    zone.assert_success();
    assert!(
        zone.stdout.contains("zone zone-2: connected") && zone.stdout.contains("default/backend: 1 endpoints, 1 healthy"),
        "{}",
        zone.stdout
    );
}

/// MeshTrace across zones: an OTLP receiver on a host of its own (`strait-otlp-sink`) gets,
/// for one request from web (zone-1) to backend (zone-2), the client span of web's sidecar
/// and the server span of backend's, in one trace, the server's the child of the client's.
fn spans_of_one_cross_zone_request(net: &Net, global: &Global, web: &Workload) {
    let host = net.host("otlp");
    let address = host.socket_addr(4317);
    let sink = host.spawn("otlp-sink", strait_multizone::bin("strait-otlp-sink"), [address.to_string()]);
    global.apply(
        net,
        "meshtrace.yaml",
        &format!(
            "type: MeshTrace\nname: everything\nmesh: default\nspec:\n  targetRef: {{kind: Mesh}}\n  default:\n    \
             backends: [{{openTelemetry: {{endpoint: \"{address}\"}}}}]\n    sampling: {{overall: 100}}\n"
        ),
    );
    let target = SocketAddr::new(local_ip(&web.host), TO_BACKEND);
    let (client, server) = wait_for("a client span in zone-1 and its server span in zone-2", SYNC, || {
        http_get(&web.host, target, "backend", "/who.txt")?;
        let spans: Vec<Value> = sink.log().lines().filter_map(|l| serde_json::from_str::<Value>(l).ok()).collect();
        let attr = |s: &Value, k: &str| s["attributes"][k].as_str().unwrap_or_default().to_string();
        for client in spans.iter().filter(|s| attr(s, "strait.zone") == "zone-1" && attr(s, "strait.direction") == "outbound") {
            let child = spans
                .iter()
                .find(|s| s["traceId"] == client["traceId"] && s["parentSpanId"] == client["spanId"] && attr(s, "strait.zone") == "zone-2");
            if let Some(server) = child {
                return Ok((client.clone(), server.clone()));
            }
        }
        Err(format!("{} spans so far", spans.len()))
    });
    assert_eq!(server["attributes"]["strait.direction"], "inbound", "{server}");
    assert_eq!(server["attributes"]["strait.service"], "backend", "{server}");
    assert_eq!(client["attributes"]["strait.service"], "web", "{client}");
    assert_eq!(client["traceId"].as_str().map(str::len), Some(32), "{client}");
}
