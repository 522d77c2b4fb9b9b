//! The zone control plane (`strait-zone`).
//!
//! In: meshes, policies and other zones' inventories synced from the global control plane
//! (KDS, over TLS with the zone token). Out: the zone's own persistent copy, served read-only
//! over REST, and ACK/NACK and inventory reported upstream. Sidecar configuration (DPS) and
//! workload certificates build on this copy. It shares `strait-cp-core` with the global and
//! does not link the global's crate.
#![forbid(unsafe_code)]
// tonic::Status (176 bytes) is the error of every gRPC call; boxing it everywhere buys nothing.
#![allow(clippy::result_large_err)]

pub mod app;
pub mod certs;
pub mod config;
pub mod discovery;
pub mod dps;
pub mod gateways;
pub mod inspect;
pub mod inventory;
pub mod k8s;
pub mod kds_client;
pub mod metrics;
pub mod rest;
pub mod synced;
pub mod traffic;
pub mod zone_ca;
pub mod zone_identity;

pub use app::ZoneCp;
pub use config::Config;
