//! The command line of `straitctl`: global connection flags, one subcommand per capability, and
//! the parser of resource type names (`MeshTimeout`, `meshtimeouts`, `mt`).
//!
//! In: argv and the `STRAIT_*` environment variables (read by clap only). Out: a [`Cli`] and
//! the [`FlagSources`] that say which connection flags were typed on the command line (so
//! `config set` saves only what the user asked for, never a value inherited from the environment).

use std::ffi::OsStr;
use std::path::PathBuf;

use clap::builder::{PossibleValue, TypedValueParser};
use clap::error::ErrorKind;
use clap::parser::ValueSource;
use clap::{Args, CommandFactory, FromArgMatches, Parser, Subcommand, ValueEnum};
use strait_api::ResourceType;

const ABOUT: &str = "Operate a Strait service mesh through the REST API of its global control plane.";

const EXAMPLES: &str = "\
Examples:
  # Point straitctl at a control plane once, with the admin token it generated (the CA of its
  # HTTPS certificate, api-ca.pem, is found next to the token file)
  straitctl config set --server https://cp.example:7680 --token-file /var/lib/strait/global/admin-token

  # Create or update everything in a file, then look at it
  straitctl apply -f mesh.yaml -f policies.yaml
  straitctl get meshtrafficpermissions --mesh default
  straitctl get mtp allow-web -o yaml

The connection comes from --server/--token/--token-file/--ca-file (or STRAIT_SERVER,
STRAIT_TOKEN, STRAIT_TOKEN_FILE, STRAIT_CA_FILE), else from the config file, else
https://127.0.0.1:7680 with the CA next to the token file.";

/// `straitctl`: the operator CLI of Strait.
#[derive(Debug, Parser)]
#[command(name = "straitctl", version, about = ABOUT, after_help = EXAMPLES, propagate_version = false)]
pub struct Cli {
    /// How to reach the control plane.
    #[command(flatten)]
    pub global: GlobalArgs,
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// Connection flags, accepted before or after the subcommand.
#[derive(Debug, Clone, Default, Args)]
pub struct GlobalArgs {
    /// URL of the global control plane's REST API (https://, or http:// for one started with
    /// --api-plaintext) [default: the config file's server, else https://127.0.0.1:7680]
    #[arg(long, env = "STRAIT_SERVER", global = true, help_heading = "Connection", value_name = "URL")]
    pub server: Option<String>,
    /// Admin token for writes (see also --token-file; --token wins when both are set)
    #[arg(long, env = "STRAIT_TOKEN", global = true, help_heading = "Connection", value_name = "TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// File holding the admin token, such as <strait-global data dir>/admin-token
    #[arg(long, env = "STRAIT_TOKEN_FILE", global = true, help_heading = "Connection", value_name = "FILE")]
    pub token_file: Option<PathBuf>,
    /// CA certificate (PEM) that verifies the server's HTTPS certificate [default: the config
    /// file's caFile, else api-ca.pem next to the admin token file, which strait-global writes]
    #[arg(long, env = "STRAIT_CA_FILE", global = true, help_heading = "Connection", value_name = "FILE")]
    pub ca_file: Option<PathBuf>,
    /// Client config file [default: $XDG_CONFIG_HOME/strait/config.yaml, else
    /// ~/.config/strait/config.yaml]
    #[arg(long = "config-file", env = "STRAIT_CONFIG", global = true, help_heading = "Connection", value_name = "FILE")]
    pub config: Option<PathBuf>,
}

/// Which connection flags were typed on the command line rather than taken from the environment.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct FlagSources {
    /// `--server` was typed.
    pub server: bool,
    /// `--token` was typed.
    pub token: bool,
    /// `--token-file` was typed.
    pub token_file: bool,
    /// `--ca-file` was typed.
    pub ca_file: bool,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Create or update resources from YAML or JSON files
    #[command(after_help = APPLY_EXAMPLES)]
    Apply(ApplyArgs),
    /// List resources of a type, or show one
    #[command(after_help = GET_EXAMPLES, after_long_help = long_help(GET_EXAMPLES, true))]
    Get(GetArgs),
    /// Delete one resource
    #[command(after_help = DELETE_EXAMPLES, after_long_help = long_help(DELETE_EXAMPLES, false))]
    Delete(DeleteArgs),
    /// Print the version of straitctl and of the control plane
    #[command(after_help = "Examples:\n  straitctl version\n  straitctl version --client")]
    Version(VersionArgs),
    /// Show or change the client config file (server and token)
    #[command(subcommand, after_help = CONFIG_EXAMPLES)]
    Config(ConfigCommand),
    /// Print a shell completion script
    #[command(after_help = COMPLETION_EXAMPLES)]
    Completion(CompletionArgs),
    /// Register zones, list them with their status, revoke their tokens
    #[command(subcommand, after_help = ZONE_EXAMPLES)]
    Zone(ZoneCommand),
    /// Issue and revoke tokens (dataplane tokens for sidecars)
    #[command(subcommand, after_help = TOKEN_EXAMPLES)]
    Token(TokenCommand),
    /// Look inside the mesh from the global: a sidecar of any zone (its live configuration, the
    /// policies behind each field, its metrics), a service across zones, a zone
    #[command(subcommand, after_help = INSPECT_EXAMPLES)]
    Inspect(InspectCommand),
    /// Run a local two-zone demo mesh (up, traffic, kill, status, down)
    #[command(subcommand)]
    Demo(DemoCommand),
    /// Print what a Kubernetes cluster needs before `helm install` (the CRDs)
    #[command(subcommand, after_help = INSTALL_EXAMPLES)]
    Install(InstallCommand),
}

