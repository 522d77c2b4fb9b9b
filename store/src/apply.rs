//! The rules of a write, free of I/O: precondition checks, outcome, new object, event.
//!
//! In: an [`Op`], the object currently stored under its key (as seen earlier in the same
//! batch), the revision the change would get and the batch's timestamp. Out: the [`Outcome`]
//! (or the [`StoreError`] that aborts the batch) and, for a real change, the [`Event`] to log.
//! Backends call this inside their transaction, so every backend applies the same rules.

use time::OffsetDateTime;

use crate::error::StoreError;
use crate::key::Key;
use crate::object::{Event, EventKind, Object, Op, Outcome, Precondition};

/// Decides what `op` does given the `current` object; `revision` is the revision this change
/// gets if it changes anything.
pub(crate) fn plan(op: &Op, current: Option<Object>, revision: u64, now: OffsetDateTime) -> Result<Outcome, StoreError> {
    match op {
        Op::Put { key, data, precondition } => {
            check(key, *precondition, current.as_ref())?;
            Ok(match current {
                Some(current) if current.data == *data => Outcome::Unchanged(current),
                Some(current) => Outcome::Updated(Object {
                    key: key.clone(),
                    version: revision,
                    creation_time: current.creation_time,
                    modification_time: now,
                    data: data.clone(),
                }),
                None => Outcome::Created(Object {
                    key: key.clone(),
                    version: revision,
                    creation_time: now,
                    modification_time: now,
                    data: data.clone(),
                }),
            })
        }
        Op::Delete { key, precondition } => {
            let Some(current) = current else {
                return Err(StoreError::NotFound { key: key.clone() });
            };
            check(key, *precondition, Some(&current))?;
            Ok(Outcome::Deleted(current))
        }
    }
}

/// The event an outcome produces at `revision`, or `None` when nothing changed.
pub(crate) fn event_for(outcome: &Outcome, revision: u64) -> Option<Event> {
    let (kind, object) = match outcome {
        Outcome::Created(o) | Outcome::Updated(o) => (EventKind::Put, o),
        Outcome::Deleted(o) => (EventKind::Delete, o),
        Outcome::Unchanged(_) => return None,
    };
    Some(Event { revision, kind, object: object.clone() })
}

