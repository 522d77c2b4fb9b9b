//! Runs what a Kubernetes manifest says to run: a container of a Pod (or of a Deployment's or
//! StatefulSet's template) with its command, arguments and environment exactly as written,
//! as a process on a test host, so that a wrong flag in a chart's template fails a test.
//!
//! In: manifests rendered by the real Helm engine ([`render_chart`], through
//! `scripts/k8s/render_chart.py` and the PyPI package helm-python-sdk). Out: a [`Proc`] whose
//! volumes are directories of the net (Secrets written from the rendered Secret objects, with
//! `items` and modes as Kubernetes mounts them; emptyDir and claim templates empty), whose
//! `$(VAR)` references are expanded from its `env` (the downward API's `metadata.name` and
//! `status.podIP` are the pod's name and the host's address), and whose paths under a mount
//! point are the mounted directory's. A path argument outside every mount would not exist in
//! the image: it fails the test.
//!
//! With a [`Cluster`], the harness also plays the kubelet's part with the API: a Pod that mounts
//! its service-account token reaches the API server through `KUBECONFIG` (in place of the
//! in-cluster files), a projected service-account token volume holds a token the cluster
//! issued for that Pod and audience, and a container's own `securityContext.runAsUser` is the
//! user it runs as (the injected sidecar's traffic is told apart by it).

use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;
use std::process::Command;

use base64::Engine as _;
use serde_json::Value;

use crate::{bin, Cmd, Host, Net, Proc};

/// The repository's root.
fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// Whether the Helm engine (helm-python-sdk) and kubernetes-validate can be imported; in CI
/// (`CI=true`) their absence fails the test, since `.ci/run` installs them.
pub fn helm_available() -> bool {
    let ok = Command::new("python3")
        .args(["-c", "import helm_python, kubernetes_validate, jsonschema"])
        .output()
        .is_ok_and(|o| o.status.success());
    assert!(
        ok || std::env::var("CI").as_deref() != Ok("true"),
        "helm-python-sdk and kubernetes-validate are not installed: scripts/test.sh installs them"
    );
    ok
}

/// The chart's manifests for `values`, rendered by the real Helm engine in namespace
/// `strait-system`; Err holds Helm's message.
pub fn render_chart(net: &Net, values: &Value) -> Result<Vec<Value>, String> {
    let file = net.write_file("values.json", serde_json::to_vec(values).unwrap_or_default());
    let out = Command::new("python3")
        .arg(root().join("scripts/k8s/render_chart.py"))
        .arg(&file)
        .output()
        .map_err(|e| format!("running render_chart.py: {e}"))?;
    if !out.status.success() {
        return Err(String::from_utf8_lossy(&out.stderr).into_owned());
    }
    serde_json::from_slice(&out.stdout).map_err(|e| format!("render_chart.py printed no JSON: {e}"))
}

/// The manifest of `kind` named `name`.
pub fn find<'a>(documents: &'a [Value], kind: &str, name: &str) -> &'a Value {
    documents
        .iter()
        .find(|d| d["kind"] == kind && d["metadata"]["name"] == name)
        .unwrap_or_else(|| panic!("the chart rendered no {kind} {name}"))
}

/// A Secret's data, decoded, by key.
pub fn secret_data(secret: &Value) -> BTreeMap<String, Vec<u8>> {
    let engine = base64::engine::general_purpose::STANDARD;
    let mut out: BTreeMap<String, Vec<u8>> = secret["data"]
        .as_object()
        .into_iter()
        .flatten()
        .map(|(k, v)| (k.clone(), engine.decode(v.as_str().unwrap_or_default()).unwrap_or_else(|e| panic!("Secret key {k}: {e}"))))
        .collect();
    for (k, v) in secret["stringData"].as_object().into_iter().flatten() {
        out.insert(k.clone(), v.as_str().unwrap_or_default().as_bytes().to_vec());
    }
    out
}

/// Issues the projected service-account token of a pod (by name) for an audience.
pub type TokenIssuer = Box<dyn Fn(&str, &str) -> String + Send + Sync>;

/// What the cluster gives a Pod beyond its manifest.
pub struct Cluster {
    /// A kubeconfig for the API server, for Pods that mount their service-account token.
    pub kubeconfig: PathBuf,
    /// Issues the Pods' projected service-account tokens.
    pub issue_token: TokenIssuer,
}

