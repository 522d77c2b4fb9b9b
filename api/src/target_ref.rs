//! The targetRef model: what a policy applies to, and whom it applies from or to.
//!
//! In: `targetRef` objects of policies. Out: checks of which kinds a position allows, whether a
//! reference selects a set of tags, and how specific it is (for merging).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::names;
use crate::validate::{Validate, Validator};

/// The kinds a targetRef can name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, utoipa::ToSchema)]
pub enum TargetKind {
    /// Every proxy of the mesh.
    Mesh,
    /// Proxies whose inbound tags include all of `tags`.
    MeshSubset,
    /// Proxies of the service `name` (their `strait.io/service` tag).
    MeshService,
    /// One proxy, by Dataplane name.
    Dataplane,
    /// The requests a MeshHTTPRoute, by name, routes (a MeshTimeout's top-level `targetRef`
    /// only: timeouts per route).
    MeshHTTPRoute,
}

impl TargetKind {
    /// How specific a reference of this kind is: a more specific policy wins a merge.
    pub fn rank(self) -> u8 {
        match self {
            TargetKind::Mesh => 0,
            TargetKind::MeshSubset => 1,
            TargetKind::MeshService => 2,
            TargetKind::Dataplane => 3,
            TargetKind::MeshHTTPRoute => 4,
        }
    }
}

/// A reference to a set of proxies or services.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct TargetRef {
    /// What is referenced.
    pub kind: TargetKind,
    /// Service or Dataplane name (MeshService, Dataplane).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Tags to match (MeshSubset; optionally narrows MeshService).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub tags: BTreeMap<String, String>,
}

impl Default for TargetRef {
    fn default() -> Self {
        Self::mesh()
    }
}

impl TargetRef {
    /// The whole mesh.
    pub fn mesh() -> Self {
        Self { kind: TargetKind::Mesh, name: None, tags: BTreeMap::new() }
    }

    /// One service.
    pub fn service(name: &str) -> Self {
        Self { kind: TargetKind::MeshService, name: Some(name.to_string()), tags: BTreeMap::new() }
    }

    /// Proxies with these tags.
    pub fn subset<'a>(tags: impl IntoIterator<Item = (&'a str, &'a str)>) -> Self {
        let tags = tags.into_iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        Self { kind: TargetKind::MeshSubset, name: None, tags }
    }

    /// One Dataplane.
    pub fn dataplane(name: &str) -> Self {
        Self { kind: TargetKind::Dataplane, name: Some(name.to_string()), tags: BTreeMap::new() }
    }

    /// Specificity for merging: kind first, then how many tags narrow it.
    pub fn specificity(&self) -> (u8, usize) {
        (self.kind.rank(), self.tags.len())
    }

    /// The tags a set of inbound tags must carry to be selected (Mesh: none).
    pub fn required_tags(&self) -> BTreeMap<&str, &str> {
        let mut required: BTreeMap<&str, &str> = self.tags.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        if self.kind == TargetKind::MeshService {
            if let Some(name) = &self.name {
                required.insert(names::SERVICE_TAG, name);
            }
        }
        required
    }

    /// Whether proxies or callers with `tags` (and Dataplane name `dp_name`) are selected.
    pub fn selects(&self, dp_name: Option<&str>, tags: &BTreeMap<String, String>) -> bool {
        // A route's requests, not proxies: applied with the route (`merge::http_routes`).
        if self.kind == TargetKind::MeshHTTPRoute {
            return false;
        }
        if self.kind == TargetKind::Dataplane {
            return dp_name.is_some() && dp_name == self.name.as_deref();
        }
        self.required_tags().iter().all(|(k, v)| tags.get(*k).map(String::as_str) == Some(*v))
    }

    /// Whether every caller selected by `other` is also selected by `self` (tag selectors only).
    pub fn covers(&self, other: &TargetRef) -> bool {
        let mine = self.required_tags();
        let theirs = other.required_tags();
        mine.iter().all(|(k, v)| theirs.get(k) == Some(v))
    }

    /// Checks the reference is complete and of a kind allowed at this position.
    pub fn validate_allowing(&self, v: &mut Validator, allowed: &[TargetKind]) {
        if !allowed.contains(&self.kind) {
            let list: Vec<String> = allowed.iter().map(|k| format!("{k:?}")).collect();
            v.error_at("kind", format!("{:?} is not allowed here; expected one of {}", self.kind, list.join(", ")));
        }
        self.validate(v);
    }
}

