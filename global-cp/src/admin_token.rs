//! The admin token, one for every replica: kept in the store (as a system secret, never synced)
//! and copied to each replica's token file, so `straitctl` works against any replica with the
//! token of any of them.
//!
//! In: the store and the token file (explicit with `--admin-token-file`, or `<data-dir>/admin-token`).
//! Out: the [`SharedToken`] the REST API checks, kept current by [`follow`].
//!
//! Which token wins at start:
//! - an empty store takes the file's token, or a new random one (first replica wins a race);
//! - an explicit `--admin-token-file` is the operator's word: when it differs from the store's,
//!   it replaces it (a rotated Kubernetes Secret), and the other replicas follow within seconds;
//! - the default file is a copy: it is (re)written with the store's token.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::json;
use strait_cp_core::auth::{SharedToken, TokenError};
use strait_cp_core::kinds::SYSTEM_SECRET;
use strait_store::{Key, Precondition, Store, StoreError};
use tokio_util::sync::CancellationToken;

/// How often a replica checks the store for a token changed elsewhere.
pub const FOLLOW_INTERVAL: Duration = Duration::from_secs(2);

/// Why the admin token could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum AdminTokenError {
    /// The file could not be read or written.
    #[error(transparent)]
    File(#[from] TokenError),
    /// The store failed.
    #[error("admin token in the store: {0}")]
    Store(#[from] StoreError),
}

fn key() -> Key {
    Key::new(SYSTEM_SECRET, "", "admin-token")
}

async fn stored(store: &dyn Store) -> Result<Option<(String, u64)>, StoreError> {
    Ok(store.get(&key()).await?.and_then(|o| o.data.get("token").and_then(|t| t.as_str()).map(|t| (t.to_string(), o.version))))
}

/// Where the token came from, for the start-up log line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origin {
    /// A new random token (the first replica on an empty store).
    Generated,
    /// The file's token became the shared one.
    FromFile,
    /// The store's token, shared with the other replicas.
    Shared,
}

/// Settles the token this replica uses (see the module's rules) and writes it to `file` when
/// the file is missing or is the default copy.
pub async fn establish(store: &dyn Store, file: &Path, explicit: bool) -> Result<(String, Origin), AdminTokenError> {
    let in_file = strait_cp_core::auth::read(file)?;
    let (token, origin) = loop {
        match (stored(store).await?, &in_file) {
            (None, _) => {
                let (candidate, origin) = match &in_file {
                    Some(t) => (t.clone(), Origin::FromFile),
                    None => (strait_cp_core::auth::new_token(), Origin::Generated),
                };
                match store.put(key(), json!({ "token": candidate }), Precondition::MustNotExist).await {
                    Ok(_) => break (candidate, origin),
                    // Another replica was first: take its token.
                    Err(StoreError::Conflict { .. }) => continue,
                    Err(e) => return Err(e.into()),
                }
            }
            (Some((shared, version)), Some(own)) if explicit && *own != shared => {
                match store.put(key(), json!({ "token": own }), Precondition::Version(version)).await {
                    Ok(_) => {
                        tracing::warn!(path = %file.display(), "the admin token of --admin-token-file replaced the one the replicas shared; every replica follows");
                        break (own.clone(), Origin::FromFile);
                    }
                    Err(StoreError::Conflict { .. }) => continue,
                    Err(e) => return Err(e.into()),
                }
            }
            (Some((shared, _)), _) => break (shared, Origin::Shared),
        }
    };
    if in_file.as_deref() != Some(token.as_str()) {
        strait_cp_core::auth::write(file, &token)?;
    }
    Ok((token, origin))
}

/// Keeps `token` equal to the store's (changed by another replica's start with a new
/// `--admin-token-file`), rewriting `copy` (the default token file) when it changes.
pub async fn follow(store: std::sync::Arc<dyn Store>, token: SharedToken, copy: Option<PathBuf>, stop: CancellationToken) {
    let mut tick = tokio::time::interval(FOLLOW_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            _ = tick.tick() => {}
        }
        let shared = match stored(store.as_ref()).await {
            Ok(Some((shared, _))) => shared,
            Ok(None) => continue,
            Err(e) => {
                tracing::debug!(error = %e, "could not read the shared admin token; keeping the current one");
                continue;
            }
        };
        if **token.load() == shared {
            continue;
        }
        tracing::info!("the admin token was changed by another replica; using the new one");
        if let Some(path) = &copy {
            if let Err(e) = strait_cp_core::auth::write(path, &shared) {
                tracing::warn!(path = %path.display(), error = %e, "could not update the admin token file");
            }
        }
        token.store(std::sync::Arc::new(shared));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    fn store() -> (tempfile::TempDir, Arc<dyn Store>) {
        let dir = tempfile::tempdir().unwrap();
        let store = strait_store::SledStore::open(&dir.path().join("store")).unwrap();
        (dir, Arc::new(store))
    }

    #[tokio::test]
    async fn the_first_replica_sets_the_token_and_the_others_copy_it() {
        let (dir, store) = store();
        let (a, b) = (dir.path().join("a/admin-token"), dir.path().join("b/admin-token"));
        let (ta, origin) = establish(store.as_ref(), &a, false).await.unwrap();
        assert_eq!(origin, Origin::Generated);
        assert_eq!(std::fs::read_to_string(&a).unwrap().trim(), ta);
        // A stale default copy is rewritten with the shared token.
        std::fs::create_dir_all(b.parent().unwrap()).unwrap();
        std::fs::write(&b, "stale\n").unwrap();
        let (tb, origin) = establish(store.as_ref(), &b, false).await.unwrap();
        assert_eq!((tb.as_str(), origin), (ta.as_str(), Origin::Shared));
        assert_eq!(std::fs::read_to_string(&b).unwrap().trim(), ta);
    }

    #[tokio::test]
    async fn an_existing_file_seeds_an_empty_store_and_an_explicit_one_replaces_it() {
        let (dir, store) = store();
        let file = dir.path().join("admin-token");
        std::fs::write(&file, "from-an-earlier-version\n").unwrap();
        let (t, origin) = establish(store.as_ref(), &file, false).await.unwrap();
        assert_eq!((t.as_str(), origin), ("from-an-earlier-version", Origin::FromFile));

        let explicit = dir.path().join("mounted-secret");
        std::fs::write(&explicit, "rotated\n").unwrap();
        let (t, origin) = establish(store.as_ref(), &explicit, true).await.unwrap();
        assert_eq!((t.as_str(), origin), ("rotated", Origin::FromFile));

        // A running replica follows, and its default copy too.
        let token = strait_cp_core::auth::shared("from-an-earlier-version".into());
        let stop = CancellationToken::new();
        let task = tokio::spawn(follow(store.clone(), token.clone(), Some(file.clone()), stop.clone()));
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while **token.load() != "rotated" {
            assert!(std::time::Instant::now() < deadline, "the running replica never took the new token");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert_eq!(std::fs::read_to_string(&file).unwrap().trim(), "rotated");
        stop.cancel();
        task.await.unwrap();
    }
}
