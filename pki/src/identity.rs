//! SPIFFE identities: parsing, validation and the IDs Strait gives to meshes, zones and services.
//!
//! In: strings from certificates, CSR signing requests and configuration. Out: [`Identity`], a
//! validated `spiffe://<trust-domain>/<path>` that the rest of the crate signs into URI SANs and
//! returns from chain verification. The rules follow the SPIFFE ID specification: a lowercase
//! trust domain of `[a-z0-9._-]`, path segments of `[A-Za-z0-9._-]`, no empty, `.` or `..`
//! segments, no trailing slash, no port, user info, query or fragment.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::PkiError;

/// Trust domain of the system CA, under which gateways and zones get their identities.
///
/// It contains a dot, so it can never collide with a mesh name (meshes are DNS-1123 labels).
pub const SYSTEM_TRUST_DOMAIN: &str = "strait.system";

const SCHEME: &str = "spiffe://";

/// A validated SPIFFE ID, such as `spiffe://default/web`.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Identity(String);

impl Identity {
    /// Parses and validates a SPIFFE ID; the path may be empty (`spiffe://default` names a trust domain).
    pub fn parse(id: &str) -> Result<Self, PkiError> {
        let invalid = |reason: &str| PkiError::InvalidSpiffeId { id: id.to_string(), reason: reason.to_string() };
        let rest = id.strip_prefix(SCHEME).ok_or_else(|| invalid("expected the scheme spiffe://"))?;
        let (trust_domain, path) = match rest.split_once('/') {
            Some((td, path)) => (td, Some(path)),
            None => (rest, None),
        };
        check_trust_domain(trust_domain).map_err(|reason| invalid(&reason))?;
        if let Some(path) = path {
            if path.is_empty() {
                return Err(invalid("the path must not end with '/'"));
            }
            for segment in path.split('/') {
                check_segment(segment).map_err(|reason| invalid(&reason))?;
            }
        }
        Ok(Identity(id.to_string()))
    }

    /// Builds `spiffe://<trust_domain>/<segment>/<segment>...`, validating every part.
    pub fn from_parts(trust_domain: &str, segments: &[&str]) -> Result<Self, PkiError> {
        let mut id = format!("{SCHEME}{trust_domain}");
        for segment in segments {
            id.push('/');
            id.push_str(segment);
        }
        // Validate segments one by one so that a '/' inside a segment is rejected, not split.
        for segment in segments {
            check_segment(segment).map_err(|reason| PkiError::InvalidSpiffeId { id: id.clone(), reason })?;
        }
        Identity::parse(&id)
    }

    /// The ID of a zone's intermediate CA in a mesh: `spiffe://<mesh>/zone/<zone>`.
    pub fn zone_ca(trust_domain: &str, zone: &str) -> Result<Self, PkiError> {
        Identity::from_parts(trust_domain, &["zone", zone])
    }

    /// The ID of a zone (its gateways) under the system CA: `spiffe://strait.system/zone/<zone>`.
    pub fn zone(zone: &str) -> Result<Self, PkiError> {
        Identity::from_parts(SYSTEM_TRUST_DOMAIN, &["zone", zone])
    }

    /// The whole ID as a string.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The trust domain (for workloads, the mesh name).
    pub fn trust_domain(&self) -> &str {
        let rest = &self.0[SCHEME.len()..];
        rest.split_once('/').map_or(rest, |(td, _)| td)
    }

    /// The path without its leading `/` (for workloads, the service name); empty for a trust domain ID.
    pub fn path(&self) -> &str {
        let rest = &self.0[SCHEME.len()..];
        rest.split_once('/').map_or("", |(_, path)| path)
    }
}

impl fmt::Display for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl FromStr for Identity {
    type Err = PkiError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Identity::parse(s)
    }
}

impl TryFrom<String> for Identity {
    type Error = PkiError;

    fn try_from(s: String) -> Result<Self, Self::Error> {
        Identity::parse(&s)
    }
}

impl From<Identity> for String {
    fn from(id: Identity) -> Self {
        id.0
    }
}

fn check_trust_domain(td: &str) -> Result<(), String> {
    if td.is_empty() {
        return Err("the trust domain is empty".into());
    }
    match td.chars().find(|c| !(c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '.' | '-' | '_'))) {
        Some(c) => Err(format!("the trust domain {td:?} contains {c:?}; expected lowercase letters, digits, '.', '-' or '_'")),
        None => Ok(()),
    }
}

fn check_segment(segment: &str) -> Result<(), String> {
    if segment.is_empty() {
        return Err("the path contains an empty segment".into());
    }
    if segment == "." || segment == ".." {
        return Err(format!("the path segment {segment:?} is not allowed"));
    }
    match segment.chars().find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_'))) {
        Some(c) => Err(format!("the path segment {segment:?} contains {c:?}; expected letters, digits, '.', '-' or '_'")),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_accepts_valid_ids_and_splits_them() {
        let cases = [
            ("spiffe://default/web", "default", "web"),
            ("spiffe://default", "default", ""),
            ("spiffe://strait.system/zone/east-1", "strait.system", "zone/east-1"),
            ("spiffe://mesh_a/Svc.v2", "mesh_a", "Svc.v2"),
        ];
        for (id, td, path) in cases {
            let parsed = Identity::parse(id).unwrap_or_else(|e| panic!("{id}: {e}"));
            assert_eq!(parsed.as_str(), id);
            assert_eq!(parsed.trust_domain(), td, "{id}");
            assert_eq!(parsed.path(), path, "{id}");
        }
    }

    #[test]
    fn parse_rejects_invalid_ids_with_a_reason() {
        let cases = [
            ("https://default/web", "scheme"),
            ("spiffe:///web", "trust domain is empty"),
            ("spiffe://Default/web", "trust domain"),
            ("spiffe://default:8080/web", "trust domain"),
            ("spiffe://user@default/web", "trust domain"),
            ("spiffe://default/", "end with '/'"),
            ("spiffe://default//web", "empty segment"),
            ("spiffe://default/a/../b", "not allowed"),
            ("spiffe://default/web?x=1", "contains '?'"),
            ("spiffe://default/web#frag", "contains '#'"),
        ];
        for (id, reason) in cases {
            match Identity::parse(id) {
                Err(PkiError::InvalidSpiffeId { reason: got, .. }) => {
                    assert!(got.contains(reason), "{id}: {got}")
                }
                other => panic!("{id}: expected InvalidSpiffeId, got {other:?}"),
            }
        }
    }

    #[test]
    fn zone_ids_use_documented_formats() {
        assert_eq!(Identity::zone_ca("default", "east").map(String::from).ok(), Some("spiffe://default/zone/east".to_string()));
        assert_eq!(Identity::zone("east").map(String::from).ok(), Some("spiffe://strait.system/zone/east".to_string()));
        // A slash inside a zone name must not smuggle in extra path segments.
        assert!(Identity::zone("east/admin").is_err());
    }

    #[test]
    fn serde_validates() {
        let ok: Result<Identity, _> = serde_json::from_str("\"spiffe://default/web\"");
        assert!(ok.is_ok());
        let bad: Result<Identity, _> = serde_json::from_str("\"spiffe://default/\"");
        assert!(bad.is_err());
    }
}