impl Validate for TargetRef {
    fn validate(&self, v: &mut Validator) {
        match self.kind {
            TargetKind::Mesh => {
                v.check(self.name.is_none(), || "kind Mesh takes no name".into());
                v.check(self.tags.is_empty(), || "kind Mesh takes no tags".into());
            }
            TargetKind::MeshSubset => {
                v.check(self.name.is_none(), || "kind MeshSubset takes tags, not a name".into());
                if self.tags.is_empty() {
                    v.error_at("tags", "kind MeshSubset needs at least one tag");
                }
            }
            TargetKind::MeshService | TargetKind::Dataplane | TargetKind::MeshHTTPRoute => match &self.name {
                None => v.error_at("name", format!("kind {:?} needs a name", self.kind)),
                Some(name) => {
                    if let Err(e) = names::check_dns_subdomain(name) {
                        v.error_at("name", e);
                    }
                }
            },
        }
        if matches!(self.kind, TargetKind::Dataplane | TargetKind::MeshHTTPRoute) && !self.tags.is_empty() {
            v.error_at("tags", format!("kind {:?} takes no tags", self.kind));
        }
        validate_tags(v, "tags", &self.tags);
    }
}

/// Checks the keys and values of a tag map under `field`.
pub fn validate_tags(v: &mut Validator, field: &'static str, tags: &BTreeMap<String, String>) {
    v.field(field, |v| {
        for (k, val) in tags {
            v.key(k, |v| {
                if let Err(e) = names::check_label_key(k) {
                    v.error(e);
                }
                if let Err(e) = names::check_label_value(val) {
                    v.error(e);
                }
            });
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tags(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    #[test]
    fn selection() {
        let web_v1 = tags(&[("strait.io/service", "web"), ("version", "v1")]);
        let cases = [
            (TargetRef::mesh(), true),
            (TargetRef::service("web"), true),
            (TargetRef::service("api"), false),
            (TargetRef::subset([("version", "v1")]), true),
            (TargetRef::subset([("version", "v2")]), false),
            (TargetRef::subset([("version", "v1"), ("zone", "a")]), false),
            (TargetRef::dataplane("web-1"), true),
            (TargetRef::dataplane("web-2"), false),
        ];
        for (tr, expected) in cases {
            assert_eq!(tr.selects(Some("web-1"), &web_v1), expected, "{tr:?}");
        }
    }

    #[test]
    fn coverage_orders_selectors() {
        assert!(TargetRef::mesh().covers(&TargetRef::service("web")));
        assert!(TargetRef::service("web").covers(&TargetRef { tags: tags(&[("version", "v1")]), ..TargetRef::service("web") }));
        assert!(!TargetRef::service("web").covers(&TargetRef::mesh()));
        assert!(!TargetRef::subset([("version", "v1")]).covers(&TargetRef::service("web")));
    }

    #[test]
    fn validation_names_the_field() {
        let cases: [(TargetRef, &str); 4] = [
            (TargetRef { name: Some("x".into()), ..TargetRef::mesh() }, "spec.targetRef: kind Mesh takes no name"),
            (TargetRef { name: None, ..TargetRef::service("x") }, "spec.targetRef.name: kind MeshService needs a name"),
            (TargetRef::subset([]), "spec.targetRef.tags: kind MeshSubset needs at least one tag"),
            (TargetRef::service("Web"), "spec.targetRef.name: \"Web\" is not a valid name"),
        ];
        for (tr, expected) in cases {
            let mut v = Validator::at("spec");
            v.field("targetRef", |v| tr.validate(v));
            let err = v.finish().unwrap_err().to_string();
            assert!(err.starts_with(expected), "{err} / {expected}");
        }
    }
}
