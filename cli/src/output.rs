//! Rendering of what the server returned: aligned tables for humans, YAML and JSON for tools.
//!
//! In: JSON values from the REST API (one resource, a `{total, items}` list, or service
//! summaries) and the time now. Out: text. YAML and JSON are the server's value unchanged, so
//! `straitctl apply -f` accepts them back; tables show NAME, MESH, AGE, VERSION and a short
//! per-type summary.

use std::fmt::Write as _;
use std::io::Write as _;

use serde::ser::{Serialize, SerializeMap, Serializer};
use serde_json::Value;
use strait_api::ResourceType;
use time::OffsetDateTime;

use crate::cli::OutputFormat;

/// Renders `value` as YAML or JSON (tables are built by [`resource_table`]), with the envelope
/// fields first so that `type` and `name` lead each resource as in the files users write.
pub fn structured(value: &Value, format: OutputFormat) -> Result<String, String> {
    let ordered = Ordered(value);
    match format {
        OutputFormat::Json => serde_json::to_string_pretty(&ordered).map(|s| s + "\n").map_err(|e| e.to_string()),
        OutputFormat::Yaml | OutputFormat::Table => serde_yaml::to_string(&ordered).map_err(|e| e.to_string()),
    }
}

/// Keys printed before the others (which follow in alphabetical order).
const LEADING_KEYS: &[&str] =
    &["type", "kind", "name", "mesh", "labels", "version", "creationTime", "modificationTime", "total", "targetRef", "spec"];

/// A JSON value serialized with [`LEADING_KEYS`] first in every object.
struct Ordered<'a>(&'a Value);

impl Serialize for Ordered<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match self.0 {
            Value::Object(map) => {
                let mut keys: Vec<&String> = map.keys().collect();
                keys.sort_by_key(|k| (LEADING_KEYS.iter().position(|l| l == k).unwrap_or(LEADING_KEYS.len()), k.as_str()));
                let mut out = serializer.serialize_map(Some(keys.len()))?;
                for k in keys {
                    out.serialize_entry(k, &Ordered(&map[k.as_str()]))?;
                }
                out.end()
            }
            Value::Array(items) => serializer.collect_seq(items.iter().map(Ordered)),
            other => other.serialize(serializer),
        }
    }
}

/// The items of a list answer, or the single resource as a one-element list.
pub fn items(value: &Value) -> Vec<&Value> {
    match value.get("items").and_then(Value::as_array) {
        Some(items) => items.iter().collect(),
        None => vec![value],
    }
}

/// A table of resources of one type.
pub fn resource_table(kind: ResourceType, resources: &[&Value], now: OffsetDateTime) -> String {
    let mut headers = vec!["NAME"];
    if kind.is_mesh_scoped() {
        headers.push("MESH");
    }
    let extra = summary_headers(kind);
    headers.extend_from_slice(extra);
    headers.extend_from_slice(&["AGE", "VERSION"]);
    let rows: Vec<Vec<String>> = resources
        .iter()
        .map(|r| {
            let mut row = vec![text(r, &["name"])];
            if kind.is_mesh_scoped() {
                row.push(text(r, &["mesh"]));
            }
            row.extend(summary(kind, r));
            row.push(r.get("creationTime").and_then(Value::as_str).map(|t| age(t, now)).unwrap_or_else(|| "-".into()));
            row.push(r.get("version").map(scalar).unwrap_or_else(|| "-".into()));
            row
        })
        .collect();
    table(&headers, &rows)
}

/// A table of the services of a mesh.
pub fn services_table(services: &[&Value]) -> String {
    let rows: Vec<Vec<String>> =
        services.iter().map(|s| vec![text(s, &["name"]), s.get("dataplanes").map(scalar).unwrap_or_else(|| "-".into())]).collect();
    table(&["NAME", "DATAPLANES"], &rows)
}

fn summary_headers(kind: ResourceType) -> &'static [&'static str] {
    match kind {
        ResourceType::Mesh => &["CERT LIFETIME"],
        ResourceType::Zone => &["ENABLED"],
        ResourceType::Dataplane => &["ADDRESS", "SERVICES"],
        _ => &["TARGET"],
    }
}

