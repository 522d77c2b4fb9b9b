//! MeshTrace through real sidecars and a test OTLP collector (the `opentelemetry-proto`
//! gRPC service): one request gives a client span from the caller's sidecar and a server span
//! from the server's, in one trace, the server's the child of the client's, and the
//! application's `traceparent` names the server span; a dead collector costs nothing but
//! dropped spans, counted.

mod common;

use std::sync::{Arc, Mutex};

use common::{eventually, free_port, metric, Mesh};
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{TraceService, TraceServiceServer};
use opentelemetry_proto::tonic::collector::trace::v1::{ExportTraceServiceRequest, ExportTraceServiceResponse};
use opentelemetry_proto::tonic::common::v1::any_value;
use opentelemetry_proto::tonic::trace::v1::Span;
use serde_json::json;

#[derive(Clone, Default)]
struct Collector(Arc<Mutex<Vec<Span>>>);

#[tonic::async_trait]
impl TraceService for Collector {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        let spans = request.into_inner().resource_spans.into_iter().flat_map(|r| r.scope_spans).flat_map(|s| s.spans);
        self.0.lock().unwrap().extend(spans);
        Ok(tonic::Response::new(ExportTraceServiceResponse { partial_success: None }))
    }
}

/// An OTLP/gRPC collector on 127.0.0.1: its address and the spans it received.
async fn collector() -> (String, Arc<Mutex<Vec<Span>>>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap().to_string();
    let collector = Collector::default();
    let spans = collector.0.clone();
    let incoming = tokio_stream::wrappers::TcpListenerStream::new(listener);
    tokio::spawn(tonic::transport::Server::builder().add_service(TraceServiceServer::new(collector)).serve_with_incoming(incoming));
    (address, spans)
}

/// An HTTP application that answers with the `traceparent` it received.
async fn traceparent_app() -> u16 {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let service = hyper::service::service_fn(|request: http::Request<hyper::body::Incoming>| async move {
                    let seen = request.headers().get("traceparent").and_then(|v| v.to_str().ok()).unwrap_or("none").to_string();
                    Ok::<_, std::convert::Infallible>(http::Response::new(http_body_util::Full::new(bytes::Bytes::from(seen))))
                });
                let builder = hyper_util::server::conn::auto::Builder::new(hyper_util::rt::TokioExecutor::new());
                let _ = builder.serve_connection(hyper_util::rt::TokioIo::new(stream), service).await;
            });
        }
    });
    port
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn attribute(span: &Span, key: &str) -> Option<String> {
    span.attributes.iter().find(|a| a.key == key).and_then(|a| match a.value.as_ref()?.value.as_ref()? {
        any_value::Value::StringValue(s) => Some(s.clone()),
        any_value::Value::IntValue(i) => Some(i.to_string()),
        _ => None,
    })
}

fn trace(endpoint: &str) -> serde_json::Value {
    json!({"type": "MeshTrace", "name": "tracing", "mesh": "default", "spec": {"default": {
        "backends": [{"openTelemetry": {"endpoint": endpoint}}], "tags": [{"name": "team", "literal": "storefront"}]}}})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_sidecar_hop_is_a_span_of_one_trace() {
    let mesh = Mesh::start().await;
    let app = traceparent_app().await;
    let (backend, web, web_out, client) = mesh.web_and_backend(app).await;
    let (endpoint, spans) = collector().await;
    mesh.put("/meshes/default/meshtraces/tracing", trace(&endpoint)).await;
    eventually("MeshTrace in both sidecars", async || {
        let (w, b) = (web.state.served()?, backend.state.served()?);
        (w.1.proxy.trace.is_some() && b.1.proxy.trace.is_some()).then_some(())
    })
    .await;
    let seen = eventually("a traced request", async || {
        let body = client.get(format!("http://127.0.0.1:{web_out}/orders")).send().await.ok()?.text().await.ok()?;
        (body != "none").then_some(body)
    })
    .await;
    // The application's traceparent: 00-<trace>-<parent span>-01.
    let parts: Vec<&str> = seen.split('-').collect();
    assert_eq!((parts.len(), parts[3]), (4, "01"), "{seen}");
    let (trace_id, app_parent) = (parts[1].to_string(), parts[2].to_string());
    let (client_span, server_span) = eventually("both spans of that trace", async || {
        let spans = spans.lock().unwrap();
        let of_trace: Vec<&Span> = spans.iter().filter(|s| hex(&s.trace_id) == trace_id).collect();
        let client = of_trace.iter().find(|s| attribute(s, "strait.direction").as_deref() == Some("outbound"))?;
        let server = of_trace.iter().find(|s| attribute(s, "strait.direction").as_deref() == Some("inbound"))?;
        Some(((*client).clone(), (*server).clone()))
    })
    .await;
    assert!(client_span.parent_span_id.is_empty(), "the trace starts at web's sidecar");
    assert_eq!(server_span.parent_span_id, client_span.span_id, "the server span is the client span's child");
    assert_eq!(hex(&server_span.span_id), app_parent, "the application's spans are the server span's children");
    for (span, service, peer) in [(&client_span, "web", "backend"), (&server_span, "backend", "web")] {
        assert_eq!(attribute(span, "mesh").as_deref(), Some("default"));
        assert_eq!(attribute(span, "strait.service").as_deref(), Some(service));
        assert_eq!(attribute(span, "strait.zone").as_deref(), Some("zone-1"));
        assert_eq!(attribute(span, "peer.service").as_deref(), Some(peer));
        assert_eq!(attribute(span, "http.status_code").as_deref(), Some("200"));
        assert_eq!(attribute(span, "team").as_deref(), Some("storefront"));
        assert!(span.end_time_unix_nano >= span.start_time_unix_nano);
    }

    // A request that carries a sampled traceparent continues that trace.
    let caller_trace = "4bf92f3577b34da6a3ce929d0e0e4736";
    let body = client
        .get(format!("http://127.0.0.1:{web_out}/"))
        .header("traceparent", format!("00-{caller_trace}-00f067aa0ba902b7-01"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(body.starts_with(&format!("00-{caller_trace}-")), "{body}");
    eventually("the continued trace's client span, child of the caller's", async || {
        let spans = spans.lock().unwrap();
        spans.iter().find(|s| hex(&s.trace_id) == caller_trace && hex(&s.parent_span_id) == "00f067aa0ba902b7").map(drop)
    })
    .await;

    // A dead collector: requests go on, spans are dropped and counted.
    mesh.put("/meshes/default/meshtraces/tracing", trace(&format!("127.0.0.1:{}", free_port()))).await;
    eventually("requests answered while spans to the dead collector are dropped", async || {
        let response = client.get(format!("http://127.0.0.1:{web_out}/")).send().await.ok()?;
        assert_eq!(response.status(), 200);
        (metric(&web, "strait_dp_spans_dropped_total").await >= 1.0).then_some(())
    })
    .await;
}
