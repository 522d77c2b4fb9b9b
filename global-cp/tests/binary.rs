//! The real `strait-global` binary, with its default HTTPS API verified with the `api-ca.pem`
//! it writes: acknowledged writes survive `kill -9`, SIGTERM drains and exits cleanly, and bad
//! configuration exits with code 64 naming every bad value.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

const BIN: &str = env!("CARGO_BIN_EXE_strait-global");

fn free_port() -> u16 {
    strait_runtime::sockets::port_for_a_later_listener()
}

struct Global {
    child: Child,
    base: String,
}

fn spawn(dir: &Path, port: u16) -> Global {
    spawn_with(dir, port, &[])
}

/// `strait-global` with `env` set (such as `STRAIT_STORE`), ready.
fn spawn_with(dir: &Path, port: u16, env: &[(&str, &str)]) -> Global {
    let g = start_with(dir, port, env);
    wait_ready(&g, dir);
    g
}

/// `strait-global` with `env` set, started (not yet ready).
fn start_with(dir: &Path, port: u16, env: &[(&str, &str)]) -> Global {
    let log = std::fs::OpenOptions::new().create(true).append(true).open(dir.join("global.log")).unwrap();
    let child = Command::new(BIN)
        .args(["--api-address", &format!("127.0.0.1:{port}"), "--kds-address", "127.0.0.1:0", "--data-dir"])
        .arg(dir)
        .envs(env.iter().copied())
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .unwrap();
    Global { child, base: format!("https://127.0.0.1:{port}") }
}

/// A client that trusts only the CA the global wrote next to its admin token, once it has.
fn client(dir: &Path) -> Option<reqwest::blocking::Client> {
    let pem = std::fs::read(dir.join("api-ca.pem")).ok()?;
    let ca = reqwest::Certificate::from_pem(&pem).ok()?;
    reqwest::blocking::Client::builder().tls_built_in_root_certs(false).add_root_certificate(ca).build().ok()
}

fn wait_ready(g: &Global, dir: &Path) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if client(dir).is_some_and(|c| c.get(format!("{}/readyz", g.base)).send().is_ok_and(|r| r.status().is_success())) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "strait-global not ready in 20s; log:\n{}",
            std::fs::read_to_string(dir.join("global.log")).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn token(dir: &Path) -> String {
    std::fs::read_to_string(dir.join("admin-token")).unwrap().trim().to_string()
}

#[test]
fn acknowledged_writes_survive_kill_9() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let mut g = spawn(dir.path(), port);
    let client = client(dir.path()).expect("the API's CA");
    let token = token(dir.path());
    let put = |path: &str, body: Value| {
        let resp = client.put(format!("{}{path}", g.base)).bearer_auth(&token).json(&body).send().unwrap();
        assert!(resp.status().is_success(), "{path}: {}", resp.status());
    };
    put("/meshes/default", json!({"type": "Mesh", "name": "default", "spec": {"skipDefaultPolicies": true}}));
    for i in 0..200 {
        let name = format!("t-{i}");
        put(
            &format!("/meshes/default/meshtimeouts/{name}"),
            json!({"type": "MeshTimeout", "name": name, "mesh": "default",
            "spec": {"to": [{"targetRef": {"kind": "Mesh"}, "default": {"idleTimeout": format!("{}s", i + 1)}}]}}),
        );
    }
    g.child.kill().unwrap(); // SIGKILL: no chance to flush anything not already durable
    g.child.wait().unwrap();

    let g2 = spawn(dir.path(), port);
    let list: Value = client.get(format!("{}/meshes/default/meshtimeouts", g2.base)).send().unwrap().json().unwrap();
    assert_eq!(list["total"], 200, "every acknowledged write is back");
    for item in list["items"].as_array().unwrap() {
        let i: u64 = item["name"].as_str().unwrap().trim_start_matches("t-").parse().unwrap();
        assert_eq!(
            item["spec"]["to"][0]["default"]["idleTimeout"],
            format!("{}s", i + 1).parse::<strait_api::Duration>().unwrap().to_string()
        );
    }
    stop(g2);
}

