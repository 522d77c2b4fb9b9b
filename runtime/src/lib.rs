//! What every Strait binary shares at its edge: flag types and helpers, the logging set-up,
//! waiting for SIGTERM/SIGINT, the certificate manager that keeps its certificates current, and
//! owner-only directories and files for secrets.
//!
//! In: the parsed flags of a binary. Out: an installed `tracing` subscriber and a future that
//! ends on a shutdown signal. Kept small so the sidecar links nothing of the control planes.
#![deny(unsafe_code)]

pub mod certs;
pub mod clock;
pub mod files;
pub mod flags;
pub mod framed;
pub mod journald;
pub mod memory;
pub mod notify;
pub mod signals;
pub mod sockets;
pub mod telemetry;
pub mod threads;
