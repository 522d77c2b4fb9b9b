//! Scenario: a real Prometheus (Debian's `prometheus`) scrapes a two-zone mesh through the
//! zones' HTTP service discovery endpoints, with nothing configured per sidecar: a
//! MeshMetric applied on the global makes every sidecar expose its metrics, each zone lists
//! its sidecars and gateways, and the request counts Prometheus then holds between two
//! services, by zone, are the requests the test sent.
//!
//! Without the `prometheus` binary the scenario is skipped with its reason, except in CI
//! (`CI=true`), where `.ci/run` installs it and its absence fails.

use std::net::SocketAddr;
use std::time::Duration;

use serde_json::Value;
use strait_multizone::control_plane::{get_json, Zone, SYNC};
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

const MESH_METRIC: &str = "type: MeshMetric\nname: metrics\nmesh: default\nspec:\n  targetRef: {kind: Mesh}\n  default:\n    \
                           backends:\n      - type: Prometheus\n        prometheus: {port: 5670, path: /metrics}\n";

/// Where `prometheus` is, or why the scenario cannot run here.
fn prometheus_binary() -> Option<std::path::PathBuf> {
    let found = std::env::var_os("PATH")
        .into_iter()
        .flat_map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .map(|d| d.join("prometheus"))
        .find(|p| p.is_file());
    if found.is_none() {
        assert!(std::env::var("CI").as_deref() != Ok("true"), "prometheus is not installed: .ci/run installs Debian's prometheus package");
        println!("SKIPPED: no prometheus binary on PATH (apt-get install prometheus)");
    }
    found
}

/// A Prometheus on its own host whose only configuration is one HTTP SD entry per zone.
fn start_prometheus(net: &Net, binary: &std::path::Path, zones: &[&Zone]) -> (Host, Proc) {
    let host = net.host("prometheus");
    let mut config = String::from("global:\n  scrape_interval: 1s\n  scrape_timeout: 900ms\nscrape_configs:\n");
    for zone in zones {
        let ca = zone.dps_ca_file();
        config.push_str(&format!(
            "  - job_name: strait-{name}\n    http_sd_configs:\n      - url: {url}\n        refresh_interval: 2s\n        tls_config: {{ca_file: {ca}}}\n",
            name = zone.name,
            url = zone.url("/prometheus/targets"),
            ca = ca.display(),
        ));
    }
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
fn prometheus_scrapes_both_zones_through_their_discovery_endpoints() {
    let Some(binary) = prometheus_binary() else { return };
    let net = Net::new();
    let (global, zones) = start_zones(&net, &["zone-1", "zone-2"]);
    let ((zone1, _), (zone2, _)) = (&zones[0], &zones[1]);
    global.apply(&net, "meshmetric.yaml", MESH_METRIC);
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
        assert!(groups.iter().any(|g| g["labels"]["kind"] == "gateway"), "the zone's gateway is listed: {groups:?}");
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

    let (prometheus, _proc) = start_prometheus(&net, &binary, &[zone1, zone2]);
    // Every target of both zones is scraped: two sidecars and two gateways.
    wait_for("prometheus to scrape 2 sidecars and 2 gateways", Duration::from_secs(60), || {
        let (up, _) = single(&query(&prometheus, "count(up == 1)")?)?;
        if up == 4.0 {
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
    // The gateways' series carry the same names.
    let (streams, _) = single(
        &query(&prometheus, "sum(strait_gateway_streams_total{direction=\"egress\",source_zone=\"zone-1\",destination_zone=\"zone-2\",destination_service=\"backend\"})")
            .expect("query"),
    )
    .expect("the egress of zone-1 counted its tunnels to backend");
    assert!(streams >= 1.0, "{streams}");
}