const INSTALL_EXAMPLES: &str = "\
Examples:
  straitctl install crds | kubectl apply --server-side -f -
  straitctl install crds --output-dir deploy/k8s/strait/crds

The Helm chart carries the same CRDs (helm installs them before anything else); this prints
them for clusters where CRDs are managed apart from releases. It needs no control plane.";

/// `straitctl install` targets.
#[derive(Debug, Subcommand)]
pub enum InstallCommand {
    /// The CustomResourceDefinitions of every resource type (strait.io/v1alpha1), generated
    /// from the same types and rules as the REST API, and the admission policy that keeps
    /// their objects read-only (only the zone control plane writes its copies)
    Crds(InstallCrdsArgs),
}

/// `install crds`.
#[derive(Debug, Args)]
pub struct InstallCrdsArgs {
    /// Write one file per CRD (`<plural>.strait.io.yaml`) into this directory instead of
    /// printing them all; files of earlier CRDs that no longer exist are removed
    #[arg(long, value_name = "DIR")]
    pub output_dir: Option<PathBuf>,

    /// With --output-dir: write the read-only admission policy (read-only.strait.io.yaml) into
    /// this directory instead (a Helm chart's templates/: Helm's crds/ takes only CRDs)
    #[arg(long, value_name = "DIR", requires = "output_dir")]
    pub policy_dir: Option<PathBuf>,
}

const INSPECT_EXAMPLES: &str = "\
Examples:
  straitctl inspect dataplane backend-1 --mesh default            # what the sidecar runs, live
  straitctl inspect dataplane backend-1 --policies                # which policy set each field
  straitctl inspect dataplane backend-1 --stats                   # its metrics
  straitctl inspect service backend                               # endpoints and health per zone
  straitctl inspect zone zone-1

The global asks the sidecar's zone over the zone's own sync stream: it never connects into a
zone, and a sidecar is found in whichever zone runs it (--zone asks only that one).";

/// `straitctl inspect` targets.
#[derive(Debug, Subcommand)]
pub enum InspectCommand {
    /// One sidecar, in whichever zone it runs: its live configuration (default), the policies
    /// behind it (--policies) or its metrics (--stats)
    Dataplane(InspectDataplaneArgs),
    /// One service across zones: endpoints and healthy endpoints per zone
    Service(InspectServiceArgs),
    /// One zone: its connection, sync with the global, services and gateways
    Zone(InspectZoneArgs),
}

/// `inspect dataplane`.
#[derive(Debug, Args)]
#[command(group = clap::ArgGroup::new("what").args(["show_config", "policies", "stats"]))]
pub struct InspectDataplaneArgs {
    /// The Dataplane's name
    pub name: String,
    /// Its mesh
    #[arg(short, long, env = "STRAIT_MESH", default_value = "default")]
    pub mesh: String,
    /// Ask only this zone (by default every connected zone is asked)
    #[arg(long)]
    pub zone: Option<String>,
    /// What the sidecar runs now, as it reports it (the default)
    #[arg(long = "config", id = "show_config")]
    pub config: bool,
    /// For each inbound, outbound and route: the policies that matched, in merge order, and the
    /// policy that set each effective field
    #[arg(long)]
    pub policies: bool,
    /// The sidecar's metrics (series still at zero left out; -o json for everything)
    #[arg(long)]
    pub stats: bool,
    /// Output format (table: text for humans)
    #[arg(short, long, value_enum, default_value_t = OutputFormat::Table)]
    pub output: OutputFormat,
}

