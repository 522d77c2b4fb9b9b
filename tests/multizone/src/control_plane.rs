//! Strait's control planes on a test network: a [`Global`] (`strait-global` on host "global",
//! driven with `straitctl` and its REST API) and [`Zone`]s (`strait-zone`, registered with
//! `straitctl zone register` and started with the files it writes), with short zone sync
//! timings so that scenarios notice dead peers and reconnect within seconds.
//!
//! In: a [`Net`] and the workspace binaries. Out: running processes and typed access to what
//! they answer: the global's `/zones` status per zone, a zone's resources, inventories,
//! readiness and metrics. Every accessor returns `Err(reason)` instead of panicking, so that
//! it can be polled with [`wait_for`] and [`crate::holds_for`].

use std::fs;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use reqwest::StatusCode;
use serde_json::{json, Value};

use crate::wait::error_chain;
use crate::{bin, wait_for, Cmd, Host, Net, Output, Proc};

/// REST port of `strait-global`.
pub const API_PORT: u16 = 7680;
/// Zone sync (KDS) port of `strait-global`.
pub const KDS_PORT: u16 = 7685;
/// REST port of `strait-zone`.
pub const ZONE_API_PORT: u16 = 7681;
/// Port of a zone's dataplane config server (DPS).
pub const ZONE_DPS_PORT: u16 = 7678;
/// Deadline for a control plane to become ready.
pub const READY: Duration = Duration::from_secs(30);
/// Deadline for a zone to (re)connect, and for a change to reach the zones.
pub const SYNC: Duration = Duration::from_secs(20);
/// Short heartbeats and idle timeout for the global, so that dead zones are noticed in seconds.
pub const GLOBAL_KDS: &[&str] = &["--kds-heartbeat-interval", "1s", "--kds-idle-timeout", "5s"];
/// The same for zones, and a short reconnection back-off, so that scenarios do not wait 30 s.
pub const ZONE_KDS: &[&str] =
    &["--kds-heartbeat-interval", "1s", "--kds-idle-timeout", "5s", "--kds-max-backoff", "2s", "--traffic-report-interval", "1s"];

/// `GET url` (with a bearer token if given) from `from`: the status and the body as JSON (a
/// body that is not JSON comes back as a JSON string). `Err` only if no answer came.
pub fn get_json(from: &Host, url: &str, token: Option<&str>) -> Result<(StatusCode, Value), String> {
    get_json_with(&from.http_client(), url, token)
}

/// [`get_json`] with a given client (an HTTPS one, say).
pub fn get_json_with(client: &reqwest::blocking::Client, url: &str, token: Option<&str>) -> Result<(StatusCode, Value), String> {
    let mut request = client.get(url);
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    let response = request.send().map_err(|e| format!("GET {url}: {}", error_chain(&e)))?;
    let status = response.status();
    let text = response.text().map_err(|e| format!("GET {url}: reading the body: {}", error_chain(&e)))?;
    Ok((status, serde_json::from_str(&text).unwrap_or(Value::String(text))))
}

/// The sum of the samples `selector` picks in a Prometheus text exposition (a name, with
/// the labels a sample must carry: `name{a="x"}`).
pub fn metric_value(text: &str, selector: &str) -> Option<f64> {
    strait_proxy_core::metrics::sum_samples(text, selector)
}

/// A running `strait-global` on host "global", and what clients need to talk to it.
pub struct Global {
    /// Host "global".
    pub host: Host,
    /// The `strait-global` process (kill, restart with the same data dir and ports).
    pub proc: Proc,
    /// `https://<global>:7680`, for `straitctl --server`.
    pub server: String,
    /// The admin token (from `<data dir>/admin-token`).
    pub token: String,
    /// The CA of the REST API's certificate (`<data dir>/api-ca.pem`), for `straitctl --ca-file`.
    pub ca_file: std::path::PathBuf,
    /// An HTTPS client from the global's host that trusts that CA.
    pub client: reqwest::blocking::Client,
}

