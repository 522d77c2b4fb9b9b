use std::sync::Arc;

use clap::Parser;
use strait_runtime::flags::EXIT_CONFIG;
use strait_runtime::{signals, telemetry};
use strait_zone_cp::{Config, ZoneCp};

#[tokio::main]
async fn main() {
    let config = Config::parse();
    if let Err(problems) = config.validate() {
        for p in problems {
            eprintln!("strait-zone: {p}");
        }
        std::process::exit(EXIT_CONFIG);
    }
    telemetry::init(config.log_format, &config.log_level);
    tracing::info!(config = %serde_json::to_string(&config).unwrap_or_default(), version = env!("CARGO_PKG_VERSION"), "starting strait-zone");
    let zone = match ZoneCp::start(Arc::new(config)).await {
        Ok(z) => z,
        Err(e) => {
            tracing::error!(error = %e, "could not start");
            eprintln!("strait-zone: {e:#}");
            std::process::exit(1);
        }
    };
    // Started means serving: the DPS and the REST API listen, from the last snapshot on disk
    // or waiting for the global's first one (/readyz tells which).
    signals::serve_until_signal(async {}).await;
    zone.shutdown();
    zone.wait().await;
    tracing::info!("stopped");
}