/// `inspect service`.
#[derive(Debug, Args)]
pub struct InspectServiceArgs {
    /// The service
    pub name: String,
    /// Its mesh
    #[arg(short, long, env = "STRAIT_MESH", default_value = "default")]
    pub mesh: String,
    /// Output format
    #[arg(short, long, value_enum, default_value_t = OutputFormat::Table)]
    pub output: OutputFormat,
}

/// `inspect zone`.
#[derive(Debug, Args)]
pub struct InspectZoneArgs {
    /// The zone
    pub name: String,
    /// Output format
    #[arg(short, long, value_enum, default_value_t = OutputFormat::Table)]
    pub output: OutputFormat,
}

const ZONE_EXAMPLES: &str = "\
Examples:
  straitctl zone register zone-1 --output /etc/strait/zone-1
  straitctl zone proxy-token zone-1 --output /etc/strait/zone-1
  straitctl zone list
  straitctl zone revoke zone-1

What each file is for:
  zone-token        the zone control plane's credential for zone sync with the global (strait-zone)
  zone-proxy-token  registers the zone's gateways with their zone control plane (strait-gateway);
                    the global refuses it, so a gateway host never holds the zone's credential
  global-ca.pem     the CA the zone verifies the global's sync endpoint with";

/// `straitctl zone` actions.
#[derive(Debug, Subcommand)]
pub enum ZoneCommand {
    /// Create the zone (if needed) and issue its zone token and zone-proxy token; earlier tokens
    /// of the zone stop working
    Register(ZoneRegisterArgs),
    /// Issue a new zone-proxy token for the zone's gateways and revoke the previous one (after
    /// a gateway host is lost, say); the zone token and the zone's sync stream are untouched
    ProxyToken(ZoneProxyTokenArgs),
    /// List zones: online or offline, last seen, revisions acknowledged, NACK errors, services
    List(ZoneListArgs),
    /// Invalidate the zone's token at once and close its sync stream
    Revoke(ZoneRevokeArgs),
}

/// `zone register`.
#[derive(Debug, Args)]
pub struct ZoneRegisterArgs {
    /// Zone name (DNS-1123 label)
    pub name: String,
    /// Write `zone-token`, `zone-proxy-token` (mode 0600) and `global-ca.pem` into this directory instead of printing them
    #[arg(long, value_name = "DIR")]
    pub output: Option<PathBuf>,
    /// Token validity, such as 720h [default: the global's --zone-token-validity]
    #[arg(long, value_name = "DURATION")]
    pub valid_for: Option<String>,
    /// Zone sync address the zone should use [default: https://<server host>:<sync port of the global>]
    #[arg(long, value_name = "URL")]
    pub global_address: Option<String>,
    /// What to write: `text` (the credentials and the command that starts the zone, or with
    /// --output their files), `helm-values` (the values of the zone's `helm install` of
    /// deploy/k8s/strait, printed), or `env` (with --output DIR: `zone.env` for
    /// strait-zone.service and `gateway.env` for strait-gateway.service, read by the units of
    /// deploy/vm as they are). Each holds tokens: keep them private
    #[arg(long, value_enum, default_value_t = RegisterFormat::Text)]
    pub output_format: RegisterFormat,
}

/// `zone register --output-format`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum RegisterFormat {
    /// The credentials and how to start the zone
    Text,
    /// Values for the Helm chart's `helm install` of a zone
    HelmValues,
    /// Environment files of the VM units (systemd `EnvironmentFile=`)
    Env,
}

/// `zone list`.
#[derive(Debug, Args)]
pub struct ZoneListArgs {
    /// Output format
    #[arg(short, long, value_enum, default_value_t = OutputFormat::Table)]
    pub output: OutputFormat,
}

/// `zone proxy-token`.
#[derive(Debug, Args)]
pub struct ZoneProxyTokenArgs {
    /// Zone name
    pub name: String,
    /// Write `zone-proxy-token` (mode 0600) into this directory instead of printing it
    #[arg(long, value_name = "DIR")]
    pub output: Option<PathBuf>,
    /// Token validity, such as 720h [default: the global's --zone-token-validity]
    #[arg(long, value_name = "DURATION")]
    pub valid_for: Option<String>,
}

