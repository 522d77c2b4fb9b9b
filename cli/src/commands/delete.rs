//! `straitctl delete TYPE NAME`: delete one resource (a Mesh with everything in it).
//!
//! In: a type, a name and a mesh. Out: `meshtrafficpermission/x deleted`, or an error saying
//! it was not found.

use anyhow::bail;

use crate::cli::{DeleteArgs, Target};
use crate::commands::{display_name, resource_path, Context};
use crate::output::print;

/// Runs `delete`.
pub async fn run(args: &DeleteArgs, ctx: &Context) -> anyhow::Result<()> {
    let Target::Resource(kind) = args.kind else {
        bail!("services are derived from Dataplanes and cannot be deleted; delete the Dataplanes instead");
    };
    let client = ctx.client()?;
    let what = display_name(kind, &args.name);
    match client.delete(&resource_path(kind, &args.mesh, &args.name)).await {
        Ok(_) => Ok(print(&format!("{what} deleted\n"))?),
        Err(e) if e.is_not_found() && kind.is_mesh_scoped() => bail!("{what} not found in mesh {:?}", args.mesh),
        Err(e) if e.is_not_found() => bail!("{what} not found"),
        Err(e) => Err(e.into()),
    }
}
