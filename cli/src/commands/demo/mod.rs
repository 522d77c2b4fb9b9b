//! `straitctl demo`: a two-zone mesh on one machine, without root and without Kubernetes.
//!
//! `up` starts, in the background, a global control plane, two zones (each a zone control plane
//! and a gateway) and a sample application (`strait-demo-app`) with its sidecars: `frontend` in
//! zone-1 calls `backend` (v1 in zone-1, v2 in zone-2), which calls `store` (zone-2 only). It
//! builds the binaries first when they are missing and `straitctl` runs from the source tree.
//! `traffic` shows who answers, second by second; `kill` stops a service's workloads in a
//! zone, to watch failover; `fail` makes a service's application in a zone answer errors, to
//! watch outlier detection; `status` lists the processes and their health; `down` stops them
//! and removes the demo's directory. `up` writes the policies it suggests trying (a
//! permission, a 50/50 split across the zones, a fault injection, outlier detection) next to
//! its data.
//!
//! In: the action and its flags. Out: processes, the demo's directory, and text on stdout.

/// Prints a line; a closed stdout (`| head`) must not stop a demo half started or stopped.
macro_rules! say {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stdout(), $($arg)*);
    }};
}

mod netns;
mod plan;
mod procs;
mod traffic;

use std::path::{Path, PathBuf};
use std::process::Child;
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use serde_json::{json, Value};

use crate::cli::{DemoArgs, DemoCommand, DemoUpArgs};
use crate::commands::zone::write_private;
use plan::{Plan, APP_PORT, GATEWAY_ADMIN_PORT, SIDECAR_ADMIN_PORT};
use procs::{Record, State};

/// Binaries the demo runs, and the package that builds each.
const BINARIES: [(&str, &str); 5] = [
    ("strait-global", "strait-global-cp"),
    ("strait-zone", "strait-zone-cp"),
    ("strait-gateway", "strait-gateway"),
    ("strait-dp", "strait-dataplane"),
    ("strait-demo-app", "strait-demo-app"),
];

/// How long each process may take to become healthy.
const READY: Duration = Duration::from_secs(60);

/// Runs a demo action.
pub async fn run(cmd: DemoCommand) -> anyhow::Result<()> {
    match cmd {
        DemoCommand::Up(args) => up(&args).await,
        DemoCommand::Traffic(args) => traffic::run(&dir(&args.demo), args.rate, args.seconds).await,
        DemoCommand::Kill(args) => kill(&dir(&args.demo), &args.service, &args.zone),
        DemoCommand::Fail(args) => fail(&dir(&args.demo), &args).await,
        DemoCommand::Status(args) => status(&dir(&args)).await,
        DemoCommand::Down(args) => down(&dir(&args)),
    }
}

/// `--dir`, or `<temp dir>/strait-demo-<user>`.
fn dir(args: &DemoArgs) -> PathBuf {
    args.dir.clone().unwrap_or_else(|| {
        let user = std::env::var("USER").unwrap_or_else(|_| "user".into());
        std::env::temp_dir().join(format!("strait-demo-{user}"))
    })
}

/// Where the binaries are: next to `straitctl`; built there first when missing and
/// `straitctl` runs from the source tree.
fn binaries() -> anyhow::Result<PathBuf> {
    let exe = std::env::current_exe().context("finding straitctl's own path")?;
    let bin_dir = exe.parent().map(Path::to_path_buf).context("straitctl's directory")?;
    let missing: Vec<&str> = BINARIES.iter().map(|(b, _)| *b).filter(|b| !bin_dir.join(b).is_file()).collect();
    if missing.is_empty() {
        return Ok(bin_dir);
    }
    let workspace = Path::new(env!("CARGO_MANIFEST_DIR")).parent().map(Path::to_path_buf).unwrap_or_default();
    if !workspace.join("Cargo.toml").is_file() {
        bail!("{} missing next to straitctl in {}; install them there", missing.join(", "), bin_dir.display());
    }
    let mut cmd = std::process::Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    cmd.current_dir(&workspace).arg("build");
    match bin_dir.file_name().and_then(|n| n.to_str()) {
        Some("debug") => {}
        Some("release") => {
            cmd.arg("--release");
        }
        Some(profile) => {
            cmd.args(["--profile", profile]);
        }
        None => {}
    }
    for (_, package) in BINARIES {
        cmd.args(["-p", package]);
    }
    say!("building {} ...", missing.join(", "));
    let status = cmd.status().context("running cargo build")?;
    if !status.success() {
        bail!("cargo build failed ({status})");
    }
    Ok(bin_dir)
}

