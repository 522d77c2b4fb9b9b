//! What the API accepts as valid but the data plane does not enforce yet. Writes of such a
//! resource are refused with a message that says so (no policy is accepted and then ignored);
//! a sidecar that gets one anyway (written before this check, or by a newer control plane)
//! refuses its configuration (NACK) rather than ignore it.
//!
//! In: a validated resource. Out: the fields it uses that nothing enforces, each with why.

use crate::policies::load_balancing::LoadBalancerType;
use crate::validate::{FieldError, ValidationErrors};
use crate::{Resource, Spec};

/// The fields of `resource` that the data plane would not enforce; empty when all are.
pub fn not_enforced(resource: &Resource) -> ValidationErrors {
    let mut errors = Vec::new();
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
}
