//! The real `straitctl` binary against a real global control plane started in-process on an
//! ephemeral port: apply, get, delete, version, config, completion, and the errors people hit
//! (invalid documents, missing or wrong token, server down). Each test has its own server, data
//! directory and client config file (`STRAIT_CONFIG`, `HOME`), so nothing outside a tempdir is
//! read or written.

use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::Arc;

use serde_json::Value;
use strait_global_cp::{Config, GlobalCp};
use tokio::io::AsyncWriteExt;
use tokio::process::Command;

const BIN: &str = env!("CARGO_BIN_EXE_straitctl");

struct Harness {
    cp: Option<GlobalCp>,
    server: String,
    token_file: PathBuf,
    dir: tempfile::TempDir,
}

/// What a run of the binary printed and returned.
#[derive(Debug)]
struct Out {
    code: i32,
    stdout: String,
    stderr: String,
}

impl Out {
    fn ok(self) -> Out {
        assert_eq!(self.code, 0, "straitctl failed: {self:#?}");
        self
    }

    fn failed(self, code: i32) -> Out {
        assert_eq!(self.code, code, "unexpected exit code: {self:#?}");
        self
    }

    fn lines(&self) -> Vec<&str> {
        self.stdout.lines().collect()
    }
}

async fn start() -> Harness {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("data");
    let cp = GlobalCp::start(Arc::new(Config::for_dir(data, "127.0.0.1:0".parse().expect("addr")))).await.expect("control plane starts");
    Harness { server: format!("http://{}", cp.api_addr), token_file: cp.token_file.clone(), cp: Some(cp), dir }
}

impl Harness {
    /// The binary with a private config file and no inherited STRAIT_* variables.
    fn bare(&self) -> Command {
        let mut cmd = Command::new(BIN);
        for var in ["STRAIT_SERVER", "STRAIT_TOKEN", "STRAIT_TOKEN_FILE", "STRAIT_MESH", "XDG_CONFIG_HOME"] {
            cmd.env_remove(var);
        }
        cmd.env("HOME", self.dir.path()).env("STRAIT_CONFIG", self.config_path()).kill_on_drop(true);
        cmd
    }

    /// The binary pointed at this server with the admin token, through the environment.
    fn connected(&self) -> Command {
        let mut cmd = self.bare();
        cmd.env("STRAIT_SERVER", &self.server).env("STRAIT_TOKEN_FILE", &self.token_file);
        cmd
    }

    fn config_path(&self) -> PathBuf {
        self.dir.path().join("client/config.yaml")
    }

    async fn run(&self, args: &[&str]) -> Out {
        exec(self.connected(), args, None).await
    }

    fn write(&self, name: &str, text: &str) -> String {
        let path = self.dir.path().join(name);
        std::fs::write(&path, text).expect("write manifest");
        path.display().to_string()
    }

    async fn rest_get(&self, path: &str) -> (u16, Value) {
        let resp = reqwest::get(format!("{}{path}", self.server)).await.expect("GET");
        let status = resp.status().as_u16();
        (status, resp.json().await.unwrap_or(Value::Null))
    }

    async fn stop(mut self) {
        if let Some(cp) = self.cp.take() {
            cp.shutdown();
            cp.wait().await;
        }
    }
}

/// Runs the binary without blocking the runtime, so the in-process server keeps answering.
async fn exec(mut cmd: Command, args: &[&str], stdin: Option<&str>) -> Out {
    cmd.args(args).stdout(Stdio::piped()).stderr(Stdio::piped()).stdin(if stdin.is_some() { Stdio::piped() } else { Stdio::null() });
    let mut child = cmd.spawn().expect("spawn straitctl");
    if let (Some(text), Some(mut pipe)) = (stdin, child.stdin.take()) {
        pipe.write_all(text.as_bytes()).await.expect("write stdin");
        drop(pipe);
    }
    let output = tokio::time::timeout(std::time::Duration::from_secs(60), child.wait_with_output())
        .await
        .expect("straitctl finished within 60s")
        .expect("straitctl ran");
    Out {
        code: output.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    }
}

const MANIFEST: &str = "\
type: MeshTrafficPermission
name: allow-web
mesh: default
spec:
  targetRef: {kind: MeshService, name: web}
  from:
  - targetRef: {kind: Mesh}
    default: {action: Allow}
