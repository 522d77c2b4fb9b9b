//! Thin wrappers over the `ip` command (iproute2) for network namespaces, bridges and veth
//! pairs. Every call checks the exit status and reports the failing command line and its
//! stderr, so a broken setup says exactly which step failed.

use std::process::Command;

use crate::sys::{self, Signal};

/// Runs `ip <args>`; on failure the error names the command and carries its stderr.
pub(crate) fn ip(args: &[&str]) -> Result<String, String> {
    let cmdline = format!("ip {}", args.join(" "));
    let out = Command::new("ip").args(args).output().map_err(|e| format!("`{cmdline}` could not start: {e}"))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(format!("`{cmdline}` failed ({}): {}", out.status, String::from_utf8_lossy(&out.stderr).trim()))
    }
}

/// Like [`ip`], for setup steps the harness cannot continue without.
pub(crate) fn ip_ok(args: &[&str]) {
    if let Err(e) = ip(args) {
        panic!("network setup failed: {e}");
    }
}

/// Names of all network namespaces known to `ip netns`.
pub(crate) fn netns_list() -> Result<Vec<String>, String> {
    // Lines look like `name (id: 3)` or just `name`.
    Ok(ip(&["netns", "list"])?.lines().filter_map(|l| l.split_whitespace().next()).map(str::to_owned).collect())
}

/// Pids of the processes living in namespace `ns`.
pub(crate) fn netns_pids(ns: &str) -> Result<Vec<u32>, String> {
    Ok(ip(&["netns", "pids", ns])?.split_whitespace().filter_map(|p| p.parse().ok()).collect())
}

/// SIGKILLs whatever still runs in `ns`, then deletes it (which also destroys its veths and
/// bridges). Deleting a namespace with live processes would only unlink its name and leave
/// the namespace, its addresses and those processes behind.
pub(crate) fn netns_destroy(ns: &str) -> Result<(), String> {
    let mut errors = Vec::new();
    match netns_pids(ns) {
        Ok(pids) => {
            for pid in pids {
                if let Err(e) = sys::signal_pid(pid, Signal::Kill) {
                    errors.push(format!("kill {pid} in {ns}: {e}"));
                }
            }
        }
        Err(e) => errors.push(e),
    }
    if let Err(e) = ip(&["netns", "delete", ns]) {
        errors.push(e);
    }
    if errors.is_empty() {
        Ok(())
    } else {
        Err(errors.join("; "))
    }
}
