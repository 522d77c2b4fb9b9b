//! Manifests: the YAML or JSON files given to `apply -f`, read and validated before anything is
//! sent.
//!
//! In: file paths, directories (their `*.yaml`, `*.yml` and `*.json`, sorted) or `-` for stdin.
//! Each holds one or many documents; a document may also be a list (`{items: [...]}` as `get`
//! prints it, or a bare sequence). Out: [`Document`]s validated by `strait_api`, in the order
//! they must be applied (Meshes, then Zones, then the rest in file order), or one [`Invalid`]
//! per bad document naming the file, the document and every bad field.

use std::io::Read;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use serde_json::Value;
use strait_api::{Resource, ResourceType, ValidationErrors};

/// The text of one input.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Source {
    /// How messages name it: the path as given, or `<stdin>`.
    pub label: String,
    /// Its content.
    pub text: String,
}

/// A valid resource and the body to send for it.
#[derive(Debug, Clone, PartialEq)]
pub struct Document {
    /// The validated resource.
    pub resource: Resource,
    /// The document as written, sent as the PUT body.
    pub value: Value,
    /// Where it came from, such as `policies.yaml: document 2`.
    pub origin: String,
}

/// A document that did not validate.
#[derive(Debug, Clone, PartialEq)]
pub struct Invalid {
    /// Where it came from, such as `policies.yaml: document 2`.
    pub origin: String,
    /// `type/name`, when they could be read.
    pub name: Option<String>,
    /// Every problem.
    pub errors: ValidationErrors,
}

impl Invalid {
    /// One line per bad field: `policies.yaml: document 2 (meshtimeout/t): spec.x: message`.
    pub fn lines(&self) -> Vec<String> {
        let name = self.name.as_ref().map(|n| format!(" ({n})")).unwrap_or_default();
        self.errors.0.iter().map(|e| format!("{}{name}: {e}", self.origin)).collect()
    }
}

/// Why an input could not be read.
#[derive(Debug, thiserror::Error)]
#[error("cannot read {path}: {source}")]
pub struct ReadError {
    /// The path given.
    pub path: String,
    /// Why.
    pub source: std::io::Error,
}

/// Reads every input: files, directories (non-recursive) and `-` (stdin, read once).
pub async fn read_sources(paths: &[PathBuf]) -> Result<Vec<Source>, ReadError> {
    let mut out = Vec::new();
    let mut stdin_read = false;
    for path in paths {
        if path.as_os_str() == "-" {
            if !stdin_read {
                let text = read_stdin().await.map_err(|source| ReadError { path: "<stdin>".into(), source })?;
                out.push(Source { label: "<stdin>".into(), text });
                stdin_read = true;
            }
            continue;
        }
        let err = |source| ReadError { path: path.display().to_string(), source };
        if tokio::fs::metadata(path).await.map_err(err)?.is_dir() {
            for file in manifest_files(path).await.map_err(err)? {
                let text =
                    tokio::fs::read_to_string(&file).await.map_err(|source| ReadError { path: file.display().to_string(), source })?;
                out.push(Source { label: file.display().to_string(), text });
            }
        } else {
            out.push(Source { label: path.display().to_string(), text: tokio::fs::read_to_string(path).await.map_err(err)? });
        }
    }
    Ok(out)
}

/// Reads stdin on a blocking thread (tokio's async stdin is not among the enabled features).
async fn read_stdin() -> std::io::Result<String> {
    let read = tokio::task::spawn_blocking(|| {
        let mut text = String::new();
        std::io::stdin().read_to_string(&mut text).map(|_| text)
    });
    read.await.map_err(std::io::Error::other)?
}

async fn manifest_files(dir: &Path) -> std::io::Result<Vec<PathBuf>> {
    let mut files = Vec::new();
    let mut entries = tokio::fs::read_dir(dir).await?;
    while let Some(entry) = entries.next_entry().await? {
        let path = entry.path();
        let ext = path.extension().and_then(|e| e.to_str()).unwrap_or("");
        if matches!(ext, "yaml" | "yml" | "json") && entry.file_type().await?.is_file() {
            files.push(path);
        }
    }
    files.sort();
    Ok(files)
}

/// Parses and validates every document of every source; the documents come back in apply order.
pub fn parse_all(sources: &[Source]) -> (Vec<Document>, Vec<Invalid>) {
    let mut docs = Vec::new();
    let mut invalid = Vec::new();
    for s in sources {
        parse(s, &mut docs, &mut invalid);
    }
    order_for_apply(&mut docs);
    (docs, invalid)
}

fn parse(source: &Source, docs: &mut Vec<Document>, invalid: &mut Vec<Invalid>) {
    for (i, doc) in serde_yaml::Deserializer::from_str(&source.text).enumerate() {
        let origin = format!("{}: document {}", source.label, i + 1);
        let value = match Value::deserialize(doc) {
            Ok(Value::Null) => continue,
            Ok(v) => v,
            Err(e) => {
                invalid.push(Invalid { origin, name: None, errors: ValidationErrors::single("", format!("not valid YAML or JSON: {e}")) });
                // A syntax error leaves the rest of the stream unreadable.
                break;
            }
        };
        match list_items(value) {
            Ok(items) => {
                for (j, item) in items.into_iter().enumerate() {
                    check(format!("{origin} items[{j}]"), item, docs, invalid);
                }
            }
            Err(single) => check(origin, single, docs, invalid),
        }
    }
}

