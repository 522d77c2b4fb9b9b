//! What the API accepts as valid but the data plane does not enforce yet: whole policy types
//! ([`NOT_ENFORCED_TYPES`]) and fields of the others. Writes of such a
//! resource are refused with a message that says so (no policy is accepted and then ignored);
//! a sidecar that gets one anyway (written before this check, or by a newer control plane)
//! refuses its configuration (NACK) rather than ignore it.
//!
//! In: a validated resource. Out: the fields it uses that nothing enforces, each with why.

use crate::validate::{FieldError, ValidationErrors};
use crate::{Resource, ResourceType, Spec, TargetRef};

/// Why a caller selector on tags other than the service cannot be enforced.
pub const CALLER_TAGS: &str = "callers are known by the identity their certificate proves, which names only their service (strait.io/service); a rule on other caller tags (such as version) would never apply, so it is refused: select callers with kind MeshService or kind Mesh";

/// The fields of `resource` that the data plane would not enforce; empty when all are.
pub fn not_enforced(resource: &Resource) -> ValidationErrors {
    let mut errors = caller_tags(resource);
    let mut refuse = |field: String, message: &str| errors.push(FieldError { field, message: message.into() });
    match &resource.spec {
        Spec::MeshCircuitBreaker(spec) if !spec.from.is_empty() => {
            refuse(
                "spec.from".into(),
                "inbound circuit breaking is not enforced by the sidecars yet; set it on the callers' side, in `to`",
            );
        }
        Spec::MeshRetry(spec) => {
            for (i, to) in spec.to.iter().enumerate() {
                let retry_on = to.default.http.as_ref().and_then(|h| h.retry_on.as_ref());
                for (j, condition) in retry_on.into_iter().flatten().enumerate() {
                    if condition == "Http3PostConnectFailure" {
                        refuse(
                            format!("spec.to[{i}].default.http.retryOn[{j}]"),
                            "the sidecars do not speak HTTP/3, so this condition would never apply",
                        );
                    }
                }
            }
        }
        Spec::MeshTrace(spec) => {
            for (i, backend) in spec.default.backends.iter().enumerate() {
                if backend.zipkin.is_some() {
                    refuse(
                        format!("spec.default.backends[{i}].zipkin"),
                        "the sidecars export spans over OTLP only: use openTelemetry (a collector such as the OpenTelemetry Collector or Jaeger takes OTLP and can forward to Zipkin)",
                    );
                }
            }
        }
        Spec::MeshTimeout(spec) => {
            for (i, from) in spec.from.iter().enumerate() {
                if from.target_ref.kind != crate::target_ref::TargetKind::Mesh {
                    refuse(format!("spec.from[{i}].targetRef.kind"), INBOUND_TIMEOUTS);
                }
                if from.default.http.as_ref().is_some_and(|h| h.request_headers_timeout.is_some()) {
                    refuse(format!("spec.from[{i}].default.http.requestHeadersTimeout"), REQUEST_HEADERS_TIMEOUT);
                }
            }
            for (i, to) in spec.to.iter().enumerate() {
                if to.default.http.as_ref().is_some_and(|h| h.request_headers_timeout.is_some()) {
                    refuse(format!("spec.to[{i}].default.http.requestHeadersTimeout"), REQUEST_HEADERS_TIMEOUT);
                }
            }
        }
        _ => {}
    }
    ValidationErrors(errors)
}

/// Why a MeshTimeout `from` item that selects some callers is refused.
pub const INBOUND_TIMEOUTS: &str = "inbound timeouts apply to every caller of an inbound, as in Kuma: select callers with kind Mesh (set per-caller timeouts on the callers' side, in `to`)";
/// Why `requestHeadersTimeout` is refused.
pub const REQUEST_HEADERS_TIMEOUT: &str = "is not enforced by the sidecars: between sidecars requests travel over HTTP/2, whose headers arrive in one frame, and applications get 60 s to send HTTP/1.1 headers; leave it out";

/// Policy types no sidecar enforces yet. The global refuses to store them (a write answers 405
/// naming the type), so that no policy is accepted and then ignored.
pub const NOT_ENFORCED_TYPES: &[ResourceType] = &[];

/// Why resources of `kind` cannot be written, when no sidecar enforces that type yet.
pub fn type_not_enforced(kind: ResourceType) -> Option<String> {
    NOT_ENFORCED_TYPES.contains(&kind).then(|| {
        let enforced: Vec<&str> = ResourceType::ALL
            .iter()
            .filter(|t| t.is_policy() && !NOT_ENFORCED_TYPES.contains(t))
            .map(|t| t.name())
            .collect();
        format!(
            "{kind} is not enforced by the sidecars yet, so it is refused rather than stored with no effect; the enforced policy types are {}",
            enforced.join(", ")
        )
    })
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
    fn caller_rules_on_tags_other_than_the_service_are_refused() {
        let deny = parse("type: MeshTrafficPermission\nname: d\nmesh: default\nspec:\n  targetRef: {kind: MeshService, name: api}\n  from:\n  - targetRef: {kind: MeshService, name: web}\n    default: {action: Allow}\n  - targetRef: {kind: MeshSubset, tags: {strait.io/service: backend, version: v2}}\n    default: {action: Deny}\n");
        let errors = not_enforced(&deny);
        assert_eq!(errors.0.len(), 1, "{errors:?}");
        assert_eq!(errors.0[0].field, "spec.from[1].targetRef.tags");
        assert!(errors.0[0].message.contains("never apply"));
        let tagged_service = parse("type: MeshTimeout\nname: t\nmesh: default\nspec:\n  from:\n  - targetRef: {kind: MeshService, name: web, tags: {version: v1}}\n    default: {connectionTimeout: 1s}\n");
        let fields: Vec<String> = not_enforced(&tagged_service).0.into_iter().map(|e| e.field).collect();
        assert_eq!(
            fields,
            ["spec.from[0].targetRef.tags", "spec.from[0].targetRef.kind"],
            "the caller tags, and a caller other than every one"
        );
        let by_service = parse("type: MeshTrafficPermission\nname: s\nmesh: default\nspec:\n  from:\n  - targetRef: {kind: MeshSubset, tags: {strait.io/service: web}}\n    default: {action: Deny}\n  - targetRef: {kind: Mesh}\n    default: {action: Allow}\n");
        assert!(not_enforced(&by_service).0.is_empty(), "the service tag alone is what a certificate proves");
    }
}
