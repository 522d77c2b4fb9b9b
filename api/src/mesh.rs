//! Mesh and Zone: the two resources that live outside any mesh.

use serde::{Deserialize, Serialize};

use crate::validate::{Validate, Validator};
use crate::Duration;

/// The spec of a Mesh: how workload identities are issued and what unmatched traffic gets.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct MeshSpec {
    /// Mutual TLS settings.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mtls: Option<Mtls>,
    /// Do not create the default policies (an allow-all MeshTrafficPermission) with the mesh.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub skip_default_policies: Option<bool>,
}

/// Where the mesh's CA comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, utoipa::ToSchema)]
pub enum CaBackend {
    /// A root CA generated and held by the global control plane.
    #[default]
    Builtin,
}

/// Mutual TLS settings of a mesh.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Mtls {
    /// CA backend (default Builtin).
    #[serde(default)]
    pub backend: CaBackend,
    /// Lifetime of workload certificates (default 24h, at least 10s).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub certificate_lifetime: Option<Duration>,
}

impl MeshSpec {
    /// Lifetime of workload certificates.
    pub fn certificate_lifetime(&self) -> Duration {
        self.mtls.as_ref().and_then(|m| m.certificate_lifetime).unwrap_or(Duration::from_secs(24 * 3600))
    }
}

impl Validate for MeshSpec {
    fn validate(&self, v: &mut Validator) {
        if let Some(mtls) = &self.mtls {
            v.field("mtls", |v| {
                if let Some(l) = mtls.certificate_lifetime {
                    if l < Duration::from_secs(10) {
                        v.error_at("certificateLifetime", format!("{l} is too short: expected at least 10s"));
                    }
                    if l > Duration::from_secs(365 * 24 * 3600) {
                        v.error_at("certificateLifetime", format!("{l} is too long: expected at most 8760h"));
                    }
                }
            });
        }
    }
}

/// The spec of a Zone.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ZoneSpec {
    /// A disabled zone is refused by the global control plane and by other zones.
    #[serde(default = "enabled")]
    pub enabled: bool,
}

fn enabled() -> bool {
    true
}

impl Default for ZoneSpec {
    fn default() -> Self {
        Self { enabled: true }
    }
}

impl Validate for ZoneSpec {
    fn validate(&self, _v: &mut Validator) {}
}
