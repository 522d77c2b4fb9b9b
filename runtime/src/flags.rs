//! Flag types and helpers shared by every binary's `Config`: log format, durations written as
//! `5s` or `1h30m`, and the exit code for bad configuration.

use std::time::Duration;

use clap::ValueEnum;
use serde::Serialize;

/// Log line format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

/// Parses a flag such as `5s` or `1h30m`.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    s.parse::<strait_api::Duration>().map(|d| d.get()).map_err(|e| e.to_string())
}

/// Serialises durations in the form flags take (`5s`), for the logged config.
pub mod humanized {
    use serde::Serializer;

    /// Writes `d` as `5s`, `1m30s`, ...
    pub fn serialize<S: Serializer>(d: &std::time::Duration, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(&strait_api::Duration(*d))
    }
}

/// Exit code for bad configuration (EX_USAGE).
pub const EXIT_CONFIG: i32 = 64;

#[cfg(test)]
mod tests {
    #[test]
    fn durations_parse_like_resources() {
        assert_eq!(super::parse_duration("1m30s"), Ok(std::time::Duration::from_secs(90)));
        assert!(super::parse_duration("soon").unwrap_err().contains("invalid duration"));
    }
}
