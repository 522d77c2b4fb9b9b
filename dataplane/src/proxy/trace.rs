//! MeshTrace: a span for each sidecar hop of a request, propagated with W3C `traceparent`
//! (and B3, when the caller sent B3), exported over OTLP/gRPC.
//!
//! In: the sidecar's merged MeshTrace (sampling, tags, one OpenTelemetry backend) and, per
//! request, its headers. Out: the request's headers rewritten so that the next hop's span is
//! a child of this one, and, when the request is sampled, a [`Span`] that is exported when
//! dropped (its response ended). Export is off the request path: a span keeps its request's
//! text inline and goes to a bounded queue (`try_send`) as it is; one task per collector
//! spells the spans as OTLP and sends them in batches (up to 512, every second or as soon as
//! 512 wait). A collector that is down or slow costs nothing but the spans dropped, counted in
//! `strait_dp_spans_dropped_total`.
//!
//! Sampling is decided where a trace starts: a request without `traceparent` (or B3) starts
//! one, sampled with chance `sampling.overall` times `sampling.random` (each 100% by default);
//! a request whose context says sampled is traced with chance `sampling.client` (100% by
//! default), so every hop of a sampled trace has its span. An unsampled request still carries
//! a `traceparent` (not sampled) to the next hop, which follows it.

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use http::{HeaderMap, HeaderName, HeaderValue};
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_client::TraceServiceClient;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::{any_value, AnyValue, InstrumentationScope, KeyValue};
use opentelemetry_proto::tonic::resource::v1::Resource;
use opentelemetry_proto::tonic::trace::v1::{span, status, ResourceSpans, ScopeSpans, Span as OtlpSpan, Status};
use prometheus_client::metrics::counter::Counter;
use rand::Rng;
use strait_api::policies::trace::TraceConf;
use tokio::sync::mpsc;

use super::access_log::Text;

/// Spans a collector may have waiting before new ones are dropped.
const QUEUE: usize = 2048;
/// Spans sent in one export.
const BATCH: usize = 512;
/// How often the spans that came are sent, when fewer than a batch came.
const FLUSH: Duration = Duration::from_secs(1);

/// The trace headers' names, parsed once: looking a header up by a `&str` parses the name
/// every time, and these are looked up on every request.
pub(crate) static TRACEPARENT: HeaderName = HeaderName::from_static("traceparent");
pub(crate) static B3: HeaderName = HeaderName::from_static("b3");
pub(crate) static B3_TRACE_ID: HeaderName = HeaderName::from_static("x-b3-traceid");
static B3_SPAN_ID: HeaderName = HeaderName::from_static("x-b3-spanid");
static B3_PARENT_SPAN_ID: HeaderName = HeaderName::from_static("x-b3-parentspanid");
static B3_SAMPLED: HeaderName = HeaderName::from_static("x-b3-sampled");
static B3_FLAGS: HeaderName = HeaderName::from_static("x-b3-flags");

thread_local! {
    /// The state of this thread's id generator (splitmix64), seeded from the system's
    /// generator once per thread.
    static IDS: std::cell::Cell<u64> = std::cell::Cell::new(rand::thread_rng().gen());
}

/// 64 random bits for an id or a sampling draw: trace and span ids must be unique, not
/// unpredictable, and this runs for every request (a cryptographic generator costs more).
fn random_u64() -> u64 {
    IDS.with(|state| {
        let x = state.get().wrapping_add(0x9E37_79B9_7F4A_7C15);
        state.set(x);
        let z = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        let z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    })
}

/// A random id of `N` bytes, never all zeros (which W3C reserves for "none").
fn random_id<const N: usize>() -> [u8; N] {
    let mut id = [0u8; N];
    for chunk in id.chunks_mut(8) {
        let bits = random_u64().to_be_bytes();
        chunk.copy_from_slice(&bits[..chunk.len()]);
    }
    if id.iter().all(|b| *b == 0) {
        id[N - 1] = 1;
    }
    id
}

/// A trace context: ids and whether it is sampled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Context {
    /// Trace id.
    pub trace_id: [u8; 16],
    /// The caller's span, if any.
    pub parent: Option<[u8; 8]>,
    /// Whether the trace is sampled.
    pub sampled: bool,
}

