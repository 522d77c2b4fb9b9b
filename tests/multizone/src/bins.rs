//! Locating the workspace's binaries (`strait-global`, `strait-zone`, `straitctl`, ...) that
//! scenarios run. Cargo builds test executables into `target/<profile>/deps/` and binaries
//! into `target/<profile>/`, so the default is derived from the running test's own path;
//! `STRAIT_BIN_DIR` overrides it (installed or release builds, CI artifacts).

use std::path::PathBuf;

/// Environment variable naming the directory that holds the Strait binaries.
pub const BIN_DIR_ENV: &str = "STRAIT_BIN_DIR";

/// Path of the workspace binary `name`; panics, saying how to build it, if it is missing.
pub fn bin(name: &str) -> PathBuf {
    let dir = bin_dir();
    let path = dir.join(name);
    if !path.is_file() {
        panic!(
            "binary `{name}` not found at {}.\n\
             Build the workspace binaries first: `cargo build --workspace --bins` \
             (same profile as the tests), or set {BIN_DIR_ENV} to the directory holding them.",
            path.display()
        );
    }
    path
}

/// The first of `names` found on PATH: a system program a scenario runs (Prometheus,
/// Chromium). Without it the scenario (or its part) is skipped with the reason printed, except
/// in CI (`CI=true`), where `.ci/run` installs Debian's `package` and its absence fails.
pub fn system_program(names: &[&str], package: &str) -> Option<PathBuf> {
    let paths: Vec<PathBuf> = std::env::var_os("PATH").map(|p| std::env::split_paths(&p).collect()).unwrap_or_default();
    let found = names.iter().find_map(|name| paths.iter().map(|d| d.join(name)).find(|p| p.is_file()));
    if found.is_none() {
        assert!(std::env::var("CI").as_deref() != Ok("true"), "{} is not installed: .ci/run installs Debian's {package} package", names[0]);
        println!("SKIPPED: no {} on PATH (apt-get install {package})", names[0]);
    }
    found
}

/// The directory binaries are taken from: `$STRAIT_BIN_DIR`, else `target/<profile>/`.
pub fn bin_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os(BIN_DIR_ENV).filter(|d| !d.is_empty()) {
        return PathBuf::from(dir);
    }
    let exe = std::env::current_exe().expect("path of the running test executable");
    let mut dir = exe.parent().expect("test executable has a parent directory").to_path_buf();
    if dir.ends_with("deps") {
        dir.pop();
    }
    dir
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_dir_is_the_profile_dir_not_deps() {
        if std::env::var_os(BIN_DIR_ENV).is_none() {
            assert!(!bin_dir().ends_with("deps"), "{}", bin_dir().display());
        }
    }
}