/// With `--store` on PostgreSQL: two replicas (each its own data directory, one database)
/// started at once on an empty database create the global's secrets once; acknowledged writes
/// to one survive its `kill -9` and the other serves them.
#[test]
fn on_postgresql_writes_survive_kill_9_and_a_second_replica_serves_them() {
    if !strait_pg_harness::available() {
        return;
    }
    let server = strait_pg_harness::start().expect("a PostgreSQL server");
    let store = [("STRAIT_STORE", server.url())];
    let store: Vec<(&str, &str)> = store.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let port = free_port();
    let (mut g, replica) = (start_with(a.path(), port, &store), start_with(b.path(), free_port(), &store));
    wait_ready(&g, a.path());
    wait_ready(&replica, b.path());
    let client_a = client(a.path()).expect("the API's CA");
    let token_a = token(a.path());
    assert_eq!(token_a, token(b.path()), "one admin token for every replica, copied to each one's token file");
    let put = |base: &str, path: &str, body: Value| {
        let resp = client_a.put(format!("{base}{path}")).bearer_auth(&token_a).json(&body).send().unwrap();
        assert!(resp.status().is_success(), "{path}: {}", resp.status());
    };
    put(&g.base, "/meshes/default", json!({"type": "Mesh", "name": "default", "spec": {"skipDefaultPolicies": true}}));
    for i in 0..50 {
        let name = format!("t-{i}");
        let spec = json!({"to": [{"targetRef": {"kind": "Mesh"}, "default": {"idleTimeout": format!("{}s", i + 1)}}]});
        put(
            &g.base,
            &format!("/meshes/default/meshtimeouts/{name}"),
            json!({"type": "MeshTimeout", "name": name, "mesh": "default", "spec": spec}),
        );
    }
    // The token of one replica writes through the other.
    put(&replica.base, "/meshes/other", json!({"type": "Mesh", "name": "other", "spec": {"skipDefaultPolicies": true}}));
    g.child.kill().unwrap();
    g.child.wait().unwrap();

    let g = spawn_with(a.path(), port, &store);
    let client_b = client(b.path()).expect("the second replica's CA");
    for (client, base) in [(&client_a, &g.base), (&client_b, &replica.base)] {
        let list: Value = client.get(format!("{base}/meshes/default/meshtimeouts")).send().unwrap().json().unwrap();
        assert_eq!(list["total"], 50, "every acknowledged write, on {base}");
    }
    // The zone-sync CA a zone is told to trust comes from the global's secrets: one set,
    // created by the first replica, loaded by the second.
    let ca_bundle = |client: &reqwest::blocking::Client, base: &str, token: &str| -> Value {
        let resp = client.post(format!("{base}/zones/zone-1/token")).bearer_auth(token).send().unwrap();
        assert!(resp.status().is_success(), "{}", resp.status());
        resp.json::<Value>().unwrap()["caBundle"].clone()
    };
    let from_a = ca_bundle(&client_a, &g.base, &token_a);
    assert!(from_a.as_str().is_some_and(|pem| pem.contains("BEGIN CERTIFICATE")), "{from_a}");
    assert_eq!(from_a, ca_bundle(&client_b, &replica.base, &token(b.path())), "one set of secrets");
    stop(g);
    stop(replica);
}

fn stop(mut g: Global) {
    let status = Command::new("kill").args(["-TERM", &g.child.id().to_string()]).status().unwrap();
    assert!(status.success());
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        if let Some(exit) = g.child.try_wait().unwrap() {
            assert!(exit.success(), "SIGTERM leads to a clean exit, got {exit}");
            return;
        }
        assert!(Instant::now() < deadline, "strait-global did not stop within 15s of SIGTERM");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn sigterm_stops_cleanly_and_logs_as_json_on_request() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let log = std::fs::File::create(dir.path().join("global.log")).unwrap();
    let child = Command::new(BIN)
        .args(["--api-address", &format!("127.0.0.1:{port}"), "--kds-address", "127.0.0.1:0", "--log-format", "json", "--data-dir"])
        .arg(dir.path())
        .stderr(log)
        .spawn()
        .unwrap();
    let g = Global { child, base: format!("https://127.0.0.1:{port}") };
    wait_ready(&g, dir.path());
    stop(g);
    let log = std::fs::read_to_string(dir.path().join("global.log")).unwrap();
    let lines: Vec<Value> = log.lines().map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON: {l}: {e}"))).collect();
    assert!(lines.iter().any(|l| l["message"] == "generated a new admin token; pass it to straitctl with --token-file or STRAIT_TOKEN"));
    assert!(lines.iter().any(|l| l["message"] == "SIGTERM received"));
    assert!(lines.iter().any(|l| l["message"] == "drained"));
}