/// `zone revoke`.
#[derive(Debug, Args)]
pub struct ZoneRevokeArgs {
    /// Zone name
    pub name: String,
}

const TOKEN_EXAMPLES: &str = "\
Examples:
  straitctl token dataplane --mesh default --service web > web.token
  straitctl token dataplane --mesh default --service web --valid-for 24h --output /etc/strait/web.token
  straitctl token revoke --mesh default --file /etc/strait/web.token
  straitctl token revoke --mesh default --service web";

/// `straitctl token` actions.
#[derive(Debug, Subcommand)]
pub enum TokenCommand {
    /// A token with which a sidecar registers as SERVICE of MESH with its zone control plane
    Dataplane(DataplaneTokenArgs),
    /// Revoke dataplane tokens: one (by id or token file) or every one of a service issued up
    /// to now. Zones refuse them from their next sync on (within a second when connected) and
    /// close the streams of sidecars that use them; those sidecars get no new certificate
    Revoke(RevokeTokenArgs),
}

/// `token revoke`.
#[derive(Debug, Args)]
#[command(group = clap::ArgGroup::new("which").required(true).args(["id", "service", "file"]))]
pub struct RevokeTokenArgs {
    /// The mesh
    #[arg(long, env = "STRAIT_MESH", default_value = "default")]
    pub mesh: String,
    /// The id of the token to revoke (printed when it was issued)
    #[arg(long)]
    pub id: Option<String>,
    /// Revoke every token of this service issued up to now (tokens issued afterwards work)
    #[arg(long)]
    pub service: Option<String>,
    /// Revoke the dataplane token in this file (its id is read from it; the token is not sent)
    #[arg(long, value_name = "FILE")]
    pub file: Option<PathBuf>,
}

/// `token dataplane`.
#[derive(Debug, Args)]
pub struct DataplaneTokenArgs {
    /// The mesh
    #[arg(long, env = "STRAIT_MESH", default_value = "default")]
    pub mesh: String,
    /// The service (`strait.io/service` of the sidecar's inbounds)
    #[arg(long)]
    pub service: String,
    /// Validity, such as 24h [default: 720h]
    #[arg(long, value_name = "DURATION")]
    pub valid_for: Option<String>,
    /// Write the token to this file (mode 0600) instead of printing it
    #[arg(long, value_name = "FILE")]
    pub output: Option<PathBuf>,
    /// `text` (the token alone) or `env` (`STRAIT_DATAPLANE_TOKEN=...`, the env file a
    /// `strait-dp@<workload>` unit of deploy/vm reads as /etc/strait/dp-<workload>.env)
    #[arg(long, value_enum, default_value_t = TokenFormat::Text)]
    pub output_format: TokenFormat,
}

/// `token dataplane --output-format`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum TokenFormat {
    /// The token
    Text,
    /// An environment file for the sidecar's unit
    Env,
}

/// `straitctl demo` actions.
#[derive(Debug, Clone, Subcommand)]
pub enum DemoCommand {
    /// Start a global control plane, two zones with a gateway each and a sample application
    /// (frontend -> backend v1/v2 -> store) in the background, and print what to try next
    Up(DemoUpArgs),
    /// Send steady traffic to the frontend and print, every second, which backend version and
    /// zone answered, successes and failures
    Traffic(DemoTrafficArgs),
    /// Kill a service's workloads (application and sidecar) in one zone, to watch failover
    Kill(DemoKillArgs),
    /// Make a service's application in one zone answer an error status (its sidecar stays up),
    /// to watch outlier detection eject it; `--heal` makes it answer normally again
    Fail(DemoFailArgs),
    /// List the demo's processes and their health
    Status(DemoArgs),
    /// Stop everything `demo up` started and remove its data
    Down(DemoArgs),
}

/// Where the demo keeps its state.
#[derive(Debug, Clone, Args)]
pub struct DemoArgs {
    /// The demo's directory: data, logs, tokens and the list of its processes [default: <temp dir>/strait-demo-<user>]
    #[arg(long, value_name = "DIR")]
    pub dir: Option<PathBuf>,
    /// First two octets of the loopback addresses the demo uses (127.A.B.C); with namespaces,
    /// A also names them and their subnet (198.19.A.0/24)
    #[arg(long, default_value = "127.0", value_name = "127.X")]
    pub address_prefix: String,
    /// Run on loopback addresses even with root (by default root gets a network namespace per zone)
    #[arg(long)]
    pub no_namespaces: bool,
}

