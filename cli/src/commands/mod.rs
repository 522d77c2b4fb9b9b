//! The subcommands, one module each, and what they share: the connection context and the
//! REST paths of each resource type.
//!
//! In: the parsed [`Cli`]. Out: text on stdout, and an error (printed by `main`, exit code 1)
//! when the command failed.

pub mod apply;
pub mod config;
pub mod delete;
pub mod demo;
pub mod get;
pub mod inspect;
pub mod install;
pub mod token;
pub mod version;
pub mod zone;

use std::path::PathBuf;

use strait_api::ResourceType;

use crate::cli::{Cli, Command, FlagSources, GlobalArgs};
use crate::client::Client;
use crate::config::{ConfigFile, Settings};

/// What every command may need: the global flags, loaded into settings on first use.
pub struct Context {
    /// Global flags, merged with the environment by clap.
    pub flags: GlobalArgs,
    /// Which of them were typed on the command line.
    pub sources: FlagSources,
}

impl Context {
    /// The config file path, when one can be derived.
    pub fn config_path(&self) -> Option<PathBuf> {
        crate::config::config_path(&self.flags)
    }

    /// The config file (created with defaults on first use), or defaults when there is no path.
    pub fn config_file(&self) -> anyhow::Result<(Option<PathBuf>, ConfigFile)> {
        match self.config_path() {
            Some(path) => {
                let file = crate::config::load_or_create(&path)?;
                Ok((Some(path), file))
            }
            None => Ok((None, ConfigFile::default())),
        }
    }

    /// The settings in effect.
    pub fn settings(&self) -> anyhow::Result<Settings> {
        let (path, file) = self.config_file()?;
        Ok(crate::config::resolve(&self.flags, &file, path.as_deref())?)
    }

    /// A client of the control plane in effect.
    pub fn client(&self) -> anyhow::Result<Client> {
        Ok(Client::new(&self.settings()?)?)
    }
}

/// Runs the command.
pub async fn run(cli: Cli, sources: FlagSources) -> anyhow::Result<()> {
    let ctx = Context { flags: cli.global, sources };
    match cli.command {
        Command::Apply(args) => apply::run(&args, &ctx).await,
        Command::Get(args) => get::run(&args, &ctx).await,
        Command::Delete(args) => delete::run(&args, &ctx).await,
        Command::Version(args) => version::run(&args, &ctx).await,
        Command::Config(cmd) => config::run(&cmd, &ctx),
        Command::Completion(args) => crate::completion::run(&args),
        Command::Demo(cmd) => demo::run(cmd).await,
        Command::Zone(cmd) => zone::run(&cmd, &ctx).await,
        Command::Token(cmd) => token::run(&cmd, &ctx).await,
        Command::Inspect(cmd) => inspect::run(&cmd, &ctx).await,
        Command::Install(cmd) => install::run(&cmd),
    }
}

/// `type/name` as kubectl prints it, such as `meshtrafficpermission/allow-web`.
pub fn display_name(kind: ResourceType, name: &str) -> String {
    format!("{}/{name}", kind.name().to_ascii_lowercase())
}

/// The REST path of a collection: `/meshes`, `/zones` or `/meshes/{mesh}/{plural}`.
pub fn collection_path(kind: ResourceType, mesh: &str) -> String {
    match kind {
        ResourceType::Mesh => "/meshes".into(),
        ResourceType::Zone => "/zones".into(),
        _ => format!("/meshes/{}/{}", segment(mesh), kind.plural()),
    }
}

/// The REST path of one resource.
pub fn resource_path(kind: ResourceType, mesh: &str, name: &str) -> String {
    format!("{}/{}", collection_path(kind, mesh), segment(name))
}

/// The REST path of the services of a mesh.
pub fn services_path(mesh: &str) -> String {
    format!("/meshes/{}/services", segment(mesh))
}

/// Percent-encodes a path segment; valid names (DNS-1123) pass unchanged.
fn segment(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_per_scope() {
        assert_eq!(collection_path(ResourceType::Mesh, "ignored"), "/meshes");
        assert_eq!(resource_path(ResourceType::Mesh, "ignored", "prod"), "/meshes/prod");
        assert_eq!(resource_path(ResourceType::Zone, "x", "east"), "/zones/east");
        assert_eq!(resource_path(ResourceType::MeshTrafficPermission, "default", "allow"), "/meshes/default/meshtrafficpermissions/allow");
        assert_eq!(resource_path(ResourceType::MeshTimeout, "default", "a/b?c"), "/meshes/default/meshtimeouts/a%2Fb%3Fc");
        assert_eq!(services_path("prod"), "/meshes/prod/services");
        assert_eq!(display_name(ResourceType::MeshHTTPRoute, "r"), "meshhttproute/r");
    }
}
