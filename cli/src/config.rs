//! The client config file and the connection settings in effect.
//!
//! In: the global flags (already merged with `STRAIT_*` variables by clap), the config file
//! (YAML: `server`, and `token` or `tokenFile`), and `HOME` / `XDG_CONFIG_HOME` for its default
//! path — the only environment reads outside clap. Out: [`Settings`]: the server URL and where
//! the admin token comes from, with precedence flag/env > config file > default. The file is
//! created with defaults (mode 0600, since it may hold a token) on first use.

use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::cli::GlobalArgs;

/// The server used when neither flags, environment nor the config file name one.
pub const DEFAULT_SERVER: &str = "https://127.0.0.1:7680";

/// The CA file strait-global writes next to its admin token.
pub const API_CA_FILE: &str = "api-ca.pem";

/// Why the configuration could not be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// Reading or writing a file failed.
    #[error("{what} {path}: {source}")]
    Io {
        /// What the file is for.
        what: &'static str,
        /// The file.
        path: PathBuf,
        /// The failure.
        source: std::io::Error,
    },
    /// The config file is not valid YAML of the expected shape.
    #[error("config file {path} is invalid: {message}")]
    Invalid {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
    /// The server URL is unusable.
    #[error("server {url:?} (from {origin}): {message}")]
    BadServer {
        /// The URL given.
        url: String,
        /// Where it came from.
        origin: String,
        /// What is wrong.
        message: String,
    },
    /// A token file holds no token.
    #[error("token file {0} is empty")]
    EmptyToken(PathBuf),
    /// No config path could be derived.
    #[error("no config file: set --config or STRAIT_CONFIG (HOME is not set)")]
    NoPath,
}

/// The config file's content.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ConfigFile {
    /// URL of the global control plane.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub server: Option<String>,
    /// The admin token itself.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token: Option<String>,
    /// A file holding the admin token (relative paths are relative to the config file).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token_file: Option<PathBuf>,
    /// The CA certificate that verifies the server (relative paths are relative to the config file).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_file: Option<PathBuf>,
}

impl ConfigFile {
    /// The file written on first use.
    pub fn defaults() -> Self {
        ConfigFile { server: Some(DEFAULT_SERVER.to_string()), token: None, token_file: None, ca_file: None }
    }

    /// The YAML text with the token masked, for `config view`.
    pub fn masked_yaml(&self) -> String {
        let mut shown = self.clone();
        shown.token = shown.token.as_deref().map(mask);
        serde_yaml::to_string(&shown).unwrap_or_default()
    }
}

/// Where the admin token comes from; read only when a write needs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TokenSource {
    /// Given literally; `origin` says where (flag/env or config file).
    Literal {
        /// The token.
        token: String,
        /// For messages: `--token or STRAIT_TOKEN`, or `config file <path>`.
        origin: String,
    },
    /// Read from a file.
    File(PathBuf),
}

impl TokenSource {
    /// The token.
    pub fn load(&self) -> Result<String, ConfigError> {
        match self {
            TokenSource::Literal { token, .. } => Ok(token.trim().to_string()),
            TokenSource::File(path) => {
                let text =
                    std::fs::read_to_string(path).map_err(|source| ConfigError::Io { what: "token file", path: path.clone(), source })?;
                let token = text.trim();
                if token.is_empty() {
                    return Err(ConfigError::EmptyToken(path.clone()));
                }
                Ok(token.to_string())
            }
        }
    }

    /// Where the token came from, for messages.
    pub fn describe(&self) -> String {
        match self {
            TokenSource::Literal { origin, .. } => format!("the token from {origin}"),
            TokenSource::File(path) => format!("the token in {}", path.display()),
        }
    }
}

/// The connection settings in effect.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settings {
    /// Base URL of the REST API, without a trailing slash.
    pub server: String,
    /// Where `server` came from.
    pub server_origin: String,
    /// The admin token, if any was configured.
    pub token: Option<TokenSource>,
    /// The CA certificate that verifies an https:// server, if one is known.
    pub ca_file: Option<PathBuf>,
    /// The config file consulted.
    pub config_path: Option<PathBuf>,
}

