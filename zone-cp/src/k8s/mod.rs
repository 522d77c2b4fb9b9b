//! Kubernetes mode of a zone: what the cluster's objects mean to the mesh.
//!
//! [`dataplanes`] turns a Pod with a sidecar, and the Services that select it, into the
//! Dataplane the zone serves its sidecar; [`controller`] keeps the zone's Dataplanes equal to
//! what the cluster's Pods and Services call for; [`identity`] verifies a sidecar's projected
//! service-account token with the API server and names its Pod; [`lease`] elects the one
//! replica that leads; [`injection`] adds the sidecar to Pods (the admission webhook);
//! [`mirror`] keeps read-only copies of the global's policies in the cluster;
//! [`client`] connects to the API.

pub mod controller;
pub mod dataplanes;
pub mod identity;
pub mod injection;
pub mod lease;
pub mod mirror;

use std::path::Path;

/// Where a Pod finds its service account's namespace.
const SERVICE_ACCOUNT_NAMESPACE: &str = "/var/run/secrets/kubernetes.io/serviceaccount/namespace";

/// A client of the Kubernetes API: from `kubeconfig` if given, else the Pod's service account
/// (in a cluster), else `$KUBECONFIG` or `~/.kube/config`.
pub async fn client(kubeconfig: Option<&Path>) -> anyhow::Result<kube::Client> {
    let config = match kubeconfig {
        Some(path) => {
            let file = kube::config::Kubeconfig::read_from(path).map_err(|e| anyhow::anyhow!("--kubeconfig {}: {e}", path.display()))?;
            kube::Config::from_custom_kubeconfig(file, &kube::config::KubeConfigOptions::default())
                .await
                .map_err(|e| anyhow::anyhow!("--kubeconfig {}: {e}", path.display()))?
        }
        None => kube::Config::infer().await.map_err(|e| {
            anyhow::anyhow!("cannot reach the Kubernetes API: no service account in this Pod and no kubeconfig ({e}); give --kubeconfig")
        })?,
    };
    kube::Client::try_from(config).map_err(|e| anyhow::anyhow!("the Kubernetes API client: {e}"))
}

/// The namespace of the zone's own objects (its leader Lease): `flag`, else its service
/// account's, else `strait-system`.
pub fn own_namespace(flag: Option<&str>) -> String {
    flag.map(str::to_string)
        .or_else(|| std::fs::read_to_string(SERVICE_ACCOUNT_NAMESPACE).ok().map(|n| n.trim().to_string()).filter(|n| !n.is_empty()))
        .unwrap_or_else(|| "strait-system".into())
}

/// This replica's name in the election: `flag`, else the host name (a Pod's name).
pub fn replica_name(flag: Option<&str>) -> String {
    flag.map(str::to_string)
        .or_else(|| std::fs::read_to_string("/proc/sys/kernel/hostname").ok().map(|n| n.trim().to_string()).filter(|n| !n.is_empty()))
        .unwrap_or_else(|| format!("strait-zone-{}", std::process::id()))
}

/// A Kubernetes API for unit tests: `answer` gets each request's method, path and body and
/// gives the status code and JSON the API server would.
#[cfg(test)]
pub(crate) fn test_client(
    namespace: &str,
    answer: impl Fn(http::Method, String, bytes::Bytes) -> (u16, serde_json::Value) + Clone + Send + Sync + 'static,
) -> kube::Client {
    let service = tower::service_fn(move |request: http::Request<kube::client::Body>| {
        let answer = answer.clone();
        async move {
            let (method, path) = (request.method().clone(), request.uri().path().to_string());
            let bytes = http_body_util::BodyExt::collect(request.into_body()).await.map(|b| b.to_bytes()).unwrap_or_default();
            let (code, body) = answer(method, path, bytes);
            let response = http::Response::builder()
                .status(code)
                .header("content-type", "application/json")
                .body(http_body_util::Full::new(bytes::Bytes::from(body.to_string())))
                .unwrap_or_default();
            Ok::<_, std::convert::Infallible>(response)
        }
    });
    kube::Client::new(service, namespace)
}

/// Serves the sidecar injection webhook (`POST /inject`, AdmissionReview in and out) on
/// `listener` with `options` (its TLS) until `shutdown`.
pub fn serve_injection(
    listener: tokio::net::TcpListener,
    injector: injection::Injector,
    options: strait_cp_core::rest::serve::ServeOptions,
    shutdown: tokio_util::sync::CancellationToken,
    tasks: &tokio_util::task::TaskTracker,
) {
    use axum::http::StatusCode;
    use axum::response::IntoResponse;
    let injector = std::sync::Arc::new(injector);
    let router = axum::Router::new().route(
        "/inject",
        axum::routing::post(move |body: axum::body::Bytes| {
            let injector = injector.clone();
            async move {
                let review: serde_json::Value = match serde_json::from_slice(&body) {
                    Ok(v) => v,
                    Err(e) => return (StatusCode::BAD_REQUEST, format!("not an AdmissionReview: {e}\n")).into_response(),
                };
                match injector.review(&review) {
                    Ok(answer) => axum::Json(answer).into_response(),
                    Err(e) => (StatusCode::BAD_REQUEST, format!("not an AdmissionReview: {e}\n")).into_response(),
                }
            }
        }),
    );
    tasks.spawn(strait_cp_core::rest::serve::serve(listener, router, shutdown, std::time::Duration::from_secs(5), options));
}
