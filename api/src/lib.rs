//! Strait's resource model: the one shape of every resource, used by the REST API, `straitctl`,
//! zone sync (KDS) and Kubernetes CRDs alike.
//!
//! In: JSON or YAML text or values. Out: validated [`Resource`]s with typed specs (Mesh, Zone,
//! Dataplane and the targetRef policies), errors that name the field path
//! (`spec.to[0].default.http.requestTimeout: invalid duration "5 parsecs"`), and the effective
//! configuration of a proxy computed by [`merge::effective_config`].
#![forbid(unsafe_code)]

pub mod crd;
pub mod dataplane;
pub mod dps;
pub mod dps_codec;
pub mod dps_delta;
pub mod duration;
pub mod gateway_config;
pub mod kds;
pub mod merge;
pub mod mesh;
pub mod names;
pub mod openapi;
pub mod policies;
pub mod proxy_config;
pub mod proxy_policies;
pub mod resource;
pub mod schema_rules;
pub mod support;
pub mod target_ref;
pub mod validate;

pub use duration::Duration;
pub use resource::{parse_documents, DocumentError, Resource, ResourceType, Spec};
pub use target_ref::{TargetKind, TargetRef};
pub use validate::{FieldError, ValidationErrors};
