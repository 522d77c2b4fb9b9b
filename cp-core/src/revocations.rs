//! Revoked tokens: the global writes them, zone sync carries them, and a zone checks every
//! dataplane and zone-proxy token against them when a sidecar or gateway connects and again
//! whenever they change, closing the streams of tokens that no longer hold.
//!
//! In: a revocation (one token by its id, or every token of a service issued up to a moment)
//! and a token's verified claims. Out: `RevokedToken` records, and for a token the reason it
//! is revoked, if it is.
//!
//! Records: `RevokedToken//id:<jti>` `{"revokedAt", "expiresAt"?}` for one token, and
//! `RevokedToken/<mesh>/service:<service>` `{"before"}` for every dataplane token of that
//! service whose `iat` is at or before `before` (tokens issued later work).

use serde_json::{json, Value};
use strait_pki::token::{TokenClaims, TokenSubject};
use strait_store::{Key, Op, Precondition, Store, StoreError};

use crate::kinds::REVOKED_TOKEN;

/// The record revoking the token with id `id`.
pub fn id_key(id: &str) -> Key {
    Key::new(REVOKED_TOKEN, "", format!("id:{id}"))
}

/// The record revoking the earlier dataplane tokens of `service` in `mesh`.
pub fn service_key(mesh: &str, service: &str) -> Key {
    Key::new(REVOKED_TOKEN, mesh, format!("service:{service}"))
}

fn unix_now() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or_default()
}

/// Revokes the token `id` (which expires at `expires_at`, when known), and forgets the records
/// of revoked tokens that have expired since: an expired token is refused anyway.
pub async fn revoke_id(store: &dyn Store, id: &str, expires_at: Option<u64>) -> Result<(), StoreError> {
    let now = unix_now();
    let mut ops = vec![Op::put(id_key(id), json!({"revokedAt": now, "expiresAt": expires_at}), Precondition::None)];
    for old in store.list(REVOKED_TOKEN, Some("")).await? {
        if old.data.get("expiresAt").and_then(Value::as_u64).is_some_and(|exp| exp <= now) && old.key != id_key(id) {
            ops.push(Op::delete(old.key, Precondition::None));
        }
    }
    store.apply(ops).await.map(drop)
}

/// Revokes every dataplane token of `service` in `mesh` issued up to now; returns that moment.
pub async fn revoke_service(store: &dyn Store, mesh: &str, service: &str) -> Result<u64, StoreError> {
    let before = unix_now();
    store.put(service_key(mesh, service), json!({"before": before}), Precondition::None).await?;
    Ok(before)
}

/// Why the token of `claims` is revoked, or `None` while it holds.
pub async fn check(store: &dyn Store, claims: &TokenClaims) -> Result<Option<String>, StoreError> {
    if store.get(&id_key(&claims.id)).await?.is_some() {
        return Ok(Some(format!("token {} was revoked", claims.id)));
    }
    if let TokenSubject::Dataplane { mesh, service } = &claims.subject {
        if let Some(record) = store.get(&service_key(mesh, service)).await? {
            let before = record.data.get("before").and_then(Value::as_u64).unwrap_or(u64::MAX);
            if claims.issued_at <= before {
                return Ok(Some(format!(
                    "the dataplane tokens of service {service:?} in mesh {mesh:?} issued until {before} (unix seconds) were revoked"
                )));
            }
        }
    }
    Ok(None)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn store() -> (tempfile::TempDir, std::sync::Arc<dyn Store>) {
        let dir = tempfile::tempdir().unwrap();
        let store = strait_store::SledStore::open(dir.path()).unwrap();
        (dir, std::sync::Arc::new(store))
    }

    fn dataplane(service: &str, issued_at: u64) -> TokenClaims {
        let mut claims = TokenClaims::new(TokenSubject::Dataplane { mesh: "default".into(), service: service.into() }, issued_at, 3600);
        claims.issued_at = issued_at;
        claims
    }

    #[tokio::test]
    async fn a_revoked_id_and_the_earlier_tokens_of_a_revoked_service_are_refused() {
        let (_dir, store) = store();
        let now = unix_now();
        let (web, api) = (dataplane("web", now - 10), dataplane("api", now - 10));
        assert_eq!(check(store.as_ref(), &web).await.unwrap(), None);

        revoke_id(store.as_ref(), &web.id, Some(web.expires_at)).await.unwrap();
        assert!(check(store.as_ref(), &web).await.unwrap().unwrap().contains(&web.id));
        assert_eq!(check(store.as_ref(), &api).await.unwrap(), None, "another token still holds");

        let before = revoke_service(store.as_ref(), "default", "api").await.unwrap();
        assert!(check(store.as_ref(), &api).await.unwrap().unwrap().contains("\"api\""));
        assert_eq!(check(store.as_ref(), &dataplane("api", before + 1)).await.unwrap(), None, "a token issued later holds");
        let proxy = TokenClaims::new(TokenSubject::ZoneProxy { zone: "east".into() }, now, 60);
        assert_eq!(check(store.as_ref(), &proxy).await.unwrap(), None);
    }

    #[tokio::test]
    async fn records_of_expired_tokens_are_forgotten() {
        let (_dir, store) = store();
        revoke_id(store.as_ref(), "old", Some(1)).await.unwrap();
        revoke_id(store.as_ref(), "forever", None).await.unwrap();
        revoke_id(store.as_ref(), "new", Some(unix_now() + 60)).await.unwrap();
        let left: Vec<String> = store.list(REVOKED_TOKEN, None).await.unwrap().into_iter().map(|o| o.key.name).collect();
        assert_eq!(left, ["id:forever", "id:new"]);
    }
}
