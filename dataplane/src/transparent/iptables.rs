//! Runs the generated [`Command`]s against iptables so that running them again changes nothing.
//!
//! In: the commands of [`rules`](super::rules) and a [`Runner`] (the real binaries, or a fake
//! in tests). Out: the commands that changed the nat table, or the error of the first one that
//! failed, naming the command and its stderr. The state of our chains is read once per family
//! with `iptables -t nat -S`; rules on built-in chains are checked with `-C` before being added
//! or deleted. These are blocking process calls: run them from the CLI, not from async code.

use std::collections::HashSet;
use std::io;
use std::process;

use tracing::{debug, info, warn};

use super::rules::{install_commands, uninstall_commands, Action, Command, Family};
use super::{Error, TransparentConfig};

/// Deleting a rule repeats while `-C` still finds a copy (an older, non-idempotent tool may
/// have added several); this bounds the loop should `-D` ever succeed without removing it.
const MAX_COPIES: usize = 64;

/// The result of one program run.
#[derive(Debug, Clone, Default)]
pub struct Output {
    /// The exit code (`None` when killed by a signal).
    pub code: Option<i32>,
    /// Standard output, lossily decoded.
    pub stdout: String,
    /// Standard error, lossily decoded.
    pub stderr: String,
}

impl Output {
    fn success(&self) -> bool {
        self.code == Some(0)
    }

    fn status(&self) -> String {
        match self.code {
            Some(code) => format!("exit status {code}"),
            None => "killed by a signal".to_string(),
        }
    }
}

/// Runs a program and collects its output; [`SystemRunner`] in production, a fake in tests.
pub trait Runner {
    /// Runs `binary` with `args` and waits for it.
    fn run(&mut self, binary: &str, args: &[String]) -> io::Result<Output>;
}

/// Runs the real programs found on `PATH`.
#[derive(Debug, Default, Clone, Copy)]
pub struct SystemRunner;

impl Runner for SystemRunner {
    fn run(&mut self, binary: &str, args: &[String]) -> io::Result<Output> {
        let output = process::Command::new(binary).args(args).stdin(process::Stdio::null()).output()?;
        Ok(Output {
            code: output.status.code(),
            stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&output.stderr).trim().to_string(),
        })
    }
}

/// Installs the rules of `config` (IPv4, and IPv6 when asked for and available) with `runner`.
pub fn install_with(runner: &mut dyn Runner, config: &TransparentConfig, dry_run: bool) -> Result<Vec<String>, Error> {
    config.validate()?;
    let mut done = apply(runner, &install_commands(config, Family::V4), dry_run)?;
    if config.ipv6 {
        match ipv6_unavailable(runner, dry_run) {
            None => done.extend(apply(runner, &install_commands(config, Family::V6), dry_run)?),
            Some(reason) => warn!(%reason, "IPv6 connections will not be redirected"),
        }
    }
    info!(changes = done.len(), dry_run, "transparent proxy rules installed");
    Ok(done)
}

/// Removes every rule and chain of ours (IPv4, and IPv6 where ip6tables works) with `runner`.
pub fn uninstall_with(runner: &mut dyn Runner, dry_run: bool) -> Result<Vec<String>, Error> {
    let mut done = apply(runner, &uninstall_commands(Family::V4), dry_run)?;
    match ipv6_unavailable(runner, dry_run) {
        None => done.extend(apply(runner, &uninstall_commands(Family::V6), dry_run)?),
        Some(reason) => debug!(%reason, "no IPv6 rules to remove"),
    }
    info!(changes = done.len(), dry_run, "transparent proxy rules removed");
    Ok(done)
}