---
# the Mesh comes last in the file but is applied first
type: Mesh
name: default
---
type: MeshTimeout
name: t
mesh: default
spec:
  to:
  - targetRef: {kind: Mesh}
    default: {idleTimeout: 5s}
";

/// Dataplanes register with their zone; the global refuses to store one.
const DATAPLANE: &str = "\
type: Dataplane
name: web-1
mesh: default
spec:
  networking:
    address: 10.0.0.7
    inbound:
    - port: 8080
      tags: {strait.io/service: web}
";

#[tokio::test]
async fn apply_creates_then_leaves_unchanged_then_configures() {
    let h = start().await;
    let file = h.write("all.yaml", MANIFEST);
    let out = h.run(&["apply", "-f", &file]).await.ok();
    assert_eq!(out.lines(), ["mesh/default created", "meshtrafficpermission/allow-web created", "meshtimeout/t created"]);

    let out = h.run(&["apply", "-f", &file]).await.ok();
    assert!(out.lines().iter().all(|l| l.ends_with(" unchanged")) && out.lines().len() == 3, "{out:#?}");

    let changed = h.write("changed.yaml", &MANIFEST.replace("idleTimeout: 5s", "idleTimeout: 10s"));
    let out = h.run(&["apply", "-f", &changed]).await.ok();
    assert_eq!(out.lines(), ["mesh/default unchanged", "meshtrafficpermission/allow-web unchanged", "meshtimeout/t configured"]);
    let (status, stored) = h.rest_get("/meshes/default/meshtimeouts/t").await;
    assert_eq!((status, stored["spec"]["to"][0]["default"]["idleTimeout"].as_str()), (200, Some("10s")));

    let out = exec(h.connected(), &["apply", "-f", "-"], Some("type: Zone\nname: east\n")).await.ok();
    assert_eq!(out.lines(), ["zone/east created"], "stdin works");

    let out = h.run(&["apply", "-f", &h.write("dp.yaml", DATAPLANE)]).await.failed(1);
    assert!(
        out.stderr.contains("applying dataplane/web-1") && out.stderr.contains("registered with the control plane of their zone"),
        "{out:#?}"
    );
    h.stop().await;
}

/// The README's example applies as it says; the example of every type stops at the first type
/// no sidecar enforces, saying so.
#[tokio::test]
async fn the_examples_apply_as_the_readme_says() {
    let h = start().await;
    let file = concat!(env!("CARGO_MANIFEST_DIR"), "/../deploy/examples/policies.yaml");
    let out = h.run(&["apply", "-f", file]).await.ok();
    assert_eq!(
        out.lines(),
        [
            "mesh/default created",
            "zone/zone-1 created",
            "meshtrafficpermission/allow-web-to-backend created",
            "meshtimeout/timeouts created",
            "meshloadbalancingstrategy/locality created"
        ]
    );
    let all = concat!(env!("CARGO_MANIFEST_DIR"), "/../deploy/examples/all-types.yaml");
    // Every policy type is enforced: the example of each is stored.
    let out = h.run(&["apply", "-f", all]).await.ok();
    assert!(out.stdout.contains("meshmetric/metrics created") && out.stdout.contains("meshtrace/tracing created"), "{out:#?}");
    h.stop().await;
}

#[tokio::test]
async fn an_invalid_document_among_valid_ones_writes_nothing() {
    let h = start().await;
    let bad = MANIFEST.replace("idleTimeout: 5s", "idleTimeout: 5 parsecs").replace("action: Allow", "action: Maybe");
    let file = h.write("policies.yaml", &bad);
    let out = h.run(&["apply", "-f", &file]).await.failed(1);
    assert!(
        out.stderr.contains("policies.yaml: document 3 (meshtimeout/t): spec.to[0].default.idleTimeout: invalid duration \"5 parsecs\""),
        "{out:#?}"
    );
    assert!(out.stderr.contains("policies.yaml: document 1 (meshtrafficpermission/allow-web): spec.from[0].default.action"), "{out:#?}");
    assert!(out.stderr.contains("2 of 3 documents are invalid; nothing was applied"), "{out:#?}");
    assert!(out.stdout.is_empty());
    let (status, meshes) = h.rest_get("/meshes").await;
    assert_eq!((status, meshes["total"].as_u64()), (200, Some(0)), "the valid Mesh was not written either");
    h.stop().await;
}