/// `demo up`.
#[derive(Debug, Clone, Args)]
pub struct DemoUpArgs {
    #[command(flatten)]
    pub demo: DemoArgs,
    /// Also start Prometheus (the `prometheus` on PATH, such as Debian's package), scraping the
    /// control planes, sidecars and gateways of both zones through their discovery endpoints
    #[arg(long)]
    pub with_prometheus: bool,
}

/// `demo traffic`.
#[derive(Debug, Clone, Args)]
pub struct DemoTrafficArgs {
    #[command(flatten)]
    pub demo: DemoArgs,
    /// Requests per second
    #[arg(long, default_value_t = 10)]
    pub rate: u32,
    /// Stop after this many seconds (0: until interrupted)
    #[arg(long, default_value_t = 0)]
    pub seconds: u64,
}

/// `demo kill`.
#[derive(Debug, Clone, Args)]
pub struct DemoKillArgs {
    #[command(flatten)]
    pub demo: DemoArgs,
    /// The service (`frontend`, `backend`, `store`)
    pub service: String,
    /// The zone whose workloads of the service to kill
    #[arg(long)]
    pub zone: String,
}

/// `demo fail`.
#[derive(Debug, Clone, Args)]
pub struct DemoFailArgs {
    #[command(flatten)]
    pub demo: DemoArgs,
    /// The service (`frontend`, `backend`, `store`)
    pub service: String,
    /// The zone whose application of the service fails
    #[arg(long)]
    pub zone: String,
    /// The status it answers (400-599)
    #[arg(long, default_value_t = 503, value_parser = clap::value_parser!(u16).range(400..=599))]
    pub status: u16,
    /// Answer normally again
    #[arg(long, conflicts_with = "status")]
    pub heal: bool,
}

const APPLY_EXAMPLES: &str = "\
Every document of every file is validated first; if any is invalid, each error is printed and
nothing is written. Meshes are applied first, then Zones, then the rest in file order. A document
that carries `version` (as `get -o yaml` prints) replaces only that version of the resource.

Examples:
  straitctl apply -f mesh.yaml -f policies.yaml
  straitctl get mtp -o yaml > mtp.yaml && straitctl apply -f mtp.yaml
  cat policies.yaml | straitctl apply -f -
  straitctl apply -f policies/ --dry-run";

const GET_EXAMPLES: &str = "\
TYPE is a type name, its plural or its alias (MeshTrafficPermission, meshtrafficpermissions,
mtp), or `services` for the services of a mesh (on the global: those the zones report).
Dataplanes are registered in their zone: list them from the zone's API (--server). `-o yaml`
and `-o json` print what the server returned, which `straitctl apply -f` accepts back.

Examples:
  straitctl get meshes
  straitctl get mtp --mesh prod
  straitctl get meshtimeout my-timeouts -o yaml
  straitctl get services --mesh default
  straitctl get dataplanes -o json --server https://zone-1.example:7681";

const DELETE_EXAMPLES: &str = "\
Deleting a Mesh deletes every resource in it.

Examples:
  straitctl delete mtp allow-web
  straitctl delete meshtimeout slow --mesh prod
  straitctl delete zone east";

const CONFIG_EXAMPLES: &str = "\
The config file is YAML with `server`, `token` or `tokenFile`, and `caFile`; it is created (mode
0600) on first use. Flags and STRAIT_* variables override it.

Examples:
  straitctl config set --server https://cp.example:7680 --token-file ~/admin-token --ca-file ~/api-ca.pem
  straitctl config view";

const COMPLETION_EXAMPLES: &str = "\
Examples:
  source <(straitctl completion bash)
  straitctl completion zsh > \"${fpath[1]}/_straitctl\"
  straitctl completion fish > ~/.config/fish/completions/straitctl.fish";

/// The examples followed by the table of types, for `--help`.
fn long_help(examples: &str, with_services: bool) -> String {
    format!("{examples}\n\nTypes (name, plural, alias):\n{}", type_table(with_services))
}