impl Global {
    /// Starts `strait-global` (short KDS timings, plus `extra` flags), waits for `/readyz` and
    /// reads the admin token.
    pub fn start(net: &Net, extra: &[&str]) -> Global {
        Global::start_on(net, "global", extra)
    }

    /// [`Global::start`] on a new host `host` (its data in `<host>-data`): a further replica,
    /// when `extra` names the same `--store`.
    pub fn start_on(net: &Net, host: &str, extra: &[&str]) -> Global {
        let data = net.mkdir(&format!("{host}-data"));
        let host = net.host(host);
        let proc = host.spawn_cmd(
            "strait-global",
            Cmd::new(bin("strait-global"))
                .arg("--api-address")
                .arg(host.socket_addr(API_PORT).to_string())
                .arg("--kds-address")
                .arg(host.socket_addr(KDS_PORT).to_string())
                .arg("--data-dir")
                .arg(&data)
                .args(GLOBAL_KDS)
                .args(extra),
        );
        // The REST API serves HTTPS with a certificate of the global's own CA, written next to
        // the admin token.
        let ca_file = data.join("api-ca.pem");
        let ca_pem = wait_for("the global's api-ca.pem", READY, || {
            proc.assert_running("the global to write api-ca.pem");
            fs::read_to_string(&ca_file).ok().filter(|pem| pem.contains("END CERTIFICATE"))
        });
        let client = host.https_client(&ca_pem);
        let global = Global { server: host.https_url(API_PORT, ""), host, proc, token: String::new(), ca_file, client };
        global.wait_ready();
        let token_path = data.join("admin-token");
        let token = wait_for("the global's admin token", READY, || fs::read_to_string(&token_path).map(|t| t.trim().to_owned()));
        Global { token, ..global }
    }

    /// Waits for the global's `/readyz` to answer 200 over HTTPS (fails at once if the process exits).
    pub fn wait_ready(&self) {
        crate::wait::http_ready_watching(&self.client, &self.host.https_url(API_PORT, "/readyz"), READY, Some(&self.proc));
    }

    /// Runs `straitctl --server <global> --token <admin token> <args>` on the global host, with
    /// its config file in the net's directory.
    pub fn straitctl(&self, net: &Net, args: &[&str]) -> Output {
        self.host.run_cmd(
            Cmd::new(bin("straitctl"))
                .args(["--server", self.server.as_str(), "--token", self.token.as_str()])
                .arg("--ca-file")
                .arg(&self.ca_file)
                .args(args)
                .env("STRAIT_CONFIG", net.dir().join("straitctl.yaml")),
        )
    }

    /// `straitctl apply -f <file>` of `yaml` (written to `file` in the net's directory).
    pub fn apply(&self, net: &Net, file: &str, yaml: &str) -> Output {
        let path = net.write_file(file, yaml);
        let out = self.straitctl(net, &["apply", "-f", path.to_str().expect("utf-8 temp path")]);
        out.assert_success();
        out
    }

    /// `GET <path>` on the global's REST API, with the admin token.
    pub fn get(&self, path: &str) -> Result<(StatusCode, Value), String> {
        get_json_with(&self.client, &self.host.https_url(API_PORT, path), Some(&self.token))
    }

    /// The version (global store revision) of the resource at `path`.
    pub fn version(&self, path: &str) -> u64 {
        let (status, body) = self.get(path).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(status, StatusCode::OK, "GET {path} on the global: {body}");
        body["version"].as_u64().unwrap_or_else(|| panic!("no version in GET {path}: {body}"))
    }

    /// The `status` of every zone in the global's `GET /zones`, by name.
    pub fn zone_statuses(&self) -> Result<Vec<(String, Value)>, String> {
        let (status, body) = self.get("/zones")?;
        if status != StatusCode::OK {
            return Err(format!("GET /zones on the global: {status}: {body}"));
        }
        let items = body["items"].as_array().ok_or_else(|| format!("GET /zones: no items: {body}"))?;
        Ok(items.iter().map(|z| (z["name"].as_str().unwrap_or_default().to_owned(), z["status"].clone())).collect())
    }

