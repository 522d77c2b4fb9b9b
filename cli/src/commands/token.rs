//! `straitctl token dataplane`: tokens with which sidecars register with their zone.
//!
//! In: a mesh, a service and a validity. Out: the token on stdout, or in a private file.

use serde_json::Value;

use crate::cli::TokenCommand;
use crate::commands::Context;
use crate::output::print;

/// Runs a `token` subcommand.
pub async fn run(cmd: &TokenCommand, ctx: &Context) -> anyhow::Result<()> {
    let TokenCommand::Dataplane(args) = cmd;
    let mut path = format!("/meshes/{}/dataplane-tokens?service={}", args.mesh, args.service);
    if let Some(v) = &args.valid_for {
        path.push_str(&format!("&validFor={v}"));
    }
    let answer = ctx.client()?.post(&path).await?;
    let token = answer.get("token").and_then(Value::as_str).ok_or_else(|| anyhow::anyhow!("the server's answer has no token"))?;
    match &args.output {
        Some(file) => {
            crate::commands::zone::write_private(file, token)?;
            Ok(print(&format!("wrote the dataplane token for service {} of mesh {} to {}\n", args.service, args.mesh, file.display()))?)
        }
        None => Ok(print(&format!("{token}\n"))?),
    }
}