/// Arguments of `apply`.
#[derive(Debug, Args)]
pub struct ApplyArgs {
    /// A YAML or JSON file (several documents allowed), a directory of them, or `-` for stdin;
    /// repeat for more
    #[arg(short = 'f', long = "filename", value_name = "FILE", required = true)]
    pub files: Vec<PathBuf>,
    /// Validate every document and show what would be applied, without contacting the server
    #[arg(long)]
    pub dry_run: bool,
}

/// Output formats of `get`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, ValueEnum)]
pub enum OutputFormat {
    /// Aligned columns for humans
    #[default]
    Table,
    /// YAML, as the server returned it
    Yaml,
    /// JSON, as the server returned it
    Json,
}

/// Arguments of `get`.
#[derive(Debug, Args)]
pub struct GetArgs {
    /// Resource type: name, plural or alias (MeshTrafficPermission, meshtrafficpermissions, mtp),
    /// or `services`
    #[arg(value_name = "TYPE", value_parser = TypeParser { allow_services: true }, hide_possible_values = true)]
    pub kind: Target,
    /// Show only this resource
    pub name: Option<String>,
    /// Mesh of mesh-scoped resources
    #[arg(short, long, env = "STRAIT_MESH", default_value = "default")]
    pub mesh: String,
    /// Output format
    #[arg(short, long, value_enum, default_value_t = OutputFormat::Table)]
    pub output: OutputFormat,
}

/// Arguments of `delete`.
#[derive(Debug, Args)]
pub struct DeleteArgs {
    /// Resource type: name, plural or alias (MeshTrafficPermission, meshtrafficpermissions, mtp)
    #[arg(value_name = "TYPE", value_parser = TypeParser { allow_services: false }, hide_possible_values = true)]
    pub kind: Target,
    /// Name of the resource
    pub name: String,
    /// Mesh of mesh-scoped resources
    #[arg(short, long, env = "STRAIT_MESH", default_value = "default")]
    pub mesh: String,
}

/// Arguments of `version`.
#[derive(Debug, Args)]
pub struct VersionArgs {
    /// Print only the client version, without contacting the server
    #[arg(long)]
    pub client: bool,
}

/// `config` subcommands.
#[derive(Debug, Subcommand)]
pub enum ConfigCommand {
    /// Save --server, --token or --token-file, and --ca-file into the config file
    #[command(after_help = "Examples:\n  straitctl config set --server https://cp.example:7680 --ca-file ~/api-ca.pem\n  \
        straitctl config set --token-file /var/lib/strait/global/admin-token")]
    Set,
    /// Print the config file (token masked) and the settings in effect
    View,
}

/// Arguments of `completion`.
#[derive(Debug, Args)]
pub struct CompletionArgs {
    /// The shell
    #[arg(value_enum)]
    pub shell: clap_complete::Shell,
}

/// What `get` and `delete` act on: a resource type, or the services derived from Dataplanes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target {
    /// A stored resource type.
    Resource(ResourceType),
    /// `services`: read-only summaries of a mesh's Dataplanes.
    Services,
}

/// Parses `TYPE` arguments; `services` only where `allow_services` is set.
#[derive(Debug, Clone, Copy)]
pub struct TypeParser {
    /// Whether `services` is accepted.
    pub allow_services: bool,
}

impl TypedValueParser for TypeParser {
    type Value = Target;

    fn parse_ref(&self, cmd: &clap::Command, _arg: Option<&clap::Arg>, value: &OsStr) -> Result<Target, clap::Error> {
        let text = value.to_string_lossy();
        parse_target(&text, self.allow_services).map_err(|msg| clap::Error::raw(ErrorKind::InvalidValue, format!("{msg}\n")).with_cmd(cmd))
    }

    fn possible_values(&self) -> Option<Box<dyn Iterator<Item = PossibleValue> + '_>> {
        let types = ResourceType::ALL.iter().map(|t| PossibleValue::new(t.plural()).help(t.name()));
        let services = self.allow_services.then(|| PossibleValue::new("services").help("services of a mesh"));
        Some(Box::new(types.chain(services)))
    }
}

/// Finds the target named by `text` (type name, plural or alias, any case), or explains what
/// is valid.
pub fn parse_target(text: &str, allow_services: bool) -> Result<Target, String> {
    if let Some(t) = ResourceType::lookup(text) {
        return Ok(Target::Resource(t));
    }
    let lower = text.to_ascii_lowercase();
    if lower == "services" || lower == "service" || lower == "svc" {
        return if allow_services {
            Ok(Target::Services)
        } else {
            Err("services are derived from Dataplanes and cannot be changed directly; act on the Dataplanes instead".into())
        };
    }
    Err(format!("unknown resource type {text:?}; valid types (name, plural, alias):\n{}", type_table(allow_services)))
}

