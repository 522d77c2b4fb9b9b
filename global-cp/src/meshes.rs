//! What a Mesh brings with it on the global: a root CA and trust bundle, and the default
//! policies (unless its spec opts out, as in Kuma), written in the same atomic batch as the
//! Mesh; and the CA removed with it.
//!
//! In: a Mesh being created or deleted by [`strait_cp_core::Resources`]. Out: the extra store
//! operations.

use serde_json::{json, Value};
use strait_api::merge::{ORIGIN_DEFAULT, ORIGIN_LABEL};
use strait_api::Resource;
use strait_cp_core::resources::{put_op, MeshLifecycle};
use strait_store::Op;

/// The global's rules for new and deleted meshes.
pub struct GlobalMeshes;

/// The policies every new Mesh starts with, unless its spec opts out (`skipDefaultPolicies`):
/// an allow-all MeshTrafficPermission, and safe resilience defaults for every destination, as
/// Kuma gives (each can be edited or deleted like any policy; labelled as defaults, they merge
/// before the user's policies, which override them field by field):
///
/// - MeshTimeout: connect within 5 s, idle connections closed after 1 h, HTTP requests answered
///   504 after 15 s;
/// - MeshRetry: 5 TCP connect attempts; up to 5 retries of idempotent HTTP requests on 5xx,
///   gateway errors, 409, resets and connect failures, and of gRPC calls answered Canceled,
///   DeadlineExceeded, ResourceExhausted or Unavailable, 25-250 ms back-off, within the retry
///   budget (20% of the requests in progress, or 3);
/// - MeshCircuitBreaker: at most 1024 requests and 3 retries in progress per destination;
///   outlier detection ejecting an endpoint after 5 failures in a row (any, gateway or local
///   origin, timeouts included) for 30 s and more on repeat, at most 20% of the endpoints (and
///   at least one) at a time.
fn default_policies(mesh: &str) -> Vec<Resource> {
    let origin = json!({ORIGIN_LABEL: ORIGIN_DEFAULT});
    let to_all = |conf: Value| json!({"targetRef": {"kind": "Mesh"}, "to": [{"targetRef": {"kind": "Mesh"}, "default": conf}]});
    let policies = [
        (
            "MeshTrafficPermission",
            "allow-all",
            json!({"targetRef": {"kind": "Mesh"}, "from": [{"targetRef": {"kind": "Mesh"}, "default": {"action": "Allow"}}]}),
        ),
        (
            "MeshTimeout",
            "mesh-timeout-all-default",
            to_all(json!({"connectionTimeout": "5s", "idleTimeout": "1h", "http": {"requestTimeout": "15s"}})),
        ),
        (
            "MeshRetry",
            "mesh-retry-all-default",
            to_all(json!({
                "tcp": {"maxConnectAttempt": 5},
                "http": {"numRetries": 5, "perTryTimeout": "16s", "backOff": {"baseInterval": "25ms", "maxInterval": "250ms"}},
                "grpc": {"numRetries": 5, "perTryTimeout": "16s", "backOff": {"baseInterval": "25ms", "maxInterval": "250ms"}},
            })),
        ),
        (
            "MeshCircuitBreaker",
            "mesh-circuit-breaker-all-default",
            to_all(json!({
                "connectionLimits": {"maxRequests": 1024, "maxRetries": 3},
                "outlierDetection": {
                    "disabled": false,
                    "baseEjectionTime": "30s",
                    "maxEjectionPercent": 20,
                    "detectors": {
                        "totalFailures": {"consecutive": 5},
                        "gatewayFailures": {"consecutive": 5},
                        "localOriginFailures": {"consecutive": 5},
                    },
                },
            })),
        ),
    ];
    policies
        .into_iter()
        .filter_map(|(kind, name, spec)| {
            Resource::from_value(json!({"type": kind, "name": name, "mesh": mesh, "labels": origin, "spec": spec})).ok()
        })
        .collect()
}

impl MeshLifecycle for GlobalMeshes {
    fn on_create(&self, mesh: &Resource) -> Result<Vec<Op>, String> {
        let mut ops = crate::mesh_ca::new_mesh_ops(&mesh.name).map_err(|e| format!("creating the mesh's root CA: {e}"))?;
        let skip = mesh.spec_value().get("skipDefaultPolicies").and_then(Value::as_bool).unwrap_or(false);
        if !skip {
            ops.extend(default_policies(&mesh.name).iter().map(put_op));
        }
        Ok(ops)
    }

    fn on_delete(&self, mesh: &str) -> Vec<Op> {
        crate::mesh_ca::delete_mesh_ops(mesh)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_policies_validate() {
        let policies = default_policies("m");
        assert_eq!(policies.len(), 4, "every default policy must pass validation");
        for policy in &policies {
            let refused = strait_api::support::not_enforced(policy);
            assert!(refused.0.is_empty(), "{}: a default policy must use only enforced fields: {refused:?}", policy.name);
        }
    }
}
