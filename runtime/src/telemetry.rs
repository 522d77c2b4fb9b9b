//! Logging set-up: `tracing` with text or JSON lines on stderr, or the systemd journal.
//!
//! In: the configured format and filter. Out: the global subscriber, installed once.

use std::io::IsTerminal;

use tracing_subscriber::EnvFilter;

use crate::flags::LogFormat;

/// Installs the global subscriber; a second call (as in tests) is a no-op.
pub fn init(format: LogFormat, filter: &str) {
    let filter_text = filter;
    let filter = EnvFilter::try_new(filter).unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).with_ansi(std::io::stderr().is_terminal());
    let _ = match format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
        LogFormat::Journald => {
            let identifier = std::env::args().next().map(|a| a.rsplit('/').next().unwrap_or_default().to_string()).unwrap_or_default();
            match crate::journald::Journald::connect(std::path::Path::new(crate::journald::SOCKET), &identifier) {
                Ok(journal) => {
                    use tracing_subscriber::prelude::*;
                    let filter = EnvFilter::try_new(filter_text).unwrap_or_else(|_| EnvFilter::new("info"));
                    tracing_subscriber::registry().with(journal.with_filter(filter)).try_init().map_err(Into::into)
                }
                Err(error) => {
                    let result = builder.try_init();
                    tracing::warn!(socket = crate::journald::SOCKET, %error, "--log-format journald: the journal is not reachable; logging text to stderr");
                    result
                }
            }
        }
    };
}

/// An error and its sources, joined with `: `, for one log field or message (a source the
/// text already ends with, as some errors print their cause themselves, is not repeated).
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let said = s.to_string();
        if !out.ends_with(&said) {
            out.push_str(": ");
            out.push_str(&said);
        }
        source = s.source();
    }
    out
}
