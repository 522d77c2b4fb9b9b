use std::sync::Arc;

use clap::Parser;
use strait_global_cp::config::Config;
use strait_global_cp::GlobalCp;
use strait_runtime::flags::EXIT_CONFIG;
use strait_runtime::{signals, telemetry};

#[tokio::main]
async fn main() {
    let config = Config::parse();
    if let Err(problems) = config.validate() {
        for p in problems {
            eprintln!("strait-global: {p}");
        }
        std::process::exit(EXIT_CONFIG);
    }
    telemetry::init(config.log_format, &config.log_level);
    tracing::info!(config = %serde_json::to_string(&config).unwrap_or_default(), version = env!("CARGO_PKG_VERSION"), "starting strait-global");
    let cp = match GlobalCp::start(Arc::new(config)).await {
        Ok(cp) => cp,
        Err(e) => {
            tracing::error!(error = %e, "could not start");
            eprintln!("strait-global: {e}");
            std::process::exit(1);
        }
    };
    // Started means serving: the API, zone sync and the store are up.
    signals::serve_until_signal(async {}).await;
    cp.shutdown();
    cp.wait().await;
    tracing::info!("stopped");
}
