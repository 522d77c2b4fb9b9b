//! `straitctl config set|view`: change or show the client config file.
//!
//! In: the connection flags typed on the command line (never values inherited from the
//! environment) and the config file. Out: the updated file (mode 0600), or its content with the
//! token masked and the settings in effect.

use std::path::Path;

use crate::cli::{usage_error, ConfigCommand};
use crate::commands::Context;
use crate::config::{self, ConfigFile, TokenSource};
use crate::output::print;

/// Runs `config set` or `config view`.
pub fn run(cmd: &ConfigCommand, ctx: &Context) -> anyhow::Result<()> {
    match cmd {
        ConfigCommand::Set => set(ctx),
        ConfigCommand::View => view(ctx),
    }
}

fn set(ctx: &Context) -> anyhow::Result<()> {
    let typed = ctx.sources;
    if !(typed.server || typed.token || typed.token_file || typed.ca_file) {
        usage_error("config set needs --server, --token, --token-file or --ca-file").exit();
    }
    if typed.token && typed.token_file {
        usage_error("config set takes --token or --token-file, not both").exit();
    }
    let path = ctx.config_path().ok_or(config::ConfigError::NoPath)?;
    let mut file = config::load_or_create(&path)?;
    update(&mut file, ctx)?;
    config::save(&path, &file)?;
    print(&format!("# saved {}\n{}", path.display(), file.masked_yaml()))?;
    Ok(())
}

/// Applies the typed flags to `file`; a token replaces a token file and the other way round.
fn update(file: &mut ConfigFile, ctx: &Context) -> anyhow::Result<()> {
    let (typed, flags) = (ctx.sources, &ctx.flags);
    if let Some(server) = flags.server.as_deref().filter(|_| typed.server) {
        let normalized = config::normalize_server(server).map_err(|m| anyhow::anyhow!("--server {server:?}: {m}"))?;
        file.server = Some(normalized);
    }
    if let Some(token) = flags.token.as_deref().filter(|_| typed.token) {
        file.token = Some(token.trim().to_string());
        file.token_file = None;
    }
    if let Some(token_file) = flags.token_file.as_deref().filter(|_| typed.token_file) {
        let absolute = std::path::absolute(token_file)?;
        if !absolute.is_file() {
            eprintln!("warning: token file {} does not exist (yet)", absolute.display());
        }
        file.token_file = Some(absolute);
        file.token = None;
    }
    if let Some(ca_file) = flags.ca_file.as_deref().filter(|_| typed.ca_file) {
        let absolute = std::path::absolute(ca_file)?;
        if !absolute.is_file() {
            eprintln!("warning: CA file {} does not exist (yet)", absolute.display());
        }
        file.ca_file = Some(absolute);
    }
    Ok(())
}

fn view(ctx: &Context) -> anyhow::Result<()> {
    let (path, file) = ctx.config_file()?;
    let settings = config::resolve(&ctx.flags, &file, path.as_deref())?;
    let shown = path.as_deref().map(Path::display).map(|p| p.to_string()).unwrap_or_else(|| "(no config file)".into());
    let token = match &settings.token {
        None => "none".to_string(),
        Some(TokenSource::Literal { token, origin }) => format!("{} (from {origin})", config::mask(token)),
        Some(TokenSource::File(path)) => format!("read from {}", path.display()),
    };
    let ca = match &settings.ca_file {
        Some(path) => format!("{}", path.display()),
        None if settings.server.starts_with("https://") => "none (HTTPS needs one: --ca-file)".into(),
        None => "none (plain HTTP)".into(),
    };
    print(&format!(
        "# {shown}\n{}# in effect: server {} (from {})\n# in effect: token {token}\n# in effect: CA {ca}\n",
        file.masked_yaml(),
        settings.server,
        settings.server_origin
    ))?;
    Ok(())
}
