use clap::Parser;

/// East-west gateway: zone ingress for other zones' traffic and zone egress for this zone's cross-zone traffic
#[derive(Parser)]
#[command(name = "strait-gateway", version, about = strait_gateway::ROLE)]
struct Cli {}

fn main() {
    let _ = Cli::parse();
    eprintln!("strait-gateway: this component is not available in this build yet; see the project issues");
    std::process::exit(69);
}