#[tokio::test]
async fn apply_stops_at_the_first_server_error_and_says_what_was_applied() {
    let h = start().await;
    let text = "type: Mesh\nname: default\n---\ntype: MeshTimeout\nname: t\nmesh: prod\nspec: {to: [{targetRef: {kind: Mesh}, default: {idleTimeout: 5s}}]}\n---\ntype: Zone\nname: west\n";
    let file = h.write("mixed.yaml", text);
    let out = h.run(&["apply", "-f", &file]).await.failed(1);
    assert_eq!(out.lines(), ["mesh/default created", "zone/west created"], "meshes and zones go first");
    assert!(out.stderr.contains("applying meshtimeout/t") && out.stderr.contains("mesh \"prod\" not found"), "{out:#?}");
    assert!(out.stderr.contains("already applied: mesh/default, zone/west"), "{out:#?}");

    let dry = h.write("dry.yaml", "type: Mesh\nname: dry\n");
    let out = h.run(&["apply", "-f", &dry, "--dry-run"]).await.ok();
    assert_eq!(out.lines(), ["mesh/dry valid (dry run)"]);
    assert_eq!(h.rest_get("/meshes/dry").await.0, 404, "--dry-run writes nothing");
    h.stop().await;
}

#[tokio::test]
async fn get_prints_tables_yaml_and_json() {
    let h = start().await;
    h.run(&["apply", "-f", &h.write("all.yaml", MANIFEST)]).await.ok();

    let out = h.run(&["get", "mtp", "allow-web", "-o", "json"]).await.ok();
    let one: Value = serde_json::from_str(&out.stdout).expect("json");
    assert_eq!(
        (one["type"].as_str(), one["name"].as_str(), one["mesh"].as_str()),
        (Some("MeshTrafficPermission"), Some("allow-web"), Some("default"))
    );
    assert!(one["version"].as_u64().is_some() && one["creationTime"].is_string());

    let out = h.run(&["get", "meshtrafficpermissions", "-o", "json"]).await.ok();
    let list: Value = serde_json::from_str(&out.stdout).expect("json");
    let names: Vec<&str> = list["items"].as_array().expect("items").iter().filter_map(|i| i["name"].as_str()).collect();
    assert_eq!(names, ["allow-all", "allow-web"], "the new mesh's default permission and ours");

    let out = h.run(&["get", "MeshTimeout", "t", "-o", "yaml"]).await.ok();
    assert!(out.stdout.starts_with("type: MeshTimeout\nname: t\nmesh: default\n"), "{}", out.stdout);
    let yaml: Value = serde_yaml::from_str(&out.stdout).expect("yaml");
    assert_eq!(yaml["spec"]["to"][0]["default"]["idleTimeout"], "5s");

    let out = h.run(&["get", "mtp"]).await.ok();
    let header: Vec<&str> = out.lines()[0].split_whitespace().collect();
    assert_eq!(header, ["NAME", "MESH", "TARGET", "AGE", "VERSION"]);
    let row: Vec<&str> = out.lines()[2].split_whitespace().collect();
    assert_eq!(&row[..3], ["allow-web", "default", "MeshService/web"], "{}", out.stdout);

    // The services are those the zones report.
    let store = h.cp.as_ref().expect("running").store().clone();
    let inventory = serde_json::json!({"zone": "east", "services": [{"mesh": "default", "name": "web", "endpoints": 2, "healthy": 2}]});
    store
        .put(strait_store::Key::new(strait_cp_core::kinds::ZONE_INVENTORY, "", "east"), inventory, strait_store::Precondition::None)
        .await
        .unwrap();
    let out = h.run(&["get", "services", "--mesh", "default"]).await.ok();
    assert_eq!(out.lines(), ["NAME   DATAPLANES", "web    2"]);
    let out = h.run(&["get", "meshes"]).await.ok();
    assert!(out.lines()[0].starts_with("NAME ") && !out.lines()[0].contains("MESH "), "{}", out.stdout);

    let out = h.run(&["get", "zones"]).await.ok();
    assert!(out.stdout.is_empty() && out.stderr.contains("No zones found"), "{out:#?}");
    let out = h.run(&["get", "mtp", "--mesh", "nope"]).await.failed(1);
    assert!(out.stderr.contains("\"nope\" not found"), "{out:#?}");
    h.stop().await;
}