fn hex<const N: usize>(s: &[u8]) -> Option<[u8; N]> {
    fn digit(c: u8) -> Option<u8> {
        match c {
            b'0'..=b'9' => Some(c - b'0'),
            b'a'..=b'f' => Some(c - b'a' + 10),
            b'A'..=b'F' => Some(c - b'A' + 10),
            _ => None,
        }
    }
    if s.len() != 2 * N {
        return None;
    }
    let mut out = [0u8; N];
    for (b, pair) in out.iter_mut().zip(s.chunks_exact(2)) {
        *b = digit(pair[0])? << 4 | digit(pair[1])?;
    }
    (out != [0u8; N]).then_some(out)
}

/// The trace id, parent id and flags of a W3C `traceparent` (`vv-<32>-<16>-ff`, to which a
/// later version may add `-` and more), as text, taken at their fixed places: this runs for
/// every request that carries one. Not checked to be hex.
pub(crate) fn traceparent_parts(value: &[u8]) -> Option<(&[u8], &[u8], &[u8])> {
    let v = value.trim_ascii();
    let well_formed = v.len() >= 55 && v[2] == b'-' && v[35] == b'-' && v[52] == b'-' && (v.len() == 55 || v[55] == b'-');
    well_formed.then(|| (&v[3..35], &v[36..52], &v[53..55]))
}

/// Writes `bytes` in lower-case hex into `out`, which is twice as long.
fn hex_into(bytes: &[u8], out: &mut [u8]) {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    for (b, pair) in bytes.iter().zip(out.chunks_exact_mut(2)) {
        pair[0] = DIGITS[usize::from(b >> 4)];
        pair[1] = DIGITS[usize::from(b & 0xf)];
    }
}

fn to_hex(bytes: &[u8]) -> String {
    let mut out = vec![0u8; 2 * bytes.len()];
    hex_into(bytes, &mut out);
    String::from_utf8(out).unwrap_or_default()
}

/// A header value that never repeats (a trace or span id): sent as an HPACK literal that is
/// never indexed, so that it neither churns the HTTP/2 header tables of both ends nor is
/// searched for in them on every request. Taken as it is (no copy): copies of the request
/// (kept for a retry) share it.
fn unique(value: impl Into<bytes::Bytes>) -> Option<HeaderValue> {
    let mut value = HeaderValue::from_maybe_shared(value.into()).ok()?;
    value.set_sensitive(true);
    Some(value)
}

/// The context a request carries: W3C `traceparent`, else B3 (single `b3` or `x-b3-*`).
pub fn incoming(headers: &HeaderMap) -> Option<Context> {
    read(headers).0
}

/// The B3 forms a request carries (single `b3`, `x-b3-traceid`), where reading its context
/// already found out.
type B3Forms = Option<(bool, bool)>;

/// The context a request carries, and its B3 forms when they are known without looking again.
fn read(headers: &HeaderMap) -> (Option<Context>, B3Forms) {
    let value = |name: &HeaderName| headers.get(name).and_then(|v| v.to_str().ok());
    if let Some(tp) = headers.get(&TRACEPARENT) {
        let context = traceparent_parts(tp.as_bytes()).and_then(|(trace, parent, flags)| {
            let flags = u8::from_str_radix(std::str::from_utf8(flags).ok()?, 16).ok()?;
            Some(Context { trace_id: hex(trace)?, parent: Some(hex(parent)?), sampled: flags & 1 == 1 })
        });
        return (context, None);
    }
    let b3_trace = |t: &str| if t.len() == 16 { hex::<8>(t.as_bytes()).map(|h| widen(&h)) } else { hex::<16>(t.as_bytes()) };
    if let Some(b3) = value(&B3) {
        let mut parts = b3.split('-');
        let context = (|| {
            let (trace, span) = (parts.next()?, parts.next()?);
            let sampled = parts.next().is_none_or(|s| s == "1" || s == "d");
            Some(Context { trace_id: b3_trace(trace)?, parent: Some(hex(span.as_bytes())?), sampled })
        })();
        return (context, None);
    }
    let Some(trace) = value(&B3_TRACE_ID) else { return (None, Some((false, false))) };
    let context = b3_trace(trace).map(|trace_id| Context {
        trace_id,
        parent: value(&B3_SPAN_ID).and_then(|s| hex(s.as_bytes())),
        sampled: value(&B3_SAMPLED).is_none_or(|s| s == "1") || value(&B3_FLAGS) == Some("1"),
    });
    (context, Some((false, true)))
}