    /// The `status` of zone `name` in the global's `GET /zones`.
    pub fn zone_status(&self, name: &str) -> Result<Value, String> {
        self.zone_statuses()?
            .into_iter()
            .find(|(n, _)| n == name)
            .map(|(_, s)| s)
            .ok_or_else(|| format!("zone {name} is not in GET /zones"))
    }

    /// Whether the global shows zone `name` connected.
    pub fn is_online(&self, name: &str) -> Result<bool, String> {
        Ok(self.zone_status(name)?["connected"] == true)
    }

    /// Waits until the global shows zone `name` connected (`online`) or not; returns how long it took.
    pub fn wait_connected(&self, name: &str, online: bool, deadline: Duration) -> Duration {
        let start = Instant::now();
        let what = format!("the global to show zone {name} {}", if online { "connected" } else { "disconnected" });
        wait_for(&what, deadline, || {
            self.proc.assert_running(&what);
            let status = self.zone_status(name)?;
            if status["connected"] == online {
                Ok(())
            } else {
                Err(format!("status: {status}"))
            }
        });
        start.elapsed()
    }

    /// Panics unless zone `name` is connected now.
    #[track_caller]
    pub fn assert_online(&self, name: &str) {
        let status = self.zone_status(name).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(status["connected"], true, "zone {name} must be online: {status}");
    }

    /// `straitctl zone register <name> --output <net dir>/<dir>`; returns that directory
    /// (`zone-token`, `zone-proxy-token`, `global-ca.pem`).
    pub fn register_zone(&self, net: &Net, name: &str, dir: &str) -> PathBuf {
        let dir = net.dir().join(dir);
        let out = self.straitctl(net, &["zone", "register", name, "--output", dir.to_str().expect("utf-8 temp path")]);
        out.assert_success().assert_stdout_contains(&format!("--global-address {}", self.kds_address()));
        for file in ["zone-token", "zone-proxy-token", "global-ca.pem"] {
            assert!(dir.join(file).is_file(), "zone register did not write {file}: {out}");
        }
        dir
    }

    /// Where zones connect: `https://<global>:7685`.
    pub fn kds_address(&self) -> String {
        format!("https://{}", self.host.socket_addr(KDS_PORT))
    }

    /// The value of metric `name` on the global's `/metrics`.
    pub fn metric(&self, name: &str) -> Result<f64, String> {
        let (_, body) = self.get("/metrics")?;
        metric_value(body.as_str().unwrap_or_default(), name).ok_or_else(|| format!("no metric {name} in the global's /metrics"))
    }

    /// How many lines of the global's log contain every one of `needles`.
    pub fn log_lines_with(&self, needles: &[&str]) -> usize {
        self.proc.log().lines().filter(|l| needles.iter().all(|n| l.contains(n))).count()
    }
}

/// What `strait-zone` is started with.
#[derive(Debug, Clone)]
pub struct ZoneArgs {
    /// The zone's name.
    pub zone: String,
    /// Directory written by `zone register`: `zone-token` and `global-ca.pem`.
    pub creds: PathBuf,
    /// `--data-dir`.
    pub data: PathBuf,
    /// Flags after the usual ones (timings are [`ZONE_KDS`]).
    pub extra: Vec<String>,
}

/// A `strait-zone` process, and its read-only REST API.
pub struct Zone {
    /// The zone's name.
    pub name: String,
    /// The host it runs on.
    pub host: Host,
    /// The `strait-zone` process.
    pub proc: Proc,
    /// Its `--data-dir` (store, and `admin-token` for writing Dataplanes).
    pub data: PathBuf,
    /// The directory of its `zone-token` and `global-ca.pem`.
    pub creds: PathBuf,
    /// An HTTPS client from the zone's host that trusts the zone's `dps-ca.pem`, once written.
    client: std::sync::OnceLock<reqwest::blocking::Client>,
}

