//! How values are laid out in sled: JSON documents and big-endian revision numbers.
//!
//! In: objects, events and revisions, or the bytes read back. Out: bytes to write, or the
//! decoded value; every failure becomes a [`StoreError::Backend`] naming what was being
//! (de)coded, since bytes on disk are never trusted.

use std::fmt::Display;

use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::error::StoreError;

/// Serialises `value` as JSON; `what` names it in the error.
pub(crate) fn to_json<T: Serialize>(value: &T, what: impl Display) -> Result<Vec<u8>, StoreError> {
    serde_json::to_vec(value).map_err(|e| StoreError::backend(format!("encoding {what}"), e))
}

/// Parses JSON read from disk; `what` names it in the error.
pub(crate) fn from_json<T: DeserializeOwned>(bytes: &[u8], what: impl Display) -> Result<T, StoreError> {
    serde_json::from_slice(bytes).map_err(|e| StoreError::backend(format!("decoding {what}"), e))
}

/// A revision as a sled key: big-endian, so byte order is numeric order.
pub(crate) fn revision_to_bytes(revision: u64) -> [u8; 8] {
    revision.to_be_bytes()
}

/// Reads a revision written by [`revision_to_bytes`]; `what` names it in the error.
pub(crate) fn revision_from_bytes(bytes: &[u8], what: impl Display) -> Result<u64, StoreError> {
    let array: [u8; 8] =
        bytes.try_into().map_err(|_| StoreError::Backend(format!("decoding {what}: expected 8 bytes, found {}", bytes.len())))?;
    Ok(u64::from_be_bytes(array))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn revision_bytes_sort_numerically() {
        assert!(revision_to_bytes(255) < revision_to_bytes(256));
        assert_eq!(revision_from_bytes(&revision_to_bytes(1 << 40), "r").unwrap(), 1 << 40);
    }

    #[test]
    fn bad_bytes_are_backend_errors_naming_the_value() {
        let err = revision_from_bytes(&[1, 2, 3], "the revision counter").unwrap_err();
        assert!(err.to_string().contains("the revision counter"), "{err}");
        let err = from_json::<u64>(b"{", "object K/n").unwrap_err();
        assert!(matches!(err, StoreError::Backend(m) if m.starts_with("decoding object K/n")));
    }
}