#[test]
fn bad_configuration_exits_64_naming_every_value() {
    let out = Command::new(BIN)
        .args(["--max-body-bytes", "5", "--log-level", "info,["])
        .env("STRAIT_STORE", "mysql://strait:s3cret@db/strait")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(64));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("--max-body-bytes 5"), "{stderr}");
    assert!(stderr.contains("--store mysql://strait:***@db/strait: expected `sled` or a PostgreSQL URL"), "{stderr}");
    assert!(!stderr.contains("s3cret"), "the password is never printed: {stderr}");
    assert!(stderr.contains("--log-level"), "{stderr}");
    let out = Command::new(BIN).args(["--api-address", "not-an-address"]).output().unwrap();
    assert_eq!(out.status.code(), Some(2), "clap rejects unparseable flags");
    assert!(String::from_utf8_lossy(&out.stderr).contains("--api-address"));
}

/// The data directory holds every mesh's root key: whatever the umask and however it was
/// created, the global leaves it (and its store) readable by its owner only.
#[test]
fn the_data_directory_and_the_store_are_owner_only() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let mut g = spawn(dir.path(), free_port());
    let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(dir.path()), 0o700, "the data directory was tightened");
    assert_eq!(mode(&dir.path().join("store")), 0o700, "the store directory is private");
    assert_eq!(mode(&dir.path().join("admin-token")), 0o600);
    let _ = g.child.kill();
    let _ = g.child.wait();
}

/// The OpenAPI document tells the truth about the API: schemathesis generates requests from it
/// (valid ones, and ones that break each rule), sends them to the real binary over HTTPS with the
/// admin token, and runs every check: what the schema allows is accepted, what it forbids is
/// refused with 400, every status and response is documented, undeclared methods answer 405
/// with `Allow`. A fixed seed makes a failure reproducible (`STRAIT_SCHEMATHESIS_SEED` picks
/// another).
#[test]
fn schemathesis_finds_nothing_against_the_openapi_document() {
    let bin = std::env::var("STRAIT_SCHEMATHESIS").unwrap_or_else(|_| "schemathesis".into());
    let installed = Command::new(&bin).arg("--version").output().is_ok_and(|o| o.status.success());
    if !installed {
        assert!(std::env::var("CI").as_deref() != Ok("true"), "schemathesis is not installed; scripts/test.sh installs it");
        eprintln!("SKIP: schemathesis is not installed (pip install schemathesis); scripts/test.sh installs it");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    // The header read timeout also bounds keep-alive idle time: schemathesis reuses pooled
    // connections after generating slowly on a loaded machine, and would race the close.
    let mut g = spawn_with(dir.path(), free_port(), &[("STRAIT_API_HEADER_READ_TIMEOUT", "300s")]);
    let seed = std::env::var("STRAIT_SCHEMATHESIS_SEED").unwrap_or_else(|_| "20261202".into());
    let output = Command::new(&bin)
        .current_dir(dir.path())
        .env("NO_COLOR", "1")
        .args(["run", &format!("{}/openapi.json", g.base), "--checks", "all", "--max-examples", "20", "--seed", &seed])
        // Route tables nest deeply, and a loaded CI machine generates slowly: the generator's
        // size and speed health checks would skip operations instead of testing them.
        .args(["--suppress-health-check", "data_too_large,too_slow", "--request-timeout", "10"])
        .arg("--tls-verify")
        .arg(dir.path().join("api-ca.pem"))
        .args(["-H", &format!("Authorization: Bearer {}", token(dir.path()))])
        .output()
        .unwrap();
    g.child.kill().ok();
    g.child.wait().ok();
    let report = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "schemathesis (seed {seed}) found problems:\n{report}\n{}\nglobal log:\n{}",
        String::from_utf8_lossy(&output.stderr),
        std::fs::read_to_string(dir.path().join("global.log")).unwrap_or_default()
    );
    let summary = report.lines().filter(|l| l.contains("generated") || l.contains("passed")).collect::<Vec<_>>().join("\n");
    println!("FIGURE schemathesis (seed {seed}):\n{summary}");
}

