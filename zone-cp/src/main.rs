use clap::Parser;

/// Zone control plane: syncs policies from the global control plane, programs the sidecars of this zone, signs workload certificates
#[derive(Parser)]
#[command(name = "strait-zone", version, about = strait_zone_cp::ROLE)]
struct Cli {}

fn main() {
    let _ = Cli::parse();
    eprintln!("strait-zone: this component is not available in this build yet; see the project issues");
    std::process::exit(69);
}
