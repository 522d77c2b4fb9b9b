//! The sidecar proxy (`strait-dp`).
//!
//! In: the application's outbound connections and other sidecars' mTLS connections, plus its
//! configuration and workload certificate from the zone control plane (DPS). Out: proxied,
//! authorised, observed traffic; `/ready`, `/metrics` and `/config_dump` on the admin port.
#![forbid(unsafe_code)]
#![allow(clippy::result_large_err)]

pub mod app;
pub mod config;
pub mod dps_client;
pub mod exposition;
pub mod identity;
pub mod probe;
pub mod proxy;
pub mod runtime;
pub mod traffic;
pub mod transparent;

pub use app::{Sidecar, StartError};

/// What this component does, shown by `--help`.
pub const ROLE: &str = "Sidecar proxy: mTLS between workloads, L7 routing and policies, transparent interception";