#[test]
fn under_systemd_it_says_ready_once_it_serves_and_stopping_on_sigterm() {
    use std::os::unix::net::UnixDatagram;
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("notify");
    let manager = UnixDatagram::bind(&socket).unwrap();
    manager.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    let port = free_port();
    let log = std::fs::File::create(dir.path().join("global.log")).unwrap();
    let child = Command::new(BIN)
        .args(["--api-address", &format!("127.0.0.1:{port}"), "--kds-address", "127.0.0.1:0", "--data-dir"])
        .arg(dir.path().join("data"))
        .env("NOTIFY_SOCKET", &socket)
        .stderr(log)
        .spawn()
        .unwrap();
    let g = Global { child, base: format!("https://127.0.0.1:{port}") };
    let mut buf = [0u8; 256];
    let n = manager.recv(&mut buf).expect("READY=1 within 20 s");
    assert_eq!(&buf[..n], b"READY=1\nSTATUS=serving");
    // Ready means serving: the API answers at once.
    let ready = client(&dir.path().join("data")).expect("the API's CA is written").get(format!("{}/readyz", g.base)).send().unwrap();
    assert!(ready.status().is_success(), "{}", ready.status());
    stop(g);
    let n = manager.recv(&mut buf).expect("STOPPING=1 on SIGTERM");
    assert_eq!(&buf[..n], b"STOPPING=1\nSTATUS=draining");
}

