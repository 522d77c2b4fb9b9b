//! MeshAccessLog: a line per HTTP request (once its response has ended) and per TCP
//! connection (once it has closed), to a file (`/dev/stdout` works) or a TCP collector, as
//! plain text from a template or as JSON.
//!
//! In: the merged MeshAccessLog confs (per destination for `to`, per caller rule of an inbound
//! for `from`) and, per request or connection, an [`Entry`]. Out: lines written by one thread
//! per backend, off the request path: the request only pushes its entry on the backend's
//! batch (a vector under a mutex the writer takes once per linger, 100 ms), and an entry that
//! finds the batch full is dropped and counted (`strait_dp_access_log_dropped_total`), never
//! waited for. A file is opened once and
//! appended to; a TCP collector is connected on first use and again after a failure (lines
//! meanwhile are dropped and counted). Backends are shared by every rule that names them and
//! kept across configuration pushes.
//!
//! Placeholders (`%NAME%`) of a template or of a JSON field's value: see [`FIELDS`].

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant, SystemTime};

use prometheus_client::metrics::counter::Counter;

use super::http::body::Held;
use strait_api::policies::access_log::{AccessLogConf, LogFormat};

/// The placeholders a template may use, with what each holds (in the order of [`Field`]).
pub use strait_api::policies::access_log::PLACEHOLDERS as FIELDS;

/// The default plain template.
pub const DEFAULT_TEMPLATE: &str = "[%START_TIME%] %DIRECTION% %MESH% \"%METHOD% %PATH%\" %RESPONSE_CODE% %RESPONSE_FLAGS% \
     %BYTES_RECEIVED% %BYTES_SENT% %DURATION% %SOURCE_SERVICE%(%SOURCE_ZONE%) -> %DESTINATION_SERVICE%(%DESTINATION_ZONE%) \
     %UPSTREAM_HOST% %TRACE_ID%";

/// A name an entry shares with the sidecar's other entries (mesh, service, zone): counted,
/// not copied, per request. `None` or empty shows as `-`.
pub type Name = Option<Arc<str>>;

/// Text kept inline when it is short, as a request's path usually is (no allocation per
/// request), and on the heap when it is longer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Text {
    /// Up to 62 bytes.
    Inline { len: u8, bytes: [u8; 62] },
    /// Longer.
    Heap(Box<str>),
}

impl Default for Text {
    fn default() -> Text {
        Text::Inline { len: 0, bytes: [0; 62] }
    }
}

impl Text {
    /// `text`, inline when it fits.
    pub fn new(text: &str) -> Text {
        let mut bytes = [0u8; 62];
        match bytes.get_mut(..text.len()) {
            Some(head) => {
                head.copy_from_slice(text.as_bytes());
                Text::Inline { len: text.len() as u8, bytes }
            }
            None => Text::Heap(text.into()),
        }
    }

    /// The text.
    pub fn as_str(&self) -> &str {
        match self {
            // Copied from a `&str` whole, so it is valid UTF-8.
            Text::Inline { len, bytes } => std::str::from_utf8(&bytes[..usize::from(*len)]).unwrap_or_default(),
            Text::Heap(text) => text,
        }
    }
}

/// What one request or connection was.
#[derive(Debug, Clone, Default)]
pub struct Entry {
    /// When it started.
    pub start: Option<SystemTime>,
    /// inbound or outbound.
    pub direction: &'static str,
    /// The mesh.
    pub mesh: Name,
    /// The caller's service.
    pub source_service: Name,
    /// The called service.
    pub destination_service: Name,
    /// The caller's zone, if known.
    pub source_zone: Name,
    /// The answering endpoint's zone, if known.
    pub destination_zone: Name,
    /// tcp, http, http2 or grpc.
    pub protocol: &'static str,
    /// HTTP method.
    pub method: Option<http::Method>,
    /// HTTP path and query.
    pub path: Text,
    /// HTTP host.
    pub authority: Option<http::uri::Authority>,
    /// HTTP status.
    pub status: u16,
    /// The sidecar answered itself.
    pub local: bool,
    /// Until the response headers.
    pub response_time: Option<Duration>,
    /// Until the end.
    pub duration: Duration,
    /// From the caller.
    pub bytes_received: u64,
    /// To the caller.
    pub bytes_sent: u64,
    /// Where the sidecar sent it.
    pub upstream: Option<std::net::SocketAddr>,
    /// The request's trace id (up to 32 hex digits, inline).
    pub trace_id: Text,
}

