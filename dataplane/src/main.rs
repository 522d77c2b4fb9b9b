use clap::Parser;

/// Sidecar proxy: mTLS between workloads, L7 routing and policies, transparent interception
#[derive(Parser)]
#[command(name = "strait-dp", version, about = strait_dataplane::ROLE)]
struct Cli {}

fn main() {
    let _ = Cli::parse();
    eprintln!("strait-dp: this component is not available in this build yet; see the project issues");
    std::process::exit(69);
}