impl Zone {
    /// A copy of the zone's `dps-ca.pem`, readable by every user, as an operator hands it to
    /// the hosts of sidecars and gateways (the zone's data directory is its owner's only).
    pub fn dps_ca_file(&self) -> PathBuf {
        let source = self.data.join("dps-ca.pem");
        let copy = self.data.with_file_name(format!("{}-dps-ca.pem", self.name));
        let pem = wait_for(&format!("zone {}'s dps-ca.pem", self.name), READY, || fs::read(&source));
        fs::write(&copy, pem).expect("copy dps-ca.pem");
        fs::set_permissions(&copy, std::os::unix::fs::PermissionsExt::from_mode(0o644)).expect("chmod the CA copy");
        copy
    }

    /// Starts `strait-zone` with `args` as process `process` on `host` (API on port 7681), and
    /// does not wait.
    pub fn spawn(global: &Global, host: &Host, process: &str, args: &ZoneArgs) -> Zone {
        Zone::spawn_to(&global.kds_address(), host, process, args)
    }

    /// [`Zone::spawn`] with `--global-address global_address` (a comma-separated list of
    /// replicas' sync addresses).
    pub fn spawn_to(global_address: &str, host: &Host, process: &str, args: &ZoneArgs) -> Zone {
        let proc = host.spawn_cmd(
            process,
            Cmd::new(bin("strait-zone"))
                .args(["--zone", args.zone.as_str(), "--global-address", global_address])
                .arg("--zone-token-file")
                .arg(args.creds.join("zone-token"))
                .arg("--global-ca-file")
                .arg(args.creds.join("global-ca.pem"))
                .arg("--data-dir")
                .arg(&args.data)
                .arg("--api-address")
                .arg(host.socket_addr(ZONE_API_PORT).to_string())
                .arg("--dps-address")
                .arg(host.socket_addr(ZONE_DPS_PORT).to_string())
                .args(ZONE_KDS)
                .args(&args.extra),
        );
        Zone {
            name: args.zone.clone(),
            host: host.clone(),
            proc,
            data: args.data.clone(),
            creds: args.creds.clone(),
            client: std::sync::OnceLock::new(),
        }
    }

    /// `https://<zone host>:7681<path>`: the zone's REST API serves HTTPS with the certificate
    /// of its DPS endpoint.
    pub fn url(&self, path: &str) -> String {
        self.host.https_url(ZONE_API_PORT, path)
    }

    /// The HTTPS client for the zone's API (waits for the zone to write its `dps-ca.pem`).
    fn client(&self) -> &reqwest::blocking::Client {
        self.client.get_or_init(|| {
            let source = self.data.join("dps-ca.pem");
            let pem = wait_for(&format!("zone {}'s dps-ca.pem", self.name), READY, || {
                fs::read_to_string(&source).map_err(|e| e.to_string()).and_then(|p| {
                    if p.contains("END CERTIFICATE") {
                        Ok(p)
                    } else {
                        Err("not written yet".to_string())
                    }
                })
            });
            self.host.https_client(&pem)
        })
    }

    /// `GET <path>` on the zone's API, from the zone's host.
    pub fn get(&self, path: &str) -> Result<(StatusCode, Value), String> {
        get_json_with(self.client(), &self.url(path), None)
    }

    /// Waits for `/readyz` to answer 200 (fails at once if the process exits).
    pub fn wait_ready(&self) {
        crate::wait::http_ready_watching(self.client(), &self.url("/readyz"), READY, Some(&self.proc));
    }

    /// The status code of `/readyz`.
    pub fn readyz(&self) -> Result<StatusCode, String> {
        self.get("/readyz").map(|(status, _)| status)
    }