#[tokio::test]
async fn get_yaml_output_applies_back_unchanged() {
    let h = start().await;
    h.run(&["apply", "-f", &h.write("all.yaml", MANIFEST)]).await.ok();

    let list = h.run(&["get", "mtp", "-o", "yaml"]).await.ok().stdout;
    let out = exec(h.connected(), &["apply", "-f", "-"], Some(&list)).await.ok();
    assert_eq!(out.lines(), ["meshtrafficpermission/allow-all unchanged", "meshtrafficpermission/allow-web unchanged"]);

    let one = h.run(&["get", "meshtimeout", "t", "-o", "yaml"]).await.ok().stdout;
    let out = h.run(&["apply", "-f", &h.write("t.yaml", &one)]).await.ok();
    assert_eq!(out.lines(), ["meshtimeout/t unchanged"]);

    let json = h.run(&["get", "meshes", "-o", "json"]).await.ok().stdout;
    let out = h.run(&["apply", "-f", &h.write("meshes.json", &json)]).await.ok();
    assert_eq!(out.lines(), ["mesh/default unchanged"]);

    // The version in the output guards against overwriting a newer change.
    h.run(&["apply", "-f", &h.write("new.yaml", &one.replace("idleTimeout: 5s", "idleTimeout: 8s"))]).await.ok();
    let out = h.run(&["apply", "-f", &h.write("stale.yaml", &one.replace("idleTimeout: 5s", "idleTimeout: 9s"))]).await.failed(1);
    assert!(out.stderr.contains("conflict") && out.stderr.contains("remove `version`"), "{out:#?}");
    h.stop().await;
}

#[tokio::test]
async fn delete_then_get_is_not_found() {
    let h = start().await;
    h.run(&["apply", "-f", &h.write("all.yaml", MANIFEST)]).await.ok();
    let out = h.run(&["delete", "meshtrafficpermission", "allow-web"]).await.ok();
    assert_eq!(out.lines(), ["meshtrafficpermission/allow-web deleted"]);
    assert_eq!(h.rest_get("/meshes/default/meshtrafficpermissions/allow-web").await.0, 404);

    let out = h.run(&["get", "mtp", "allow-web"]).await.failed(1);
    assert!(out.stderr.contains("not found"), "{out:#?}");
    let out = h.run(&["delete", "mtp", "allow-web"]).await.failed(1);
    assert!(out.stderr.contains("meshtrafficpermission/allow-web not found in mesh \"default\""), "{out:#?}");

    let out = h.run(&["delete", "mesh", "default"]).await.ok();
    assert_eq!(out.lines(), ["mesh/default deleted"]);
    assert_eq!(h.rest_get("/meshes/default/meshtimeouts/t").await.0, 404, "a mesh takes its resources with it");
    h.stop().await;
}

#[tokio::test]
async fn writes_without_or_with_a_wrong_token_explain_the_token() {
    let h = start().await;
    let file = h.write("mesh.yaml", "type: Mesh\nname: default\n");
    let mut cmd = h.bare();
    cmd.env("STRAIT_SERVER", &h.server);
    let out = exec(cmd, &["apply", "-f", &file], None).await.failed(1);
    assert!(out.stderr.contains("needs the admin token") && out.stderr.contains("--token-file"), "{out:#?}");

    let mut cmd = h.bare();
    cmd.env("STRAIT_SERVER", &h.server).env("STRAIT_TOKEN", "not-the-token");
    let out = exec(cmd, &["apply", "-f", &file], None).await.failed(1);
    assert!(out.stderr.contains("refused the token from --token or STRAIT_TOKEN"), "{out:#?}");
    assert!(!out.stderr.contains("not-the-token"), "the token itself is never printed");
    assert_eq!(h.rest_get("/meshes").await.1["total"], 0);

    let out = exec(h.bare(), &["get", "meshes", "--server", &h.server], None).await.ok();
    assert!(out.stderr.contains("No meshes found"), "reads need no token: {out:#?}");
    h.stop().await;
}

#[tokio::test]
async fn a_down_server_is_named_and_version_still_prints_the_client() {
    let h = start().await;
    let out = h.run(&["version"]).await.ok();
    assert_eq!(out.lines()[0], concat!("Client: straitctl ", env!("CARGO_PKG_VERSION")));
    assert!(out.lines()[1].starts_with("Server: Strait global "), "{out:#?}");

    let free = std::net::TcpListener::bind("127.0.0.1:0").expect("bind").local_addr().expect("addr");
    let down = format!("http://{free}");
    let out = exec(h.bare(), &["get", "meshes", "--server", &down], None).await.failed(1);
    assert!(
        out.stderr.contains(&format!("cannot reach the Strait control plane at {down}: connection refused (is strait-global running?")),
        "{out:#?}"
    );
    let out = exec(h.bare(), &["version", "--server", &down], None).await.ok();
    assert!(out.stdout.starts_with("Client: straitctl "), "{out:#?}");
    assert!(out.stderr.contains("warning") && out.stderr.contains(&down), "{out:#?}");
    h.stop().await;
}

