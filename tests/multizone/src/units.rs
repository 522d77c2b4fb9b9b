//! VMs on the test network, run from the systemd units of `deploy/vm` as they are written: a
//! [`Machine`] is a host with an install root that `deploy/vm/install.sh --root` filled
//! (binaries, users, units, directories), and [`Machine::start`] does what systemd would do
//! with a unit of that root: reads its `[Service]` section, builds the environment from
//! `Environment=` and the `EnvironmentFile=`s (parsed as systemd does), expands specifiers
//! (`%i`, `%E`, `%S`, `%t`, `%n`) and `$VAR`/`${VAR}` in the `Exec*=` lines, creates
//! `StateDirectory=` with its mode and owner, runs `ExecStartPre=` to completion, starts
//! `ExecStart=` as `User=` (`setpriv`; a `!` or `+` prefix runs as root) in the host's network
//! namespace and, for `Type=notify`, waits for `READY=1` on its `NOTIFY_SOCKET`. Stopping
//! (SIGTERM) or crashing (SIGKILL) the main process runs `ExecStopPost=`.
//!
//! Paths are the host's as the unit names them, moved under the install root: a unit that
//! names a wrong binary, a wrong flag or a missing variable fails here as on a VM.
//!
//! In: a [`Net`] host and the roles to install. Out: running units ([`Running`]).

use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::{bin_dir, Cmd, Host, Net, Output, Proc};

/// How long a `Type=notify` unit may take to send `READY=1` (systemd's `TimeoutStartSec=`).
pub const START_TIMEOUT: Duration = Duration::from_secs(60);

/// The repository's `deploy/vm`.
pub fn deploy_vm() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../deploy/vm")
}

/// An empty root as a fresh VM has it: `/etc/passwd`, `group`, `shadow` and `gshadow` with
/// root alone (what `useradd` needs), everything traversable by the services' users.
pub fn seed_root(root: &Path) {
    std::fs::create_dir_all(root.join("etc")).expect("create the root's etc");
    for (file, text, mode) in [
        ("passwd", "root:x:0:0:root:/root:/bin/bash\n", 0o644),
        ("group", "root:x:0:\n", 0o644),
        ("shadow", "root:*:19000:0:99999:7:::\n", 0o640),
        ("gshadow", "root:*::\n", 0o640),
    ] {
        let path = root.join("etc").join(file);
        std::fs::write(&path, text).expect("seed the root's etc");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).expect("chmod");
    }
    for dir in [root, &root.join("etc")] {
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    }
}

/// Runs `deploy/vm/install.sh` with `args` (on the test's own host: it only writes files).
pub fn install_sh(args: &[&str]) -> std::process::Output {
    std::process::Command::new("bash").arg(deploy_vm().join("install.sh")).args(args).output().expect("run install.sh")
}

/// A VM: a host of the net and the root its software is installed in.
pub struct Machine {
    /// The host (its network namespace).
    pub host: Host,
    /// The install root: what the VM's `/` would hold.
    pub root: PathBuf,
    notify_dir: PathBuf,
}

impl Machine {
    /// A new host called `name` whose root gets `install.sh --role <roles>` (binaries from the
    /// workspace's build).
    pub fn install(net: &Net, name: &str, roles: &[&str]) -> Machine {
        // The services' users must reach their files under the net's directory.
        std::fs::set_permissions(net.dir(), std::fs::Permissions::from_mode(0o755)).expect("chmod the net's directory");
        let root = net.mkdir(&format!("machines/{name}"));
        std::fs::set_permissions(root.parent().expect("machines"), std::fs::Permissions::from_mode(0o755)).expect("chmod");
        seed_root(&root);
        let roles = roles.join(",");
        let out = install_sh(&["--role", &roles, "--root", root.to_str().expect("utf-8"), "--from", bin_dir().to_str().expect("utf-8")]);
        assert!(out.status.success(), "install.sh --role {roles}: {}", String::from_utf8_lossy(&out.stderr));
        let notify_dir = net.mkdir(&format!("notify/{name}"));
        std::fs::set_permissions(notify_dir.parent().expect("notify"), std::fs::Permissions::from_mode(0o755)).expect("chmod");
        std::fs::set_permissions(&notify_dir, std::fs::Permissions::from_mode(0o777)).expect("chmod");
        Machine { host: net.host(name), root, notify_dir }
    }

    /// `path` (as the VM names it) under the root.
    pub fn path(&self, path: &str) -> PathBuf {
        self.root.join(path.trim_start_matches('/'))
    }

