//! The errors a store operation can return.
//!
//! In: the failure cases of [`crate::Store`] methods. Out: [`StoreError`], one variant per case
//! a caller handles differently (409, 404, "re-list and watch again", 500).

use crate::key::Key;
use crate::object::Precondition;

/// Why a store operation failed.
#[derive(thiserror::Error, Debug)]
pub enum StoreError {
    /// A precondition did not hold; the whole batch was rejected and nothing was written.
    #[error("conflict on {key}: expected {expected}, found {}", describe_actual(*.actual))]
    Conflict {
        /// The key whose precondition failed.
        key: Key,
        /// The precondition the caller gave.
        expected: Precondition,
        /// The stored version, `None` when the key does not exist.
        actual: Option<u64>,
    },
    /// A delete named a key that does not exist (whatever its precondition).
    #[error("{key} not found")]
    NotFound {
        /// The missing key.
        key: Key,
    },
    /// A watch asked for events the store no longer retains; re-list and watch from the
    /// current revision.
    #[error(
        "cannot watch from revision {requested}: events up to revision {} were compacted, the \
         oldest retained is {oldest}",
        .oldest.saturating_sub(1)
    )]
    Compacted {
        /// The revision the caller asked to watch from.
        requested: u64,
        /// The oldest event revision still retained.
        oldest: u64,
    },
    /// The storage engine, the file system or (de)serialisation failed; the message says what.
    #[error("store backend: {0}")]
    Backend(String),
    /// The store cannot be reached now (its database is down or restarting); nothing was
    /// written, or for a write cut off at its commit, maybe: retry later.
    #[error("store unavailable: {0}")]
    Unavailable(String),
}

fn describe_actual(actual: Option<u64>) -> String {
    match actual {
        Some(version) => format!("version {version}"),
        None => "no object".to_string(),
    }
}

impl StoreError {
    /// Builds a [`StoreError::Backend`] from what was being done and the underlying failure.
    pub(crate) fn backend(context: impl std::fmt::Display, err: impl std::fmt::Display) -> Self {
        StoreError::Backend(format!("{context}: {err}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn conflict_message_names_key_expected_and_actual() {
        let err =
            StoreError::Conflict { key: Key::new("MeshTimeout", "default", "t1"), expected: Precondition::Version(3), actual: Some(5) };
        assert_eq!(err.to_string(), "conflict on MeshTimeout/default/t1: expected version 3, found version 5");

        let err = StoreError::Conflict { key: Key::new("Mesh", "", "default"), expected: Precondition::MustNotExist, actual: Some(1) };
        assert_eq!(err.to_string(), "conflict on Mesh/default: expected no existing object, found version 1");

        let err = StoreError::Conflict { key: Key::new("Zone", "", "east"), expected: Precondition::Version(2), actual: None };
        assert_eq!(err.to_string(), "conflict on Zone/east: expected version 2, found no object");
    }

    #[test]
    fn compacted_message_names_both_revisions() {
        let err = StoreError::Compacted { requested: 3, oldest: 11 };
        assert_eq!(
            err.to_string(),
            "cannot watch from revision 3: events up to revision 10 were compacted, the oldest \
             retained is 11"
        );
    }
}
