//! `straitctl demo`: the local two-zone demo. It needs the zone control plane, the sidecar and
//! the gateway; until they exist it says so and points at what works today.
//!
//! In: the demo action. Out: a message on stdout.

use crate::cli::DemoCommand;

/// Explains that the demo is not available yet.
pub fn run(cmd: DemoCommand) -> anyhow::Result<()> {
    let action = match cmd {
        DemoCommand::Up => "up",
        DemoCommand::Down => "down",
    };
    println!(
        "straitctl demo {action}: the two-zone demo is not yet available in this version: it needs the zone \
         control plane, the sidecars and the gateways.\n\
         What works today: start the global control plane and drive it with straitctl:\n  \
         cargo run -p strait-global-cp --bin strait-global -- --data-dir /tmp/strait\n  \
         STRAIT_TOKEN_FILE=/tmp/strait/admin-token cargo run -p straitctl -- apply -f deploy/examples/all-types.yaml"
    );
    Ok(())
}