    /// The resource at `path` as this zone serves it: `Some` on 200, `None` on 404.
    pub fn resource(&self, path: &str) -> Result<Option<Value>, String> {
        match self.get(path)? {
            (StatusCode::OK, body) => Ok(Some(body)),
            (StatusCode::NOT_FOUND, _) => Ok(None),
            (status, body) => Err(format!("zone {}: GET {path}: {status}: {body}", self.name)),
        }
    }

    /// The names of the services this zone's `GET /zones` lists for zone `zone` (`None`: that
    /// zone is not listed at all).
    pub fn services_of(&self, zone: &str) -> Result<Option<Vec<String>>, String> {
        let (status, body) = self.get("/zones")?;
        if status != StatusCode::OK {
            return Err(format!("zone {}: GET /zones: {status}: {body}", self.name));
        }
        let items = body["items"].as_array().ok_or_else(|| format!("zone {}: GET /zones: no items: {body}", self.name))?;
        Ok(items
            .iter()
            .find(|i| i["zone"] == zone)
            .map(|i| i["services"].as_array().into_iter().flatten().filter_map(|s| s["name"].as_str().map(str::to_owned)).collect()))
    }

    /// The value of metric `name` on the zone's `/metrics`.
    pub fn metric(&self, name: &str) -> Result<f64, String> {
        let (_, body) = self.get("/metrics")?;
        metric_value(body.as_str().unwrap_or_default(), name).ok_or_else(|| format!("zone {}: no metric {name} in /metrics", self.name))
    }

    /// Registers (or replaces) Dataplane `name` of service `service` in mesh `default`, on
    /// this zone's API with the zone's admin token.
    pub fn put_dataplane(&self, name: &str, address: &str, service: &str) {
        let token_path = self.data.join("admin-token");
        let token = wait_for("the zone's admin token", READY, || fs::read_to_string(&token_path).map(|t| t.trim().to_owned()));
        let body = json!({
            "type": "Dataplane", "name": name, "mesh": "default",
            "spec": {"networking": {"address": address, "inbound": [{"port": 8080, "tags": {"strait.io/service": service}}]}},
        });
        let url = self.url(&format!("/meshes/default/dataplanes/{name}"));
        let response =
            self.client().put(&url).bearer_auth(token).json(&body).send().unwrap_or_else(|e| panic!("PUT {url}: {}", error_chain(&e)));
        let status = response.status();
        let text = response.text().unwrap_or_default();
        assert!(status.is_success(), "PUT {url}: {status}: {text}");
    }
}

/// Registers zone `name` with `straitctl` from the global host, starts it on a new host `name`
/// (plus `extra` flags), and waits until it is ready and the global shows it connected.
pub fn start_zone(net: &Net, global: &Global, name: &str, extra: &[&str]) -> Zone {
    start_zone_to(net, global, &[], name, extra)
}

/// [`start_zone`] with the sync addresses of `global` and then of `replicas` (other replicas
/// on the same store), tried in that order.
pub fn start_zone_to(net: &Net, global: &Global, replicas: &[&Global], name: &str, extra: &[&str]) -> Zone {
    let creds = global.register_zone(net, name, &format!("{name}-creds"));
    let args = ZoneArgs {
        zone: name.to_owned(),
        creds,
        data: net.mkdir(&format!("{name}-data")),
        extra: extra.iter().map(|s| s.to_string()).collect(),
    };
    let addresses: Vec<String> = std::iter::once(global).chain(replicas.iter().copied()).map(Global::kds_address).collect();
    let zone = Zone::spawn_to(&addresses.join(","), &net.host(name), "strait-zone", &args);
    zone.wait_ready();
    global.wait_connected(name, true, SYNC);
    zone
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metric_values_are_found_by_exact_name() {
        let text = "# HELP a_total A.\n# TYPE a_total counter\na_total 3\na_total_x 9\nb 0.5\n# EOF\n";
        assert_eq!(metric_value(text, "a_total"), Some(3.0));
        assert_eq!(metric_value(text, "b"), Some(0.5));
        assert_eq!(metric_value(text, "a"), None);
    }
}
