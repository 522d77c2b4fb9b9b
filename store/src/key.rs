//! Keys: what an object is stored under, and how keys become sled bytes.
//!
//! In: a kind, a mesh (empty for resources outside any mesh) and a name. Out: [`Key`], its
//! `kind/mesh/name` display form, and the byte encoding `kind \0 mesh \0 name` whose order is
//! (kind, mesh, name), so a prefix scan lists one kind (and mesh) sorted by (mesh, name).

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::error::StoreError;

/// Separates the parts of an encoded key; it sorts before every other byte, so byte order of
/// encoded keys equals the order of (kind, mesh, name).
const SEP: u8 = 0;

/// The identity of a stored object.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Key {
    /// The resource type, e.g. `MeshTimeout`.
    pub kind: String,
    /// The mesh, or `""` for resources outside any mesh (`Mesh`, `Zone`).
    pub mesh: String,
    /// The resource name, unique per (kind, mesh).
    pub name: String,
}

impl Key {
    /// Builds a key; pass `""` as `mesh` for resources outside any mesh.
    pub fn new(kind: impl Into<String>, mesh: impl Into<String>, name: impl Into<String>) -> Self {
        Key { kind: kind.into(), mesh: mesh.into(), name: name.into() }
    }

    /// Encodes the key as `kind \0 mesh \0 name`; a NUL inside a part would make the encoding
    /// ambiguous, so it is refused.
    pub(crate) fn to_bytes(&self) -> Result<Vec<u8>, StoreError> {
        for (field, value) in [("kind", &self.kind), ("mesh", &self.mesh), ("name", &self.name)] {
            reject_nul(field, value)?;
        }
        let mut bytes = Vec::with_capacity(self.kind.len() + self.mesh.len() + self.name.len() + 2);
        bytes.extend_from_slice(self.kind.as_bytes());
        bytes.push(SEP);
        bytes.extend_from_slice(self.mesh.as_bytes());
        bytes.push(SEP);
        bytes.extend_from_slice(self.name.as_bytes());
        Ok(bytes)
    }

    /// Decodes bytes written by [`Key::to_bytes`].
    pub(crate) fn from_bytes(bytes: &[u8]) -> Result<Key, StoreError> {
        let mut parts = bytes.splitn(3, |b| *b == SEP);
        let (Some(kind), Some(mesh), Some(name)) = (parts.next(), parts.next(), parts.next()) else {
            return Err(StoreError::Backend(format!(
                "decoding key {:?}: expected kind, mesh and name separated by NUL bytes",
                String::from_utf8_lossy(bytes)
            )));
        };
        Ok(Key::new(utf8(kind, bytes)?, utf8(mesh, bytes)?, utf8(name, bytes)?))
    }
}

impl fmt::Display for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.mesh.is_empty() {
            write!(f, "{}/{}", self.kind, self.name)
        } else {
            write!(f, "{}/{}/{}", self.kind, self.mesh, self.name)
        }
    }
}

/// The scan prefix for every key of `kind`, or of `kind` in one `mesh`.
pub(crate) fn prefix(kind: &str, mesh: Option<&str>) -> Result<Vec<u8>, StoreError> {
    reject_nul("kind", kind)?;
    let mut bytes = Vec::with_capacity(kind.len() + mesh.map_or(0, str::len) + 2);
    bytes.extend_from_slice(kind.as_bytes());
    bytes.push(SEP);
    if let Some(mesh) = mesh {
        reject_nul("mesh", mesh)?;
        bytes.extend_from_slice(mesh.as_bytes());
        bytes.push(SEP);
    }
    Ok(bytes)
}

/// The kind part of an encoded key, without decoding the rest.
pub(crate) fn kind_of(bytes: &[u8]) -> Result<&str, StoreError> {
    let kind = bytes.split(|b| *b == SEP).next().unwrap_or_default();
    std::str::from_utf8(kind).map_err(|e| StoreError::backend("decoding the kind of a stored key", e))
}

fn reject_nul(field: &str, value: &str) -> Result<(), StoreError> {
    if value.as_bytes().contains(&SEP) {
        return Err(StoreError::Backend(format!("key {field} {value:?} contains a NUL byte, which the store cannot encode")));
    }
    Ok(())
}

fn utf8<'a>(part: &'a [u8], whole: &[u8]) -> Result<&'a str, StoreError> {
    std::str::from_utf8(part).map_err(|e| StoreError::backend(format!("decoding key {:?}", String::from_utf8_lossy(whole)), e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn display_omits_an_empty_mesh() {
        assert_eq!(Key::new("MeshRetry", "default", "r").to_string(), "MeshRetry/default/r");
        assert_eq!(Key::new("Zone", "", "east").to_string(), "Zone/east");
    }

    #[test]
    fn bytes_round_trip() {
        for key in [Key::new("Mesh", "", "default"), Key::new("MeshRetry", "m", "r"), Key::new("", "", "")] {
            let bytes = key.to_bytes().unwrap();
            assert_eq!(Key::from_bytes(&bytes).unwrap(), key);
            assert_eq!(kind_of(&bytes).unwrap(), key.kind);
        }
    }

    #[test]
    fn nul_bytes_are_refused() {
        for key in [Key::new("a\0b", "", "c"), Key::new("a", "b\0", "c"), Key::new("a", "b", "\0c")] {
            assert!(matches!(key.to_bytes(), Err(StoreError::Backend(m)) if m.contains("NUL")));
        }
        assert!(prefix("a\0", None).is_err());
        assert!(prefix("a", Some("\0")).is_err());
    }

    #[test]
    fn byte_order_is_mesh_then_name_order() {
        // "a" < "a-b" as strings, but a naive "a-" separator would sort "a-b-x" before "a-c";
        // the NUL separator keeps tuple order.
        let mut keys = vec![
            Key::new("K", "a-b", "x"),
            Key::new("K", "a", "z"),
            Key::new("K", "a", "y-1"),
            Key::new("K", "a", "y"),
            Key::new("K", "", "m"),
            Key::new("K", "b", "a"),
        ];
        let mut by_bytes = keys.clone();
        by_bytes.sort_by_key(|k| k.to_bytes().unwrap());
        keys.sort();
        assert_eq!(by_bytes, keys);
    }

    #[test]
    fn prefixes_select_kind_and_mesh() {
        let key = Key::new("K", "m", "n").to_bytes().unwrap();
        assert!(key.starts_with(&prefix("K", None).unwrap()));
        assert!(key.starts_with(&prefix("K", Some("m")).unwrap()));
        assert!(!key.starts_with(&prefix("K", Some("")).unwrap()));
        assert!(!Key::new("KK", "m", "n").to_bytes().unwrap().starts_with(&prefix("K", None).unwrap()));
        assert!(!Key::new("K", "mm", "n").to_bytes().unwrap().starts_with(&prefix("K", Some("m")).unwrap()));
    }
}