#[tokio::test]
async fn config_set_is_used_by_later_commands() {
    let h = start().await;
    assert!(!h.config_path().exists());
    exec(h.bare(), &["config", "view"], None).await.ok();
    assert!(h.config_path().exists(), "created on first use");

    let token_file = h.token_file.display().to_string();
    let out = exec(h.bare(), &["config", "set", "--server", &h.server, "--token-file", &token_file], None).await.ok();
    assert!(out.stdout.contains(&h.server), "{out:#?}");
    let saved = std::fs::read_to_string(h.config_path()).expect("config file");
    assert!(saved.contains(&format!("server: {}", h.server)) && saved.contains("tokenFile:"), "{saved}");
    let mode = std::fs::metadata(h.config_path()).expect("meta").permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);

    let out = exec(h.bare(), &["apply", "-f", &h.write("m.yaml", "type: Mesh\nname: default\n")], None).await.ok();
    assert_eq!(out.lines(), ["mesh/default created"], "server and token come from the config file");

    let token = std::fs::read_to_string(&h.token_file).expect("token").trim().to_string();
    exec(h.bare(), &["config", "set", "--token", &token], None).await.ok();
    let view = exec(h.bare(), &["config", "view"], None).await.ok();
    assert!(!view.stdout.contains(&token) && view.stdout.contains(&token[token.len() - 4..]), "masked: {view:#?}");
    assert!(!std::fs::read_to_string(h.config_path()).expect("config").contains("tokenFile"), "a token replaces the token file");
    exec(h.bare(), &["delete", "mesh", "default"], None).await.ok();

    let mut cmd = h.bare();
    cmd.env("STRAIT_SERVER", "http://127.0.0.1:1");
    let out = exec(cmd, &["config", "set", "--token-file", &token_file], None).await.ok();
    assert!(!out.stdout.contains("127.0.0.1:1"), "values from the environment are not saved: {out:#?}");
    let out = exec(h.bare(), &["config", "set"], None).await.failed(2);
    assert!(out.stderr.contains("--server"), "{out:#?}");
    h.stop().await;
}

#[tokio::test]
async fn usage_errors_and_completion() {
    let h = start().await;
    let out = h.run(&["get", "meshfoo"]).await.failed(2);
    assert!(out.stderr.contains("unknown resource type \"meshfoo\"") && out.stderr.contains("meshtrafficpermissions"), "{out:#?}");
    h.run(&["apply"]).await.failed(2);

    let out = h.run(&["completion", "bash"]).await.ok();
    assert!(out.stdout.contains("_straitctl()") && out.stdout.contains("complete "), "{}", &out.stdout[..out.stdout.len().min(300)]);
    h.run(&["completion", "zsh"]).await.ok();

    for cmd in ["apply", "get", "delete", "version", "config", "completion"] {
        let out = h.run(&[cmd, "--help"]).await.ok();
        assert!(out.stdout.contains("Examples:") || out.stdout.contains("straitctl "), "{cmd} --help: {}", out.stdout);
    }
    h.stop().await;
}

