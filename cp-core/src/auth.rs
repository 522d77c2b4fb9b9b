//! The admin token: created on first start, required for every write.
//!
//! In: the token file path (and, per request, the `Authorization` header). Out: the loaded
//! token, and a middleware that answers 401 without a token and 403 with a wrong one.

use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::Path;
use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::{header, Method};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use crate::rest::errors::ApiError;

/// Why the token could not be loaded or created.
#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    /// Reading or writing the file failed.
    #[error("admin token file {path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// The failure.
        source: std::io::Error,
    },
    /// The file exists but holds no token.
    #[error("admin token file {0} is empty; delete it to generate a new token")]
    Empty(String),
}

/// The admin token a server checks writes against; swappable, so replicas sharing one through
/// their store follow a change without a restart.
pub type SharedToken = Arc<arc_swap::ArcSwap<String>>;

/// A [`SharedToken`] holding `token`.
pub fn shared(token: String) -> SharedToken {
    Arc::new(arc_swap::ArcSwap::from_pointee(token))
}

/// Reads the admin token from `path`: `None` when the file does not exist.
pub fn read(path: &Path) -> Result<Option<String>, TokenError> {
    let io = |source| TokenError::Io { path: path.display().to_string(), source };
    match std::fs::read_to_string(path) {
        Ok(text) => {
            let token = text.trim().to_string();
            if token.is_empty() {
                return Err(TokenError::Empty(path.display().to_string()));
            }
            if let Ok(meta) = std::fs::metadata(path) {
                if others_can_read(&meta) {
                    tracing::warn!(path = %path.display(), "admin token file is readable by other users; chmod 600 it");
                }
            }
            Ok(Some(token))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(io(e)),
    }
}

/// Writes `token` to `path` (mode 0600, its directory created), replacing the file at once:
/// a reader sees the old token or the new one, never a part.
pub fn write(path: &Path, token: &str) -> Result<(), TokenError> {
    let io = |source| TokenError::Io { path: path.display().to_string(), source };
    let dir = path.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir).map_err(io)?;
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let temp = dir.join(format!(".{name}.{}.tmp", std::process::id()));
    let written = (|| {
        let mut file = std::fs::OpenOptions::new().write(true).create(true).truncate(true).mode(0o600).open(&temp)?;
        file.write_all(token.as_bytes())?;
        file.write_all(b"\n")?;
        file.sync_all()?;
        std::fs::rename(&temp, path)
    })();
    if written.is_err() {
        let _ = std::fs::remove_file(&temp);
    }
    written.map_err(io)
}

/// Reads the admin token from `path`, or creates the file (mode 0600) with a new random token.
/// Returns the token and whether it was just created.
pub fn load_or_create(path: &Path) -> Result<(String, bool), TokenError> {
    if let Some(token) = read(path)? {
        return Ok((token, false));
    }
    let token = new_token();
    write(path, &token)?;
    Ok((token, true))
}

/// Whether users other than this process's can read the file: anyone, or a group this process
/// is not in (a Kubernetes Secret mounted 0440 for the pod's own group is fine).
fn others_can_read(meta: &std::fs::Metadata) -> bool {
    use std::os::unix::fs::MetadataExt;
    let mode = meta.permissions().mode();
    // `/proc/self` belongs to this process's effective user and group.
    let own_group = std::fs::metadata("/proc/self").is_ok_and(|me| me.gid() == meta.gid());
    mode & 0o007 != 0 || (mode & 0o070 != 0 && !own_group)
}

#[cfg(test)]
#[test]
fn group_readable_is_fine_only_for_the_own_group() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("t");
    std::fs::write(&path, "x").unwrap();
    let set = |mode: u32| std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
    set(0o600);
    assert!(!others_can_read(&std::fs::metadata(&path).unwrap()));
    // A new file takes this process's group.
    set(0o640);
    assert!(!others_can_read(&std::fs::metadata(&path).unwrap()));
    set(0o604);
    assert!(others_can_read(&std::fs::metadata(&path).unwrap()));
}

/// A new random token (64 hex digits).
pub fn new_token() -> String {
    let bytes: [u8; 32] = rand::random();
    hex::encode(bytes)
}

/// Compares without an early exit, so timing does not reveal how much of a guess was right.
fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Lets reads through; writes need `Authorization: Bearer <admin token>`.
pub async fn require_token_for_writes(State(token): State<SharedToken>, req: Request, next: Next) -> Response {
    if matches!(*req.method(), Method::GET | Method::HEAD | Method::OPTIONS) {
        return next.run(req).await;
    }
    let presented = req.headers().get(header::AUTHORIZATION).and_then(|v| v.to_str().ok()).and_then(|v| v.strip_prefix("Bearer "));
    match presented {
        None => ApiError::unauthorized().into_response(),
        Some(p) if same(p.trim().as_bytes(), token.load().as_bytes()) => next.run(req).await,
        Some(_) => ApiError::forbidden().into_response(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_is_created_private_then_reused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub/admin-token");
        let (t1, created) = load_or_create(&path).unwrap();
        assert!(created);
        assert_eq!(t1.len(), 64);
        assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
        let (t2, created) = load_or_create(&path).unwrap();
        assert!(!created);
        assert_eq!(t1, t2);
    }

    #[test]
    fn empty_token_file_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("admin-token");
        std::fs::write(&path, "\n").unwrap();
        assert!(matches!(load_or_create(&path), Err(TokenError::Empty(_))));
    }

    #[test]
    fn comparison() {
        assert!(same(b"abc", b"abc"));
        assert!(!same(b"abc", b"abd"));
        assert!(!same(b"abc", b"ab"));
    }
}