/// Why IPv6 rules cannot be handled here, or `None` when they can. A dry run only checks that
/// ip6tables exists (it may run without privileges); a real run checks that the nat table
/// answers, which fails on kernels without IPv6 or its nat support.
fn ipv6_unavailable(runner: &mut dyn Runner, dry_run: bool) -> Option<String> {
    let binary = Family::V6.binary();
    let args: Vec<String> = if dry_run { vec!["--version".into()] } else { ["-w", "-t", "nat", "-S"].map(String::from).to_vec() };
    match runner.run(binary, &args) {
        Ok(output) if output.success() => None,
        Ok(output) => Some(format!("`{binary} {}` failed ({}): {}", args.join(" "), output.status(), output.stderr)),
        Err(error) => Some(format!("`{binary}` could not be run: {error}")),
    }
}

/// Runs `commands` (all of one family) idempotently; returns those that changed something.
/// A dry run returns every command as it would run, changes nothing and runs nothing.
fn apply(runner: &mut dyn Runner, commands: &[Command], dry_run: bool) -> Result<Vec<String>, Error> {
    if dry_run {
        return Ok(commands.iter().map(Command::to_string).collect());
    }
    let Some(family) = commands.first().map(|command| command.family) else {
        return Ok(Vec::new());
    };
    let mut chains = existing_chains(runner, family)?;
    let mut done = Vec::new();
    for command in commands {
        let needed = match command.action {
            Action::NewChain => !chains.contains(command.chain),
            Action::Flush | Action::DeleteChain => chains.contains(command.chain),
            Action::Append => !command.on_builtin_chain() || !exists(runner, command)?,
            Action::Delete => {
                // A jump to a chain that does not exist cannot exist either, and `-C` would
                // fail on the unknown target rather than answer "no".
                let target_exists = command.jump_target().is_none_or(|target| chains.contains(target));
                let mut copies = 0;
                while target_exists && copies < MAX_COPIES && exists(runner, command)? {
                    execute(runner, command, &mut done)?;
                    copies += 1;
                }
                false
            }
        };
        if needed {
            execute(runner, command, &mut done)?;
            match command.action {
                Action::NewChain => {
                    chains.insert(command.chain.to_string());
                }
                Action::DeleteChain => {
                    chains.remove(command.chain);
                }
                _ => {}
            }
        }
    }
    Ok(done)
}

/// The user-defined chains of the nat table (`-N NAME` lines of `iptables -t nat -S`). This
/// is also where a missing binary or missing privileges surface, before anything changes.
fn existing_chains(runner: &mut dyn Runner, family: Family) -> Result<HashSet<String>, Error> {
    let args: Vec<String> = ["-w", "-t", "nat", "-S"].map(String::from).to_vec();
    let output = run_checked(runner, family.binary(), &args)?;
    Ok(output.stdout.lines().filter_map(|line| line.strip_prefix("-N ")).map(|chain| chain.trim().to_string()).collect())
}

/// Whether the rule of `command` is in its chain (`-C` exits 0 when it is, 1 when it is not).
fn exists(runner: &mut dyn Runner, command: &Command) -> Result<bool, Error> {
    let args = command.check_args();
    let binary = command.family.binary();
    let output = runner.run(binary, &args).map_err(|source| spawn_error(binary, &args, source))?;
    match output.code {
        Some(0) => Ok(true),
        Some(1) => Ok(false),
        _ => Err(failed(binary, &args, &output)),
    }
}

fn execute(runner: &mut dyn Runner, command: &Command, done: &mut Vec<String>) -> Result<(), Error> {
    debug!(%command, "iptables");
    run_checked(runner, command.family.binary(), &command.args())?;
    done.push(command.to_string());
    Ok(())
}

fn run_checked(runner: &mut dyn Runner, binary: &str, args: &[String]) -> Result<Output, Error> {
    let output = runner.run(binary, args).map_err(|source| spawn_error(binary, args, source))?;
    if output.success() {
        Ok(output)
    } else {
        Err(failed(binary, args, &output))
    }
}

fn spawn_error(binary: &str, args: &[String], source: io::Error) -> Error {
    Error::Spawn { command: format!("{binary} {}", args.join(" ")), source }
}

fn failed(binary: &str, args: &[String], output: &Output) -> Error {
    Error::Command { command: format!("{binary} {}", args.join(" ")), status: output.status(), stderr: output.stderr.clone() }
}