fn widen(short: &[u8; 8]) -> [u8; 16] {
    let mut id = [0u8; 16];
    id[8..].copy_from_slice(short);
    id
}

/// A sidecar's MeshTrace, compiled.
#[derive(Debug)]
pub struct Tracer {
    client: f64,
    random: f64,
    tags: Vec<(Arc<str>, Tag)>,
    exporter: Option<Arc<Exporter>>,
    /// What every span names.
    pub local: super::access_log::Local,
}

#[derive(Debug)]
enum Tag {
    Literal(String),
    Header(HeaderName),
}

fn chance(percentage: f64) -> bool {
    // 53 random bits as a uniform number in [0, 1).
    let draw = (random_u64() >> 11) as f64 / (1u64 << 53) as f64;
    percentage >= 100.0 || (percentage > 0.0 && draw < percentage / 100.0)
}

/// Which side of a hop a span is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    /// The caller's sidecar.
    Outbound,
    /// The server's sidecar.
    Inbound,
}

impl Tracer {
    /// Compiles `conf`, reusing `previous`'s exporter to the same collector (or, with `start`
    /// false, starting none). A Zipkin backend is refused by the API.
    pub fn compile(conf: &TraceConf, local: super::access_log::Local, previous: Option<&Tracer>, dropped: &Counter, start: bool) -> Tracer {
        let endpoint = conf.backends.iter().find_map(|b| b.open_telemetry.as_ref()).map(|o| o.endpoint.clone());
        let exporter = match endpoint {
            Some(endpoint) if start => match previous.and_then(|p| p.exporter.clone()).filter(|e| e.endpoint == endpoint) {
                Some(kept) => Some(kept),
                None => Exporter::start(endpoint, dropped.clone()),
            },
            _ => None,
        };
        let sampling = conf.sampling.clone().unwrap_or_default();
        // A new trace: `random` of `overall` (each 100% by default).
        let overall = sampling.overall.unwrap_or(100.0) * sampling.random.unwrap_or(100.0) / 100.0;
        let tags = conf
            .tags
            .iter()
            .filter_map(|t| {
                let tag = match (&t.literal, &t.header) {
                    (Some(l), _) => Tag::Literal(l.clone()),
                    (None, Some(h)) => Tag::Header(HeaderName::try_from(h.as_str()).ok()?),
                    (None, None) => return None,
                };
                Some((Arc::from(t.name.as_str()), tag))
            })
            .collect();
        Tracer { client: sampling.client.unwrap_or(100.0), random: overall, tags, exporter, local }
    }

    /// Starts this hop's span of a request with `headers` (which it rewrites for the next
    /// hop): `None` when the request is not sampled.
    pub fn start(&self, side: Side, headers: &mut HeaderMap, peer: &Arc<str>) -> Option<Span> {
        let (incoming, b3_forms) = read(headers);
        // Decided once, where the trace starts; the next hops follow it.
        let sampled = match incoming {
            Some(c) => c.sampled && chance(self.client),
            None => chance(self.random),
        };
        let context =
            Context { trace_id: incoming.map_or_else(random_id::<16>, |c| c.trace_id), parent: incoming.and_then(|c| c.parent), sampled };
        // A trace that came unsampled travels on as it came (no span of ours to name as its
        // parent); one that starts here, or that this hop samples or stops sampling, carries
        // the decision to the next hops.
        let propagated = sampled || incoming.is_none_or(|c| c.sampled);
        if !propagated {
            return None;
        }
        let span_id: [u8; 8] = random_id();
        propagate(headers, &context, span_id, b3_forms);
        if !sampled {
            return None;
        }
        let exporter = self.exporter.clone()?;
        let tags = self
            .tags
            .iter()
            .filter_map(|(name, tag)| match tag {
                Tag::Literal(value) => Some((name.clone(), Text::new(value))),
                Tag::Header(header) => headers.get(header).and_then(|v| v.to_str().ok()).map(|v| (name.clone(), Text::new(v))),
            })
            .collect();
        Some(Span {
            exporter,
            record: Some(Record {
                local: self.local.clone(),
                trace_id: context.trace_id,
                span_id,
                parent: context.parent,
                side,
                peer: peer.clone(),
                method: None,
                target: Text::default(),
                host: Text::default(),
                upstream: None,
                peer_zone: None,
                tags,
                start: SystemTime::now(),
                duration: Duration::ZERO,
                status: 0,
            }),
            started: Instant::now(),
        })
    }
}

