//! The east-west gateway (`strait-gateway`).
//!
//! In: mTLS connections from local sidecars (egress) and QUIC tunnels from other zones'
//! gateways (ingress). Out: the same bytes, routed by SNI, never decrypted.
#![forbid(unsafe_code)]

/// What this component does, shown by `--help`.
pub const ROLE: &str = "East-west gateway: zone ingress for other zones' traffic and zone egress for this zone's cross-zone traffic";
