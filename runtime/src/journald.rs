//! `--log-format journald`: each event sent to the systemd journal over its native protocol,
//! with its fields as journal fields, so that `journalctl -u strait-zone ZONE=zone-1` or
//! `-o verbose` sees them.
//!
//! In: `tracing` events and the fields of the spans they happen in. Out: one datagram per event
//! on `/run/systemd/journal/socket`: `MESSAGE`, `PRIORITY` (error 3, warn 4, info 6, debug and
//! trace 7), `SYSLOG_IDENTIFIER` (the binary), `TARGET` (the module), `CODE_FILE`/`CODE_LINE`,
//! and each field of the event and of its spans (outermost first, the innermost wins), its name
//! upper-cased (`zone` → `ZONE`, `error` → `ERROR`). A value with a line break goes in the
//! protocol's length-prefixed form. Sending never blocks: a full socket drops the line.

use std::fmt::Write as _;
use std::os::unix::net::UnixDatagram;
use std::path::Path;

use tracing::field::{Field, Visit};
use tracing::{Event, Level, Subscriber};
use tracing_subscriber::layer::Context;
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::Layer;

/// Where journald listens for native messages.
pub const SOCKET: &str = "/run/systemd/journal/socket";

/// The layer: a datagram socket connected to the journal.
#[derive(Debug)]
pub struct Journald {
    socket: UnixDatagram,
    identifier: String,
}

impl Journald {
    /// Connects to the journal's socket at `path`.
    pub fn connect(path: &Path, identifier: &str) -> std::io::Result<Journald> {
        let socket = UnixDatagram::unbound()?;
        socket.connect(path)?;
        socket.set_nonblocking(true)?;
        Ok(Journald { socket, identifier: identifier.to_string() })
    }
}

/// The fields a span recorded, in the journal's form.
#[derive(Debug, Default)]
struct SpanFields(Vec<(String, String)>);

#[derive(Default)]
struct Collect {
    message: String,
    fields: Vec<(String, String)>,
}

impl Visit for Collect {
    fn record_str(&mut self, field: &Field, value: &str) {
        self.put(field, value.to_string());
    }

    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        self.put(field, format!("{value:?}"));
    }
}

impl Collect {
    fn put(&mut self, field: &Field, value: String) {
        if field.name() == "message" {
            self.message = value;
        } else {
            self.fields.push((field_name(field.name()), value));
        }
    }
}

/// A journal field name: upper-case letters, digits and `_`, not starting with `_` (those are
/// the journal's own) nor a digit.
fn field_name(name: &str) -> String {
    let mut out: String = name.chars().map(|c| if c.is_ascii_alphanumeric() { c.to_ascii_uppercase() } else { '_' }).collect();
    if out.starts_with(|c: char| c == '_' || c.is_ascii_digit()) {
        out.insert(0, 'F');
    }
    out.truncate(64);
    out
}

fn priority(level: &Level) -> &'static str {
    match *level {
        Level::ERROR => "3",
        Level::WARN => "4",
        Level::INFO => "6",
        _ => "7",
    }
}

/// Appends one field in the native protocol's form.
fn put(out: &mut Vec<u8>, name: &str, value: &str) {
    out.extend_from_slice(name.as_bytes());
    if value.contains('\n') {
        out.push(b'\n');
        out.extend_from_slice(&(value.len() as u64).to_le_bytes());
    } else {
        out.push(b'=');
    }
    out.extend_from_slice(value.as_bytes());
    out.push(b'\n');
}

