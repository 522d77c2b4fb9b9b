//! The global control plane (`strait-global`).
//!
//! In: resources written through the REST API (`straitctl`, HTTP clients) with the admin token.
//! Out: validated, versioned resources in the store, served back over REST with metrics and an
//! OpenAPI document; zone sync (KDS) streams them to the registered zones and collects each
//! zone's inventory and status.
#![forbid(unsafe_code)]
// tonic::Status (176 bytes) is the error of every gRPC call; boxing it everywhere buys nothing.
#![allow(clippy::result_large_err)]

pub mod app;
pub mod auth;
pub mod config;
pub mod dataplane_tokens;
pub mod kds;
pub mod mesh_ca;
pub mod metrics;
pub mod resources;
pub mod rest;
pub mod secrets;
pub mod zone_identity;
pub mod zones;

pub use app::GlobalCp;
pub use config::Config;
pub use strait_runtime::{signals, telemetry};
