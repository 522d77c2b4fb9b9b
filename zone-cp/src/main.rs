use std::sync::Arc;

use clap::Parser;
use strait_runtime::flags::EXIT_CONFIG;
use strait_runtime::{signals, telemetry};
use strait_zone_cp::{Config, ZoneCp};

fn main() {
    // Before the runtime's threads start (see strait_runtime::memory).
    let arenas = strait_runtime::memory::one_arena_per_core();
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build();
    match runtime {
        Ok(runtime) => runtime.block_on(run(arenas)),
        Err(e) => {
            eprintln!("strait-zone: cannot start the async runtime: {e}");
            std::process::exit(1);
        }
    }
}

async fn run(arenas: Option<usize>) {
    let config = Config::parse();
    if let Err(problems) = config.validate() {
        for p in problems {
            eprintln!("strait-zone: {p}");
        }
        std::process::exit(EXIT_CONFIG);
    }
    telemetry::init(config.log_format, &config.log_level);
    tracing::info!(config = %serde_json::to_string(&config).unwrap_or_default(), version = env!("CARGO_PKG_VERSION"), malloc_arenas = ?arenas, "starting strait-zone");
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