/// The trace id of a request's `traceparent` (W3C) or `x-b3-traceid` / `b3` header; empty
/// when it has none, or one longer than a trace id's 32 digits.
pub fn trace_id(headers: &http::HeaderMap) -> Text {
    use super::trace::{traceparent_parts, B3, B3_TRACE_ID, TRACEPARENT};
    let value = |name: &http::HeaderName| headers.get(name).and_then(|v| v.to_str().ok());
    // A malformed `traceparent` has no id (and the tracer starts a new trace, whatever B3 says).
    let id = match headers.get(&TRACEPARENT) {
        Some(t) => traceparent_parts(t.as_bytes()).and_then(|(id, _, _)| std::str::from_utf8(id).ok()).unwrap_or(""),
        None => value(&B3_TRACE_ID).or_else(|| value(&B3).and_then(|b| b.split('-').next())).unwrap_or(""),
    };
    if id.len() <= 32 {
        Text::new(id)
    } else {
        Text::default()
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Field {
    StartTime,
    Direction,
    Mesh,
    SourceService,
    DestinationService,
    SourceZone,
    DestinationZone,
    Protocol,
    Method,
    Path,
    Authority,
    ResponseCode,
    ResponseFlags,
    ResponseDuration,
    Duration,
    BytesReceived,
    BytesSent,
    UpstreamHost,
    TraceId,
}

const ALL_FIELDS: [Field; 19] = [
    Field::StartTime,
    Field::Direction,
    Field::Mesh,
    Field::SourceService,
    Field::DestinationService,
    Field::SourceZone,
    Field::DestinationZone,
    Field::Protocol,
    Field::Method,
    Field::Path,
    Field::Authority,
    Field::ResponseCode,
    Field::ResponseFlags,
    Field::ResponseDuration,
    Field::Duration,
    Field::BytesReceived,
    Field::BytesSent,
    Field::UpstreamHost,
    Field::TraceId,
];

fn or_dash(s: &str) -> &str {
    if s.is_empty() {
        "-"
    } else {
        s
    }
}

fn name(n: &Name) -> &str {
    or_dash(n.as_deref().unwrap_or_default())
}

/// `d` in milliseconds with three decimals, from integers (no float formatting per line).
fn millis(d: Duration, out: &mut String) {
    use std::fmt::Write;
    let micros = d.as_micros();
    let _ = write!(out, "{}.{:03}", micros / 1000, micros % 1000);
}

impl Field {
    /// Appends this field's value in `e` to `out` (rendering runs for every line: nothing
    /// is allocated but `out`'s growth).
    fn write(self, e: &Entry, out: &mut String) {
        use std::fmt::Write;
        match self {
            Field::StartTime => {
                let mut buf = [0u8; 64];
                let mut cursor = std::io::Cursor::new(&mut buf[..]);
                let written = e.start.and_then(|t| {
                    time::OffsetDateTime::from(t).format_into(&mut cursor, &time::format_description::well_known::Rfc3339).ok()
                });
                match written.and_then(|n| std::str::from_utf8(&buf[..n]).ok()) {
                    Some(text) => out.push_str(text),
                    None => out.push('-'),
                }
            }
            Field::Direction => out.push_str(e.direction),
            Field::Mesh => out.push_str(name(&e.mesh)),
            Field::SourceService => out.push_str(name(&e.source_service)),
            Field::DestinationService => out.push_str(name(&e.destination_service)),
            Field::SourceZone => out.push_str(name(&e.source_zone)),
            Field::DestinationZone => out.push_str(name(&e.destination_zone)),
            Field::Protocol => out.push_str(e.protocol),
            Field::Method => out.push_str(e.method.as_ref().map_or("-", http::Method::as_str)),
            Field::Path => out.push_str(or_dash(e.path.as_str())),
            Field::Authority => out.push_str(e.authority.as_ref().map_or("-", |a| or_dash(a.as_str()))),
            Field::ResponseCode => {
                let _ = write!(out, "{}", e.status);
            }
            Field::ResponseFlags => out.push_str(if e.local { "local" } else { "-" }),
            Field::ResponseDuration => match e.response_time {
                Some(d) => millis(d, out),
                None => out.push('-'),
            },
            Field::Duration => millis(e.duration, out),
            Field::BytesReceived => {
                let _ = write!(out, "{}", e.bytes_received);
            }
            Field::BytesSent => {
                let _ = write!(out, "{}", e.bytes_sent);
            }
            Field::UpstreamHost => match e.upstream {
                Some(a) => {
                    let _ = write!(out, "{a}");
                }
                None => out.push('-'),
            },
            Field::TraceId => out.push_str(or_dash(e.trace_id.as_str())),
        }
    }

    /// Numbers stay numbers in JSON.
    fn is_number(self) -> bool {
        matches!(self, Field::ResponseCode | Field::Duration | Field::BytesReceived | Field::BytesSent)
    }
}

#[derive(Debug, Clone, PartialEq)]
enum Piece {
    Text(String),
    Field(Field),
}

/// Splits a template into text and placeholders; an unknown placeholder is an error that
/// names it (the API refuses it first).
fn parse_template(template: &str) -> Result<Vec<Piece>, String> {
    let mut pieces = Vec::new();
    let mut rest = template;
    while let Some(open) = rest.find('%') {
        if open > 0 {
            pieces.push(Piece::Text(rest[..open].to_string()));
        }
        let after = &rest[open + 1..];
        let close = after.find('%').ok_or_else(|| format!("an unclosed placeholder in {template:?}"))?;
        let name = &after[..close];
        let index = FIELDS.iter().position(|(n, _)| *n == name).ok_or_else(|| format!("unknown placeholder %{name}%"))?;
        pieces.push(Piece::Field(ALL_FIELDS[index]));
        rest = &after[close + 1..];
    }
    if !rest.is_empty() {
        pieces.push(Piece::Text(rest.to_string()));
    }
    Ok(pieces)
}

fn render(pieces: &[Piece], e: &Entry, out: &mut String) {
    for piece in pieces {
        match piece {
            Piece::Text(t) => out.push_str(t),
            Piece::Field(f) => f.write(e, out),
        }
    }
}

/// A line format, compiled.
#[derive(Debug, PartialEq)]
pub struct Format(Kind);

#[derive(Debug, PartialEq)]
enum Kind {
    /// A template.
    Plain(Vec<Piece>),
    /// JSON fields, each a key and a template.
    Json(Vec<(String, Vec<Piece>)>),
}

impl Format {
    fn compile(format: Option<&LogFormat>) -> Result<Format, String> {
        match format {
            Some(LogFormat { json: Some(fields), .. }) => fields
                .iter()
                .map(|f| Ok((f.key.clone(), parse_template(&f.value)?)))
                .collect::<Result<_, String>>()
                .map(|f| Format(Kind::Json(f))),
            Some(LogFormat { plain: Some(template), .. }) => parse_template(template).map(|p| Format(Kind::Plain(p))),
            _ => parse_template(DEFAULT_TEMPLATE).map(|p| Format(Kind::Plain(p))),
        }
    }

    /// The line of `entry`, newline included.
    pub fn line(&self, entry: &Entry) -> String {
        let mut out = String::with_capacity(256);
        self.line_into(entry, &mut out, &mut String::new());
        out
    }

    /// Appends the line of `entry`, newline included, to `out` (`scratch`: a buffer for JSON
    /// values, reused from line to line).
    fn line_into(&self, entry: &Entry, out: &mut String, scratch: &mut String) {
        match &self.0 {
            Kind::Plain(pieces) => render(pieces, entry, out),
            Kind::Json(fields) => {
                out.push('{');
                for (n, (key, pieces)) in fields.iter().enumerate() {
                    if n > 0 {
                        out.push(',');
                    }
                    json_string(key, out);
                    out.push(':');
                    match pieces.as_slice() {
                        // Numbers stay numbers.
                        [Piece::Field(f)] if f.is_number() => f.write(entry, out),
                        _ => {
                            scratch.clear();
                            render(pieces, entry, scratch);
                            json_string(scratch, out);
                        }
                    }
                }
                out.push('}');
            }
        }
        out.push('\n');
    }
}

/// Appends `s` as a JSON string: runs that need no escape are copied whole.
fn json_string(s: &str, out: &mut String) {
    use std::fmt::Write;
    out.push('"');
    let mut rest = s;
    while let Some(at) = rest.bytes().position(|b| b == b'"' || b == b'\\' || b < 0x20) {
        out.push_str(&rest[..at]);
        match rest.as_bytes()[at] {
            b'"' => out.push_str("\\\""),
            b'\\' => out.push_str("\\\\"),
            b'\n' => out.push_str("\\n"),
            b'\r' => out.push_str("\\r"),
            b'\t' => out.push_str("\\t"),
            b => {
                let _ = write!(out, "\\u{:04x}", b);
            }
        }
        // The byte is ASCII, so the rest starts on a character boundary.
        rest = &rest[at + 1..];
    }
    out.push_str(rest);
    out.push('"');
}

/// Entries waiting for their backend's writer. A format is kept once per run of entries that
/// share it, so a request adds no reference count (the writer would drop it from another core).
#[derive(Debug, Default)]
struct Batch {
    entries: Vec<Entry>,
    /// Each format, with the index of the first entry it renders.
    formats: Vec<(usize, Arc<Format>)>,
    /// The writer waits to be woken by the next entry.
    asleep: bool,
    /// The sink is gone: the writer writes what is left and ends.
    closed: bool,
}

fn lock(batch: &Mutex<Batch>) -> MutexGuard<'_, Batch> {
    // A writer that panicked mid-swap leaves whole vectors behind: the batch stays usable.
    batch.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Where lines go: a file or a TCP collector, written by a thread of its own.
///
/// A request hands its entry over by pushing it on the batch under a mutex that only the
/// writer also takes, once per [`LINGER`]: no channel operation, no allocation while the
/// batch's vector has room, and no system call unless the writer is asleep (after a linger
/// that brought nothing), when the entry wakes it.
#[derive(Debug)]
pub struct Sink {
    batch: Arc<Mutex<Batch>>,
    writer: Option<std::thread::Thread>,
    dropped: Counter,
}

/// How long a backend waits after a first line for more to write with it (lines reach their
/// backend at most this late, plus the write).
const LINGER: Duration = Duration::from_millis(100);

/// Entries a backend may have waiting before new ones are dropped.
const QUEUE: usize = 4096;

/// Rendered lines written at once, at most.
const CHUNK: usize = 64 * 1024;

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum Target {
    File(String),
    Tcp(String),
}

impl Sink {
    fn start(target: Target, dropped: Counter) -> Arc<Sink> {
        let batch = Arc::new(Mutex::new(Batch::default()));
        let (task_batch, task_dropped) = (batch.clone(), dropped.clone());
        // A thread of its own, run when its core is idle: rendering and writing never take
        // the data path's thread or delay it, and a slow disk or collector blocks nothing but
        // this thread.
        let spawned = std::thread::Builder::new()
            .name("strait-access-log".into())
            .spawn(move || write_lines(&task_batch, Output::new(target), &task_dropped));
        let writer = match spawned {
            Ok(handle) => Some(handle.thread().clone()),
            Err(error) => {
                tracing::error!(%error, "cannot start the access log writer (MeshAccessLog); lines are dropped");
                None
            }
        };
        Arc::new(Sink { batch, writer, dropped })
    }

    /// Queues `entry`, to be rendered with `format`, or drops it (counted) if the queue is full.
    fn push(&self, entry: Entry, format: &Arc<Format>) {
        let wake = {
            let mut batch = lock(&self.batch);
            if batch.entries.len() >= QUEUE {
                drop(batch);
                self.dropped.inc();
                return;
            }
            if !batch.formats.last().is_some_and(|(_, f)| Arc::ptr_eq(f, format)) {
                let at = batch.entries.len();
                batch.formats.push((at, format.clone()));
            }
            batch.entries.push(entry);
            std::mem::take(&mut batch.asleep)
        };
        if wake {
            self.wake();
        }
    }

    fn wake(&self) {
        if let Some(writer) = &self.writer {
            writer.unpark();
        }
    }
}

impl Drop for Sink {
    fn drop(&mut self) {
        lock(&self.batch).closed = true;
        self.wake();
    }
}

/// A backend's destination, opened on first use and again after a failure.
enum Output {
    File { path: String, file: Option<std::fs::File> },
    Tcp { address: String, stream: Option<std::net::TcpStream>, retry_at: Instant },
}

impl Output {
    fn new(target: Target) -> Output {
        match target {
            Target::File(path) => Output::File { path, file: None },
            Target::Tcp(address) => Output::Tcp { address, stream: None, retry_at: Instant::now() },
        }
    }

    /// Writes `lines` whole, or says it could not.
    fn write(&mut self, lines: &[u8]) -> bool {
        use std::io::Write as _;
        match self {
            Output::File { path, file } => {
                if file.is_none() {
                    *file = std::fs::OpenOptions::new().create(true).append(true).open(&*path).ok();
                }
                let written = file.as_mut().is_some_and(|f| f.write_all(lines).is_ok());
                if !written {
                    *file = None;
                }
                written
            }
            Output::Tcp { address, stream, retry_at } => {
                if stream.is_none() && Instant::now() >= *retry_at {
                    *stream = connect(address);
                    if stream.is_none() {
                        *retry_at = Instant::now() + Duration::from_secs(1);
                    }
                }
                let written = stream.as_mut().is_some_and(|s| s.write_all(lines).is_ok());
                if !written {
                    *stream = None;
                }
                written
            }
        }
    }

    fn warn(&self) {
        match self {
            Output::File { path, .. } => {
                tracing::warn!(path, "cannot write the access log (MeshAccessLog file backend); lines are dropped");
            }
            Output::Tcp { address, .. } => {
                tracing::warn!(address, "cannot reach the access log collector (MeshAccessLog tcp backend); lines are dropped");
            }
        }
    }
}

/// A connection to the collector at `address` (`host:port`), within 2 s, whose writes give up
/// after 5 s (a stalled collector then costs dropped lines, not a writer stuck for good).
fn connect(address: &str) -> Option<std::net::TcpStream> {
    use std::net::ToSocketAddrs as _;
    let stream = address.to_socket_addrs().ok()?.find_map(|a| std::net::TcpStream::connect_timeout(&a, Duration::from_secs(2)).ok())?;
    stream.set_write_timeout(Some(Duration::from_secs(5))).ok()?;
    Some(stream)
}

/// Writes the entries queued on `batch` to `output`, on the calling thread, until the sink is
/// gone and nothing is left.
///
/// While lines keep coming, the thread wakes on its own every [`LINGER`] and takes what came
/// meanwhile: a request never has to wake it (a wake-up is a system call on the request's
/// thread). Only after a [`LINGER`] that brought nothing does it wait to be woken by the next
/// line, and then lingers before taking it, so that the lines after it go in the same write.
fn write_lines(batch: &Mutex<Batch>, mut output: Output, dropped: &Counter) {
    if let Err(error) = strait_runtime::threads::run_when_idle() {
        tracing::debug!(%error, "the access log writer keeps the normal priority");
    }
    let mut taken = Batch::default();
    let (mut out, mut scratch) = (String::with_capacity(CHUNK + 4096), String::new());
    let mut last_warning: Option<Instant> = None;
    let mut flush = |out: &mut String, lines: u64| {
        if !output.write(out.as_bytes()) {
            dropped.inc_by(lines);
            if last_warning.is_none_or(|at| at.elapsed() > Duration::from_secs(60)) {
                output.warn();
                last_warning = Some(Instant::now());
            }
        }
        out.clear();
    };
    loop {
        {
            let mut queued = lock(batch);
            std::mem::swap(&mut queued.entries, &mut taken.entries);
            std::mem::swap(&mut queued.formats, &mut taken.formats);
            if taken.entries.is_empty() {
                if queued.closed {
                    return;
                }
                queued.asleep = true;
            }
        }
        if taken.entries.is_empty() {
            // Woken by a line (or spuriously: the next turn finds nothing and parks again).
            std::thread::park();
            std::thread::sleep(LINGER);
            continue;
        }
        let mut lines = 0;
        for (n, (first, format)) in taken.formats.iter().enumerate() {
            let end = taken.formats.get(n + 1).map_or(taken.entries.len(), |(next, _)| *next);
            for entry in taken.entries.get(*first..end).unwrap_or_default() {
                format.line_into(entry, &mut out, &mut scratch);
                lines += 1;
                if out.len() >= CHUNK {
                    flush(&mut out, lines);
                    lines = 0;
                }
            }
        }
        if !out.is_empty() {
            flush(&mut out, lines);
        }
        let busy = taken.entries.len() >= QUEUE / 4;
        // Dropped here, on this thread; the vectors keep their room for the next swap.
        taken.entries.clear();
        taken.formats.clear();
        // A full batch (a high request rate) is taken again at once, so the queue keeps room.
        if !busy {
            std::thread::sleep(LINGER);
        }
    }
}

/// One MeshAccessLog conf, compiled: its backends, each with its format.
#[derive(Debug)]
pub struct AccessLog {
    backends: Vec<(Arc<Sink>, Arc<Format>)>,
}

/// What every entry of this sidecar shares.
#[derive(Debug, Clone, Default)]
pub struct Local {
    /// The mesh.
    pub mesh: Arc<str>,
    /// This sidecar's zone.
    pub zone: Arc<str>,
    /// This sidecar's service.
    pub service: Arc<str>,
}

impl AccessLog {
    /// Hands `entry` to every backend, or drops it (counted) where the queue is full.
    pub fn log(&self, entry: Entry) {
        if self.backends.is_empty() {
            return;
        }
        // The entry moves to the (last) backend's writer by value: nothing is allocated per
        // request, and nothing allocated here is freed by the writer's thread.
        let last = self.backends.len() - 1;
        let mut entry = Some(entry);
        for (n, (sink, format)) in self.backends.iter().enumerate() {
            let entry = if n == last { entry.take().unwrap_or_default() } else { entry.clone().unwrap_or_default() };
            sink.push(entry, format);
        }
    }
}

/// The backends in use, by target: shared by every conf that names one, and kept from one
/// configuration to the next.
#[derive(Debug, Default)]
pub struct Sinks {
    by_target: HashMap<Target, Arc<Sink>>,
}

impl Sinks {
    /// Compiles `conf`, reusing `previous`'s backends (or, with `start` false, only checking it).
    pub fn compile(&mut self, conf: &AccessLogConf, previous: &Sinks, dropped: &Counter, start: bool) -> Result<AccessLog, String> {
        let mut backends = Vec::new();
        for backend in &conf.backends {
            let (target, format) = match (&backend.file, &backend.tcp) {
                (Some(f), _) => (Target::File(f.path.clone()), f.format.as_ref()),
                (None, Some(t)) => (Target::Tcp(t.address.clone()), t.format.as_ref()),
                (None, None) => continue,
            };
            let format = Arc::new(Format::compile(format)?);
            if !start {
                continue;
            }
            let sink = match self.by_target.get(&target).or_else(|| previous.by_target.get(&target)) {
                Some(sink) => sink.clone(),
                None => Sink::start(target.clone(), dropped.clone()),
            };
            self.by_target.insert(target, sink.clone());
            backends.push((sink, format));
        }
        Ok(AccessLog { backends })
    }
}

/// What a request body counts its bytes into, for its request's entry: shared, since the
/// request body may still be passing when the response has ended and the entry is logged.
#[derive(Debug, Clone)]
pub struct Received(Arc<AtomicU64>);

impl Received {
    /// Counts `n` more bytes.
    pub fn add(&self, n: u64) {
        self.0.fetch_add(n, Ordering::Relaxed);
    }
}

/// A request's access-log entry, logged when dropped (its response body ended or was
/// dropped), with the bytes its bodies counted by then.
pub struct Pending {
    /// Where it goes.
    pub log: Arc<AccessLog>,
    /// The entry so far.
    pub entry: Entry,
    /// When the request arrived.
    pub started: Instant,
    /// The request body's bytes, if it has a body (none is allocated for one without).
    received: Option<Arc<AtomicU64>>,
}

impl Pending {
    /// `entry`, to be logged to `log` once its response has ended.
    pub fn new(log: Arc<AccessLog>, entry: Entry, started: Instant) -> Pending {
        Pending { log, entry, started, received: None }
    }

    /// What the request body counts into.
    pub fn received(&mut self) -> Received {
        Received(self.received.get_or_insert_with(Arc::default).clone())
    }

    /// The response body, which holds this entry, passed `n` more bytes.
    pub fn sent(&mut self, n: u64) {
        self.entry.bytes_sent += n;
    }
}

impl Drop for Pending {
    fn drop(&mut self) {
        let mut entry = std::mem::take(&mut self.entry);
        entry.duration = self.started.elapsed();
        entry.bytes_received = self.received.as_ref().map_or(0, |r| r.load(Ordering::Relaxed));
        self.log.log(entry);
    }
}

/// A response body holding its request's entry counts the bytes sent into it.
impl<A: Unpin, B: Unpin> Held for (A, Option<Box<Pending>>, B) {
    fn passed(&mut self, n: u64) {
        if let Some(p) = &mut self.1 {
            p.sent(n);
        }
    }
}

/// A response body holding its request's entry counts the bytes sent into it.
impl<B: Unpin> Held for (Option<Box<Pending>>, B) {
    fn passed(&mut self, n: u64) {
        if let Some(p) = &mut self.0 {
            p.sent(n);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry() -> Entry {
        Entry {
            start: Some(SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000)),
            direction: "outbound",
            mesh: Some("default".into()),
            source_service: Some("web".into()),
            destination_service: Some("backend".into()),
            source_zone: Some("zone-1".into()),
            destination_zone: Some("zone-2".into()),
            protocol: "http",
            method: Some(http::Method::GET),
            path: Text::new("/api?x=1"),
            status: 200,
            duration: Duration::from_micros(1500),
            bytes_sent: 42,
            trace_id: Text::new("4bf92f3577b34da6a3ce929d0e0e4736"),
            ..Entry::default()
        }
    }

    #[test]
    fn templates_render_every_placeholder_and_json_keeps_numbers() {
        let plain = Format::compile(Some(&LogFormat {
            plain: Some("%START_TIME% %METHOD% %PATH% %RESPONSE_CODE% %DURATION% %SOURCE_SERVICE%@%SOURCE_ZONE% %AUTHORITY%".into()),
            json: None,
        }))
        .unwrap();
        assert_eq!(plain.line(&entry()), "2023-11-14T22:13:20Z GET /api?x=1 200 1.500 web@zone-1 -\n");
        let json = Format::compile(Some(&LogFormat {
            plain: None,
            json: Some(vec![
                strait_api::policies::access_log::JsonField { key: "status".into(), value: "%RESPONSE_CODE%".into() },
                strait_api::policies::access_log::JsonField { key: "route".into(), value: "%METHOD% %PATH%".into() },
                strait_api::policies::access_log::JsonField { key: "trace".into(), value: "%TRACE_ID%".into() },
            ]),
        }))
        .unwrap();
        let line: serde_json::Value = serde_json::from_str(&json.line(&entry())).unwrap();
        assert_eq!(line, serde_json::json!({"status": 200, "route": "GET /api?x=1", "trace": "4bf92f3577b34da6a3ce929d0e0e4736"}));
        let every: String = FIELDS.iter().map(|(n, _)| format!("%{n}%")).collect::<Vec<_>>().join(" ");
        assert!(parse_template(&every).is_ok());
        assert_eq!(parse_template("%NOPE%").unwrap_err(), "unknown placeholder %NOPE%");
        assert!(Format::compile(None).unwrap().line(&entry()).contains("\"GET /api?x=1\" 200 - 0 42 1.500 web(zone-1) -> backend(zone-2)"));
    }

    #[test]
    fn trace_ids_come_from_w3c_or_b3_headers() {
        let mut h = http::HeaderMap::new();
        assert_eq!(trace_id(&h).as_str(), "");
        h.insert("b3", "80f198ee56343ba864fe8b2a57d3eff7-e457b5a2e4d86bd1-1".parse().unwrap());
        assert_eq!(trace_id(&h).as_str(), "80f198ee56343ba864fe8b2a57d3eff7");
        h.insert("traceparent", "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01".parse().unwrap());
        assert_eq!(trace_id(&h).as_str(), "4bf92f3577b34da6a3ce929d0e0e4736");
        h.insert("traceparent", format!("00-{}-00f067aa0ba902b7-01", "a".repeat(40)).parse().unwrap());
        assert_eq!(trace_id(&h).as_str(), "", "an id longer than 32 digits is not kept");
        h.insert("traceparent", "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7".parse().unwrap());
        assert_eq!(trace_id(&h).as_str(), "", "a traceparent without flags is malformed");
    }

    #[test]
    fn an_entry_logs_the_bytes_both_bodies_counted_whichever_ends_last() {
        let sink = Arc::new(Sink { batch: Arc::default(), writer: None, dropped: Counter::default() });
        let format = Arc::new(Format::compile(None).unwrap());
        let log = Arc::new(AccessLog { backends: vec![(sink.clone(), format)] });
        let mut pending = Pending::new(log.clone(), entry(), Instant::now());
        pending.entry.bytes_sent = 0;
        let received = pending.received();
        received.add(10);
        let mut response = (Some(Box::new(pending)), ());
        response.passed(3);
        response.passed(4);
        // The response ends (the entry is logged) while the request body still counts.
        drop(response);
        received.add(5);
        drop(received);
        // Without a request body, nothing is received.
        drop(Pending::new(log, entry(), Instant::now()));
        let batch = lock(&sink.batch);
        let counted: Vec<_> = batch.entries.iter().map(|e| (e.bytes_received, e.bytes_sent)).collect();
        assert_eq!(counted, [(10, 7), (0, 42)]);
        assert_eq!(batch.formats.len(), 1, "entries of one format share it");
    }

    #[test]
    fn a_full_batch_drops_and_counts_what_comes_after() {
        let sink = Sink { batch: Arc::default(), writer: None, dropped: Counter::default() };
        let format = Arc::new(Format::compile(None).unwrap());
        for _ in 0..QUEUE + 3 {
            sink.push(entry(), &format);
        }
        assert_eq!(lock(&sink.batch).entries.len(), QUEUE);
        assert_eq!(sink.dropped.get(), 3);
    }

    /// The voluntary context switches of this process's threads named `name` so far.
    fn switches_of(name: &str) -> u64 {
        let mut total = 0;
        for task in std::fs::read_dir("/proc/self/task").unwrap().flatten() {
            let comm = std::fs::read_to_string(task.path().join("comm")).unwrap_or_default();
            if comm.trim_end() != name {
                continue;
            }
            let status = std::fs::read_to_string(task.path().join("status")).unwrap_or_default();
            total += status
                .lines()
                .find_map(|l| l.strip_prefix("voluntary_ctxt_switches:"))
                .and_then(|v| v.trim().parse::<u64>().ok())
                .unwrap_or(0);
        }
        total
    }

    #[test]
    fn a_file_writer_under_steady_lines_wakes_once_a_linger_and_writes_every_line() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("access.log");
        let conf = AccessLogConf {
            backends: vec![strait_api::policies::access_log::AccessLogBackend {
                file: Some(strait_api::policies::access_log::FileBackend { path: path.to_string_lossy().into_owned(), format: None }),
                tcp: None,
            }],
        };
        let dropped = Counter::default();
        let log = Sinks::default().compile(&conf, &Sinks::default(), &dropped, true).unwrap();
        // Thread names are cut at 15 bytes.
        let writer = "strait-access-l";
        // A line every 2 ms for 1.5 s; the writer's wake-ups counted over the last second.
        let (mut sent, mut before) = (0u64, None);
        let start = Instant::now();
        while start.elapsed() < Duration::from_millis(1500) {
            log.log(entry());
            sent += 1;
            if before.is_none() && start.elapsed() >= Duration::from_millis(500) {
                before = Some((switches_of(writer), Instant::now()));
            }
            std::thread::sleep(Duration::from_millis(2));
        }
        let (before, since) = before.unwrap();
        let per_second = (switches_of(writer) - before) as f64 / since.elapsed().as_secs_f64();
        // A wake-up per LINGER (10 a second) and a few for the writes; a writer woken by the
        // first line of each batch as well would be at 20 or more.
        assert!(per_second < 16.0, "the writer woke {per_second:.0} times a second");
        drop(log);
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let written = std::fs::read_to_string(&path).unwrap_or_default().lines().count() as u64;
            if written == sent {
                break;
            }
            assert!(Instant::now() < deadline, "{written} of {sent} lines written");
            std::thread::sleep(Duration::from_millis(20));
        }
        assert_eq!(dropped.get(), 0);
    }

    #[test]
    fn json_lines_escape_what_they_must_and_keep_long_paths_whole() {
        let long = format!("/{}?q=\"quoted\"\\tab\there\u{1}é", "segment/".repeat(20));
        let mut e = entry();
        e.path = Text::new(&long);
        assert!(matches!(e.path, Text::Heap(_)), "a path longer than the inline buffer goes to the heap");
        assert!(matches!(Text::new(&"a".repeat(62)), Text::Inline { len: 62, .. }));
        e.duration = Duration::from_micros(12_345_678);
        let json = Format::compile(Some(&LogFormat {
            plain: None,
            json: Some(vec![
                strait_api::policies::access_log::JsonField { key: "path".into(), value: "%PATH%".into() },
                strait_api::policies::access_log::JsonField { key: "ms".into(), value: "%DURATION%".into() },
            ]),
        }))
        .unwrap();
        let line = json.line(&e);
        let parsed: serde_json::Value = serde_json::from_str(&line).unwrap();
        assert_eq!(parsed["path"], serde_json::Value::String(long));
        assert_eq!(parsed["ms"], serde_json::json!(12345.678));
        assert!(line.contains("\\u0001"), "{line}");
    }
}
