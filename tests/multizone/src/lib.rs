//! End-to-end harness for Strait: runs the real binaries on a throw-away test network.
//!
//! A scenario creates a [`Net`], adds hosts to it ([`Net::host`]: a network namespace on a
//! shared "WAN" bridge, or a distinct 127.x address when namespaces are unavailable), starts
//! processes on them ([`Host::spawn`], binaries found with [`bin`]), runs one-shot commands
//! ([`Host::run`]) and polls for conditions ([`wait_for`], [`Host::http_ready`]). In goes a
//! scenario; out come real requests between real processes, with every process's log kept in
//! the net's directory and printed when the test fails. Dropping the `Net` always stops the
//! processes and removes the namespaces.
//!
//! # Adding a scenario
//!
//! Add a file under `tests/multizone/tests/` (one test binary per area: `global_api.rs`,
//! `zone_sync.rs`, ...). In each `#[test]`: create a `Net`; add hosts; start the binaries on
//! them with [`Host::spawn_cmd`] and wait for readiness with [`Proc::wait_http_ready`] (fails
//! at once if the process dies); drive the system with one-shot commands ([`Host::run_cmd`],
//! checked with [`Output::assert_success`] / [`Output::json`]) or requests sent from a host
//! ([`Host::http_client`], [`Host::tcp_connect`], [`Host::within`]); assert on what the system
//! answers, never on log lines alone. A condition that must stay true for a while is checked
//! with [`holds_for`]; a latency is measured with [`wait_for_every`] (fixed polling pace).
//! Crash/restart scenarios use [`Proc::kill9`] and [`Proc::restart`]. Files for commands and
//! data directories go in [`Net::dir`] ([`Net::mkdir`], [`Net::write_file`]). Nothing to clean
//! up: drop does it. Scenarios about Strait itself start its control planes with
//! [`control_plane`] ([`control_plane::Global::start`], [`control_plane::start_zone`]);
//! workloads with their sidecars come from [`sidecar`] ([`sidecar::Workload::start`], calls
//! with [`sidecar::echo`] and [`sidecar::Traffic`]), and what crosses between hosts is
//! captured with [`capture::Capture`] (`tcpdump`).
//! Assertions that only hold with real isolation check [`Net::is_namespaced`] and print why
//! they are skipped; the rest runs in both modes, so a scenario never skips as a whole.
//!
//! Environment: `STRAIT_BIN_DIR` (where binaries are, default `target/<profile>/`),
//! `STRAIT_E2E_LOOPBACK=1` (force loopback mode), `STRAIT_E2E_KEEP=1` (keep the net's
//! directory after a passing test; it is always kept after a failing one).
//!
//! ```no_run
//! use std::time::Duration;
//! use strait_multizone::{bin, Cmd, Net};
//!
//! let net = Net::new();
//! let global = net.host("global");
//! let data = net.mkdir("global-data");
//! let api = format!("{}:7680", global.addr());
//! let proc = global.spawn_cmd(
//!     "strait-global",
//!     Cmd::new(bin("strait-global")).arg("--api-address").arg(&api).arg("--data-dir").arg(&data),
//! );
//! proc.wait_http_ready(&global, &global.url(7680, "/readyz"), Duration::from_secs(30));
//! let zone = net.host("zone-1");
//! let server = global.url(7680, "");
//! let out = zone.run(bin("straitctl"), ["--server", server.as_str(), "get", "meshes"]);
//! out.assert_success();
//! ```
#![deny(unsafe_code)]

pub mod bins;
pub mod capture;
pub mod control_plane;
pub mod gateway;
pub mod host;
mod ip;
pub mod net;
pub mod pods;
pub mod process;
pub mod sidecar;
pub mod slots;
mod sys;
pub mod units;
pub mod wait;
pub mod wan;

pub use bins::{bin, bin_dir, system_program};
pub use host::{Host, Output};
pub use net::{Mode, Net};
pub use process::{Cmd, Proc};
pub use wait::{holds_for, http_ready, wait_for, wait_for_every};