/// Starts container `container` of the pod template of `workload` (a Deployment, a
/// StatefulSet, or a Pod) on `host` as pod `pod_name`, its Secret volumes filled from
/// `secrets` (Secret objects, rendered or made by the test).
pub fn run_container(net: &Net, host: &Host, workload: &Value, container: &str, pod_name: &str, secrets: &[&Value]) -> Proc {
    run_container_in(net, host, workload, container, pod_name, secrets, None)
}

/// [`run_container`] in `cluster`, which gives the Pod its API access and tokens.
pub fn run_container_in(
    net: &Net,
    host: &Host,
    workload: &Value,
    container: &str,
    pod_name: &str,
    secrets: &[&Value],
    cluster: Option<&Cluster>,
) -> Proc {
    let pod = if workload["kind"] == "Pod" { &workload["spec"] } else { &workload["spec"]["template"]["spec"] };
    let spec = pod["containers"]
        .as_array()
        .into_iter()
        .flatten()
        .chain(pod["initContainers"].as_array().into_iter().flatten())
        .find(|c| c["name"] == container)
        .unwrap_or_else(|| panic!("no container {container} in {}", workload["metadata"]["name"]));

    // Environment, with the downward API this harness knows.
    let mut env: BTreeMap<String, String> = BTreeMap::new();
    for var in spec["env"].as_array().into_iter().flatten() {
        let name = var["name"].as_str().unwrap_or_default().to_string();
        let value = match (&var["value"], var["valueFrom"]["fieldRef"]["fieldPath"].as_str()) {
            (Value::String(v), _) => v.clone(),
            (_, Some("metadata.name")) => pod_name.to_string(),
            (_, Some("status.podIP")) => host.addr().to_string(),
            (_, Some("metadata.namespace")) => "strait-system".to_string(),
            _ => panic!("env {name} of {container}: this harness does not know {var}"),
        };
        env.insert(name, value);
    }

    // Volumes: a directory each, as the kubelet would mount them.
    let mut mounts: Vec<(String, PathBuf)> = Vec::new();
    for mount in spec["volumeMounts"].as_array().into_iter().flatten() {
        let volume_name = mount["name"].as_str().unwrap_or_default();
        let mount_path = mount["mountPath"].as_str().unwrap_or_default().to_string();
        let dir = net.mkdir(&format!("{pod_name}-{volume_name}"));
        let volume = pod["volumes"].as_array().into_iter().flatten().find(|v| v["name"] == volume_name);
        match volume {
            Some(v) if v.get("secret").is_some() => {
                let secret_name = v["secret"]["secretName"].as_str().unwrap_or_default();
                let secret = secrets
                    .iter()
                    .find(|s| s["metadata"]["name"] == secret_name)
                    .unwrap_or_else(|| panic!("volume {volume_name} of {container}: no Secret {secret_name}"));
                let data = secret_data(secret);
                let mode = v["secret"]["defaultMode"].as_u64().unwrap_or(0o644) as u32;
                let files: Vec<(String, String)> = match v["secret"]["items"].as_array() {
                    Some(items) => items
                        .iter()
                        .map(|i| (i["key"].as_str().unwrap_or_default().to_string(), i["path"].as_str().unwrap_or_default().to_string()))
                        .collect(),
                    None => data.keys().map(|k| (k.clone(), k.clone())).collect(),
                };
                for (key, path) in files {
                    let bytes = data.get(&key).unwrap_or_else(|| panic!("Secret {secret_name} has no key {key}"));
                    let file = dir.join(&path);
                    std::fs::write(&file, bytes).unwrap_or_else(|e| panic!("writing {}: {e}", file.display()));
                    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(mode)).unwrap_or_default();
                }
            }
            Some(v) if v.get("emptyDir").is_some() => {}
            Some(v) if v.get("projected").is_some() => {
                let cluster = cluster.unwrap_or_else(|| panic!("volume {volume_name} of {container}: a projected token needs a Cluster"));
                for source in v["projected"]["sources"].as_array().into_iter().flatten() {
                    let token = &source["serviceAccountToken"];
                    assert!(
                        token.is_object(),
                        "volume {volume_name} of {container}: this harness projects only service-account tokens: {source}"
                    );
                    let audience = token["audience"].as_str().unwrap_or_default();
                    let file = dir.join(token["path"].as_str().unwrap_or("token"));
                    std::fs::write(&file, (cluster.issue_token)(pod_name, audience))
                        .unwrap_or_else(|e| panic!("writing {}: {e}", file.display()));
                    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o644)).unwrap_or_default();
                }
                std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap_or_default();
            }
            Some(v) => panic!("volume {volume_name} of {container}: this harness does not know {v}"),
            // A StatefulSet's volume claim template.
            None => {
                let claimed =
                    workload["spec"]["volumeClaimTemplates"].as_array().into_iter().flatten().any(|c| c["metadata"]["name"] == volume_name);
                assert!(claimed, "volume mount {volume_name} of {container} has no volume");
            }
        }
        mounts.push((mount_path, dir));
    }
    // Longest mount paths first, so that /etc/strait/a/b wins over /etc/strait/a.
    mounts.sort_by_key(|(path, _)| std::cmp::Reverse(path.len()));

    let expand = |text: &str| -> String {
        let mut out = text.to_string();
        for (name, value) in &env {
            out = out.replace(&format!("$({name})"), value);
        }
        let path_start = out.find("=/").map(|i| i + 1).or_else(|| out.starts_with('/').then_some(0));
        if let Some(start) = path_start {
            let path = out[start..].to_string();
            let mounted = mounts.iter().find(|(m, _)| path == *m || path.starts_with(&format!("{m}/")));
            match mounted {
                Some((m, dir)) => out = format!("{}{}{}", &out[..start], dir.display(), &path[m.len()..]),
                None => panic!("{container}: argument {text} names {path}, which no volume mounts (the image holds only binaries)"),
            }
        }
        out
    };

    let command: Vec<String> = spec["command"].as_array().into_iter().flatten().filter_map(Value::as_str).map(str::to_string).collect();
    let program = command.first().unwrap_or_else(|| panic!("{container} has no command"));
    let program = bin(program.rsplit('/').next().unwrap_or(program));
    let mut cmd = Cmd::new(program);
    for part in command.iter().skip(1) {
        cmd = cmd.arg(expand(part));
    }
    for arg in spec["args"].as_array().into_iter().flatten().filter_map(Value::as_str) {
        cmd = cmd.arg(expand(arg));
    }
    for (name, value) in &env {
        cmd = cmd.env(name, value);
    }
    if pod["automountServiceAccountToken"] == true {
        let cluster = cluster.unwrap_or_else(|| panic!("{container} mounts its service-account token: it needs a Cluster"));
        cmd = cmd.env("KUBECONFIG", &cluster.kubeconfig);
    }
    if let Some(user) = spec["securityContext"]["runAsUser"].as_u64().filter(|u| *u != 0) {
        let group = spec["securityContext"]["runAsGroup"].as_u64().unwrap_or(user);
        // Its volumes must be reachable by that user, as the kubelet's are.
        std::fs::set_permissions(net.dir(), std::fs::Permissions::from_mode(0o755)).unwrap_or_default();
        cmd = cmd.wrapped("setpriv", &[&format!("--reuid={user}"), &format!("--regid={group}"), "--clear-groups"]);
    }
    host.spawn_cmd(&format!("{pod_name}/{container}"), cmd)
}

/// Makes `name` resolve to `host`'s address inside `on`'s network namespace, as cluster DNS
/// would (`ip netns exec` mounts `/etc/netns/<ns>/hosts` over `/etc/hosts`). Removed on drop.
pub struct HostsFile {
    dir: Option<PathBuf>,
}

impl HostsFile {
    /// Writes the entries `(name, host)` for `on`'s processes started after this.
    pub fn write(on: &Host, entries: &[(&str, &Host)]) -> HostsFile {
        let Some(ns) = on.netns() else { return HostsFile { dir: None } };
        let dir = PathBuf::from("/etc/netns").join(ns);
        std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("mkdir {}: {e}", dir.display()));
        let mut text = String::from("127.0.0.1 localhost\n");
        for (name, host) in entries {
            text.push_str(&format!("{} {name}\n", host.addr()));
        }
        std::fs::write(dir.join("hosts"), text).unwrap_or_else(|e| panic!("writing {}/hosts: {e}", dir.display()));
        HostsFile { dir: Some(dir) }
    }
}

impl Drop for HostsFile {
    fn drop(&mut self) {
        if let Some(dir) = &self.dir {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}