/// Rewrites the request's trace headers so that the next hop's span is a child of `span_id`:
/// `traceparent` always; the B3 headers the request came with (`b3_forms`, looked up when
/// not known).
fn propagate(headers: &mut HeaderMap, context: &Context, span_id: [u8; 8], b3_forms: B3Forms) {
    // `00-<trace>-<span>-<flags>`, written in place: this runs for every request.
    let mut traceparent = *b"00-00000000000000000000000000000000-0000000000000000-00";
    hex_into(&context.trace_id, &mut traceparent[3..35]);
    hex_into(&span_id, &mut traceparent[36..52]);
    if context.sampled {
        traceparent[54] = b'1';
    }
    if let Some(v) = unique(bytes::Bytes::from_owner(traceparent)) {
        headers.insert(TRACEPARENT.clone(), v);
    }
    let (b3, multi) = b3_forms.unwrap_or_else(|| (headers.contains_key(&B3), headers.contains_key(&B3_TRACE_ID)));
    if !b3 && !multi {
        return;
    }
    let (trace, span) = (to_hex(&context.trace_id), to_hex(&span_id));
    let sampled = if context.sampled { "1" } else { "0" };
    if b3 {
        let parent = context.parent.map(|p| format!("-{}", to_hex(&p))).unwrap_or_default();
        if let Some(v) = unique(format!("{trace}-{span}-{sampled}{parent}")) {
            headers.insert(B3.clone(), v);
        }
    }
    if multi {
        let mut set = |name: &HeaderName, value: &str, never_repeats: bool| {
            let value = if never_repeats { unique(value.to_string()) } else { HeaderValue::from_str(value).ok() };
            if let Some(v) = value {
                headers.insert(name.clone(), v);
            }
        };
        set(&B3_TRACE_ID, &trace, true);
        set(&B3_SPAN_ID, &span, true);
        set(&B3_SAMPLED, sampled, false);
        if let Some(parent) = context.parent {
            set(&B3_PARENT_SPAN_ID, &to_hex(&parent), true);
        }
    }
}

fn kv(key: &str, value: &str) -> KeyValue {
    KeyValue { key: key.to_string(), value: Some(AnyValue { value: Some(any_value::Value::StringValue(value.to_string())) }) }
}

/// What one hop's span holds until the exporter sends it: ids, times and the request's text,
/// kept inline or shared (nothing is allocated for it on the request path unless MeshTrace
/// has tags); the exporter spells it as OTLP when it sends the batch.
#[derive(Debug)]
struct Record {
    local: super::access_log::Local,
    trace_id: [u8; 16],
    span_id: [u8; 8],
    parent: Option<[u8; 8]>,
    side: Side,
    peer: Arc<str>,
    method: Option<http::Method>,
    target: Text,
    host: Text,
    upstream: Option<std::net::SocketAddr>,
    peer_zone: Option<Arc<str>>,
    tags: Vec<(Arc<str>, Text)>,
    start: SystemTime,
    duration: Duration,
    status: u16,
}