fn summary(kind: ResourceType, r: &Value) -> Vec<String> {
    let spec = r.get("spec").unwrap_or(&Value::Null);
    match kind {
        ResourceType::Mesh => {
            vec![spec.pointer("/mtls/certificateLifetime").map(scalar).unwrap_or_else(|| "24h (default)".into())]
        }
        ResourceType::Zone => vec![spec.get("enabled").map(scalar).unwrap_or_else(|| "true".into())],
        ResourceType::Dataplane => {
            let address = text(spec, &["networking", "address"]);
            let mut services: Vec<String> = spec
                .pointer("/networking/inbound")
                .and_then(Value::as_array)
                .map(|inbound| {
                    inbound
                        .iter()
                        .filter_map(|i| i.pointer("/tags/strait.io~1service").and_then(Value::as_str))
                        .map(str::to_string)
                        .collect()
                })
                .unwrap_or_default();
            services.sort();
            services.dedup();
            vec![address, if services.is_empty() { "-".into() } else { services.join(",") }]
        }
        _ => vec![target(spec.get("targetRef"))],
    }
}

/// `Mesh`, `MeshService/web`, `Dataplane/dp-1` or `MeshSubset{version=v2}`.
fn target(target_ref: Option<&Value>) -> String {
    let Some(t) = target_ref else { return "Mesh".into() };
    let kind = t.get("kind").and_then(Value::as_str).unwrap_or("Mesh");
    let mut out = kind.to_string();
    if let Some(name) = t.get("name").and_then(Value::as_str) {
        out.push('/');
        out.push_str(name);
    }
    if let Some(tags) = t.get("tags").and_then(Value::as_object).filter(|t| !t.is_empty()) {
        let pairs: Vec<String> = tags.iter().map(|(k, v)| format!("{k}={}", scalar(v))).collect();
        let _ = write!(out, "{{{}}}", pairs.join(","));
    }
    out
}

fn text(v: &Value, path: &[&str]) -> String {
    let mut cur = v;
    for p in path {
        match cur.get(p) {
            Some(next) => cur = next,
            None => return "-".into(),
        }
    }
    scalar(cur)
}

fn scalar(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Null => "-".into(),
        other => other.to_string(),
    }
}