impl<S> Layer<S> for Journald
where
    S: Subscriber + for<'a> LookupSpan<'a>,
{
    fn on_new_span(&self, attrs: &tracing::span::Attributes<'_>, id: &tracing::span::Id, ctx: Context<'_, S>) {
        let Some(span) = ctx.span(id) else { return };
        let mut collect = Collect::default();
        attrs.record(&mut collect);
        span.extensions_mut().insert(SpanFields(collect.fields));
    }

    fn on_record(&self, id: &tracing::span::Id, values: &tracing::span::Record<'_>, ctx: Context<'_, S>) {
        let Some(span) = ctx.span(id) else { return };
        let mut collect = Collect::default();
        values.record(&mut collect);
        let mut extensions = span.extensions_mut();
        match extensions.get_mut::<SpanFields>() {
            Some(fields) => fields.0.extend(collect.fields),
            None => extensions.insert(SpanFields(collect.fields)),
        }
    }

    fn on_event(&self, event: &Event<'_>, ctx: Context<'_, S>) {
        let meta = event.metadata();
        let mut collect = Collect::default();
        event.record(&mut collect);
        let mut out = Vec::with_capacity(256);
        let mut message = collect.message;
        if message.is_empty() {
            message = meta.name().to_string();
        }
        // The message alone reads badly without its fields in `journalctl`'s short output.
        let mut line = message.clone();
        for (name, value) in &collect.fields {
            let _ = write!(line, " {}={value}", name.to_ascii_lowercase());
        }
        put(&mut out, "MESSAGE", &line);
        put(&mut out, "PRIORITY", priority(meta.level()));
        put(&mut out, "SYSLOG_IDENTIFIER", &self.identifier);
        put(&mut out, "TARGET", meta.target());
        if let Some(file) = meta.file() {
            put(&mut out, "CODE_FILE", file);
        }
        if let Some(line) = meta.line() {
            put(&mut out, "CODE_LINE", &line.to_string());
        }
        let mut seen = std::collections::HashSet::new();
        for (name, value) in &collect.fields {
            if seen.insert(name.clone()) {
                put(&mut out, name, value);
            }
        }
        if let Some(scope) = ctx.event_scope(event) {
            // Innermost first: a field an inner span sets wins over an outer one's.
            for span in scope {
                if let Some(fields) = span.extensions().get::<SpanFields>() {
                    for (name, value) in fields.0.iter().rev() {
                        if seen.insert(name.clone()) {
                            put(&mut out, name, value);
                        }
                    }
                }
            }
        }
        // Best effort and never blocking: a journal that cannot keep up loses lines, as it
        // would rate-limit them anyway.
        let _ = self.socket.send(&out);
    }
}

/// Parses native-protocol datagrams (for tests and tools): the fields of one message.
pub fn parse(datagram: &[u8]) -> Vec<(String, String)> {
    let mut fields = Vec::new();
    let mut rest = datagram;
    while let Some(end) = rest.iter().position(|b| *b == b'\n' || *b == b'=') {
        let name = String::from_utf8_lossy(&rest[..end]).into_owned();
        if rest[end] == b'=' {
            let value_end = rest[end + 1..].iter().position(|b| *b == b'\n').map_or(rest.len(), |p| end + 1 + p);
            fields.push((name, String::from_utf8_lossy(&rest[end + 1..value_end]).into_owned()));
            rest = rest.get(value_end + 1..).unwrap_or_default();
        } else {
            let Some(len) = rest.get(end + 1..end + 9).map(|b| u64::from_le_bytes(b.try_into().unwrap_or_default()) as usize) else {
                break;
            };
            let start = end + 9;
            let Some(value) = rest.get(start..start + len) else { break };
            fields.push((name, String::from_utf8_lossy(value).into_owned()));
            rest = rest.get(start + len + 1..).unwrap_or_default();
        }
    }
    fields
}

#[cfg(test)]
mod tests {
    use super::*;
    use tracing_subscriber::prelude::*;

    #[test]
    fn events_reach_the_journal_with_their_fields_and_their_spans_fields() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("socket");
        let journal = UnixDatagram::bind(&path).unwrap();
        let layer = Journald::connect(&path, "strait-zone").unwrap();
        let subscriber = tracing_subscriber::registry().with(layer);
        tracing::subscriber::with_default(subscriber, || {
            let session = tracing::info_span!("kds", zone = "zone-1", mesh = tracing::field::Empty);
            let _entered = session.enter();
            session.record("mesh", "default");
            tracing::warn!(revision = 42, error = "line one\nline two", "the global refused");
        });
        let mut buffer = vec![0u8; 65536];
        let n = journal.recv(&mut buffer).unwrap();
        let fields: std::collections::HashMap<String, String> = parse(&buffer[..n]).into_iter().collect();
        assert!(fields["MESSAGE"].starts_with("the global refused revision=42"), "{fields:?}");
        assert_eq!(fields["PRIORITY"], "4");
        assert_eq!(fields["SYSLOG_IDENTIFIER"], "strait-zone");
        assert_eq!(fields["REVISION"], "42");
        assert_eq!(fields["ERROR"], "line one\nline two", "a value with a line break keeps it");
        assert_eq!(fields["ZONE"], "zone-1", "the span's field");
        assert_eq!(fields["MESH"], "default", "a field the span recorded later");
        assert!(fields["TARGET"].starts_with("strait_runtime"), "{fields:?}");
    }

    #[test]
    fn field_names_are_what_the_journal_accepts() {
        assert_eq!(field_name("peer.service"), "PEER_SERVICE");
        assert_eq!(field_name("_private"), "F_PRIVATE");
        assert_eq!(field_name("2xx"), "F2XX");
    }
}
