//! `straitctl get TYPE [NAME]`: list resources of a type, or show one, as a table, YAML or JSON.
//!
//! In: a type (name, plural or alias, or `services`), an optional name and a mesh. Out: the
//! server's answer — unchanged in YAML and JSON, so it can be applied back — or a table.

use anyhow::bail;
use time::OffsetDateTime;

use crate::cli::{GetArgs, OutputFormat, Target};
use crate::commands::{collection_path, resource_path, services_path, Context};
use crate::output::{self, print};

/// Runs `get`.
pub async fn run(args: &GetArgs, ctx: &Context) -> anyhow::Result<()> {
    let client = ctx.client()?;
    let mut value = match (args.kind, &args.name) {
        (Target::Services, _) => client.get(&services_path(&args.mesh)).await?,
        (Target::Resource(kind), Some(name)) => client.get(&resource_path(kind, &args.mesh, name)).await?,
        (Target::Resource(kind), None) => client.get(&collection_path(kind, &args.mesh)).await?,
    };
    if let (Target::Services, Some(name)) = (args.kind, &args.name) {
        value = match output::items(&value).into_iter().find(|s| s.get("name").and_then(|n| n.as_str()) == Some(name)) {
            Some(found) => found.clone(),
            None => bail!("service {name:?} not found in mesh {:?}", args.mesh),
        };
    }
    if args.output != OutputFormat::Table {
        return Ok(print(&output::structured(&value, args.output).map_err(anyhow::Error::msg)?)?);
    }
    let items = output::items(&value);
    if items.is_empty() {
        eprintln!("{}", nothing_found(args.kind, &args.mesh));
        return Ok(());
    }
    let text = match args.kind {
        Target::Services => output::services_table(&items),
        Target::Resource(kind) => output::resource_table(kind, &items, OffsetDateTime::now_utc()),
    };
    Ok(print(&text)?)
}

fn nothing_found(target: Target, mesh: &str) -> String {
    match target {
        Target::Services => format!("No services found in mesh {mesh:?}."),
        Target::Resource(kind) if kind.is_mesh_scoped() => format!("No {} found in mesh {mesh:?}.", kind.plural()),
        Target::Resource(kind) => format!("No {} found.", kind.plural()),
    }
}