/// 200 writers at once against two replicas on one PostgreSQL: creates of distinct objects,
/// read-modify-write of shared ones with their version, and the same meshes created from both
/// replicas. Every acknowledged write is there, the acknowledged updates of each shared object
/// form one chain (none was lost), every refusal is a 409, and each mesh has one CA.
#[test]
fn two_replicas_under_200_concurrent_writers_lose_nothing_and_refuse_only_with_409() {
    if !strait_pg_harness::available() {
        return;
    }
    let server = strait_pg_harness::start().expect("a PostgreSQL server");
    let url = server.url();
    let store = [("STRAIT_STORE", url.as_str())];
    let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let replicas = [start_with(a.path(), free_port(), &store), start_with(b.path(), free_port(), &store)];
    wait_ready(&replicas[0], a.path());
    wait_ready(&replicas[1], b.path());
    let http = client(a.path()).expect("the API's CA");
    let token = token(a.path());
    let bases: Vec<String> = replicas.iter().map(|r| r.base.clone()).collect();
    let timeout = |name: &str, seconds: u64, version: Option<u64>| {
        let mut body = json!({"type": "MeshTimeout", "name": name, "mesh": "default",
            "spec": {"to": [{"targetRef": {"kind": "Mesh"}, "default": {"idleTimeout": format!("{seconds}s")}}]}});
        if let Some(v) = version {
            body["version"] = json!(v);
        }
        body
    };
    let send = |base: &str, path: &str, body: &Value| {
        let resp = http.put(format!("{base}{path}")).bearer_auth(&token).json(body).send().expect("an answer");
        let status = resp.status().as_u16();
        (status, resp.json::<Value>().unwrap_or(Value::Null))
    };
    let (status, _) =
        send(&bases[0], "/meshes/default", &json!({"type": "Mesh", "name": "default", "spec": {"skipDefaultPolicies": true}}));
    assert!(status < 300, "{status}");
    const SHARED: usize = 10;
    let mut initial = Vec::new();
    for k in 0..SHARED {
        let (status, body) =
            send(&bases[0], &format!("/meshes/default/meshtimeouts/shared-{k}"), &timeout(&format!("shared-{k}"), 1, None));
        assert!(status < 300, "{status} {body}");
        initial.push(body["version"].as_u64().expect("a version"));
    }

    // (shared object, version read, version written, value) of each acknowledged update.
    type Ack = (usize, u64, u64, Value);
    let results: Vec<(Vec<Ack>, usize)> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..200usize)
            .map(|i| {
                let (base, send, timeout, http) = (&bases[i % 2], &send, &timeout, &http);
                scope.spawn(move || {
                    let refused = |what: &str, status: u16, body: &Value| panic!("{what} on {base}: {status} {body}");
                    // A distinct object: acknowledged, so it must be there at the end.
                    let (status, body) = send(base, &format!("/meshes/default/meshtimeouts/w-{i}"), &timeout(&format!("w-{i}"), 2, None));
                    if status != 201 {
                        refused("a create", status, &body);
                    }
                    // The same 20 meshes created from both replicas at once.
                    let mesh = format!("m-{}", i % 20);
                    let (status, body) = send(
                        base,
                        &format!("/meshes/{mesh}"),
                        &json!({"type": "Mesh", "name": mesh, "spec": {"skipDefaultPolicies": true}}),
                    );
                    if status >= 300 {
                        refused("a mesh put without a version", status, &body);
                    }
                    // Read-modify-write of a shared object.
                    let (mut acks, mut conflicts) = (Vec::new(), 0);
                    let shared = i % SHARED;
                    for round in 0..3u64 {
                        let path = format!("/meshes/default/meshtimeouts/shared-{shared}");
                        let read: Value = http.get(format!("{base}{path}")).send().unwrap().json().unwrap();
                        let seen = read["version"].as_u64().expect("a version");
                        let value = 1000 + i as u64 * 10 + round;
                        match send(base, &path, &timeout(&format!("shared-{shared}"), value, Some(seen))) {
                            (200, body) => acks.push((shared, seen, body["version"].as_u64().expect("a version"), body["spec"].clone())),
                            (409, _) => conflicts += 1,
                            (status, body) => refused("an update with a version", status, &body),
                        }
                    }
                    (acks, conflicts)
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().expect("a writer panicked")).collect()
    });
    let conflicts: usize = results.iter().map(|(_, c)| c).sum();
    let mut acks: Vec<Ack> = results.into_iter().flat_map(|(a, _)| a).collect();
    assert!(conflicts > 0, "the writers never contended: the test proves nothing");

    for base in &bases {
        let list: Value = http.get(format!("{base}/meshes/default/meshtimeouts")).send().unwrap().json().unwrap();
        let names: std::collections::HashSet<&str> = list["items"].as_array().unwrap().iter().filter_map(|r| r["name"].as_str()).collect();
        for i in 0..200 {
            assert!(names.contains(format!("w-{i}").as_str()), "acknowledged create w-{i} missing on {base}");
        }
    }
    // Each shared object's acknowledged updates chain from its first version to its current one.
    acks.sort_by_key(|(shared, _, written, _)| (*shared, *written));
    for (k, first) in initial.iter().enumerate() {
        let chain: Vec<&Ack> = acks.iter().filter(|(shared, ..)| *shared == k).collect();
        let mut expected = *first;
        for (_, seen, written, _) in &chain {
            assert_eq!(*seen, expected, "shared-{k}: an acknowledged update was based on a version another one replaced (a lost update)");
            expected = *written;
        }
        for base in &bases {
            let now: Value = http.get(format!("{base}/meshes/default/meshtimeouts/shared-{k}")).send().unwrap().json().unwrap();
            assert_eq!(now["version"].as_u64(), Some(expected), "shared-{k} on {base}");
            if let Some((.., value)) = chain.last() {
                assert_eq!(&now["spec"], value, "shared-{k} on {base}: the last acknowledged update's content");
            }
        }
    }
    // Each mesh's root CA was created once (private keys leave only their key in the event log).
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let created: Vec<(String, i64)> = runtime.block_on(async {
        let (client, connection) = tokio_postgres::connect(&url, tokio_postgres::NoTls).await.unwrap();
        tokio::spawn(connection);
        let rows = client
            .query(
                "SELECT event::jsonb #>> '{object,key,name}', count(*) FROM strait_events \
                 WHERE event::jsonb #>> '{object,key,kind}' = 'MeshCA' AND event::jsonb ->> 'kind' = 'put' GROUP BY 1 ORDER BY 1",
                &[],
            )
            .await
            .unwrap();
        rows.iter().map(|r| (r.get(0), r.get(1))).collect()
    });
    let meshes: Vec<String> = created.iter().map(|(m, _)| m.clone()).collect();
    assert_eq!(meshes.len(), 21, "a CA for default and m-0..m-19: {created:?}");
    assert!(created.iter().all(|(_, n)| *n == 1), "a mesh CA created twice: {created:?}");
    for r in replicas {
        stop(r);
    }
}
