//! The iptables rules of the transparent proxy, generated from a [`TransparentConfig`] without
//! running anything.
//!
//! In: the settings and an address family. Out: the ordered [`Command`]s that
//! [`install`](super::install) and [`uninstall`](super::uninstall) run (or print with
//! `--dry-run`). Everything lives in the `nat` table, in four chains of our own, so removing
//! them never touches anyone else's rules:
//!
//! ```text
//! OUTPUT     -p tcp -j STRAIT_OUTBOUND            (connections made on this host)
//! PREROUTING -p tcp -j STRAIT_INBOUND             (connections arriving from other hosts)
//!
//! STRAIT_OUTBOUND
//!   -p tcp --dport <excluded port> -j RETURN       user exclusions first: never redirected
//!   -d <excluded cidr> -j RETURN
//!   -o lo ! -d 127.0.0.0/8 -m owner --uid-owner <proxy> -j STRAIT_IN_REDIRECT
//!                                                  the sidecar calling its own workload's
//!                                                  address (a service that calls itself
//!                                                  through the mesh) enters the inbound path
//!   -m owner --uid-owner <proxy> -j RETURN         the sidecar's own connections: no loop
//!   -o lo -j RETURN                                the application talking to itself:
//!                                                  127.0.0.1/32 (and all of 127.0.0.0/8) or its
//!                                                  own addresses, which always leave by `lo`
//!   -j STRAIT_REDIRECT                             everything else goes to the sidecar
//! STRAIT_REDIRECT     -p tcp -j REDIRECT --to-ports 15001
//! STRAIT_INBOUND
//!   -p tcp --dport <excluded inbound port> -j RETURN
//!   -p tcp -j STRAIT_IN_REDIRECT
//! STRAIT_IN_REDIRECT  -p tcp -j REDIRECT --to-ports 15006
//! ```
//!
//! The loopback handling follows Kuma and Istio, with one simplification: the hairpin rule
//! excludes all of `127.0.0.0/8` (Istio excludes only `127.0.0.1/32` and then needs an extra
//! rule for its `127.0.0.6` passthrough source), so the sidecar forwarding inbound traffic to
//! the application on any loopback address is never redirected back to itself. IPv6 uses the
//! same rules with `::1/128` as the loopback range. Without inbound redirection the inbound
//! chains and the hairpin rule are not installed (and are removed if a previous install
//! left them).

use std::fmt;

use super::TransparentConfig;

/// Chain that `OUTPUT` jumps to for TCP: decides which outbound connections are redirected.
pub const OUTBOUND_CHAIN: &str = "STRAIT_OUTBOUND";
/// Chain that redirects outbound connections to the outbound port.
pub const REDIRECT_CHAIN: &str = "STRAIT_REDIRECT";
/// Chain that `PREROUTING` jumps to for TCP: decides which inbound connections are redirected.
pub const INBOUND_CHAIN: &str = "STRAIT_INBOUND";
/// Chain that redirects inbound connections to the inbound port.
pub const IN_REDIRECT_CHAIN: &str = "STRAIT_IN_REDIRECT";
/// All chains of ours, in creation order.
pub const CHAINS: [&str; 4] = [INBOUND_CHAIN, IN_REDIRECT_CHAIN, OUTBOUND_CHAIN, REDIRECT_CHAIN];

/// The built-in chains we add a jump to, with the jump's match.
const OUTPUT_JUMP: (&str, &str) = ("OUTPUT", OUTBOUND_CHAIN);
const PREROUTING_JUMP: (&str, &str) = ("PREROUTING", INBOUND_CHAIN);

/// An address family, and so which binary programs it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Family {
    /// IPv4, with `iptables`.
    V4,
    /// IPv6, with `ip6tables`.
    V6,
}