/// The items of a list document (`{items: [...]}` without `type`, or a sequence); the value
/// back when it is a single resource.
fn list_items(value: Value) -> Result<Vec<Value>, Value> {
    match value {
        Value::Array(items) => Ok(items),
        Value::Object(mut obj) if !obj.contains_key("type") && obj.get("items").is_some_and(Value::is_array) => match obj.remove("items") {
            Some(Value::Array(items)) => Ok(items),
            _ => Err(Value::Object(obj)),
        },
        other => Err(other),
    }
}

fn check(origin: String, value: Value, docs: &mut Vec<Document>, invalid: &mut Vec<Invalid>) {
    let name = match (value.get("type").and_then(Value::as_str), value.get("name").and_then(Value::as_str)) {
        (Some(t), Some(n)) => Some(format!("{}/{n}", t.to_ascii_lowercase())),
        _ => None,
    };
    match Resource::from_value(value.clone()) {
        Ok(resource) => docs.push(Document { resource, value, origin }),
        Err(errors) => invalid.push(Invalid { origin, name, errors }),
    }
}

/// Meshes first (everything else lives in one), then Zones, then the rest in file order.
pub fn order_for_apply(docs: &mut [Document]) {
    docs.sort_by_key(|d| match d.resource.kind {
        ResourceType::Mesh => 0,
        ResourceType::Zone => 1,
        _ => 2,
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    fn src(label: &str, text: &str) -> Source {
        Source { label: label.into(), text: text.into() }
    }

    const TIMEOUT: &str =
        "type: MeshTimeout\nname: t\nmesh: default\nspec:\n  to:\n  - targetRef: {kind: Mesh}\n    default: {idleTimeout: 5s}\n";

    #[test]
    fn meshes_then_zones_then_file_order() {
        let text = format!(
            "{TIMEOUT}---\ntype: Zone\nname: east\n---\ntype: Mesh\nname: default\n---\n---\n{}",
            TIMEOUT.replace("name: t", "name: u")
        );
        let (docs, invalid) = parse_all(&[src("a.yaml", &text)]);
        assert!(invalid.is_empty(), "{invalid:?}");
        let names: Vec<String> = docs.iter().map(|d| d.resource.display_name()).collect();
        assert_eq!(names, ["mesh/default", "zone/east", "meshtimeout/t", "meshtimeout/u"]);
        assert_eq!(docs[0].origin, "a.yaml: document 3");
        assert_eq!(docs[3].origin, "a.yaml: document 5", "empty documents keep their position");
    }

    #[test]
    fn every_invalid_document_is_named() {
        let bad = TIMEOUT.replace("5s", "5 parsecs");
        let text = format!("type: Mesh\nname: default\n---\n{bad}---\ntype: MeshTimeout\nname: x\nmesh: default\nspec: {{bogus: 1}}\n");
        let (docs, invalid) = parse_all(&[src("policies.yaml", &text)]);
        assert_eq!(docs.len(), 1);
        assert_eq!(invalid.len(), 2);
        let first = invalid[0].lines();
        assert_eq!(first.len(), 1);
        assert!(
            first[0]
                .starts_with("policies.yaml: document 2 (meshtimeout/t): spec.to[0].default.idleTimeout: invalid duration \"5 parsecs\""),
            "{first:?}"
        );
        assert!(invalid[1].lines()[0].starts_with("policies.yaml: document 3 (meshtimeout/x): spec"), "{:?}", invalid[1]);
    }

    #[test]
    fn lists_from_get_are_expanded() {
        let json = r#"{"total": 2, "items": [{"type": "Mesh", "name": "a", "version": 3, "creationTime": "2025-01-01T00:00:00Z"}, {"type": "Mesh", "name": "b!"}]}"#;
        let (docs, invalid) = parse_all(&[src("list.json", json)]);
        assert_eq!(docs.len(), 1);
        assert_eq!(docs[0].resource.version, Some(3));
        assert_eq!(invalid[0].origin, "list.json: document 1 items[1]");
        let (docs, _) = parse_all(&[src("seq.yaml", "- {type: Mesh, name: a}\n- {type: Zone, name: z}\n")]);
        assert_eq!(docs.len(), 2);
    }

    #[test]
    fn a_syntax_error_stops_the_stream() {
        let (docs, invalid) = parse_all(&[src("x.yaml", "type: Mesh\nname: a\n---\n: : [\n---\ntype: Mesh\nname: b\n")]);
        assert_eq!(docs.len(), 1);
        assert_eq!(invalid.len(), 1);
        assert!(invalid[0].lines()[0].starts_with("x.yaml: document 2: not valid YAML or JSON"), "{:?}", invalid[0].lines());
    }

    #[tokio::test]
    async fn directories_give_their_manifests_in_order() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("b.yaml"), "type: Mesh\nname: b\n").unwrap();
        std::fs::write(dir.path().join("a.json"), r#"{"type": "Mesh", "name": "a"}"#).unwrap();
        std::fs::write(dir.path().join("notes.txt"), "not a manifest").unwrap();
        let sources = read_sources(&[dir.path().to_path_buf()]).await.unwrap();
        let labels: Vec<&str> = sources.iter().map(|s| s.label.rsplit('/').next().unwrap_or("")).collect();
        assert_eq!(labels, ["a.json", "b.yaml"]);
        let err = read_sources(&[dir.path().join("missing.yaml")]).await.unwrap_err();
        assert!(err.to_string().starts_with("cannot read ") && err.to_string().contains("missing.yaml"), "{err}");
    }
}