/// Left-aligned columns separated by three spaces, as kubectl prints them.
pub fn table(headers: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = headers.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (i, cell) in row.iter().enumerate() {
            if let Some(w) = widths.get_mut(i) {
                *w = (*w).max(cell.chars().count());
            }
        }
    }
    let mut out = String::new();
    let header_row: Vec<String> = headers.iter().map(|h| h.to_string()).collect();
    for row in std::iter::once(&header_row).chain(rows) {
        let mut line = String::new();
        for (i, cell) in row.iter().enumerate() {
            if i + 1 == row.len() {
                line.push_str(cell);
            } else {
                let pad = widths.get(i).copied().unwrap_or(0) - cell.chars().count().min(widths.get(i).copied().unwrap_or(0));
                line.push_str(cell);
                line.push_str(&" ".repeat(pad + 3));
            }
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

/// How long ago an RFC 3339 time was, in kubectl's style (`45s`, `3m12s`, `5h`, `12d`); `-`
/// when it does not parse.
pub fn age(rfc3339: &str, now: OffsetDateTime) -> String {
    match OffsetDateTime::parse(rfc3339, &time::format_description::well_known::Rfc3339) {
        Ok(t) => human_duration((now - t).whole_seconds()),
        Err(_) => "-".into(),
    }
}

/// A duration in seconds, shortened: two units while that adds information, one after.
pub fn human_duration(secs: i64) -> String {
    let s = secs.max(0);
    let (m, h, d) = (s / 60, s / 3600, s / 86_400);
    match s {
        _ if s < 120 => format!("{s}s"),
        _ if m < 10 => format!("{m}m{}s", s % 60).replace("m0s", "m"),
        _ if h < 3 => format!("{m}m"),
        _ if h < 8 => format!("{h}h{}m", m % 60).replace("h0m", "h"),
        _ if h < 48 => format!("{h}h"),
        _ if d < 8 => format!("{d}d{}h", h % 24).replace("d0h", "d"),
        _ if d < 730 => format!("{d}d"),
        _ => format!("{}y", d / 365),
    }
}

/// Writes to stdout; a closed pipe (`straitctl get ... | head`) is not an error.
pub fn print(text: &str) -> std::io::Result<()> {
    let mut out = std::io::stdout().lock();
    match out.write_all(text.as_bytes()).and_then(|()| out.flush()) {
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    use time::macros::datetime;

    #[test]
    fn tables_align_columns() {
        let t = table(&["NAME", "AGE"], &[vec!["a-long-name".into(), "5s".into()], vec!["b".into(), "1d".into()]]);
        assert_eq!(t, "NAME          AGE\na-long-name   5s\nb             1d\n");
    }

    #[test]
    fn resource_tables_have_mesh_age_version_and_a_summary() {
        let now = datetime!(2025-01-01 12:00:00 UTC);
        let dp = json!({"type": "Dataplane", "name": "web-1", "mesh": "default", "version": 7, "creationTime": "2025-01-01T11:00:00Z",
            "spec": {"networking": {"address": "10.0.0.1", "inbound": [
                {"port": 8080, "tags": {"strait.io/service": "web"}}, {"port": 8081, "tags": {"strait.io/service": "web-admin"}}]}}});
        let t = resource_table(ResourceType::Dataplane, &[&dp], now);
        let lines: Vec<&str> = t.lines().collect();
        assert_eq!(lines[0].split_whitespace().collect::<Vec<_>>(), ["NAME", "MESH", "ADDRESS", "SERVICES", "AGE", "VERSION"]);
        assert_eq!(lines[1].split_whitespace().collect::<Vec<_>>(), ["web-1", "default", "10.0.0.1", "web,web-admin", "60m", "7"]);

        let mtp = json!({"name": "p", "mesh": "m", "version": 2, "spec": {"targetRef": {"kind": "MeshService", "name": "web"}}});
        let t = resource_table(ResourceType::MeshTrafficPermission, &[&mtp], now);
        assert!(t.lines().nth(1).unwrap().contains("MeshService/web"), "{t}");
        let subset = json!({"name": "p", "spec": {"targetRef": {"kind": "MeshSubset", "tags": {"version": "v2"}}}});
        assert!(resource_table(ResourceType::MeshTimeout, &[&subset], now).contains("MeshSubset{version=v2}"));

        let mesh = json!({"name": "default", "version": 1});
        let t = resource_table(ResourceType::Mesh, &[&mesh], now);
        assert_eq!(t.lines().next().unwrap(), "NAME      CERT LIFETIME   AGE   VERSION");
        assert!(!t.contains("MESH "), "meshes have no MESH column");
    }

    #[test]
    fn ages_read_like_kubectl() {
        let cases = [
            (5, "5s"),
            (119, "119s"),
            (125, "2m5s"),
            (180, "3m"),
            (3600, "60m"),
            (4 * 3600 + 60, "4h1m"),
            (30 * 3600, "30h"),
            (3 * 86_400, "3d"),
            (20 * 86_400, "20d"),
            (800 * 86_400, "2y"),
        ];
        for (secs, want) in cases {
            assert_eq!(human_duration(secs), want, "{secs}");
        }
        assert_eq!(human_duration(-3), "0s", "clock skew never shows a negative age");
        assert_eq!(age("2025-01-01T00:00:00Z", datetime!(2025-01-01 00:01:00 UTC)), "60s");
        assert_eq!(age("yesterday", datetime!(2025-01-01 00:01:00 UTC)), "-");
    }

    #[test]
    fn structured_output_is_the_value_itself() {
        let v = json!({"total": 1, "items": [{"type": "Mesh", "name": "default"}]});
        let yaml = structured(&v, OutputFormat::Yaml).unwrap();
        assert_eq!(serde_yaml::from_str::<Value>(&yaml).unwrap(), v);
        let js = structured(&v, OutputFormat::Json).unwrap();
        assert_eq!(serde_json::from_str::<Value>(&js).unwrap(), v);
        assert_eq!(items(&v).len(), 1);
        let r = json!({"spec": {"to": [], "targetRef": {"name": "web", "kind": "MeshService"}}, "version": 3, "type": "MeshTimeout", "name": "t", "mesh": "m"});
        let yaml = structured(&r, OutputFormat::Yaml).unwrap();
        assert_eq!(
            yaml,
            "type: MeshTimeout\nname: t\nmesh: m\nversion: 3\nspec:\n  targetRef:\n    kind: MeshService\n    name: web\n  to: []\n"
        );
        assert_eq!(items(&json!({"name": "x"})).len(), 1);
    }

    #[test]
    fn services_table() {
        let s = json!({"name": "web", "dataplanes": 2});
        assert_eq!(super::services_table(&[&s]), "NAME   DATAPLANES\nweb    2\n");
    }
}