/// The default config path: `$XDG_CONFIG_HOME/strait/config.yaml`, else `~/.config/strait/config.yaml`.
pub fn default_path(home: Option<&Path>, xdg_config_home: Option<&Path>) -> Option<PathBuf> {
    let base = match xdg_config_home.filter(|p| p.is_absolute()) {
        Some(xdg) => xdg.to_path_buf(),
        None => home?.join(".config"),
    };
    Some(base.join("strait").join("config.yaml"))
}

/// The config file to use: `--config`/`STRAIT_CONFIG`, else the default path.
pub fn config_path(flags: &GlobalArgs) -> Option<PathBuf> {
    if let Some(p) = &flags.config {
        return Some(p.clone());
    }
    let home = std::env::var_os("HOME").filter(|h| !h.is_empty()).map(PathBuf::from);
    let xdg = std::env::var_os("XDG_CONFIG_HOME").filter(|h| !h.is_empty()).map(PathBuf::from);
    default_path(home.as_deref(), xdg.as_deref())
}

/// Reads the config file, creating it with defaults (mode 0600) when it does not exist.
pub fn load_or_create(path: &Path) -> Result<ConfigFile, ConfigError> {
    match std::fs::read_to_string(path) {
        Ok(text) => {
            let file = parse(path, &text)?;
            if file.token.is_some() && is_shared(path) {
                eprintln!("warning: config file {} holds a token and is readable by other users; run chmod 600 on it", path.display());
            }
            Ok(file)
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let defaults = ConfigFile::defaults();
            // A read-only home must not stop commands that need no saved settings.
            if let Err(e) = save(path, &defaults) {
                eprintln!("warning: {e}; using the defaults");
            }
            Ok(defaults)
        }
        Err(source) => Err(ConfigError::Io { what: "reading config file", path: path.to_path_buf(), source }),
    }
}

fn parse(path: &Path, text: &str) -> Result<ConfigFile, ConfigError> {
    if text.trim().is_empty() {
        return Ok(ConfigFile::default());
    }
    serde_yaml::from_str(text).map_err(|e| ConfigError::Invalid { path: path.to_path_buf(), message: e.to_string() })
}

fn is_shared(path: &Path) -> bool {
    std::fs::metadata(path).map(|m| m.permissions().mode() & 0o077 != 0).unwrap_or(false)
}

/// Writes the config file atomically with mode 0600.
pub fn save(path: &Path, file: &ConfigFile) -> Result<(), ConfigError> {
    let io = |source| ConfigError::Io { what: "writing config file", path: path.to_path_buf(), source };
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(io)?;
    }
    let text = serde_yaml::to_string(file).map_err(|e| ConfigError::Invalid { path: path.to_path_buf(), message: e.to_string() })?;
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = PathBuf::from(tmp);
    let _ = std::fs::remove_file(&tmp);
    let mut out = std::fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(&tmp).map_err(io)?;
    out.write_all(text.as_bytes()).and_then(|()| out.sync_all()).map_err(io)?;
    std::fs::rename(&tmp, path).map_err(io)
}

/// Merges flags/env, the config file and defaults into the settings in effect.
pub fn resolve(flags: &GlobalArgs, file: &ConfigFile, config_path: Option<&Path>) -> Result<Settings, ConfigError> {
    let file_origin = || match config_path {
        Some(p) => format!("config file {}", p.display()),
        None => "config file".to_string(),
    };
    let (raw_server, server_origin) = match (&flags.server, &file.server) {
        (Some(s), _) => (s.clone(), "--server or STRAIT_SERVER".to_string()),
        (None, Some(s)) => (s.clone(), file_origin()),
        (None, None) => (DEFAULT_SERVER.to_string(), "the default".to_string()),
    };
    let server = normalize_server(&raw_server).map_err(|message| ConfigError::BadServer {
        url: raw_server.clone(),
        origin: server_origin.clone(),
        message,
    })?;
    let token = if let Some(t) = &flags.token {
        Some(TokenSource::Literal { token: t.clone(), origin: "--token or STRAIT_TOKEN".into() })
    } else if let Some(f) = &flags.token_file {
        Some(TokenSource::File(f.clone()))
    } else if let Some(t) = &file.token {
        Some(TokenSource::Literal { token: t.clone(), origin: file_origin() })
    } else {
        file.token_file.as_ref().map(|f| TokenSource::File(relative_to(config_path, f)))
    };
    let ca_file = if let Some(f) = &flags.ca_file {
        Some(f.clone())
    } else if let Some(f) = &file.ca_file {
        Some(relative_to(config_path, f))
    } else if let Some(TokenSource::File(token_file)) = &token {
        // strait-global writes its API's CA next to the admin token.
        token_file.parent().map(|d| d.join(API_CA_FILE)).filter(|p| p.is_file())
    } else {
        None
    };
    Ok(Settings { server, server_origin, token, ca_file, config_path: config_path.map(Path::to_path_buf) })
}

