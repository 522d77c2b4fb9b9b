use clap::Parser;
use strait_gateway::config::Flags;
use strait_runtime::flags::EXIT_CONFIG;
use strait_runtime::telemetry;

#[tokio::main]
async fn main() {
    let flags = Flags::parse();
    let (format, level, deadline) = (flags.log_format, flags.log_level.clone(), flags.drain_timeout);
    let config = match flags.validate() {
        Ok(c) => c,
        Err(problems) => {
            for p in problems {
                eprintln!("strait-gateway: {p}");
            }
            std::process::exit(EXIT_CONFIG);
        }
    };
    telemetry::init(format, &level);
    let running = match strait_gateway::app::start(config).await {
        Ok(r) => r,
        Err(e) => {
            eprintln!("strait-gateway: {e:#}");
            std::process::exit(1);
        }
    };
    strait_runtime::signals::serve_until_signal(running.wait_ready()).await;
    running.shutdown(deadline).await;
}