    /// Writes a file of the VM with `mode`, owned by root, as an operator would.
    pub fn write(&self, path: &str, contents: &str, mode: u32) -> PathBuf {
        let path = self.path(path);
        std::fs::write(&path, contents).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).expect("chmod");
        path
    }

    /// The uid and gid of `user` in the VM's `/etc/passwd`.
    pub fn user(&self, user: &str) -> (u32, u32) {
        let passwd = std::fs::read_to_string(self.path("/etc/passwd")).expect("the root's /etc/passwd");
        passwd
            .lines()
            .find_map(|line| {
                let fields: Vec<&str> = line.split(':').collect();
                (fields.first() == Some(&user)).then(|| (fields[2].parse().expect("uid"), fields[3].parse().expect("gid")))
            })
            .unwrap_or_else(|| panic!("no user {user} in {}", self.path("/etc/passwd").display()))
    }

    /// Starts `unit` (`strait-zone.service`, `strait-dp@web.service`) as systemd would; see
    /// the module docs. Returns once it started (`Type=notify`: once it sent `READY=1`).
    pub fn start(&self, unit: &str) -> Running {
        let (file, instance) = match unit.split_once('@') {
            Some((prefix, rest)) => (format!("{prefix}@.service"), rest.trim_end_matches(".service").to_string()),
            None => (unit.to_string(), String::new()),
        };
        let text = std::fs::read_to_string(self.path(&format!("/etc/systemd/system/{file}")))
            .unwrap_or_else(|e| panic!("unit {file} is not installed: {e}"));
        let service = service_section(&text);
        let specifiers = |value: &str| self.specifiers(value, unit, &instance);
        let all = |key: &str| service.iter().filter(move |(k, _)| k == key).map(|(_, v)| specifiers(v)).collect::<Vec<_>>();
        let one = |key: &str| all(key).pop();

        let mut env = BTreeMap::from([("PATH".to_string(), "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".to_string())]);
        for assignments in all("Environment") {
            for word in split_words(&assignments) {
                if let Some((k, v)) = word.split_once('=') {
                    env.insert(k.to_string(), v.to_string());
                }
            }
        }
        for file in all("EnvironmentFile") {
            let (optional, file) = match file.strip_prefix('-') {
                Some(rest) => (true, rest.to_string()),
                None => (false, file),
            };
            match std::fs::read_to_string(self.path(&file)) {
                Ok(text) => env.extend(parse_env_file(&text)),
                Err(_) if optional => {}
                Err(e) => panic!("{unit}: EnvironmentFile={file}: {e} (systemd would refuse to start it)"),
            }
        }
        let user = one("User").filter(|u| u != "root");
        let owner = user.as_deref().map(|u| self.user(u)).unwrap_or((0, 0));
        if let Some(dirs) = one("StateDirectory") {
            let mode = one("StateDirectoryMode").map_or(0o755, |m| u32::from_str_radix(&m, 8).expect("StateDirectoryMode"));
            let paths: Vec<String> = split_words(&dirs).iter().map(|d| self.make_dir("/var/lib", d, mode, owner)).collect();
            env.insert("STATE_DIRECTORY".into(), paths.join(":"));
        }
        if let Some(dirs) = one("ConfigurationDirectory") {
            let paths: Vec<String> = split_words(&dirs).iter().map(|d| self.make_dir("/etc", d, 0o755, (0, 0))).collect();
            env.insert("CONFIGURATION_DIRECTORY".into(), paths.join(":"));
        }
        let notify = one("Type").as_deref() == Some("notify");
        let socket = notify.then(|| {
            let path = self.notify_dir.join(format!("{unit}.sock"));
            let _ = std::fs::remove_file(&path);
            let socket = UnixDatagram::bind(&path).expect("bind the notify socket");
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o777)).expect("chmod the notify socket");
            socket.set_read_timeout(Some(Duration::from_millis(200))).expect("timeout");
            env.insert("NOTIFY_SOCKET".into(), path.display().to_string());
            socket
        });
        let exec = |key: &str| all(key).iter().map(|line| self.exec_line(line, &env, owner)).collect::<Vec<_>>();
        for pre in exec("ExecStartPre") {
            let out = self.host.run_cmd(pre.cmd.clone());
            assert!(out.success() || pre.ignore_failure, "{unit}: ExecStartPre failed: {out}");
        }
        let main = exec("ExecStart").pop().unwrap_or_else(|| panic!("{unit}: no ExecStart="));
        let proc = self.host.spawn_cmd(unit, main.cmd);
        let mut running = Running { host: self.host.clone(), unit: unit.to_string(), proc, stop_post: exec("ExecStopPost"), notify: None };
        if let Some(socket) = socket {
            running.wait_notify(&socket, "READY=1", START_TIMEOUT);
            running.notify = Some(socket);
        }
        running
    }

    fn specifiers(&self, value: &str, unit: &str, instance: &str) -> String {
        let mut out = String::new();
        let mut chars = value.chars();
        while let Some(c) = chars.next() {
            if c != '%' {
                out.push(c);
                continue;
            }
            match chars.next() {
                Some('i') | Some('I') => out.push_str(instance),
                Some('n') => out.push_str(unit),
                Some('E') => out.push_str("/etc"),
                Some('S') => out.push_str("/var/lib"),
                Some('t') => out.push_str("/run"),
                Some('%') => out.push('%'),
                other => panic!("{unit}: specifier %{} is not handled by the test's runner", other.unwrap_or(' ')),
            }
        }
        out
    }

    /// Creates `<base>/<dir>` under the root as systemd does for `StateDirectory=` (parents
    /// root's, the directory the user's with `mode`); returns its path under the root.
    fn make_dir(&self, base: &str, dir: &str, mode: u32, (uid, gid): (u32, u32)) -> String {
        let path = self.path(&format!("{base}/{dir}"));
        std::fs::create_dir_all(&path).expect("create the unit's directory");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).expect("chmod");
        std::os::unix::fs::chown(&path, Some(uid), Some(gid)).expect("chown");
        path.display().to_string()
    }

    /// An `Exec*=` line as a command: prefixes, words, `$VAR` and `${VAR}`, the program under
    /// the root, run as the unit's user unless `!` or `+` says otherwise.
    fn exec_line(&self, line: &str, env: &BTreeMap<String, String>, (uid, gid): (u32, u32)) -> Exec {
        let mut line = line.trim();
        let (mut ignore_failure, mut privileged) = (false, false);
        while let Some(c) = line.chars().next().filter(|c| "-@:+!".contains(*c)) {
            match c {
                '-' => ignore_failure = true,
                '+' | '!' => privileged = true,
                other => panic!("Exec prefix {other} is not handled by the test's runner"),
            }
            line = &line[1..];
        }
        let mut words = Vec::new();
        for word in split_words(line) {
            match word.strip_prefix('$').filter(|v| !v.starts_with('{')) {
                // `$VAR` alone: its value split on white space, as systemd does.
                Some(var) => {
                    words.extend(env.get(var).map(|v| v.split_whitespace().map(str::to_string).collect::<Vec<_>>()).unwrap_or_default())
                }
                None => words.push(expand_braced(&word, env)),
            }
        }
        let program = self.path(&words[0]);
        assert!(program.is_file(), "`{line}`: {} is not installed", words[0]);
        let mut cmd = Cmd::new(&program).args(&words[1..]).clear_env();
        for (k, v) in env {
            cmd = cmd.env(k, v);
        }
        if !privileged && uid != 0 {
            let (reuid, regid) = (format!("--reuid={uid}"), format!("--regid={gid}"));
            cmd = cmd.wrapped("setpriv", &[&reuid, &regid, "--clear-groups", "--"]);
        }
        Exec { cmd, ignore_failure }
    }
}

