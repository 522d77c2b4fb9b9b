//! `straitctl token dataplane|revoke`: tokens with which sidecars register with their zone.
//!
//! In: a mesh, a service and a validity; or what to revoke. Out: the token on stdout (its id on
//! stderr), or in a private file; or what was revoked.

use anyhow::Context as _;
use base64::Engine as _;
use serde_json::Value;

use crate::cli::{DataplaneTokenArgs, RevokeTokenArgs, TokenCommand, TokenFormat};
use crate::commands::Context;
use crate::output::print;

/// Runs a `token` subcommand.
pub async fn run(cmd: &TokenCommand, ctx: &Context) -> anyhow::Result<()> {
    match cmd {
        TokenCommand::Dataplane(args) => issue(args, ctx).await,
        TokenCommand::Revoke(args) => revoke(args, ctx).await,
    }
}

async fn issue(args: &DataplaneTokenArgs, ctx: &Context) -> anyhow::Result<()> {
    let mut path = format!("/meshes/{}/dataplane-tokens?service={}", args.mesh, args.service);
    if let Some(v) = &args.valid_for {
        path.push_str(&format!("&validFor={v}"));
    }
    let answer = ctx.client()?.post(&path).await?;
    let token = answer.get("token").and_then(Value::as_str).ok_or_else(|| anyhow::anyhow!("the server's answer has no token"))?;
    let id = answer.get("id").and_then(Value::as_str).unwrap_or("?");
    let env;
    let token = match args.output_format {
        TokenFormat::Text => token,
        TokenFormat::Env => {
            env = format!(
                "# strait-dp@<workload>.service of a {service} workload of mesh {mesh}: /etc/strait/dp-<workload>.env, mode 0600.\n\
                 # Token {id}; revoke it with: straitctl token revoke --mesh {mesh} --id {id}\nSTRAIT_DATAPLANE_TOKEN={token}",
                service = args.service,
                mesh = args.mesh
            );
            &env
        }
    };
    match &args.output {
        Some(file) => {
            crate::commands::zone::write_private(file, token)?;
            Ok(print(&format!(
                "wrote the dataplane token {id} for service {} of mesh {} to {}\n",
                args.service,
                args.mesh,
                file.display()
            ))?)
        }
        None => {
            eprintln!("# dataplane token {id}; revoke it with: straitctl token revoke --mesh {} --id {id}", args.mesh);
            Ok(print(&format!("{token}\n"))?)
        }
    }
}

async fn revoke(args: &RevokeTokenArgs, ctx: &Context) -> anyhow::Result<()> {
    // Every value goes into the request path: each is checked against its rule first, so that
    // none (a token file's id least of all) can point the admin token at another endpoint.
    let mesh = &args.mesh;
    strait_api::names::check_dns_label(mesh).map_err(|e| anyhow::anyhow!("--mesh: {e}"))?;
    let path = match (&args.id, &args.service, &args.file) {
        (Some(id), _, _) => format!("/meshes/{mesh}/dataplane-tokens/{}", checked_id(id).context("--id")?),
        (_, Some(service), _) => {
            strait_api::names::check_dns_subdomain(service).map_err(|e| anyhow::anyhow!("--service: {e}"))?;
            format!("/meshes/{mesh}/services/{service}/dataplane-tokens")
        }
        (_, _, Some(file)) => {
            let token = std::fs::read_to_string(file).with_context(|| format!("reading {}", file.display()))?;
            let id = token_id(token.trim()).with_context(|| format!("{} does not hold a Strait token", file.display()))?;
            format!("/meshes/{mesh}/dataplane-tokens/{}", checked_id(&id).with_context(|| format!("the token in {}", file.display()))?)
        }
        _ => anyhow::bail!("give --id, --service or --file"),
    };
    let answer = ctx.client()?.delete(&path).await?;
    let what = match (answer.get("id").and_then(Value::as_str), answer.get("service").and_then(Value::as_str)) {
        (Some(id), _) => format!("dataplane token {id}"),
        (_, Some(service)) => format!("every dataplane token of service {service} issued up to now"),
        _ => "the dataplane tokens".into(),
    };
    Ok(print(&format!("revoked {what} in mesh {}; zones close the streams of sidecars using them\n", args.mesh))?)
}

/// `id` if it is a token id: 32 hexadecimal digits.
fn checked_id(id: &str) -> anyhow::Result<&str> {
    if id.len() == 32 && id.bytes().all(|b| b.is_ascii_hexdigit()) {
        Ok(id)
    } else {
        anyhow::bail!("{id:?} is not a token id (32 hexadecimal digits)")
    }
}

/// The id (`jti`) of a token, read without checking its signature: the server checks nothing
/// it is given but the id.
fn token_id(token: &str) -> anyhow::Result<String> {
    let payload = token.split('.').nth(1).context("not a JWT (no payload)")?;
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(payload).context("the payload is not base64url")?;
    let claims: Value = serde_json::from_slice(&bytes).context("the payload is not JSON")?;
    claims.get("jti").and_then(Value::as_str).map(str::to_string).context("the token has no id (jti)")
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_id_of_a_token_is_its_jti() {
        use base64::Engine as _;
        let enc = |v: &str| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v);
        let token = format!("{}.{}.sig", enc(r#"{"alg":"EdDSA"}"#), enc(r#"{"kind":"dataplane","jti":"abc123"}"#));
        assert_eq!(super::token_id(&token).unwrap(), "abc123");
        assert!(super::token_id("garbage").is_err());
        assert!(super::token_id(&format!("x.{}.y", enc(r#"{"kind":"dataplane"}"#))).unwrap_err().to_string().contains("jti"));
        assert!(super::checked_id("../../../meshes/default").is_err(), "an id never leaves its path segment");
        assert!(super::checked_id("0123456789abcdef0123456789abcdef").is_ok());
    }
}
