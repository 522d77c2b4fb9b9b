//! Scenario: the global's traffic map in a real browser. Three zones, a call chain across two
//! of them under constant load (web in zone-1 calls backend in zone-2), and 100 services in
//! all (the others registered as Dataplanes of their zones). Headless Chromium (Debian's
//! `chromium`) loads `/map` from the global; the test reads the rendered page: every zone,
//! every service, and a non-zero request rate from web to backend. A screenshot is kept in
//! `target/e2e-artifacts/traffic-map.png`, and the page's own render time is printed.
//!
//! Without Chromium the scenario is skipped with its reason, except in CI (`CI=true`), where
//! `.ci/run` installs it and its absence fails.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use strait_multizone::control_plane::{API_PORT, SYNC};
use strait_multizone::gateway::start_zones;
use strait_multizone::sidecar::{http_get, local_ip, Workload};
use strait_multizone::{wait_for, Cmd, Net};

const WEB_INBOUND: u16 = 8001;
const WEB_APP: u16 = 9001;
const BACKEND_INBOUND: u16 = 8002;
const BACKEND_APP: u16 = 9002;
const TO_BACKEND: u16 = 10011;
/// Services on the map in all.
const SERVICES: usize = 100;

/// Headless Chromium's flags, as this machine's closed network wants them.
fn chromium(binary: &std::path::Path, profile: &std::path::Path) -> Cmd {
    Cmd::new(binary)
        .args(["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking"])
        .args(["--disable-component-update", "--disable-sync", "--disable-dev-shm-usage", "--ignore-certificate-errors"])
        .arg(format!("--user-data-dir={}", profile.display()))
        .timeout(Duration::from_secs(90))
}

#[test]
fn the_traffic_map_shows_zones_services_and_live_rates_in_a_browser() {
    let Some(binary) = strait_multizone::system_program(&["chromium", "chromium-browser"], "chromium") else { return };
    let net = Net::new();
    let (global, zones) = start_zones(&net, &["zone-1", "zone-2", "zone-3"]);
    let files = [("who.txt", "backend\n")];
    let _backend = Workload::start_on(&net, &global, &zones[1].0, "backend", "backend", BACKEND_INBOUND, BACKEND_APP, &[], Some(&files));
    let web = Workload::start_on(&net, &global, &zones[0].0, "web", "web", WEB_INBOUND, WEB_APP, &[(TO_BACKEND, "backend")], None);
    // The other services, spread over the three zones.
    for i in 0..SERVICES - 2 {
        let (zone, _) = &zones[i % 3];
        zone.put_dataplane(&format!("svc-{i:03}-1"), &format!("192.0.2.{}", i + 1), &format!("svc-{i:03}"));
    }

    // Constant load from web to backend while the map is looked at.
    let stop = Arc::new(AtomicBool::new(false));
    let load = {
        let (host, stop) = (web.host.clone(), stop.clone());
        let target = SocketAddr::new(local_ip(&web.host), TO_BACKEND);
        std::thread::spawn(move || {
            let mut ok = 0u64;
            while !stop.load(Ordering::Relaxed) {
                if matches!(http_get(&host, target, "backend", "/who.txt"), Ok((200, _))) {
                    ok += 1;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            ok
        })
    };
    let data = wait_for("the global's map data to show 100 services and web → backend traffic", SYNC * 2, || {
        let (_, data) = global.get("/map/data")?;
        let services: usize = data["zones"].as_array().into_iter().flatten().map(|z| z["services"].as_array().map_or(0, Vec::len)).sum();
        let rate = data["edges"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|e| e["source"]["service"] == "web" && e["destination"]["service"] == "backend")
            .and_then(|e| e["rps"].as_f64())
            .unwrap_or(0.0);
        if services == SERVICES && rate > 0.0 {
            Ok(data)
        } else {
            Err(format!("{services} services, {rate} requests/s: {data}"))
        }
    });
    let edge = data["edges"].as_array().and_then(|e| e.iter().find(|e| e["source"]["service"] == "web")).cloned().unwrap_or_default();
    assert_eq!((edge["source"]["zone"].as_str(), edge["destination"]["zone"].as_str()), (Some("zone-1"), Some("zone-2")), "{edge}");

    // The page, rendered by Chromium on a host of its own.
    let browser = net.host("browser");
    let url = global.host.https_url(API_PORT, "/map");
    let profile = net.mkdir("chromium-profile");
    let dom = browser.run_cmd(chromium(&binary, &profile).args(["--virtual-time-budget=8000", "--dump-dom", url.as_str()]));
    dom.assert_success();
    let page = dom.stdout;
    for zone in ["zone-1", "zone-2", "zone-3"] {
        assert!(page.contains(&format!("data-zone=\"{zone}\"")), "the map shows {zone}:\n{page}");
    }
    let drawn = page.matches("class=\"service").count();
    assert!(drawn >= SERVICES, "the map draws every service: {drawn} of {SERVICES}");
    for service in ["web", "backend", "svc-000", "svc-097"] {
        assert!(page.contains(&format!("data-service=\"{service}\"")), "the map shows {service}");
    }
    let row = page
        .split("<tr")
        .find(|r| r.contains("data-source=\"web\"") && r.contains("data-destination=\"backend\""))
        .unwrap_or_else(|| panic!("no row for web → backend:\n{page}"));
    let rate: f64 = row
        .split("class=\"rps num\">")
        .nth(1)
        .and_then(|rest| rest.split('<').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no rate in the row: {row}"));
    assert!(rate > 0.0, "web → backend shows a request rate: {row}");
    let render_ms = page.split("data-render-ms=\"").nth(1).and_then(|r| r.split('"').next()).unwrap_or("?");
    println!("FIGURE traffic-map 3 zones, {SERVICES} services: render {render_ms} ms, web → backend {rate}/s");

    // A screenshot, kept for people to look at.
    let artifacts = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target/e2e-artifacts");
    std::fs::create_dir_all(&artifacts).expect("the artifacts directory");
    let shot = net.dir().join("traffic-map.png");
    let screenshot = format!("--screenshot={}", shot.display());
    let taken = browser.run_cmd(chromium(&binary, &profile).args([
        "--virtual-time-budget=8000",
        "--window-size=1600,1000",
        screenshot.as_str(),
        url.as_str(),
    ]));
    taken.assert_success();
    let png = std::fs::read(&shot).expect("the screenshot");
    assert!(png.starts_with(b"\x89PNG"), "a PNG");
    std::fs::write(artifacts.join("traffic-map.png"), png).expect("keep the screenshot");

    stop.store(true, Ordering::Relaxed);
    let answered = load.join().expect("the load thread");
    assert!(answered > 0, "the load was answered");
}