impl Record {
    fn otlp(self) -> OtlpSpan {
        let (method, target, host) = (self.method.as_ref().map_or("", |m| m.as_str()), self.target.as_str(), self.host.as_str());
        let mut attributes = vec![
            kv("mesh", &self.local.mesh),
            kv("strait.service", &self.local.service),
            kv("strait.zone", &self.local.zone),
            kv("strait.direction", if self.side == Side::Outbound { "outbound" } else { "inbound" }),
            kv("peer.service", &self.peer),
        ];
        attributes.extend(self.tags.iter().map(|(name, value)| kv(name, value.as_str())));
        if self.method.is_some() {
            attributes.extend([kv("http.method", method), kv("http.target", target), kv("http.host", host)]);
        }
        if let Some(upstream) = self.upstream {
            attributes.push(kv("strait.upstream", &upstream.to_string()));
        }
        if let Some(zone) = &self.peer_zone {
            attributes.push(kv("strait.peer_zone", zone));
        }
        attributes.push(KeyValue {
            key: "http.status_code".into(),
            value: Some(AnyValue { value: Some(any_value::Value::IntValue(i64::from(self.status))) }),
        });
        let error = self.status == 0 || self.status >= 500;
        OtlpSpan {
            trace_id: self.trace_id.to_vec(),
            span_id: self.span_id.to_vec(),
            parent_span_id: self.parent.map(|p| p.to_vec()).unwrap_or_default(),
            name: if self.method.is_some() { format!("{method} {host}{target}") } else { String::new() },
            kind: if self.side == Side::Outbound { span::SpanKind::Client } else { span::SpanKind::Server } as i32,
            start_time_unix_nano: nanos(self.start),
            end_time_unix_nano: nanos(self.start + self.duration),
            attributes,
            status: Some(Status {
                code: if error { status::StatusCode::Error } else { status::StatusCode::Unset } as i32,
                message: String::new(),
            }),
            ..Default::default()
        }
    }
}

/// One hop's span, handed to the exporter when dropped.
#[derive(Debug)]
pub struct Span {
    exporter: Arc<Exporter>,
    /// Taken when the span ends.
    record: Option<Record>,
    started: Instant,
}

impl Span {
    /// Names the span after the request and notes its method and path.
    pub fn request(&mut self, method: &http::Method, uri: &http::Uri) {
        if let Some(r) = &mut self.record {
            r.method = Some(method.clone());
            r.target = Text::new(uri.path_and_query().map_or("/", |p| p.as_str()));
            r.host = Text::new(uri.authority().map_or("", |a| a.as_str()));
        }
    }

    /// Notes the answer's status.
    pub fn answered(&mut self, status: u16) {
        if let Some(r) = &mut self.record {
            r.status = status;
        }
    }

    /// Notes the endpoint that answered and its zone.
    pub fn upstream(&mut self, address: std::net::SocketAddr, zone: &Arc<str>) {
        if let Some(r) = &mut self.record {
            r.upstream = Some(address);
            r.peer_zone = Some(zone.clone());
        }
    }
}

fn nanos(t: SystemTime) -> u64 {
    t.duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default().as_nanos() as u64
}

impl Drop for Span {
    fn drop(&mut self) {
        if let Some(mut record) = self.record.take() {
            record.duration = self.started.elapsed();
            self.exporter.send(record);
        }
    }
}

/// One collector: a bounded queue and the task that sends its batches.
#[derive(Debug)]
pub struct Exporter {
    endpoint: String,
    tx: mpsc::Sender<Record>,
    /// Wakes the export task when a batch is waiting (it wakes by itself every [`FLUSH`]).
    waiting: Arc<tokio::sync::Notify>,
    dropped: Counter,
}

impl Exporter {
    fn start(endpoint: String, dropped: Counter) -> Option<Arc<Exporter>> {
        let url = if endpoint.contains("://") { endpoint.clone() } else { format!("http://{endpoint}") };
        let channel = tonic::transport::Endpoint::from_shared(url)
            .ok()?
            .connect_timeout(Duration::from_secs(2))
            .timeout(Duration::from_secs(5))
            .connect_lazy();
        let (tx, rx) = mpsc::channel(QUEUE);
        let waiting = Arc::new(tokio::sync::Notify::new());
        tokio::spawn(export(TraceServiceClient::new(channel), rx, waiting.clone(), dropped.clone(), endpoint.clone()));
        Some(Arc::new(Exporter { endpoint, tx, waiting, dropped }))
    }

