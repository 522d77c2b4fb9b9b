//! `strait-otlp-sink ADDRESS`: an OTLP/gRPC trace receiver for end-to-end scenarios. It
//! listens on ADDRESS (`ip:port`) and prints each span it receives as one JSON line on stdout:
//! its trace, span and parent ids (hex), name, kind and string attributes.

use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{TraceService, TraceServiceServer};
use opentelemetry_proto::tonic::collector::trace::v1::{ExportTraceServiceRequest, ExportTraceServiceResponse};
use opentelemetry_proto::tonic::common::v1::any_value;

struct Sink;

#[tonic::async_trait]
impl TraceService for Sink {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        let spans = request.into_inner().resource_spans.into_iter().flat_map(|r| r.scope_spans).flat_map(|s| s.spans);
        for span in spans {
            let attributes: serde_json::Map<String, serde_json::Value> = span
                .attributes
                .iter()
                .filter_map(|kv| match kv.value.as_ref()?.value.as_ref()? {
                    any_value::Value::StringValue(s) => Some((kv.key.clone(), serde_json::Value::String(s.clone()))),
                    _ => None,
                })
                .collect();
            let line = serde_json::json!({
                "traceId": hex::encode(&span.trace_id),
                "spanId": hex::encode(&span.span_id),
                "parentSpanId": hex::encode(&span.parent_span_id),
                "name": span.name,
                "kind": span.kind,
                "attributes": attributes,
            });
            println!("{line}");
        }
        Ok(tonic::Response::new(ExportTraceServiceResponse { partial_success: None }))
    }
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let address = std::env::args().nth(1).ok_or("usage: strait-otlp-sink ip:port")?.parse()?;
    eprintln!("strait-otlp-sink: listening on {address}");
    tonic::transport::Server::builder().add_service(TraceServiceServer::new(Sink)).serve(address).await?;
    Ok(())
}
