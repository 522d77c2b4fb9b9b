//! The zone control plane (`strait-zone`).
//!
//! In: resources synced from the global control plane (KDS) and the zone's workloads (VM
//! registrations or Kubernetes Pods). Out: each sidecar's configuration (DPS), workload
//! certificates, and the zone's inventory reported upstream.
#![forbid(unsafe_code)]

/// What this component does, shown by `--help`.
pub const ROLE: &str =
    "Zone control plane: syncs policies from the global control plane, programs the sidecars of this zone, signs workload certificates";
