//! MeshTCPRoute: weighted TCP backends for outbound traffic.

use serde::{Deserialize, Serialize};

use super::{check_backends, BackendRef};
use crate::validate::{Validate, Validator};

/// A TCP rule (TCP has nothing to match on: the last rule wins).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct TcpRouteRule {
    /// Where connections go.
    pub default: TcpRouteConf,
}

/// Weighted destinations.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct TcpRouteConf {
    /// Weighted destinations.
    pub backend_refs: Vec<BackendRef>,
}

impl Validate for TcpRouteRule {
    fn validate(&self, v: &mut Validator) {
        v.field("default", |v| check_backends(v, &self.default.backend_refs));
    }
}
