//! `strait-dp`: parses the command line, then runs the sidecar (see `app.rs`) until a signal,
//! or installs or removes the transparent proxy's iptables rules.

use clap::Parser;
use strait_dataplane::config::{Cli, Command, TransparentCommand};
use strait_dataplane::Sidecar;
use strait_runtime::flags::EXIT_CONFIG;
use strait_runtime::telemetry;

/// `pow`, the one symbol the sidecar needed from the C math library (tokio's multi-thread
/// scheduler averages poll times with it), from the pure-Rust `libm` instead: the linker then
/// leaves `libm.so` out, and its code (0.3 MB, mapped whole) out of every sidecar's resident
/// memory. Same results: `libm` is a port of the same algorithms (musl's).
#[allow(unsafe_code)]
#[no_mangle]
pub extern "C" fn pow(x: f64, y: f64) -> f64 {
    libm::pow(x, y)
}

/// The control side (zone connection, certificates, admin) runs on the main thread; the sidecar
/// starts the data path on threads of its own, as `--concurrency` says.
#[tokio::main(flavor = "current_thread")]
async fn main() {
    let flags = match Cli::parse().command {
        Command::Run(flags) => flags,
        Command::TransparentProxy(cmd) => transparent(cmd),
    };
    let (format, level) = (flags.log_format, flags.log_level.clone());
    let config = match flags.validate() {
        Ok(c) => c,
        Err(problems) => {
            for p in problems {
                eprintln!("strait-dp: {p}");
            }
            std::process::exit(EXIT_CONFIG);
        }
    };
    // As many malloc arenas as data-path threads: the control thread shares the first.
    strait_runtime::memory::cap_arenas(usize::from(config.flags.concurrency));
    telemetry::init(format, &level);
    // A listener that cannot be bound (a port taken) ends here, named with its address.
    let sidecar = match Sidecar::start(config).await {
        Ok(s) => s,
        Err(e) => {
            tracing::error!(error = %e, "the sidecar cannot start");
            eprintln!("strait-dp: {e}");
            std::process::exit(1);
        }
    };
    strait_runtime::signals::serve_until_signal(sidecar.wait_ready()).await;
    sidecar.shutdown(std::time::Duration::from_secs(10)).await;
}

/// Runs `transparent-proxy install|uninstall` and exits.
fn transparent(cmd: TransparentCommand) -> ! {
    use strait_dataplane::transparent::{self, Error};
    let dataplane_file = match &cmd {
        TransparentCommand::Install(args) => args.dataplane_file.as_deref(),
        TransparentCommand::Uninstall { dataplane_file, .. } => dataplane_file.as_deref(),
    };
    let ports = match dataplane_file.map(strait_dataplane::config::transparent_proxying) {
        None => None,
        Some(Ok(Some(ports))) => Some(ports),
        Some(Ok(None)) => {
            let path = dataplane_file.map(|p| p.display().to_string()).unwrap_or_default();
            println!("{path}: the Dataplane has no transparentProxying; no interception rules to install or remove");
            std::process::exit(0);
        }
        Some(Err(problems)) => {
            for p in problems {
                eprintln!("strait-dp: {p}");
            }
            std::process::exit(EXIT_CONFIG);
        }
    };
    let result = match &cmd {
        TransparentCommand::Install(args) => {
            let mut config = args.to_config();
            if let Some(ports) = ports {
                config.redirect_port_outbound = ports.redirect_port_outbound;
                config.redirect_port_inbound = ports.redirect_port_inbound;
            }
            transparent::install(&config, args.dry_run)
        }
        TransparentCommand::Uninstall { dry_run, .. } => transparent::uninstall(*dry_run),
    };
    match result {
        Ok(commands) => {
            for c in commands {
                println!("{c}");
            }
            std::process::exit(0);
        }
        Err(Error::Config(problems)) => {
            for p in problems {
                eprintln!("strait-dp: {p}");
            }
            std::process::exit(EXIT_CONFIG);
        }
        Err(e) => {
            eprintln!("strait-dp: {e}");
            std::process::exit(1);
        }
    }
}