/// The global's API CA in the demo directory, once the global has written it.
fn api_ca(dir: &Path) -> PathBuf {
    dir.join("global").join(crate::config::API_CA_FILE)
}

/// An HTTP client for the demo's processes that trusts the demo global's API CA and each
/// zone's `dps-ca.pem`, once they exist (the control planes' REST APIs serve HTTPS).
fn demo_client(dir: &Path, timeout: Duration) -> anyhow::Result<reqwest::Client> {
    let mut builder = reqwest::Client::builder().timeout(timeout).tls_built_in_root_certs(false);
    let mut cas = vec![api_ca(dir)];
    if let Ok(entries) = std::fs::read_dir(dir) {
        cas.extend(entries.flatten().map(|e| e.path().join("dps-ca.pem")));
    }
    for ca in cas {
        if let Ok(pem) = std::fs::read(&ca) {
            builder = builder.add_root_certificate(reqwest::Certificate::from_pem(&pem)?);
        }
    }
    Ok(builder.build()?)
}

/// Waits until `url` answers 200; fails at once if `child` exits.
async fn wait_healthy(dir: &Path, url: &str, child: &mut Child, name: &str, log: &Path) -> anyhow::Result<()> {
    let deadline = Instant::now() + READY;
    loop {
        // The global's CA appears once it has started: look again each time.
        let http = demo_client(dir, Duration::from_secs(5))?;
        if let Some(status) = child.try_wait()? {
            let tail = std::fs::read_to_string(log).unwrap_or_default();
            let tail: Vec<&str> = tail.lines().rev().take(15).collect();
            bail!(
                "{name} exited ({status}) while starting; last lines of {}:\n{}",
                log.display(),
                tail.into_iter().rev().collect::<Vec<_>>().join("\n")
            );
        }
        if let Ok(r) = http.get(url).send().await {
            if r.status().is_success() {
                return Ok(());
            }
        }
        if Instant::now() > deadline {
            bail!("{name} was not healthy at {url} within {READY:?}; see {}", log.display());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The demo being started: its directory, binaries, processes so far.
struct Starter {
    /// The namespaces processes run in, when the demo uses them.
    netns: Option<plan::Namespaces>,
    dir: PathBuf,
    bins: PathBuf,
    /// The global's admin token, once it has started.
    admin: String,
    http: reqwest::Client,
    state: State,
}

impl Starter {
    /// Starts a process, records it, and waits until it is healthy.
    async fn start(
        &mut self,
        name: &str,
        binary: &str,
        args: Vec<String>,
        health: String,
        zone: Option<&str>,
        service: Option<&str>,
    ) -> anyhow::Result<()> {
        let netns = self.netns.as_ref().map(|ns| ns.of(zone));
        let (mut child, log) = procs::spawn(&self.dir, name, &self.bins.join(binary), &args, netns.as_deref())?;
        self.state.processes.push(Record {
            name: name.into(),
            pid: child.id(),
            binary: binary.into(),
            zone: zone.map(str::to_string),
            service: service.map(str::to_string),
            health: health.clone(),
            log: log.clone(),
        });
        self.state.save(&self.dir)?;
        wait_healthy(&self.dir, &health, &mut child, name, &log).await?;
        say!("  started {name:<22} pid {:<7} log {}", child.id(), log.display());
        Ok(())
    }

    /// `POST`/`PUT` on the global's API with the admin token; the JSON answer.
    async fn call(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> anyhow::Result<Value> {
        let mut request = self.http.request(method, format!("{}{path}", self.state.api)).bearer_auth(&self.admin);
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request.send().await.with_context(|| format!("calling {path}"))?;
        let status = response.status();
        let text = response.text().await.unwrap_or_default();
        if !status.is_success() {
            bail!("{path}: {status}: {text}");
        }
        Ok(serde_json::from_str(&text).unwrap_or(Value::Null))
    }
}

async fn up(up_args: &DemoUpArgs) -> anyhow::Result<()> {
    let args = &up_args.demo;
    plan::check_prefix(&args.address_prefix)?;
    let prometheus = match up_args.with_prometheus {
        true => Some(find_on_path("prometheus").context(
            "--with-prometheus: no `prometheus` on PATH; install it (Debian: apt-get install prometheus) or leave the flag out",
        )?),
        false => None,
    };
    let dir = dir(args);
    if procs::state_path(&dir).exists() {
        bail!("a demo already runs from {} (`straitctl demo status`); stop it first with `straitctl demo down`", dir.display());
    }
    let bins = binaries()?;
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let namespaced = !args.no_namespaces && netns::available();
    let mut plan = Plan::new(&args.address_prefix, namespaced);
    let http = reqwest::Client::builder().timeout(Duration::from_secs(5)).build()?;
    let state = State {
        api: plan.api(),
        token_file: dir.join("global/admin-token"),
        frontend: plan.frontend(),
        processes: Vec::new(),
        network: Vec::new(),
    };
    let mut s = Starter { netns: plan.namespaces.take(), dir: dir.clone(), bins, admin: String::new(), http, state };
    match &s.netns {
        Some(ns) => say!("starting the demo in {} (logs in logs/), in network namespaces {}-* on {}.0/24", dir.display(), ns.tag, ns.net),
        None => say!("starting the demo in {} (logs in logs/), on loopback addresses", dir.display()),
    }
    let started = async {
        if let Some(ns) = &s.netns {
            let mut made = Vec::new();
            let result = netns::setup(&plan, ns, &mut made);
            s.state.network = made;
            s.state.save(&s.dir)?;
            result?;
            if let Err(e) = netns::isolate(&plan, ns) {
                say!("  (the zones are not isolated from each other: {e:#})");
            }
        }
        up_steps(&mut s, &plan).await?;
        if let Some(binary) = &prometheus {
            start_prometheus(&mut s, &plan, binary).await?;
        }
        Ok::<(), anyhow::Error>(())
    }
    .await;
    if let Err(e) = started {
        let records: Vec<&Record> = s.state.processes.iter().collect();
        procs::stop(&records, Duration::from_secs(3));
        netns::teardown(&s.state.network);
        let _ = std::fs::remove_file(procs::state_path(&dir));
        return Err(e.context(format!("the demo did not start; its processes were stopped, its logs kept in {}/logs", dir.display())));
    }
    let dir_flag = args.dir.as_ref().map(|d| format!(" --dir {}", d.display())).unwrap_or_default();
    print_next_steps(&s, &plan, &dir, &dir_flag, prometheus.is_some());
    Ok(())
}

/// The path of `program` on PATH.
fn find_on_path(program: &str) -> Option<PathBuf> {
    std::env::var_os("PATH").and_then(|p| std::env::split_paths(&p).map(|d| d.join(program)).find(|p| p.is_file()))
}

/// Port of the demo's Prometheus, on the global's address.
const PROMETHEUS_PORT: u16 = 9090;

/// Makes every sidecar scrapeable (a MeshMetric), then starts Prometheus with one discovery
/// entry on the global (the control planes) and one per zone (its sidecars and gateways).
async fn start_prometheus(s: &mut Starter, plan: &Plan, binary: &Path) -> anyhow::Result<()> {
    s.call(
        reqwest::Method::PUT,
        "/meshes/default/meshmetrics/metrics",
        Some(json!({"type": "MeshMetric", "name": "metrics", "mesh": "default", "spec": {"targetRef": {"kind": "Mesh"},
            "default": {"backends": [{"type": "Prometheus", "prometheus": {"port": 5670, "path": "/metrics"}}]}}})),
    )
    .await?;
    let dir = s.dir.clone();
    let global_ca = dir.join("global/api-ca.pem");
    let mut bundle = std::fs::read_to_string(&global_ca).context("reading the global's api-ca.pem")?;
    let mut jobs = String::new();
    for zone in &plan.zones {
        let ca = dir.join(format!("{}-data/dps-ca.pem", zone.name));
        bundle.push_str(&std::fs::read_to_string(&ca).with_context(|| format!("reading {}", ca.display()))?);
        jobs.push_str(&format!(
            "  - job_name: strait-{name}\n    http_sd_configs:\n      - url: https://{ip}:7681/prometheus/targets\n        refresh_interval: 5s\n        tls_config: {{ca_file: {ca}}}\n",
            name = zone.name,
            ip = zone.ip,
            ca = ca.display()
        ));
    }
    let bundle_file = dir.join("prometheus-cas.pem");
    std::fs::write(&bundle_file, bundle)?;
    let config = format!(
        "# Written by `straitctl demo up --with-prometheus` (see deploy/observability/prometheus.yml).\n\
         global:\n  scrape_interval: 5s\nscrape_configs:\n  - job_name: strait-control-planes\n    scheme: https\n    \
         tls_config: {{ca_file: {b}}}\n    http_sd_configs:\n      - url: https://{g}:7680/prometheus/targets\n        refresh_interval: 5s\n        \
         tls_config: {{ca_file: {ca}}}\n{jobs}",
        b = bundle_file.display(),
        g = plan.global_ip,
        ca = global_ca.display(),
    );
    let config_file = dir.join("prometheus.yml");
    std::fs::write(&config_file, config)?;
    let g = &plan.global_ip;
    let args = vec![
        format!("--config.file={}", config_file.display()),
        format!("--storage.tsdb.path={}", dir.join("prometheus-data").display()),
        format!("--web.listen-address={g}:{PROMETHEUS_PORT}"),
    ];
    s.start("prometheus", &binary.display().to_string(), args, format!("http://{g}:{PROMETHEUS_PORT}/-/ready"), None, None).await
}

async fn up_steps(s: &mut Starter, plan: &Plan) -> anyhow::Result<()> {
    let dir = s.dir.clone();
    let g = &plan.global_ip;
    let global_data = dir.join("global").display().to_string();
    let args =
        vec!["--api-address".into(), format!("{g}:7680"), "--kds-address".into(), format!("{g}:7685"), "--data-dir".into(), global_data];
    s.start("global", "strait-global", args, format!("https://{g}:7680/readyz"), None, None).await?;
    s.http = demo_client(&dir, Duration::from_secs(5))?;
    s.admin = std::fs::read_to_string(&s.state.token_file).context("reading the global's admin token")?.trim().to_string();
    s.call(reqwest::Method::PUT, "/meshes/default", Some(json!({"type": "Mesh", "name": "default"}))).await?;

    for zone in &plan.zones {
        let registered = s.call(reqwest::Method::POST, &format!("/zones/{}/token", zone.name), None).await?;
        let creds = dir.join(format!("{}-creds", zone.name));
        strait_runtime::files::private_dir(&creds)?;
        write_private(&creds.join("zone-token"), registered["token"].as_str().unwrap_or_default())?;
        write_private(&creds.join("zone-proxy-token"), registered["proxyToken"].as_str().unwrap_or_default())?;
        write_private(&creds.join("global-ca.pem"), registered["caBundle"].as_str().unwrap_or_default().trim_end())?;
        let data = dir.join(format!("{}-data", zone.name));
        let ip = &zone.ip;
        let args: Vec<String> = [
            "--zone",
            zone.name,
            "--global-address",
            &format!("https://{g}:7685"),
            "--zone-token-file",
            &creds.join("zone-token").display().to_string(),
            "--global-ca-file",
            &creds.join("global-ca.pem").display().to_string(),
            "--data-dir",
            &data.display().to_string(),
            "--api-address",
            &format!("{ip}:7681"),
            "--dps-address",
            &format!("{ip}:7678"),
            "--kds-max-backoff",
            "2s",
            // A lively traffic map, and `demo traffic` sees the sidecars' answers within
            // seconds.
            "--traffic-report-interval",
            "1s",
        ]
        .iter()
        .map(|a| a.to_string())
        .collect();
        s.start(&format!("{}-control-plane", zone.name), "strait-zone", args, format!("https://{ip}:7681/readyz"), Some(zone.name), None)
            .await?;
        let args: Vec<String> = [
            "--name",
            "gateway-1",
            "--cp-address",
            &format!("https://{ip}:7678"),
            "--cp-ca-file",
            &data.join("dps-ca.pem").display().to_string(),
            "--zone-proxy-token-file",
            &creds.join("zone-proxy-token").display().to_string(),
            "--ingress-address",
            &format!("{ip}:10001"),
            "--egress-address",
            &format!("{ip}:10002"),
            "--admin-address",
            &format!("{ip}:{GATEWAY_ADMIN_PORT}"),
            "--data-dir",
            &dir.join(format!("{}-gateway", zone.name)).display().to_string(),
            "--cp-max-backoff",
            "2s",
            "--drain-timeout",
            "2s",
        ]
        .iter()
        .map(|a| a.to_string())
        .chain(s.netns.is_none().then(|| "--allow-loopback".to_string()))
        .collect();
        s.start(
            &format!("{}-gateway", zone.name),
            "strait-gateway",
            args,
            format!("http://{ip}:{GATEWAY_ADMIN_PORT}/ready"),
            Some(zone.name),
            None,
        )
        .await?;
    }

    for w in &plan.workloads {
        let zone = plan.zones.iter().find(|z| z.name == w.zone).context("the workload's zone")?;
        let token = s.call(reqwest::Method::POST, &format!("/meshes/default/dataplane-tokens?service={}", w.service), None).await?;
        let token_file = dir.join(format!("{}.token", w.name));
        write_private(&token_file, token["token"].as_str().unwrap_or_default())?;
        let outbound = w
            .calls
            .map(|(service, port)| json!([{"port": port, "address": w.ip, "tags": {"strait.io/service": service}}]))
            .unwrap_or(json!([]));
        let dataplane = json!({
            "type": "Dataplane", "name": w.name, "mesh": "default",
            "spec": {"networking": {
                "address": w.ip,
                "inbound": [{"port": w.inbound, "servicePort": APP_PORT, "serviceAddress": w.ip,
                    "tags": {"strait.io/service": w.service, "strait.io/protocol": "http", "version": w.version}}],
                "outbound": outbound,
            }},
        });
        let dataplane_file = dir.join(format!("{}.dataplane.json", w.name));
        std::fs::write(&dataplane_file, serde_json::to_vec_pretty(&dataplane)?)?;
        let mut app = vec![
            "--service".to_string(),
            w.service.into(),
            "--version".into(),
            w.version.into(),
            "--zone".into(),
            w.zone.into(),
            "--listen".into(),
            format!("{}:{APP_PORT}", w.ip),
        ];
        if let Some((_, port)) = w.calls {
            app.extend(["--call".to_string(), format!("http://{}:{port}", w.ip)]);
        }
        let app_health = format!("http://{}:{APP_PORT}/healthz", w.ip);
        s.start(&format!("{}-app", w.name), "strait-demo-app", app, app_health, Some(w.zone), Some(w.service)).await?;
        let sidecar: Vec<String> = [
            "run",
            "--cp-address",
            &format!("https://{}:7678", zone.ip),
            "--cp-ca-file",
            &dir.join(format!("{}-data", zone.name)).join("dps-ca.pem").display().to_string(),
            "--dataplane-file",
            &dataplane_file.display().to_string(),
            "--dataplane-token-file",
            &token_file.display().to_string(),
            "--admin-address",
            &format!("{}:{SIDECAR_ADMIN_PORT}", w.ip),
            "--cp-max-backoff",
            "2s",
            "--traffic-report-interval",
            "1s",
        ]
        .iter()
        .map(|a| a.to_string())
        .collect();
        s.start(
            &format!("{}-sidecar", w.name),
            "strait-dp",
            sidecar,
            format!("http://{}:{SIDECAR_ADMIN_PORT}/ready", w.ip),
            Some(w.zone),
            Some(w.service),
        )
        .await?;
    }

    // Until a request crosses the whole chain: sidecars learn the other zone through the global.
    let url = format!("{}/api", plan.frontend());
    let deadline = Instant::now() + READY;
    loop {
        let answer = s.http.get(&url).send().await.ok().filter(|r| r.status().is_success());
        if answer.is_some() {
            break;
        }
        if Instant::now() > deadline {
            bail!("the frontend did not answer through the whole chain within {READY:?} ({url})");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    Ok(())
}

fn print_next_steps(s: &Starter, plan: &Plan, dir: &Path, dir_flag: &str, prometheus: bool) {
    let token = s.state.token_file.display();
    let ctl = format!("straitctl --server {} --token-file {token}", plan.api());
    let deny = dir.join("deny-backend-to-store.yaml");
    let _ = std::fs::write(
        &deny,
        "type: MeshTrafficPermission\nname: deny-backend-to-store\nmesh: default\nspec:\n  targetRef: {kind: MeshService, name: store}\n  \
         from:\n    - targetRef: {kind: MeshService, name: backend}\n      default: {action: Deny}\n",
    );
    let split = dir.join("split-backend.yaml");
    let _ = std::fs::write(
        &split,
        "type: MeshHTTPRoute\nname: split-backend\nmesh: default\nspec:\n  targetRef: {kind: Mesh}\n  to:\n    \
         - targetRef: {kind: MeshService, name: backend}\n      rules:\n        - default:\n            backendRefs:\n              \
         - {kind: MeshService, name: backend, tags: {version: v1}, weight: 50}\n              \
         - {kind: MeshService, name: backend, tags: {version: v2}, weight: 50}\n",
    );
    let fault = dir.join("fault-backend-v2.yaml");
    let _ = std::fs::write(
        &fault,
        "type: MeshFaultInjection\nname: fault-backend-v2\nmesh: default\nspec:\n  \
         targetRef: {kind: MeshSubset, tags: {strait.io/service: backend, version: v2}}\n  from:\n    \
         - targetRef: {kind: Mesh}\n      default:\n        http:\n          - abort: {httpStatus: 503, percentage: 50}\n",
    );
    let outlier = dir.join("outlier-backend.yaml");
    let _ = std::fs::write(
        &outlier,
        "type: MeshCircuitBreaker\nname: eject-failing-backend\nmesh: default\nspec:\n  targetRef: {kind: Mesh}\n  to:\n    \
         - targetRef: {kind: MeshService, name: backend}\n      default:\n        outlierDetection:\n          \
         baseEjectionTime: 10s\n          maxEjectionPercent: 50\n          detectors:\n            \
         totalFailures: {consecutive: 2}\n",
    );
    let secret = &s.admin;
    let front = plan.frontend();
    let lines = [
        String::new(),
        "The demo runs: frontend (zone-1) -> backend (v1 in zone-1, v2 in zone-2) -> store (zone-2 only).".into(),
        String::new(),
        format!("  frontend   {front}/  (a page that reloads every second; JSON at {front}/api)"),
        format!("  REST API   {}  admin token {secret}  (in {token})", plan.api()),
        format!(
            "  map        {}/map  (the traffic map; the certificate is the demo's own: its CA is {})",
            plan.api(),
            dir.join("global/api-ca.pem").display()
        ),
    ];
    let mut lines: Vec<String> = lines.into();
    if prometheus {
        lines.push(format!(
            "  Prometheus http://{}:{PROMETHEUS_PORT}/  (scraping both zones; try the query sum by (source_zone, destination_zone) (rate(strait_dp_http_requests_total{{direction=\"inbound\"}}[1m])))",
            plan.global_ip
        ));
    }
    let rest = [
        String::new(),
        "Try:".into(),
        format!("  curl -s {front}/api"),
        "      who answered: backend v1 in zone-1, then store in zone-2 through the gateways".into(),
        format!("  straitctl demo traffic{dir_flag}"),
        "      a live table, every second, of who answers".into(),
        format!("  {ctl} apply -f {}", deny.display()),
        "      backend may no longer call store: the frontend's answer shows the 403".into(),
        format!("  {ctl} delete meshtrafficpermission deny-backend-to-store --mesh default"),
        "      and it is allowed again".into(),
        format!("  {ctl} apply -f {}", split.display()),
        "      the frontend's calls split 50/50 between backend v1 (zone-1) and v2 (zone-2): watch `demo traffic`".into(),
        format!("  {ctl} apply -f {}", fault.display()),
        "      with the split on, backend v2's sidecar answers 503 to half its requests: the frontend's retries".into(),
        "      hide the failures (every call answers), and `demo traffic` shows them at the sidecars:".into(),
        "      \"5xx at the sidecars: frontend→backend@zone-2 50%\"; v2's own metrics count them too:".into(),
        format!("  {ctl} inspect dataplane backend-v2 --stats"),
        "      strait_dp_faults_injected_total, and strait_dp_http_requests_total with status=\"503\"".into(),
        format!("  {ctl} delete meshfaultinjection fault-backend-v2 --mesh default"),
        "      and v2 answers its half again".into(),
        format!("  {ctl} delete meshhttproute split-backend --mesh default"),
        "      and they stay in zone-1 again".into(),
        format!("  {ctl} apply -f {}", outlier.display()),
        format!("  straitctl demo fail backend --zone zone-1{dir_flag}"),
        "      backend v1 answers 503: after 2 failures in a row the frontend's sidecar ejects it for 10 s".into(),
        "      and `demo traffic` shows the calls answered by v2 in zone-2, without failures (retries)".into(),
        format!("  straitctl demo fail backend --zone zone-1 --heal{dir_flag}"),
        "      v1 answers again and gets the calls back once its ejection ends".into(),
        format!("  straitctl demo kill backend --zone zone-1{dir_flag}"),
        "      `demo traffic` shows the frontend's calls moving to backend v2 in zone-2".into(),
        format!("  {ctl} inspect dataplane backend-v2 --mesh default"),
        "      what backend v2's sidecar (zone-2) runs, asked from the global through zone-2's own sync stream".into(),
        format!("  {ctl} inspect dataplane frontend-v1 --policies"),
        "      each field of the frontend's configuration with the policy that set it".into(),
        format!("  {ctl} inspect service backend"),
        "      backend's endpoints and their health, per zone".into(),
        format!("  straitctl demo status{dir_flag}"),
        "      the processes and their health".into(),
        format!("  straitctl demo down{dir_flag}"),
        format!("      stops everything and removes {}", dir.display()),
    ];
    lines.extend(rest);
    say!("{}", lines.join("\n"));
}

/// `demo status`: every process, whether it runs, and whether it is healthy.
async fn status(dir: &Path) -> anyhow::Result<()> {
    let state = State::load(dir)?;
    let http = demo_client(dir, Duration::from_secs(2))?;
    say!("demo in {}: frontend {}, REST API {}", dir.display(), state.frontend, state.api);
    say!("{:<24} {:>8}  {:<8} {:<8} health", "process", "pid", "zone", "state");
    for r in &state.processes {
        let running = procs::alive(r);
        let healthy = running && http.get(&r.health).send().await.is_ok_and(|resp| resp.status().is_success());
        say!(
            "{:<24} {:>8}  {:<8} {:<8} {}",
            r.name,
            r.pid,
            r.zone.as_deref().unwrap_or("-"),
            if running { "running" } else { "stopped" },
            if healthy {
                "healthy"
            } else if running {
                "not ready"
            } else {
                "-"
            }
        );
    }
    Ok(())
}

/// `demo fail SERVICE --zone ZONE [--status N | --heal]`: the service's application there
/// answers N (or normally again); its sidecar stays up, so only outlier detection moves the
/// callers away.
async fn fail(dir: &Path, args: &crate::cli::DemoFailArgs) -> anyhow::Result<()> {
    let state = State::load(dir)?;
    let (service, zone) = (args.service.as_str(), args.zone.as_str());
    let apps: Vec<&Record> = state
        .processes
        .iter()
        .filter(|r| r.binary == "strait-demo-app" && r.service.as_deref() == Some(service) && r.zone.as_deref() == Some(zone))
        .collect();
    if apps.is_empty() {
        let services: Vec<String> =
            state.processes.iter().filter_map(|r| Some(format!("{} in {}", r.service.as_deref()?, r.zone.as_deref()?))).collect();
        bail!("no application of {service} in {zone}; the demo runs {}", services.join(", "));
    }
    let http = demo_client(dir, Duration::from_secs(5))?;
    for app in apps {
        let base = app.health.trim_end_matches("/healthz");
        let request = if args.heal { http.delete(format!("{base}/fault")) } else { http.put(format!("{base}/fault/{}", args.status)) };
        let response = request.send().await.with_context(|| format!("reaching {} at {base}", app.name))?;
        let (status, text) = (response.status(), response.text().await.unwrap_or_default());
        if !status.is_success() {
            bail!("{} answered {status}: {}", app.name, text.trim());
        }
        say!("{}", text.trim());
    }
    if !args.heal {
        say!("`straitctl demo traffic` shows its callers' outlier detection moving them to the other instances");
    }
    Ok(())
}

/// `demo kill SERVICE --zone ZONE`: SIGKILL the service's application and sidecar there.
fn kill(dir: &Path, service: &str, zone: &str) -> anyhow::Result<()> {
    let state = State::load(dir)?;
    // Sidecars first: a sidecar that dies takes its connections with it, and callers fail
    // over; an application that dies first leaves its sidecar answering 502 meanwhile.
    let mut targets: Vec<&Record> =
        state.processes.iter().filter(|r| r.service.as_deref() == Some(service) && r.zone.as_deref() == Some(zone)).collect();
    targets.sort_by_key(|r| r.binary != "strait-dp");
    if targets.is_empty() {
        let services: Vec<String> =
            state.processes.iter().filter_map(|r| Some(format!("{} in {}", r.service.as_deref()?, r.zone.as_deref()?))).collect();
        bail!("no workload of {service} in {zone}; the demo runs {}", services.join(", "));
    }
    procs::kill9(&targets);
    for r in &targets {
        say!("killed {} (pid {})", r.name, r.pid);
    }
    say!("{service} no longer runs in {zone}; `straitctl demo traffic` shows where its traffic goes now");
    Ok(())
}

/// `demo down`: stop every process and remove the directory.
fn down(dir: &Path) -> anyhow::Result<()> {
    let state = State::load(dir)?;
    // Workloads first, then gateways and zones, the global last.
    let records: Vec<&Record> = state.processes.iter().rev().collect();
    let killed = procs::stop(&records, Duration::from_secs(5));
    if !killed.is_empty() {
        say!("killed after 5 s: {}", killed.join(", "));
    }
    let left: Vec<&str> = records.iter().filter(|r| procs::alive(r)).map(|r| r.name.as_str()).collect();
    if !left.is_empty() {
        bail!("still running: {}; the demo's directory {} is kept", left.join(", "), dir.display());
    }
    let failed = netns::teardown(&state.network);
    if !failed.is_empty() {
        bail!("could not remove {}; the demo's directory {} is kept", failed.join("; "), dir.display());
    }
    std::fs::remove_dir_all(dir).with_context(|| format!("removing {}", dir.display()))?;
    say!("stopped {} processes and removed {}", records.len(), dir.display());
    Ok(())
}