    fn send(&self, record: Record) {
        if self.tx.try_send(record).is_err() {
            self.dropped.inc();
        } else if QUEUE - self.tx.capacity() >= BATCH {
            self.waiting.notify_one();
        }
    }
}

/// Up to a batch of the spans waiting in `rx`, spelled as OTLP, and whether any sender is left.
fn take_batch(rx: &mut mpsc::Receiver<Record>) -> (Vec<OtlpSpan>, bool) {
    let mut spans = Vec::new();
    while spans.len() < BATCH {
        match rx.try_recv() {
            Ok(record) => spans.push(record.otlp()),
            Err(mpsc::error::TryRecvError::Empty) => return (spans, true),
            Err(mpsc::error::TryRecvError::Disconnected) => return (spans, false),
        }
    }
    (spans, true)
}

fn export_request(spans: Vec<OtlpSpan>) -> ExportTraceServiceRequest {
    ExportTraceServiceRequest {
        resource_spans: vec![ResourceSpans {
            resource: Some(Resource { attributes: vec![kv("service.name", "strait-dp")], dropped_attributes_count: 0 }),
            scope_spans: vec![ScopeSpans {
                scope: Some(InstrumentationScope {
                    name: "strait".into(),
                    version: env!("CARGO_PKG_VERSION").into(),
                    ..Default::default()
                }),
                spans,
                schema_url: String::new(),
            }],
            schema_url: String::new(),
        }],
    }
}