fn relative_to(config_path: Option<&Path>, file: &Path) -> PathBuf {
    match config_path.and_then(Path::parent) {
        Some(dir) if file.is_relative() => dir.join(file),
        _ => file.to_path_buf(),
    }
}

/// Checks a server URL and removes any trailing slash; `host:port` gets `https://`.
pub fn normalize_server(raw: &str) -> Result<String, String> {
    let trimmed = raw.trim();
    let with_scheme = if trimmed.contains("://") { trimmed.to_string() } else { format!("https://{trimmed}") };
    let url = reqwest::Url::parse(&with_scheme).map_err(|e| format!("not a URL: {e}"))?;
    match url.scheme() {
        "http" | "https" => {}
        other => return Err(format!("unsupported scheme {other:?}; use an https:// (or http://) URL")),
    }
    if url.host_str().is_none_or(str::is_empty) {
        return Err("no host".into());
    }
    if url.query().is_some() || url.fragment().is_some() {
        return Err("a server URL takes no query or fragment".into());
    }
    Ok(url.as_str().trim_end_matches('/').to_string())
}

/// Shows the last four characters of a token, so users can tell tokens apart without leaking one.
pub fn mask(token: &str) -> String {
    let chars: Vec<char> = token.trim().chars().collect();
    if chars.len() <= 8 {
        return "********".into();
    }
    let tail: String = chars[chars.len() - 4..].iter().collect();
    format!("********{tail}")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn flags(server: Option<&str>, token: Option<&str>, token_file: Option<&str>) -> GlobalArgs {
        GlobalArgs {
            server: server.map(Into::into),
            token: token.map(Into::into),
            token_file: token_file.map(Into::into),
            ca_file: None,
            config: None,
        }
    }

    fn file(server: Option<&str>, token: Option<&str>, token_file: Option<&str>) -> ConfigFile {
        ConfigFile { server: server.map(Into::into), token: token.map(Into::into), token_file: token_file.map(Into::into), ca_file: None }
    }

    #[test]
    fn flags_beat_the_file_which_beats_the_default() {
        let path = Path::new("/home/u/.config/strait/config.yaml");
        let cases = [
            (flags(None, None, None), file(None, None, None), "https://127.0.0.1:7680"),
            (flags(None, None, None), file(Some("http://file:1"), None, None), "http://file:1"),
            (flags(Some("http://flag:2/"), None, None), file(Some("http://file:1"), None, None), "http://flag:2"),
            (flags(Some("cp:7680"), None, None), file(None, None, None), "https://cp:7680"),
        ];
        for (f, c, want) in cases {
            assert_eq!(resolve(&f, &c, Some(path)).unwrap().server, want, "{f:?} {c:?}");
        }
        let s = resolve(&flags(None, None, None), &file(Some("http://file:1"), None, None), Some(path)).unwrap();
        assert!(s.server_origin.contains("/home/u/.config/strait/config.yaml"));
    }

    #[test]
    fn token_precedence() {
        let path = Path::new("/etc/strait/config.yaml");
        let lit =
            |t: &str| match resolve(&flags(None, Some(t), Some("/f")), &file(None, Some("file-token"), None), Some(path)).unwrap().token {
                Some(TokenSource::Literal { token, .. }) => token,
                other => panic!("{other:?}"),
            };
        assert_eq!(lit("flag-token"), "flag-token", "--token beats --token-file and the file");
        let s = resolve(&flags(None, None, Some("/f")), &file(None, Some("file-token"), None), Some(path)).unwrap();
        assert_eq!(s.token, Some(TokenSource::File("/f".into())), "--token-file beats the file's token");
        let s = resolve(&flags(None, None, None), &file(None, None, Some("admin-token")), Some(path)).unwrap();
        assert_eq!(s.token, Some(TokenSource::File("/etc/strait/admin-token".into())), "relative to the config file");
        let s = resolve(&flags(None, None, None), &file(None, None, None), Some(path)).unwrap();
        assert_eq!(s.token, None);
    }

    #[test]
    fn server_urls() {
        assert_eq!(normalize_server("http://a:1/").unwrap(), "http://a:1");
        assert_eq!(normalize_server("http://a:1/prefix/").unwrap(), "http://a:1/prefix");
        assert_eq!(normalize_server("localhost:7680").unwrap(), "https://localhost:7680");
        assert_eq!(normalize_server("https://a:1").unwrap(), "https://a:1");
        assert!(normalize_server("ftp://a").is_err());
        assert!(normalize_server("http://a:1?x=1").is_err());
        let err = resolve(&flags(Some("ftp://cp"), None, None), &ConfigFile::default(), None).unwrap_err();
        assert!(err.to_string().contains("--server or STRAIT_SERVER"), "{err}");
    }

    #[test]
    fn the_ca_comes_from_the_flag_the_file_or_next_to_the_token_file() {
        let dir = tempfile::tempdir().unwrap();
        let token_file = dir.path().join("admin-token");
        std::fs::write(&token_file, "t").unwrap();
        let config = dir.path().join("config.yaml");
        let mut f = flags(None, None, Some(token_file.to_str().unwrap()));
        assert_eq!(resolve(&f, &ConfigFile::default(), Some(&config)).unwrap().ca_file, None, "no api-ca.pem yet");
        std::fs::write(dir.path().join(API_CA_FILE), "pem").unwrap();
        assert_eq!(resolve(&f, &ConfigFile::default(), Some(&config)).unwrap().ca_file, Some(dir.path().join(API_CA_FILE)));
        let with_ca = ConfigFile { ca_file: Some("ca.pem".into()), ..ConfigFile::default() };
        assert_eq!(resolve(&f, &with_ca, Some(&config)).unwrap().ca_file, Some(dir.path().join("ca.pem")), "relative to the config file");
        f.ca_file = Some("/flag/ca.pem".into());
        assert_eq!(resolve(&f, &with_ca, Some(&config)).unwrap().ca_file, Some(PathBuf::from("/flag/ca.pem")));
    }

    #[test]
    fn default_path_prefers_xdg() {
        assert_eq!(default_path(Some(Path::new("/home/u")), None).unwrap(), PathBuf::from("/home/u/.config/strait/config.yaml"));
        assert_eq!(default_path(Some(Path::new("/home/u")), Some(Path::new("/x"))).unwrap(), PathBuf::from("/x/strait/config.yaml"));
        assert_eq!(
            default_path(Some(Path::new("/home/u")), Some(Path::new("rel"))).unwrap(),
            PathBuf::from("/home/u/.config/strait/config.yaml")
        );
        assert_eq!(default_path(None, None), None);
    }

    #[test]
    fn first_use_creates_a_private_file_then_reads_it() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub/config.yaml");
        assert_eq!(load_or_create(&path).unwrap(), ConfigFile::defaults());
        assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
        let mut c = ConfigFile::defaults();
        c.token_file = Some("/t".into());
        save(&path, &c).unwrap();
        assert_eq!(load_or_create(&path).unwrap(), c);
        assert!(std::fs::read_to_string(&path).unwrap().contains("tokenFile: /t"));
        std::fs::write(&path, "server: x\nsevrer: y\n").unwrap();
        let err = load_or_create(&path).unwrap_err().to_string();
        assert!(err.contains("sevrer"), "{err}");
    }

    #[test]
    fn tokens_are_masked() {
        assert_eq!(mask("0123456789abcdef"), "********cdef");
        assert_eq!(mask("short"), "********");
        let c = ConfigFile { token: Some("0123456789abcdef".into()), ..ConfigFile::defaults() };
        assert!(!c.masked_yaml().contains("0123"));
    }

    #[test]
    fn token_files_are_read_and_trimmed() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t");
        std::fs::write(&path, "abc\n").unwrap();
        assert_eq!(TokenSource::File(path.clone()).load().unwrap(), "abc");
        std::fs::write(&path, "\n").unwrap();
        assert!(matches!(TokenSource::File(path).load(), Err(ConfigError::EmptyToken(_))));
    }
}
