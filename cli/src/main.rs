//! `straitctl`: the operator CLI of Strait. It talks to the REST API of the global control
//! plane: `apply -f`, `get`, `delete`, `version`, `config`, `completion`.
//!
//! In: the command line, `STRAIT_*` variables and the client config file. Out: results on
//! stdout, errors on stderr; exit code 0 on success, 1 on failure, 2 on a usage error.
#![forbid(unsafe_code)]

mod cli;
mod client;
mod commands;
mod completion;
mod config;
mod manifest;
mod output;

use std::process::ExitCode;

fn main() -> ExitCode {
    let (cli, sources) = cli::parse();
    let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: starting the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(commands::run(cli, sources)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