impl Family {
    /// The program that manages this family's rules.
    pub fn binary(self) -> &'static str {
        match self {
            Family::V4 => "iptables",
            Family::V6 => "ip6tables",
        }
    }

    /// The dump program used by tests and operators to look at the result.
    pub fn save_binary(self) -> &'static str {
        match self {
            Family::V4 => "iptables-save",
            Family::V6 => "ip6tables-save",
        }
    }

    /// The loopback range the sidecar's hairpin rule leaves alone.
    fn loopback(self) -> &'static str {
        match self {
            Family::V4 => "127.0.0.0/8",
            Family::V6 => "::1/128",
        }
    }
}

/// What a [`Command`] does to the nat table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// `-N`: create the chain (skipped when it exists).
    NewChain,
    /// `-F`: empty the chain (skipped when it does not exist).
    Flush,
    /// `-X`: delete the (empty, unreferenced) chain (skipped when it does not exist).
    DeleteChain,
    /// `-A`: append the rule; to a built-in chain only when `-C` does not find it already.
    Append,
    /// `-D`: delete every copy of the rule that `-C` finds (none is fine).
    Delete,
}

impl Action {
    fn flag(self) -> &'static str {
        match self {
            Action::NewChain => "-N",
            Action::Flush => "-F",
            Action::DeleteChain => "-X",
            Action::Append => "-A",
            Action::Delete => "-D",
        }
    }
}

/// One iptables invocation on the nat table, e.g. `iptables -w -t nat -A STRAIT_REDIRECT ...`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Command {
    /// Which binary runs it.
    pub family: Family,
    /// What it does.
    pub action: Action,
    /// The chain it acts on.
    pub chain: &'static str,
    /// The rule (matches and target) for [`Action::Append`] and [`Action::Delete`].
    pub rule: Vec<String>,
}

impl Command {
    fn new(family: Family, action: Action, chain: &'static str, rule: &[&str]) -> Self {
        Self { family, action, chain, rule: rule.iter().map(|s| s.to_string()).collect() }
    }

    /// The arguments after the binary. `-w` waits for the xtables lock instead of failing
    /// when another program (kube-proxy, docker) is changing rules at the same moment.
    pub fn args(&self) -> Vec<String> {
        self.args_with(self.action.flag())
    }

    /// The `-C` form of this rule: exits 0 when the rule exists, 1 when it does not.
    pub fn check_args(&self) -> Vec<String> {
        self.args_with("-C")
    }

    fn args_with(&self, flag: &str) -> Vec<String> {
        let mut args = vec!["-w".to_string(), "-t".to_string(), "nat".to_string(), flag.to_string(), self.chain.to_string()];
        args.extend(self.rule.iter().cloned());
        args
    }

    /// Whether the command changes a chain that is not ours (a jump from `OUTPUT`/`PREROUTING`).
    pub fn on_builtin_chain(&self) -> bool {
        !CHAINS.contains(&self.chain)
    }

    /// The chain of ours this rule jumps to, if any.
    pub fn jump_target(&self) -> Option<&str> {
        let at = self.rule.iter().position(|arg| arg == "-j")?;
        let target = self.rule.get(at + 1)?;
        CHAINS.iter().find(|chain| **chain == target.as_str()).copied()
    }
}

impl fmt::Display for Command {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.family.binary(), self.args().join(" "))
    }
}

/// The commands that install the rules of `config` for `family`, in order: create our chains,
/// empty them, remove what a previous install with other settings needs no more, fill the
/// chains, then jump to them from `OUTPUT` (and `PREROUTING`).
pub fn install_commands(config: &TransparentConfig, family: Family) -> Vec<Command> {
    let needed: Vec<&'static str> = CHAINS.into_iter().filter(|chain| config.redirect_inbound || !is_inbound(chain)).collect();
    let mut commands: Vec<Command> = needed.iter().map(|chain| Command::new(family, Action::NewChain, chain, &[])).collect();
    commands.extend(CHAINS.iter().map(|chain| Command::new(family, Action::Flush, chain, &[])));
    if !config.redirect_inbound {
        commands.push(jump(family, Action::Delete, PREROUTING_JUMP));
        commands.extend(CHAINS.iter().filter(|chain| is_inbound(chain)).map(|chain| Command::new(family, Action::DeleteChain, chain, &[])));
    }
    commands.extend(outbound_rules(config, family));
    if config.redirect_inbound {
        commands.extend(inbound_rules(config, family));
    }
    commands.push(jump(family, Action::Append, OUTPUT_JUMP));
    if config.redirect_inbound {
        commands.push(jump(family, Action::Append, PREROUTING_JUMP));
    }
    commands
}

