//! Kubernetes mode of a zone: what the cluster's objects mean to the mesh.
//!
//! [`dataplanes`] turns a Pod with a sidecar, and the Services that select it, into the
//! Dataplane the zone serves its sidecar; [`controller`] keeps the zone's Dataplanes equal to
//! what the cluster's Pods and Services call for; [`identity`] verifies a sidecar's projected
//! service-account token with the API server and names its Pod; [`lease`] elects the one
//! replica that leads.

pub mod controller;
pub mod dataplanes;
pub mod identity;
pub mod lease;

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
