//! Transparent proxying: the iptables rules that send a workload's TCP connections through its
//! sidecar without the application knowing (`strait-dp transparent-proxy install|uninstall`).
//!
//! In: a [`TransparentConfig`] (redirect ports, the proxy's uid, exclusions). Out: rules in the
//! `nat` table of the current network namespace that redirect the application's outbound
//! connections to the sidecar's outbound port (15001) and other hosts' inbound connections to
//! its inbound port (15006); the sidecar reads where each connection was going with
//! `strait_proxy_core::orig_dst::original_dst` (the outbound side is served by
//! [`crate::proxy::redirected`]). The rules themselves, and why each is there,
//! are in [`rules`]; running them idempotently is [`iptables`].
//!
//! - [`install`] creates our chains if missing, empties them and fills them again, and adds
//!   the jumps from `OUTPUT`/`PREROUTING` only when `iptables -C` does not find them, so
//!   running it twice leaves exactly one set of rules, and running it with new settings
//!   replaces the old ones.
//! - [`uninstall`] removes the jumps and our chains; with nothing installed it does nothing.
//! - With `dry_run` both return the commands they would run and change nothing; they run no
//!   iptables command then, so a dry run works without privileges. Commands guarded by a
//!   check (chain creation, jumps, removals) are listed even though a real run skips those
//!   that are already in place.
//!
//! Both are blocking (they run iptables as child processes) and need `CAP_NET_ADMIN`.

mod config;
pub mod iptables;
pub mod rules;

#[cfg(test)]
mod iptables_tests;
#[cfg(test)]
mod netns_tests;
#[cfg(test)]
mod rules_tests;

pub use config::{Cidr, TransparentConfig, DEFAULT_EXCLUDE_INBOUND_PORTS, DEFAULT_REDIRECT_PORT_INBOUND, DEFAULT_REDIRECT_PORT_OUTBOUND};
pub use rules::{install_commands, uninstall_commands, Family};

/// Why the rules could not be installed or removed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The settings are invalid; every problem is listed, by field.
    #[error("invalid transparent proxy settings: {}", .0.join("; "))]
    Config(Vec<String>),
    /// A CIDR (an excluded outbound network) could not be parsed.
    #[error("invalid CIDR `{value}`: {reason}")]
    Cidr {
        /// The text given.
        value: String,
        /// What was expected.
        reason: String,
    },
    /// A program could not be started (usually: iptables is not installed).
    #[error("could not run `{command}`: {source}")]
    Spawn {
        /// The command line.
        command: String,
        /// The error from the operating system.
        #[source]
        source: std::io::Error,
    },
    /// A command ran and failed (usually: not root, or the kernel lacks the nat table).
    #[error("`{command}` failed ({status}): {stderr}")]
    Command {
        /// The command line.
        command: String,
        /// Its exit status.
        status: String,
        /// What it printed on stderr.
        stderr: String,
    },
}

/// Installs (or with `dry_run`, lists) the rules of `config`; returns the commands that changed
/// the nat table (all the commands, for a dry run), one shell-ready line each.
pub fn install(config: &TransparentConfig, dry_run: bool) -> Result<Vec<String>, Error> {
    iptables::install_with(&mut iptables::SystemRunner, config, dry_run)
}

/// Removes (or with `dry_run`, lists the commands that remove) our jumps and chains, for IPv4
/// and, where ip6tables works, IPv6; returns the commands that changed the nat table.
pub fn uninstall(dry_run: bool) -> Result<Vec<String>, Error> {
    iptables::uninstall_with(&mut iptables::SystemRunner, dry_run)
}
