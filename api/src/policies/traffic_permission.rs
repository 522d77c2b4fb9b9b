//! MeshTrafficPermission: which callers may reach a service (`from` only).

use serde::{Deserialize, Serialize};

use super::PolicyConf;
use crate::validate::{Validate, Validator};

/// What happens to traffic from the selected callers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub enum Action {
    /// Let it through.
    Allow,
    /// Refuse it: HTTP gets 403, TCP is closed.
    Deny,
    /// Let it through, but log and count it as if it were denied.
    AllowWithShadowDeny,
}

/// The `default` of a MeshTrafficPermission item.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct TrafficPermissionConf {
    /// Allow, Deny or AllowWithShadowDeny.
    pub action: Action,
}

impl Validate for TrafficPermissionConf {
    fn validate(&self, _v: &mut Validator) {}
}

impl PolicyConf for TrafficPermissionConf {
    const FROM: bool = true;
    const TO: bool = false;
}