struct Exec {
    cmd: Cmd,
    ignore_failure: bool,
}

/// A unit started by [`Machine::start`].
pub struct Running {
    host: Host,
    unit: String,
    /// The main process (`ExecStart=`).
    pub proc: Proc,
    stop_post: Vec<Exec>,
    notify: Option<UnixDatagram>,
}

impl Running {
    fn wait_notify(&self, socket: &UnixDatagram, message: &str, deadline: Duration) {
        let until = Instant::now() + deadline;
        let mut buffer = [0u8; 4096];
        while Instant::now() < until {
            self.proc.assert_running(&format!("{} to send {message}", self.unit));
            if let Ok(n) = socket.recv(&mut buffer) {
                if String::from_utf8_lossy(&buffer[..n]).lines().any(|l| l == message) {
                    return;
                }
            }
        }
        panic!("{}: no {message} on NOTIFY_SOCKET within {deadline:?}\n{}", self.unit, self.proc.log_tail(40));
    }

    /// `systemctl stop`: SIGTERM, `STOPPING=1` expected from a `Type=notify` unit, then
    /// `ExecStopPost=`.
    pub fn stop(&self) -> Vec<Output> {
        self.proc.terminate();
        if let Some(socket) = &self.notify {
            let mut buffer = [0u8; 4096];
            let mut seen = false;
            while let Ok(n) = socket.recv(&mut buffer) {
                seen |= String::from_utf8_lossy(&buffer[..n]).lines().any(|l| l == "STOPPING=1");
            }
            assert!(seen, "{}: no STOPPING=1 after SIGTERM", self.unit);
        }
        self.stop_post()
    }