fn check(key: &Key, expected: Precondition, current: Option<&Object>) -> Result<(), StoreError> {
    let actual = current.map(|o| o.version);
    let holds = match expected {
        Precondition::None => true,
        Precondition::MustNotExist => actual.is_none(),
        Precondition::Version(version) => actual == Some(version),
    };
    if holds {
        Ok(())
    } else {
        Err(StoreError::Conflict { key: key.clone(), expected, actual })
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;
    use time::macros::datetime;

    use super::*;

    const T0: OffsetDateTime = datetime!(2024-01-01 0:00 UTC);
    const NOW: OffsetDateTime = datetime!(2024-06-01 12:00 UTC);

    fn key() -> Key {
        Key::new("MeshRetry", "default", "r1")
    }

    fn stored(version: u64, data: serde_json::Value) -> Object {
        Object { key: key(), version, creation_time: T0, modification_time: T0, data }
    }

    /// What a case expects: an outcome variant name with its version, or an error.
    #[derive(Debug, PartialEq)]
    enum Want {
        Created,
        Updated,
        Unchanged,
        Deleted,
        Conflict(Option<u64>),
        NotFound,
    }

    fn run(op: Op, current: Option<Object>) -> Want {
        match plan(&op, current, 9, NOW) {
            Ok(Outcome::Created(_)) => Want::Created,
            Ok(Outcome::Updated(_)) => Want::Updated,
            Ok(Outcome::Unchanged(_)) => Want::Unchanged,
            Ok(Outcome::Deleted(_)) => Want::Deleted,
            Err(StoreError::Conflict { actual, .. }) => Want::Conflict(actual),
            Err(StoreError::NotFound { .. }) => Want::NotFound,
            Err(other) => panic!("unexpected error {other}"),
        }
    }

    #[test]
    fn preconditions_table() {
        use Precondition as P;
        let a = json!({"a": 1});
        let b = json!({"b": 2});
        let put = |p| Op::put(key(), b.clone(), p);
        let put_same = |p| Op::put(key(), a.clone(), p);
        let del = |p| Op::delete(key(), p);
        let existing = || Some(stored(4, a.clone()));
        let cases: Vec<(&str, Op, Option<Object>, Want)> = vec![
            ("put none on missing", put(P::None), None, Want::Created),
            ("put none on existing", put(P::None), existing(), Want::Updated),
            ("put same data", put_same(P::None), existing(), Want::Unchanged),
            ("put must-not-exist on missing", put(P::MustNotExist), None, Want::Created),
            ("put must-not-exist on existing", put(P::MustNotExist), existing(), Want::Conflict(Some(4))),
            ("put must-not-exist, same data", put_same(P::MustNotExist), existing(), Want::Conflict(Some(4))),
            ("put version match", put(P::Version(4)), existing(), Want::Updated),
            ("put version match, same data", put_same(P::Version(4)), existing(), Want::Unchanged),
            ("put version mismatch", put(P::Version(3)), existing(), Want::Conflict(Some(4))),
            ("put version on missing", put(P::Version(4)), None, Want::Conflict(None)),
            ("delete none on existing", del(P::None), existing(), Want::Deleted),
            ("delete version match", del(P::Version(4)), existing(), Want::Deleted),
            ("delete version mismatch", del(P::Version(5)), existing(), Want::Conflict(Some(4))),
            ("delete must-not-exist on existing", del(P::MustNotExist), existing(), Want::Conflict(Some(4))),
            ("delete none on missing", del(P::None), None, Want::NotFound),
            ("delete version on missing", del(P::Version(4)), None, Want::NotFound),
            ("delete must-not-exist on missing", del(P::MustNotExist), None, Want::NotFound),
        ];
        for (name, op, current, want) in cases {
            assert_eq!(run(op, current), want, "{name}");
        }
    }

    #[test]
    fn conflict_reports_key_and_expected() {
        let err = plan(&Op::put(key(), json!(1), Precondition::Version(2)), Some(stored(7, json!(0))), 9, NOW).unwrap_err();
        assert!(matches!(
            err,
            StoreError::Conflict { key: k, expected: Precondition::Version(2), actual: Some(7) } if k == key()
        ));
    }

    #[test]
    fn created_object_gets_revision_and_now() {
        let outcome = plan(&Op::put(key(), json!(1), Precondition::None), None, 9, NOW).unwrap();
        assert_eq!(
            outcome,
            Outcome::Created(Object { key: key(), version: 9, creation_time: NOW, modification_time: NOW, data: json!(1) })
        );
    }

    #[test]
    fn update_keeps_creation_time_and_moves_modification_time() {
        let outcome = plan(&Op::put(key(), json!(2), Precondition::None), Some(stored(4, json!(1))), 9, NOW).unwrap();
        assert_eq!(outcome, Outcome::Updated(Object { key: key(), version: 9, creation_time: T0, modification_time: NOW, data: json!(2) }));
    }

    #[test]
    fn unchanged_and_deleted_return_the_stored_object() {
        let current = stored(4, json!(1));
        let outcome = plan(&Op::put(key(), json!(1), Precondition::None), Some(current.clone()), 9, NOW).unwrap();
        assert_eq!(outcome, Outcome::Unchanged(current.clone()));
        let outcome = plan(&Op::delete(key(), Precondition::None), Some(current.clone()), 9, NOW).unwrap();
        assert_eq!(outcome, Outcome::Deleted(current));
    }

    #[test]
    fn events_only_for_changes() {
        let obj = stored(4, json!(1));
        assert_eq!(event_for(&Outcome::Unchanged(obj.clone()), 5), None);
        let put = event_for(&Outcome::Updated(obj.clone()), 5).unwrap();
        assert_eq!((put.revision, put.kind), (5, EventKind::Put));
        let del = event_for(&Outcome::Deleted(obj.clone()), 5).unwrap();
        assert_eq!((del.revision, del.kind, del.object), (5, EventKind::Delete, obj));
    }
}
