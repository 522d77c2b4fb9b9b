//! Directories and files that hold secrets (store, keys, tokens): readable by their owner only,
//! whatever the umask, and tightened when they already exist with looser modes.
//!
//! In: a path. Out: the directory created (or tightened) to mode 0700, or the file to 0600;
//! a warning names what was tightened.

use std::io;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

/// Creates `dir` (and its parents) if needed and makes it 0700.
pub fn private_dir(dir: &Path) -> io::Result<()> {
    std::fs::create_dir_all(dir)?;
    tighten(dir, 0o700)
}

/// Makes the existing file `path` 0600.
pub fn private_file(path: &Path) -> io::Result<()> {
    tighten(path, 0o600)
}

fn tighten(path: &Path, mode: u32) -> io::Result<()> {
    let current = std::fs::metadata(path)?.permissions().mode() & 0o777;
    if current != mode {
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))?;
        if current & 0o077 != 0 {
            tracing::warn!(path = %path.display(), was = format!("{current:o}"), now = format!("{mode:o}"), "tightened the permissions of a private path");
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mode(p: &Path) -> u32 {
        std::fs::metadata(p).unwrap().permissions().mode() & 0o777
    }

    #[test]
    fn directories_and_files_end_up_owner_only() {
        let tmp = tempfile::tempdir().unwrap();
        let fresh = tmp.path().join("a/b");
        private_dir(&fresh).unwrap();
        assert_eq!(mode(&fresh), 0o700);
        let loose = tmp.path().join("loose");
        std::fs::create_dir(&loose).unwrap();
        std::fs::set_permissions(&loose, std::fs::Permissions::from_mode(0o755)).unwrap();
        private_dir(&loose).unwrap();
        assert_eq!(mode(&loose), 0o700, "an existing loose directory is tightened");
        let file = loose.join("token");
        std::fs::write(&file, "x").unwrap();
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o644)).unwrap();
        private_file(&file).unwrap();
        assert_eq!(mode(&file), 0o600);
    }
}