    /// The main process is killed (SIGKILL: a crash); systemd then runs `ExecStopPost=`.
    pub fn crash(&self) -> Vec<Output> {
        self.proc.kill9();
        self.stop_post()
    }

    fn stop_post(&self) -> Vec<Output> {
        self.stop_post
            .iter()
            .map(|post| {
                let out = self.host.run_cmd(post.cmd.clone());
                assert!(out.success() || post.ignore_failure, "{}: ExecStopPost failed: {out}", self.unit);
                out
            })
            .collect()
    }
}

/// The `[Service]` section's assignments, in order (continuation lines joined).
fn service_section(text: &str) -> Vec<(String, String)> {
    let mut section = String::new();
    let mut out = Vec::new();
    let mut pending = String::new();
    for raw in text.lines() {
        let line = raw.trim();
        if let Some(stripped) = line.strip_suffix('\\') {
            pending.push_str(stripped);
            pending.push(' ');
            continue;
        }
        let line = format!("{pending}{line}");
        pending.clear();
        if line.is_empty() || line.starts_with('#') || line.starts_with(';') {
            continue;
        }
        if line.starts_with('[') {
            section = line;
            continue;
        }
        if section == "[Service]" {
            if let Some((k, v)) = line.split_once('=') {
                out.push((k.trim().to_string(), v.trim().to_string()));
            }
        }
    }
    out
}

/// Words as systemd splits a command line or `Environment=`: white space between words,
/// double or single quotes around a word, backslash escapes.
fn split_words(line: &str) -> Vec<String> {
    let mut words = Vec::new();
    let mut word = String::new();
    let mut in_word = false;
    let mut quote: Option<char> = None;
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        match (quote, c) {
            (Some(q), c) if c == q => quote = None,
            (_, '\\') => {
                if let Some(next) = chars.next() {
                    word.push(match next {
                        'n' => '\n',
                        't' => '\t',
                        other => other,
                    });
                }
                in_word = true;
            }
            (None, '"' | '\'') => {
                quote = Some(c);
                in_word = true;
            }
            (None, c) if c.is_whitespace() => {
                if in_word {
                    words.push(std::mem::take(&mut word));
                    in_word = false;
                }
            }
            (_, c) => {
                word.push(c);
                in_word = true;
            }
        }
    }
    if in_word {
        words.push(word);
    }
    words
}

/// `${VAR}` inside a word replaced by its value (empty when unset, as systemd does).
fn expand_braced(word: &str, env: &BTreeMap<String, String>) -> String {
    let mut out = String::new();
    let mut rest = word;
    while let Some(start) = rest.find("${") {
        out.push_str(&rest[..start]);
        let Some(end) = rest[start..].find('}') else { break };
        let name = &rest[start + 2..start + end];
        out.push_str(env.get(name).map(String::as_str).unwrap_or_default());
        rest = &rest[start + end + 1..];
    }
    out.push_str(rest);
    out
}

/// An `EnvironmentFile=` as systemd reads it: `KEY=VALUE` lines, `#` and `;` comments, white
/// space trimmed, a value in double or single quotes taken whole.
pub fn parse_env_file(text: &str) -> BTreeMap<String, String> {
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#') && !l.starts_with(';'))
        .filter_map(|l| {
            let (k, v) = l.split_once('=')?;
            let v = v.trim();
            let v = match (v.chars().next(), v.chars().last()) {
                (Some(a), Some(b)) if v.len() >= 2 && a == b && (a == '"' || a == '\'') => &v[1..v.len() - 1],
                _ => v,
            };
            Some((k.trim().to_string(), v.to_string()))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn command_lines_split_and_expand_as_systemd_does() {
        assert_eq!(split_words(r#"a "b c" 'd e' f\ g"#), ["a", "b c", "d e", "f g"]);
        let env = BTreeMap::from([("DIR".to_string(), "/etc/strait".to_string())]);
        assert_eq!(expand_braced("--file=${DIR}/dp-web.yaml${UNSET}", &env), "--file=/etc/strait/dp-web.yaml");
        let parsed = parse_env_file("# comment\n; other\nA=1\n B = \"two words\" \n\nC=x=y\n");
        assert_eq!(parsed, BTreeMap::from([("A".into(), "1".into()), ("B".into(), "two words".into()), ("C".into(), "x=y".into())]));
        let section = service_section("[Unit]\nDescription=x\n[Service]\nExecStart=/bin/a \\\n  --flag\nUser=u\n[Install]\nWantedBy=y\n");
        assert_eq!(section, [("ExecStart".to_string(), "/bin/a  --flag".to_string()), ("User".to_string(), "u".to_string())]);
    }
}
