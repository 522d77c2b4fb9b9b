//! `straitctl apply -f FILE`: validate every document, then create or update each resource.
//!
//! In: manifests (see `manifest`). Out: one kubectl-style line per resource
//! (`mesh/default created`, `meshtimeout/t unchanged`). Nothing is written unless every document
//! is valid; the first server error stops the run and says what was already applied.

use anyhow::{anyhow, bail};

use crate::cli::ApplyArgs;
use crate::client::ClientError;
use crate::commands::{resource_path, Context};
use crate::manifest::{self, Document};
use crate::output::print;

/// Runs `apply`.
pub async fn run(args: &ApplyArgs, ctx: &Context) -> anyhow::Result<()> {
    let sources = manifest::read_sources(&args.files).await?;
    let (docs, invalid) = manifest::parse_all(&sources);
    if !invalid.is_empty() {
        for bad in &invalid {
            for line in bad.lines() {
                eprintln!("{line}");
            }
        }
        let total = docs.len() + invalid.len();
        bail!("{} of {total} documents are invalid; nothing was applied", invalid.len());
    }
    if docs.is_empty() {
        let labels: Vec<&str> = sources.iter().map(|s| s.label.as_str()).collect();
        bail!("no resources found in {}", labels.join(", "));
    }
    if args.dry_run {
        for d in &docs {
            print(&format!("{} valid (dry run)\n", d.resource.display_name()))?;
        }
        return Ok(());
    }

    let client = ctx.client()?;
    for (i, doc) in docs.iter().enumerate() {
        let r = &doc.resource;
        let path = resource_path(r.kind, r.mesh.as_deref().unwrap_or_default(), &r.name);
        match client.put(&path, &doc.value).await {
            Ok((result, _)) => print(&format!("{} {result}\n", r.display_name()))?,
            Err(e) => return Err(anyhow!(failure_message(&docs, i, &e))),
        }
    }
    Ok(())
}

/// The error for a failure at `docs[failed]`: which resource, why, and what was applied before.
fn failure_message(docs: &[Document], failed: usize, error: &ClientError) -> String {
    let doc = &docs[failed];
    let mut msg = format!("applying {} ({}): {error}", doc.resource.display_name(), doc.origin);
    if error.is_conflict() {
        if let Some(v) = doc.resource.version {
            msg.push_str(&format!(
                "\nthe document holds `version: {v}`, which is no longer the stored version: get the resource again, \
                 or remove `version` to replace whatever is stored"
            ));
        }
    }
    let rest: Vec<String> = docs[failed..].iter().map(|d| d.resource.display_name()).collect();
    if failed == 0 {
        msg.push_str(&format!("\nnothing was applied; not applied: {}", rest.join(", ")));
    } else {
        let done: Vec<String> = docs[..failed].iter().map(|d| d.resource.display_name()).collect();
        msg.push_str(&format!("\nalready applied: {}\nnot applied: {}", done.join(", "), rest.join(", ")));
    }
    msg
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::client::{ApiErrorBody, Detail};
    use crate::manifest::{parse_all, Source};
    use reqwest::StatusCode;

    #[test]
    fn a_failure_says_what_was_and_was_not_applied() {
        let text = "type: Mesh\nname: default\n---\ntype: Zone\nname: east\nversion: 4\n---\ntype: Zone\nname: west\n";
        let (docs, _) = parse_all(&[Source { label: "f.yaml".into(), text: text.into() }]);
        let err = ClientError::Api {
            status: StatusCode::CONFLICT,
            body: ApiErrorBody {
                code: "conflict".into(),
                message: "conflict on Zone/east".into(),
                details: vec![Detail { field: "version".into(), message: "expected version 4".into() }],
            },
        };
        let msg = failure_message(&docs, 1, &err);
        assert!(
            msg.starts_with("applying zone/east (f.yaml: document 2): conflict on Zone/east\n  version: expected version 4\n"),
            "{msg}"
        );
        assert!(msg.contains("`version: 4`"), "{msg}");
        assert!(msg.ends_with("already applied: mesh/default\nnot applied: zone/east, zone/west"), "{msg}");
        let msg = failure_message(&docs, 0, &ClientError::Unauthorized { server: "http://x".into() });
        assert!(msg.ends_with("nothing was applied; not applied: mesh/default, zone/east, zone/west"), "{msg}");
    }
}
