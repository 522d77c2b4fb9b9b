//! The global control plane (`strait-global`).
//!
//! In: resources written through the REST API (`straitctl`, HTTP clients) with the admin token.
//! Out: validated, versioned resources in the store, served back over REST with metrics and an
//! OpenAPI document; zone sync (KDS) will stream them to the zones.
#![forbid(unsafe_code)]

pub mod app;
pub mod auth;
pub mod config;
pub mod metrics;
pub mod resources;
pub mod rest;
pub mod telemetry;

pub use app::GlobalCp;
pub use config::Config;
