//! What both control planes use, so that neither links the other: typed resource access over
//! the store, the REST API's errors, bodies and admin-token check, and the names of the store
//! kinds with the rules of which of them zone sync carries.
//!
//! In: a [`strait_store::Store`] and HTTP requests. Out: validated [`strait_api::Resource`]s,
//! JSON errors, KDS messages of stored objects, and TLS for the gRPC servers with a
//! certificate that renews itself. What only one control plane does (mesh CAs and
//! default policies on the global, the zone's registry and certificates) stays in its crate.
#![forbid(unsafe_code)]

pub mod auth;
pub mod kinds;
pub mod resources;
pub mod rest;
pub mod revocations;
pub mod sync_set;
pub mod tls;

pub use resources::{PutOutcome, Resources, ServiceError};
pub use rest::errors::ApiError;
