//! A sidecar's identity on Kubernetes: its Pod's projected service-account token, verified by
//! the API server (TokenReview), instead of a dataplane token to distribute.
//!
//! In: the bearer token a sidecar presents. Out: the Pod it was issued to (namespace, name,
//! UID, service account), or why it is refused: the API server did not authenticate it (a
//! forged or expired token), its audience is not the zone's ([`AUDIENCE`]: a token meant for
//! another service cannot be replayed here), or it is not bound to a Pod (a legacy Secret
//! token would name no Pod). An API server that cannot answer is told apart from a refusal.

use k8s_openapi::api::authentication::v1::{TokenReview, TokenReviewSpec};
use kube::api::PostParams;
use kube::Api;

/// The audience of the projected token the injected sidecar presents.
pub const AUDIENCE: &str = "strait-zone";

const POD_NAME: &str = "authentication.kubernetes.io/pod-name";
const POD_UID: &str = "authentication.kubernetes.io/pod-uid";

/// The Pod a token was issued to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodIdentity {
    /// Its namespace.
    pub namespace: String,
    /// Its name.
    pub pod: String,
    /// Its UID (a Pod recreated under the same name has another).
    pub pod_uid: String,
    /// Its service account.
    pub service_account: String,
}

/// Why a token gives no identity.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refused {
    /// The token is not valid for this zone.
    #[error("service-account token refused: {0}")]
    Invalid(String),
    /// The API server could not be asked.
    #[error("cannot verify the service-account token with the Kubernetes API (TokenReview): {0}")]
    Unavailable(String),
}

/// Verifies `token` with the API server for [`AUDIENCE`].
pub async fn review(client: &kube::Client, token: &str) -> Result<PodIdentity, Refused> {
    let request = TokenReview {
        spec: TokenReviewSpec { token: Some(token.to_string()), audiences: Some(vec![AUDIENCE.to_string()]) },
        ..Default::default()
    };
    let answer = Api::<TokenReview>::all(client.clone())
        .create(&PostParams::default(), &request)
        .await
        .map_err(|e| Refused::Unavailable(e.to_string()))?;
    let status = answer.status.unwrap_or_default();
    if status.authenticated != Some(true) {
        let why = status.error.filter(|e| !e.is_empty()).unwrap_or_else(|| "not authenticated".into());
        return Err(Refused::Invalid(why));
    }
    if !status.audiences.iter().flatten().any(|a| a == AUDIENCE) {
        return Err(Refused::Invalid(format!("its audiences {:?} do not include {AUDIENCE:?}", status.audiences.unwrap_or_default())));
    }
    let user = status.user.unwrap_or_default();
    let username = user.username.unwrap_or_default();
    let Some((namespace, service_account)) = username.strip_prefix("system:serviceaccount:").and_then(|rest| rest.split_once(':')) else {
        return Err(Refused::Invalid(format!("{username:?} is not a service account")));
    };
    let extra = user.extra.unwrap_or_default();
    let first = |key: &str| extra.get(key).and_then(|v| v.first()).filter(|v| !v.is_empty()).cloned();
    let (Some(pod), Some(pod_uid)) = (first(POD_NAME), first(POD_UID)) else {
        return Err(Refused::Invalid(format!(
            "the token of {username} is not bound to a Pod: the sidecar presents a projected service-account token with audience {AUDIENCE}"
        )));
    };
    Ok(PodIdentity { namespace: namespace.to_string(), pod, pod_uid, service_account: service_account.to_string() })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};

    use serde_json::{json, Value};

    /// Answers TokenReviews as an API server does, from recorded answers by token; records
    /// what it was sent.
    fn api(sent: Arc<Mutex<Vec<Value>>>) -> kube::Client {
        crate::k8s::test_client("default", move |method, path, bytes| {
            assert_eq!(method, http::Method::POST);
            assert_eq!(path, "/apis/authentication.k8s.io/v1/tokenreviews");
            let review: Value = serde_json::from_slice(&bytes).unwrap();
            sent.lock().unwrap().push(review.clone());
            let token = review["spec"]["token"].as_str().unwrap_or_default();
            let status = match token {
                "pod-token" => json!({
                    "authenticated": true,
                    "user": { "username": "system:serviceaccount:shop:web", "uid": "4c7a", "groups": ["system:serviceaccounts", "system:serviceaccounts:shop", "system:authenticated"],
                        "extra": { "authentication.kubernetes.io/credential-id": ["JTI=1f2e"], "authentication.kubernetes.io/node-name": ["node-a"],
                            "authentication.kubernetes.io/pod-name": ["web-7d9f-abcde"], "authentication.kubernetes.io/pod-uid": ["9b0e7c1e-3c1d-4b8a-9a5e-0d3e8e6f1a2b"] } },
                    "audiences": ["strait-zone"],
                }),
                "other-audience" => {
                    json!({ "user": {}, "error": "[invalid bearer token, token audiences [\"https://kubernetes.default.svc.cluster.local\"] is invalid for the target audiences [\"strait-zone\"]]" })
                }
                "legacy-secret-token" => json!({ "authenticated": true,
                    "user": { "username": "system:serviceaccount:shop:web", "uid": "4c7a", "groups": ["system:serviceaccounts"] }, "audiences": ["strait-zone"] }),
                "node-token" => {
                    json!({ "authenticated": true, "user": { "username": "system:node:node-a" }, "audiences": ["strait-zone"] })
                }
                "outage" => {
                    return (
                        500,
                        json!({ "kind": "Status", "apiVersion": "v1", "status": "Failure", "message": "etcdserver: request timed out", "reason": "InternalError", "code": 500 }),
                    );
                }
                _ => json!({ "user": {}, "error": "[invalid bearer token, square/go-jose: error in cryptographic primitive]" }),
            };
            (
                201,
                json!({ "kind": "TokenReview", "apiVersion": "authentication.k8s.io/v1", "metadata": { "creationTimestamp": null }, "spec": review["spec"], "status": status }),
            )
        })
    }

    #[tokio::test]
    async fn a_pod_bound_token_names_its_pod_and_others_are_refused() {
        let sent = Arc::new(Mutex::new(Vec::new()));
        let client = api(sent.clone());
        let identity = review(&client, "pod-token").await.unwrap();
        assert_eq!(
            identity,
            PodIdentity {
                namespace: "shop".into(),
                pod: "web-7d9f-abcde".into(),
                pod_uid: "9b0e7c1e-3c1d-4b8a-9a5e-0d3e8e6f1a2b".into(),
                service_account: "web".into()
            }
        );
        assert_eq!(
            sent.lock().unwrap()[0]["spec"],
            json!({ "token": "pod-token", "audiences": ["strait-zone"] }),
            "the zone asks for its own audience"
        );

        let forged = review(&client, "forged").await.unwrap_err();
        assert!(matches!(&forged, Refused::Invalid(m) if m.contains("invalid bearer token")), "{forged}");
        let replayed = review(&client, "other-audience").await.unwrap_err();
        assert!(matches!(&replayed, Refused::Invalid(m) if m.contains("audiences")), "{replayed}");
        let legacy = review(&client, "legacy-secret-token").await.unwrap_err();
        assert!(matches!(&legacy, Refused::Invalid(m) if m.contains("not bound to a Pod")), "{legacy}");
        let node = review(&client, "node-token").await.unwrap_err();
        assert!(matches!(&node, Refused::Invalid(m) if m.contains("not a service account")), "{node}");
        let outage = review(&client, "outage").await.unwrap_err();
        assert!(matches!(outage, Refused::Unavailable(_)), "an API that cannot answer is not a refusal: {outage}");
    }
}