#[tokio::test]
async fn zone_and_dataplane_tokens_are_issued_rotated_and_revoked() {
    use std::os::unix::fs::PermissionsExt;
    let h = start().await;
    h.run(&["apply", "-f", &h.write("mesh.yaml", "type: Mesh\nname: default\n")]).await.ok();
    let dir = h.dir.path().join("zone-9");
    let out = h.run(&["zone", "register", "zone-9", "--output", dir.to_str().unwrap()]).await.ok();
    assert!(out.stdout.contains("--zone-proxy-token-file"), "says how to start a gateway: {out:#?}");
    for file in ["zone-token", "zone-proxy-token", "global-ca.pem"] {
        let mode = std::fs::metadata(dir.join(file)).unwrap_or_else(|e| panic!("{file}: {e}")).permissions().mode();
        assert_eq!(mode & 0o777, 0o600, "{file}");
    }
    let (zone_token, proxy) =
        (std::fs::read_to_string(dir.join("zone-token")).unwrap(), std::fs::read_to_string(dir.join("zone-proxy-token")).unwrap());
    assert_ne!(zone_token, proxy, "the gateway's credential is not the zone's");
    h.run(&["zone", "proxy-token", "zone-9", "--output", dir.to_str().unwrap()]).await.ok();
    assert_ne!(std::fs::read_to_string(dir.join("zone-proxy-token")).unwrap(), proxy, "a new zone-proxy token");
    assert_eq!(std::fs::read_to_string(dir.join("zone-token")).unwrap(), zone_token, "the zone token is untouched");
    let out = h.run(&["zone", "proxy-token", "zone-unknown"]).await.failed(1);
    assert!(out.stderr.contains("register it first"), "{out:#?}");

    let file = h.dir.path().join("web.token");
    let out = h.run(&["token", "dataplane", "--service", "web", "--output", file.to_str().unwrap()]).await.ok();
    let id = out.stdout.split_whitespace().nth(4).expect("the token's id").to_string();
    assert_eq!(id.len(), 32, "{out:#?}");
    let out = h.run(&["token", "revoke", "--file", file.to_str().unwrap()]).await.ok();
    assert!(out.stdout.contains(&format!("revoked dataplane token {id}")), "{out:#?}");
    let out = h.run(&["token", "revoke", "--service", "web"]).await.ok();
    assert!(out.stdout.contains("every dataplane token of service web"), "{out:#?}");
    let out = h.run(&["token", "revoke"]).await.failed(2);
    assert!(out.stderr.contains("--id") && out.stderr.contains("--service"), "{out:#?}");
    let out = h.run(&["token", "revoke", "--id", "zzz"]).await.failed(1);
    assert!(out.stderr.contains("id"), "{out:#?}");
    h.stop().await;
}

/// The global serves HTTPS by default: straitctl finds the CA next to the admin token and
/// verifies the server; another CA, no CA, or http:// against the HTTPS port each fail with a
/// message that says what to do.
#[tokio::test]
async fn https_is_verified_with_the_ca_next_to_the_admin_token() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut config = Config::for_dir(dir.path().join("data"), "127.0.0.1:0".parse().unwrap());
    config.api_plaintext = false;
    let cp = GlobalCp::start(Arc::new(config)).await.expect("control plane starts");
    let ca = cp.api_ca_file.clone().expect("the global writes its API's CA");
    assert_eq!(ca, cp.token_file.parent().unwrap().join("api-ca.pem"));
    let h = Harness { server: format!("https://127.0.0.1:{}", cp.api_addr.port()), token_file: cp.token_file.clone(), cp: Some(cp), dir };

    let out = h.run(&["apply", "-f", &h.write("mesh.yaml", "type: Mesh\nname: default\n")]).await.ok();
    assert!(out.stdout.contains("mesh/default"), "{out:#?}");
    let by_name = h.server.replace("127.0.0.1", "localhost");
    let out = exec(h.connected(), &["get", "meshes", "--server", &by_name], None).await.ok();
    assert!(out.stdout.contains("default"), "{out:#?}");

    // Another CA does not verify it.
    let other =
        strait_pki::CertificateAuthority::new_root(strait_pki::SYSTEM_TRUST_DOMAIN, "other", std::time::Duration::from_secs(3600)).unwrap();
    let other_ca = h.write("other-ca.pem", other.cert_pem());
    let out = exec(h.connected(), &["get", "meshes", "--ca-file", &other_ca], None).await.failed(1);
    assert!(out.stderr.contains("does not verify with the CA in") && out.stderr.contains("--ca-file"), "{out:#?}");
    // No CA at all: says where to find one.
    let mut bare = h.bare();
    bare.env("STRAIT_SERVER", &h.server).env("STRAIT_TOKEN", "x");
    let out = exec(bare, &["get", "meshes"], None).await.failed(1);
    assert!(out.stderr.contains("no CA to verify it") && out.stderr.contains("api-ca.pem"), "{out:#?}");
    // Plain HTTP to the HTTPS port.
    let plain = h.server.replace("https://", "http://");
    let out = exec(h.connected(), &["get", "meshes", "--server", &plain], None).await.failed(1);
    assert!(out.stderr.contains("use an https:// URL"), "{out:#?}");
    h.stop().await;
}