/// The commands that remove everything [`install_commands`] may have added for `family`:
/// the jumps first, then our chains (emptied before deletion, since they reference each other).
pub fn uninstall_commands(family: Family) -> Vec<Command> {
    let mut commands = vec![jump(family, Action::Delete, OUTPUT_JUMP), jump(family, Action::Delete, PREROUTING_JUMP)];
    commands.extend(CHAINS.iter().map(|chain| Command::new(family, Action::Flush, chain, &[])));
    commands.extend(CHAINS.iter().map(|chain| Command::new(family, Action::DeleteChain, chain, &[])));
    commands
}

fn is_inbound(chain: &str) -> bool {
    chain == INBOUND_CHAIN || chain == IN_REDIRECT_CHAIN
}

fn jump(family: Family, action: Action, (from, to): (&'static str, &'static str)) -> Command {
    Command::new(family, action, from, &["-p", "tcp", "-j", to])
}

fn outbound_rules(config: &TransparentConfig, family: Family) -> Vec<Command> {
    let append = |rule: &[&str]| Command::new(family, Action::Append, OUTBOUND_CHAIN, rule);
    let uid = config.proxy_uid.to_string();
    let mut rules: Vec<Command> = unique(&config.exclude_outbound_ports)
        .into_iter()
        .map(|port| append(&["-p", "tcp", "--dport", &port.to_string(), "-j", "RETURN"]))
        .collect();
    let mut cidrs: Vec<String> = Vec::new();
    for cidr in config.exclude_outbound_cidrs.iter().filter(|cidr| cidr.is_ipv4() == (family == Family::V4)) {
        let cidr = cidr.to_string();
        if !cidrs.contains(&cidr) {
            rules.push(append(&["-d", &cidr, "-j", "RETURN"]));
            cidrs.push(cidr);
        }
    }
    if config.redirect_inbound {
        rules.push(append(&["-o", "lo", "!", "-d", family.loopback(), "-m", "owner", "--uid-owner", &uid, "-j", IN_REDIRECT_CHAIN]));
    }
    rules.push(append(&["-m", "owner", "--uid-owner", &uid, "-j", "RETURN"]));
    rules.push(append(&["-o", "lo", "-j", "RETURN"]));
    rules.push(append(&["-j", REDIRECT_CHAIN]));
    rules.push(Command::new(
        family,
        Action::Append,
        REDIRECT_CHAIN,
        &["-p", "tcp", "-j", "REDIRECT", "--to-ports", &config.redirect_port_outbound.to_string()],
    ));
    rules
}

fn inbound_rules(config: &TransparentConfig, family: Family) -> Vec<Command> {
    let append = |rule: &[&str]| Command::new(family, Action::Append, INBOUND_CHAIN, rule);
    let mut rules: Vec<Command> = unique(&config.exclude_inbound_ports)
        .into_iter()
        .map(|port| append(&["-p", "tcp", "--dport", &port.to_string(), "-j", "RETURN"]))
        .collect();
    rules.push(append(&["-p", "tcp", "-j", IN_REDIRECT_CHAIN]));
    rules.push(Command::new(
        family,
        Action::Append,
        IN_REDIRECT_CHAIN,
        &["-p", "tcp", "-j", "REDIRECT", "--to-ports", &config.redirect_port_inbound.to_string()],
    ));
    rules
}

/// The ports in the order given, each once: a repeated flag must not add a rule twice.
fn unique(ports: &[u16]) -> Vec<u16> {
    let mut seen = Vec::with_capacity(ports.len());
    for port in ports {
        if !seen.contains(port) {
            seen.push(*port);
        }
    }
    seen
}
