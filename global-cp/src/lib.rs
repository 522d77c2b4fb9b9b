//! The global control plane (`strait-global`).
//!
//! In: resources written through the REST API (`straitctl`, HTTP clients) with the admin token.
//! Out: validated, versioned resources in the store, served back over REST with metrics and an
//! OpenAPI document; zone sync (KDS) streams them to the registered zones and collects each
//! zone's inventory and status. What the zone control plane shares with it (typed resources,
//! REST errors and auth, the store kinds) lives in `strait-cp-core`; mesh CAs, default
//! policies, secrets and tokens stay here.
#![forbid(unsafe_code)]
// tonic::Status (176 bytes) is the error of every gRPC call; boxing it everywhere buys nothing.
#![allow(clippy::result_large_err)]

pub mod admin_token;
pub mod app;
pub mod config;
pub mod dataplane_tokens;
pub mod inspect;
pub mod kds;
pub mod mesh_ca;
pub mod meshes;
pub mod metrics;
pub mod peers;
pub mod rest;
pub mod secrets;
pub mod traffic;
pub mod zone_identity;
pub mod zones;

pub use app::GlobalCp;
pub use config::Config;