async fn export(
    mut client: TraceServiceClient<tonic::transport::Channel>,
    mut rx: mpsc::Receiver<Record>,
    waiting: Arc<tokio::sync::Notify>,
    dropped: Counter,
    endpoint: String,
) {
    let mut last_warning: Option<Instant> = None;
    let mut open = true;
    while open {
        // Every second, or at once when a batch is waiting: never woken span by span, so a
        // sampled request costs its data path nothing but the hand-over.
        tokio::select! {
            () = tokio::time::sleep(FLUSH) => {}
            () = waiting.notified() => {}
        }
        loop {
            let (spans, senders_left) = take_batch(&mut rx);
            open = senders_left;
            let (count, full) = (spans.len() as u64, spans.len() == BATCH);
            if count == 0 {
                break;
            }
            if let Err(status) = client.export(export_request(spans)).await {
                dropped.inc_by(count);
                if last_warning.is_none_or(|at| at.elapsed() > Duration::from_secs(60)) {
                    tracing::warn!(endpoint, error = %status.message(), "cannot export spans (MeshTrace); they are dropped");
                    last_warning = Some(Instant::now());
                }
            }
            if !full {
                break;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn contexts_come_from_w3c_or_b3_and_go_on_as_children() {
        let mut h = HeaderMap::new();
        assert_eq!(incoming(&h), None);
        h.insert("traceparent", "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01".parse().unwrap());
        let c = incoming(&h).unwrap();
        assert_eq!(
            (to_hex(&c.trace_id).as_str(), c.parent.map(|p| to_hex(&p)), c.sampled),
            ("4bf92f3577b34da6a3ce929d0e0e4736", Some("00f067aa0ba902b7".into()), true)
        );
        propagate(&mut h, &c, [1, 2, 3, 4, 5, 6, 7, 8], None);
        assert_eq!(h["traceparent"], "00-4bf92f3577b34da6a3ce929d0e0e4736-0102030405060708-01");
        assert!(h["traceparent"].is_sensitive(), "ids that never repeat stay out of the HPACK tables");
        propagate(&mut h, &Context { sampled: false, ..c }, [0xab; 8], None);
        assert_eq!(h["traceparent"], "00-4bf92f3577b34da6a3ce929d0e0e4736-abababababababab-00");
        let mut b3 = HeaderMap::new();
        b3.insert("x-b3-traceid", "463ac35c9f6413ad".parse().unwrap());
        b3.insert("x-b3-spanid", "a2fb4a1d1a96d312".parse().unwrap());
        b3.insert("x-b3-sampled", "1".parse().unwrap());
        let c = incoming(&b3).unwrap();
        assert_eq!(to_hex(&c.trace_id), "0000000000000000463ac35c9f6413ad", "64-bit B3 ids are widened");
        let forms = read(&b3).1;
        propagate(&mut b3, &c, [9; 8], forms);
        assert_eq!(b3["x-b3-spanid"], "0909090909090909");
        assert_eq!(b3["x-b3-parentspanid"], "a2fb4a1d1a96d312");
        assert!(b3.contains_key("traceparent"));
        let mut bad = HeaderMap::new();
        bad.insert("traceparent", "00-zz-00f067aa0ba902b7-01".parse().unwrap());
        assert_eq!(incoming(&bad), None, "a malformed traceparent starts a new trace");
        for bad in [
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",
            "00-4bf92f3577b34da6a3ce929d0e0e47360-0f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01x",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e473g-00f067aa0ba902b7-01",
        ] {
            let h: HeaderMap = [(TRACEPARENT.clone(), bad.parse().unwrap())].into_iter().collect();
            assert_eq!(incoming(&h), None, "{bad}");
        }
        let later: HeaderMap =
            [(TRACEPARENT.clone(), "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00-more".parse().unwrap())].into_iter().collect();
        assert_eq!(incoming(&later).map(|c| (to_hex(&c.trace_id), c.sampled)), Some(("4bf92f3577b34da6a3ce929d0e0e4736".into(), false)));
        // Where reading found no B3, rewriting does not look for it again, and adds none.
        let mut plain = HeaderMap::new();
        let forms = read(&plain).1;
        assert_eq!(forms, Some((false, false)));
        propagate(&mut plain, &c, [3; 8], forms);
        assert_eq!(plain.len(), 1);
        let mut single: HeaderMap = [(B3.clone(), "463ac35c9f6413ad-a2fb4a1d1a96d312-1".parse().unwrap())].into_iter().collect();
        let (c, forms) = read(&single);
        propagate(&mut single, &c.unwrap(), [4; 8], forms);
        assert_eq!(single[&B3], "0000000000000000463ac35c9f6413ad-0404040404040404-1-a2fb4a1d1a96d312");
    }

    #[test]
    fn sampling_follows_the_caller_and_the_percentages() {
        let conf = |v: serde_json::Value| -> TraceConf { serde_json::from_value(v).unwrap() };
        let local = super::super::access_log::Local::default();
        let dropped = Counter::default();
        let none = Tracer::compile(&conf(serde_json::json!({"sampling": {"random": 0}})), local.clone(), None, &dropped, false);
        let mut h = HeaderMap::new();
        assert!(none.start(Side::Outbound, &mut h, &Arc::from("backend")).is_none());
        assert!(h["traceparent"].to_str().unwrap().ends_with("-00"), "not sampled, still propagated");
        let c = incoming(&h).unwrap();
        assert!(!c.sampled);
    }

    #[test]
    fn ids_do_not_repeat_and_sampling_draws_keep_their_percentage() {
        let ids: std::collections::HashSet<[u8; 16]> = (0..100_000).map(|_| random_id::<16>()).collect();
        assert_eq!(ids.len(), 100_000, "a trace id repeated");
        let spans: std::collections::HashSet<[u8; 8]> = (0..100_000).map(|_| random_id::<8>()).collect();
        assert_eq!(spans.len(), 100_000, "a span id repeated");
        // Another thread has a generator of its own, seeded apart.
        let there = std::thread::spawn(random_id::<16>).join().unwrap();
        assert!(!ids.contains(&there));
        // 1% of 200,000: 2,000, with a standard deviation of about 45.
        let sampled = (0..200_000).filter(|_| chance(1.0)).count();
        assert!((1_700..=2_300).contains(&sampled), "{sampled} of 200,000 sampled at 1%");
        let half = (0..200_000).filter(|_| chance(50.0)).count();
        assert!((98_500..=101_500).contains(&half), "{half} of 200,000 sampled at 50%");
        assert!((0..1_000).all(|_| chance(100.0)) && !(0..1_000).any(|_| chance(0.0)));
    }
}