/// The valid types as an indented table, for error messages.
pub fn type_table(with_services: bool) -> String {
    let width = ResourceType::ALL.iter().map(|t| t.name().len()).max().unwrap_or(0);
    let plural_width = ResourceType::ALL.iter().map(|t| t.plural().len()).max().unwrap_or(0);
    let mut out = String::new();
    for t in ResourceType::ALL {
        out.push_str(&format!("  {:width$}  {:plural_width$}  {}\n", t.name(), t.plural(), t.short()));
    }
    if with_services {
        out.push_str(&format!("  {:width$}  {:plural_width$}  svc\n", "(services)", "services"));
    }
    out.trim_end().to_string()
}

/// Parses the command line; usage errors print and exit with code 2.
pub fn parse() -> (Cli, FlagSources) {
    let matches = Cli::command().get_matches();
    let cli = Cli::from_arg_matches(&matches).unwrap_or_else(|e| e.exit());
    (cli, sources(&matches))
}

fn sources(matches: &clap::ArgMatches) -> FlagSources {
    let typed = |id: &str| matches.value_source(id) == Some(ValueSource::CommandLine);
    FlagSources { server: typed("server"), token: typed("token"), token_file: typed("token_file"), ca_file: typed("ca_file") }
}

/// A usage error (exit code 2) for conditions clap cannot express.
pub fn usage_error(message: &str) -> clap::Error {
    Cli::command().error(ErrorKind::ArgumentConflict, message)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_command_line_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn types_by_name_plural_alias_and_case() {
        let cases = [
            ("MeshTrafficPermission", ResourceType::MeshTrafficPermission),
            ("meshtrafficpermission", ResourceType::MeshTrafficPermission),
            ("meshtrafficpermissions", ResourceType::MeshTrafficPermission),
            ("mtp", ResourceType::MeshTrafficPermission),
            ("MTP", ResourceType::MeshTrafficPermission),
            ("mt", ResourceType::MeshTimeout),
            ("mtr", ResourceType::MeshTrace),
            ("meshes", ResourceType::Mesh),
            ("Mesh", ResourceType::Mesh),
            ("zone", ResourceType::Zone),
            ("dp", ResourceType::Dataplane),
            ("meshloadbalancingstrategies", ResourceType::MeshLoadBalancingStrategy),
        ];
        for (text, want) in cases {
            assert_eq!(parse_target(text, true), Ok(Target::Resource(want)), "{text}");
        }
        assert_eq!(parse_target("services", true), Ok(Target::Services));
        assert!(parse_target("services", false).unwrap_err().contains("Dataplanes"));
    }

    #[test]
    fn unknown_types_list_every_valid_one() {
        let err = parse_target("meshfoo", true).unwrap_err();
        assert!(err.starts_with("unknown resource type \"meshfoo\""), "{err}");
        for t in ResourceType::ALL {
            assert!(err.contains(t.name()) && err.contains(t.plural()), "{t} missing from {err}");
        }
        assert!(err.contains("services"));
    }

    #[test]
    fn global_flags_go_anywhere_and_sources_are_tracked() {
        let m = Cli::command().try_get_matches_from(["straitctl", "get", "mtp", "--server", "http://x:1", "-o", "json"]).unwrap();
        let cli = Cli::from_arg_matches(&m).unwrap();
        assert_eq!(cli.global.server.as_deref(), Some("http://x:1"));
        assert_eq!(sources(&m), FlagSources { server: true, token: false, token_file: false, ca_file: false });
        let Command::Get(get) = cli.command else { panic!("not get") };
        assert_eq!(get.kind, Target::Resource(ResourceType::MeshTrafficPermission));
        assert_eq!(get.output, OutputFormat::Json);
        assert_eq!(get.mesh, "default");
    }

    #[test]
    fn bad_usage_is_a_clap_error() {
        let err = Cli::command().try_get_matches_from(["straitctl", "get", "nope"]).unwrap_err();
        assert_eq!(err.exit_code(), 2);
        assert!(err.to_string().contains("unknown resource type \"nope\""), "{err}");
        assert!(Cli::command().try_get_matches_from(["straitctl", "apply"]).is_err(), "apply needs -f");
    }
}
