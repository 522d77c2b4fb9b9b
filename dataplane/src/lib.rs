//! The sidecar proxy (`strait-dp`).
//!
//! In: the application's outbound connections and other sidecars' mTLS connections, plus its
//! configuration from the zone control plane (DPS). Out: proxied, authorised, observed traffic.
#![forbid(unsafe_code)]

/// What this component does, shown by `--help`.
pub const ROLE: &str = "Sidecar proxy: mTLS between workloads, L7 routing and policies, transparent interception";
