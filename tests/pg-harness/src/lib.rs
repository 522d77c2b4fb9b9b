//! A real PostgreSQL server for one test: Debian's `postgres` binaries, a cluster copied from a
//! template made once by `initdb` (per machine and server version), listening on a Unix socket
//! in the test's own directory only. As root, the server runs as the user `postgres` (it refuses
//! root). Dropping the [`Server`] stops it and removes its files.
//!
//! Without the binaries the store's PostgreSQL contract tests say they are skipped, except under
//! CI (`CI` set), where the test fails: CI installs Debian's `postgresql`.
//!
//! In: nothing (the binaries are found under `/usr/lib/postgresql`, or `STRAIT_PG_BIN`). Out: a
//! [`Server`] and its connection URL.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A running server and its directory.
pub struct Server {
    child: Child,
    dir: tempfile::TempDir,
    bin: PathBuf,
    /// Its port (the Unix socket's name carries it too).
    port: u16,
    /// Settings beyond the common ones (`-c name=value`).
    settings: Vec<String>,
}

/// What a server that also listens on TCP with TLS presents and trusts.
pub struct Tls {
    /// The server's certificate chain (PEM).
    pub cert_pem: String,
    /// Its private key (PEM).
    pub key_pem: String,
    /// The CA of client certificates (PEM): the role `certuser` must log in with one whose
    /// common name is `certuser`; every other role is trusted.
    pub client_ca_pem: String,
}

impl Server {
    /// Stops the server at once (a "fast" shutdown: open connections are cut, committed data is
    /// kept), as an outage or a restart does; [`Server::start_again`] brings it back.
    pub fn stop(&mut self) {
        stop(&mut self.child);
    }

    /// Starts the stopped server again on its data and socket, and waits until it accepts
    /// connections.
    pub fn start_again(&mut self) {
        assert!(matches!(self.child.try_wait(), Ok(Some(_))), "start_again: the server is still running");
        self.child = launch(&self.bin, self.dir.path(), self.port, &self.settings);
        wait_ready(&self.bin, self.dir.path(), self.port);
    }

    /// The TCP port of a server started by [`start_tls`] (on 127.0.0.1).
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The connection URL: `postgresql://strait@<socket directory, percent-encoded>/postgres`.
    pub fn url(&self) -> String {
        let host: String = self
            .dir
            .path()
            .display()
            .to_string()
            .bytes()
            .map(|b| if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) { char::from(b).to_string() } else { format!("%{b:02X}") })
            .collect();
        format!("postgresql://strait@{host}:{}/postgres", self.port)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        stop(&mut self.child);
    }
}

