//! What the API accepts as valid but the data plane does not enforce yet. Writes of such a
//! resource are refused with a message that says so (no policy is accepted and then ignored);
//! a sidecar that gets one anyway (written before this check, or by a newer control plane)
//! refuses its configuration (NACK) rather than ignore it.
//!
//! In: a validated resource. Out: the fields it uses that nothing enforces, each with why.

use crate::policies::load_balancing::LoadBalancerType;
use crate::validate::{FieldError, ValidationErrors};
use crate::{Resource, Spec, TargetRef};

/// Why a caller selector on tags other than the service cannot be enforced.
pub const CALLER_TAGS: &str = "callers are known by the identity their certificate proves, which names only their service (strait.io/service); a rule on other caller tags (such as version) would never apply, so it is refused: select callers with kind MeshService or kind Mesh";

/// The fields of `resource` that the data plane would not enforce; empty when all are.
pub fn not_enforced(resource: &Resource) -> ValidationErrors {
    let mut errors = caller_tags(resource);
    if let Spec::MeshLoadBalancingStrategy(spec) = &resource.spec {
        for (i, to) in spec.to.iter().enumerate() {
            if to.default.load_balancer.as_ref().is_some_and(|lb| lb.kind == LoadBalancerType::RingHash) {
                errors.push(FieldError {
                    field: format!("spec.to[{i}].default.loadBalancer.type"),
                    message: "RingHash is not implemented by the sidecars yet; use RoundRobin, LeastRequest or Random".into(),
                });
            }
        }
    }
    ValidationErrors(errors)
}

/// The `from[].targetRef`s that select callers by tags other than their service.
fn caller_tags(resource: &Resource) -> Vec<FieldError> {
    let Ok(spec) = serde_json::to_value(&resource.spec) else { return Vec::new() };
    let Some(from) = spec.get("from").and_then(serde_json::Value::as_array) else { return Vec::new() };
    from.iter()
        .enumerate()
        .filter_map(|(i, item)| {
            let target: TargetRef = serde_json::from_value(item.get("targetRef")?.clone()).ok()?;
            let tags = target.required_tags();
            tags.keys()
                .any(|k| *k != crate::names::SERVICE_TAG)
                .then(|| FieldError { field: format!("spec.from[{i}].targetRef.tags"), message: CALLER_TAGS.into() })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(yaml: &str) -> Resource {
        crate::parse_documents(yaml).into_iter().next().unwrap().unwrap()
    }

    #[test]
    fn ring_hash_is_refused_naming_the_field_and_the_others_pass() {
        let ring = parse("type: MeshLoadBalancingStrategy\nname: r\nmesh: default\nspec:\n  to:\n  - targetRef: {kind: Mesh}\n    default: {loadBalancer: {type: RoundRobin}}\n  - targetRef: {kind: MeshService, name: api}\n    default: {loadBalancer: {type: RingHash, ringHash: {hashPolicies: [{type: SourceIP}]}}}\n");
        let errors = not_enforced(&ring);
        assert_eq!(errors.0.len(), 1);
        assert_eq!(errors.0[0].field, "spec.to[1].default.loadBalancer.type");
        let least = parse("type: MeshLoadBalancingStrategy\nname: l\nmesh: default\nspec:\n  to:\n  - targetRef: {kind: Mesh}\n    default: {loadBalancer: {type: LeastRequest}}\n");
        assert!(not_enforced(&least).0.is_empty());
    }

    #[test]
    fn caller_rules_on_tags_other_than_the_service_are_refused() {
        let deny = parse("type: MeshTrafficPermission\nname: d\nmesh: default\nspec:\n  targetRef: {kind: MeshService, name: api}\n  from:\n  - targetRef: {kind: MeshService, name: web}\n    default: {action: Allow}\n  - targetRef: {kind: MeshSubset, tags: {strait.io/service: backend, version: v2}}\n    default: {action: Deny}\n");
        let errors = not_enforced(&deny);
        assert_eq!(errors.0.len(), 1, "{errors:?}");
        assert_eq!(errors.0[0].field, "spec.from[1].targetRef.tags");
        assert!(errors.0[0].message.contains("never apply"));
        let tagged_service = parse("type: MeshTimeout\nname: t\nmesh: default\nspec:\n  from:\n  - targetRef: {kind: MeshService, name: web, tags: {version: v1}}\n    default: {connectionTimeout: 1s}\n");
        assert_eq!(not_enforced(&tagged_service).0.len(), 1);
        let by_service = parse("type: MeshTrafficPermission\nname: s\nmesh: default\nspec:\n  from:\n  - targetRef: {kind: MeshSubset, tags: {strait.io/service: web}}\n    default: {action: Deny}\n  - targetRef: {kind: Mesh}\n    default: {action: Allow}\n");
        assert!(not_enforced(&by_service).0.is_empty(), "the service tag alone is what a certificate proves");
    }
}