fn stop(child: &mut Child) {
    if let Ok(Some(_)) = child.try_wait() {
        return;
    }
    // SIGTERM: a "smart" shutdown that waits for clients; SIGINT ("fast") does not.
    let _ = Command::new("kill").args(["-INT", &child.id().to_string()]).status();
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        if let Ok(Some(_)) = child.try_wait() {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = child.kill();
    let _ = child.wait();
}

fn bin_dir() -> Option<PathBuf> {
    if let Some(dir) = std::env::var_os("STRAIT_PG_BIN") {
        return Some(PathBuf::from(dir));
    }
    let mut versions: Vec<PathBuf> =
        std::fs::read_dir("/usr/lib/postgresql").ok()?.filter_map(|e| Some(e.ok()?.path().join("bin"))).collect();
    versions.sort();
    versions.into_iter().rev().find(|d| d.join("postgres").is_file() && d.join("initdb").is_file())
}

fn is_root() -> bool {
    std::process::Command::new("id").arg("-u").output().is_ok_and(|o| o.stdout.starts_with(b"0\n"))
}

/// `program args` as the server's user.
fn command(program: &Path) -> Command {
    if is_root() {
        let mut c = Command::new("setpriv");
        c.args(["--reuid=postgres", "--regid=postgres", "--init-groups", "--"]).arg(program);
        c
    } else {
        Command::new(program)
    }
}

fn chown_to_server_user(path: &Path) {
    if is_root() {
        let status = Command::new("chown").args(["-R", "postgres:postgres"]).arg(path).status().expect("chown");
        assert!(status.success(), "chown {} to postgres", path.display());
    }
}

/// The template cluster, made once: `initdb` into a scratch directory, then renamed into place,
/// so that tests starting together never see half of one.
fn template(bin: &Path) -> PathBuf {
    let version = bin.parent().and_then(|p| p.file_name()).map(|v| v.to_string_lossy().into_owned()).unwrap_or_default();
    let user = if is_root() { "root".to_string() } else { std::env::var("USER").unwrap_or_default() };
    let path = std::env::temp_dir().join(format!("strait-pg-template-{version}-{user}"));
    if path.join("PG_VERSION").is_file() {
        return path;
    }
    let scratch = tempfile::Builder::new().prefix("strait-pg-initdb-").tempdir_in(std::env::temp_dir()).expect("scratch dir");
    chown_to_server_user(scratch.path());
    let data = scratch.path().join("data");
    let out = command(&bin.join("initdb"))
        .args(["-A", "trust", "-U", "strait", "--no-sync", "-E", "UTF8", "--locale=C", "-D"])
        .arg(&data)
        .output()
        .expect("run initdb");
    assert!(out.status.success(), "initdb: {}", String::from_utf8_lossy(&out.stderr));
    // Another test may have won the race; its template is as good.
    if std::fs::rename(&data, &path).is_err() && !path.join("PG_VERSION").is_file() {
        panic!("cannot move the template cluster to {}", path.display());
    }
    path
}

/// Whether the server binaries are here; says why not (a panic under CI).
pub fn available() -> bool {
    if bin_dir().is_some() {
        return true;
    }
    let why = "no PostgreSQL server binaries (/usr/lib/postgresql/*/bin; Debian's postgresql package)";
    assert!(std::env::var_os("CI").is_none(), "{why}: CI installs them (scripts/test.sh)");
    println!("SKIPPED the PostgreSQL backend: {why}");
    false
}

/// Starts a server (`None` when [`available`] says no).
pub fn start() -> Option<Server> {
    start_with(None)
}

/// Starts a server that also listens on 127.0.0.1 (a free port, [`Server::port`]) and accepts
/// TCP connections only with TLS (`hostssl`; a plain TCP connection is rejected).
pub fn start_tls(tls: &Tls) -> Option<Server> {
    start_with(Some(tls))
}

fn start_with(tls: Option<&Tls>) -> Option<Server> {
    let bin = bin_dir()?;
    let template = template(&bin);
    let dir = tempfile::Builder::new().prefix("strait-pg-").tempdir().expect("server dir");
    let data = dir.path().join("data");
    let copied = Command::new("cp").arg("-a").arg(&template).arg(&data).status().expect("cp");
    assert!(copied.success(), "copy the template cluster");
    let mut settings = vec!["listen_addresses=".to_string()];
    let mut port = 5432;
    if let Some(tls) = tls {
        port = std::net::TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).expect("a free port").port();
        let write = |name: &str, text: &str| {
            let path = data.join(name);
            std::fs::write(&path, text).expect("write a TLS file");
            let status = Command::new("chmod").arg("0600").arg(&path).status().expect("chmod");
            assert!(status.success());
            path.display().to_string()
        };
        let cert = write("server.crt", &tls.cert_pem);
        let key = write("server.key", &tls.key_pem);
        let ca = write("client-ca.crt", &tls.client_ca_pem);
        write(
            "pg_hba.conf",
            "local all all trust\n\
             hostssl all certuser 127.0.0.1/32 cert\n\
             hostssl all all 127.0.0.1/32 trust\n\
             hostnossl all all 127.0.0.1/32 reject\n",
        );
        settings = vec![
            "listen_addresses=127.0.0.1".to_string(),
            "ssl=on".to_string(),
            format!("ssl_cert_file={cert}"),
            format!("ssl_key_file={key}"),
            format!("ssl_ca_file={ca}"),
        ];
    }
    chown_to_server_user(dir.path());
    let child = launch(&bin, dir.path(), port, &settings);
    let server = Server { child, dir, bin, port, settings };
    wait_ready(&server.bin, server.dir.path(), port);
    Some(server)
}

/// Starts `postgres` on the cluster in `dir`/data, its socket in `dir`, its log appended to `dir`/server.log.
fn launch(bin: &Path, dir: &Path, port: u16, settings: &[String]) -> Child {
    let log = std::fs::OpenOptions::new().create(true).append(true).open(dir.join("server.log")).expect("log file");
    command(&bin.join("postgres"))
        .arg("-D")
        .arg(dir.join("data"))
        .arg("-k")
        .arg(dir)
        .arg("-p")
        .arg(port.to_string())
        .args(settings.iter().flat_map(|s| ["-c", s.as_str()]))
        .args(["-c", "fsync=off", "-c", "max_connections=300", "-c", "shared_buffers=16MB"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .expect("start postgres")
}

/// Waits until the server of `dir` accepts connections (its socket appears earlier, while it starts up).
fn wait_ready(bin: &Path, dir: &Path, port: u16) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let ready = Command::new(bin.join("pg_isready"))
            .arg("-q")
            .arg("-h")
            .arg(dir)
            .args(["-p", &port.to_string(), "-U", "strait", "-d", "postgres"])
            .status()
            .is_ok_and(|s| s.success());
        if ready {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "postgres did not accept connections within 30 s: {}",
            std::fs::read_to_string(dir.join("server.log")).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}
