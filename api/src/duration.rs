//! Durations written as users of Go-based meshes expect: `250ms`, `5s`, `1m30s`, `24h`.
//!
//! In: a string from YAML/JSON. Out: a [`Duration`] that serialises back to the canonical
//! form, so the same value always stores the same bytes.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A non-negative duration with Go-style units (`ns`, `us`, `µs`, `ms`, `s`, `m`, `h`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Duration(pub std::time::Duration);

/// The longest duration, about 34,000 years: longer ones are read as this, which keeps every
/// deadline computed from a duration far from overflow.
pub const MAX_SECS: u64 = 1 << 40;

/// A string that is not a duration.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid duration {0:?}: expected a number with a unit (ms, s, m, h), such as \"5s\" or \"1m30s\"")]
pub struct DurationError(pub String);

const UNITS: &[(&str, u128)] =
    &[("ns", 1), ("us", 1_000), ("µs", 1_000), ("ms", 1_000_000), ("s", 1_000_000_000), ("m", 60_000_000_000), ("h", 3_600_000_000_000)];

impl Duration {
    /// `n` seconds.
    pub const fn from_secs(n: u64) -> Self {
        Self(std::time::Duration::from_secs(n))
    }

    /// `n` milliseconds.
    pub const fn from_millis(n: u64) -> Self {
        Self(std::time::Duration::from_millis(n))
    }

    /// The standard library value.
    pub fn get(self) -> std::time::Duration {
        self.0
    }

    /// Whether this is zero.
    pub fn is_zero(self) -> bool {
        self.0.is_zero()
    }
}

impl FromStr for Duration {
    type Err = DurationError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || DurationError(s.to_string());
        if s == "0" {
            return Ok(Self::default());
        }
        if s.is_empty() {
            return Err(bad());
        }
        let mut rest = s;
        let mut total_ns: u128 = 0;
        while !rest.is_empty() {
            let num_len = rest.find(|c: char| !(c.is_ascii_digit() || c == '.')).ok_or_else(bad)?;
            if num_len == 0 {
                return Err(bad());
            }
            let (num, after) = rest.split_at(num_len);
            let unit_len = after.find(|c: char| c.is_ascii_digit() || c == '.').unwrap_or(after.len());
            let (unit, next) = after.split_at(unit_len);
            let scale = UNITS.iter().find(|(u, _)| *u == unit).map(|(_, s)| *s).ok_or_else(bad)?;
            total_ns = total_ns.saturating_add(scaled(num, scale).ok_or_else(bad)?);
            rest = next;
        }
        if total_ns / 1_000_000_000 >= u128::from(MAX_SECS) {
            return Ok(Self::from_secs(MAX_SECS));
        }
        let secs = (total_ns / 1_000_000_000) as u64;
        // The remainder is below 10^9, so it fits in u32.
        let nanos = (total_ns % 1_000_000_000) as u32;
        Ok(Self(std::time::Duration::new(secs, nanos)))
    }
}

/// `num` (digits, maybe a '.' and more digits) times `scale` nanoseconds, rounded down and
/// saturating: the caller caps the sum at [`MAX_SECS`].
fn scaled(num: &str, scale: u128) -> Option<u128> {
    let (int, frac) = match num.split_once('.') {
        Some((i, f)) => (i, Some(f)),
        None => (num, None),
    };
    let digits_ok = |d: &str| !d.is_empty() && d.bytes().all(|b| b.is_ascii_digit());
    if !digits_ok(int) || frac.is_some_and(|f| !digits_ok(f)) {
        return None;
    }
    let int_val = int.bytes().fold(0u128, |acc, b| acc.saturating_mul(10).saturating_add(u128::from(b - b'0')));
    let mut total = int_val.saturating_mul(scale);
    if let Some(frac) = frac {
        // Digits below a nanosecond change nothing.
        let frac = &frac[..frac.len().min(18)];
        let frac_val: u128 = frac.parse().ok()?;
        total = total.saturating_add(frac_val * scale / 10u128.pow(frac.len() as u32));
    }
    Some(total)
}

impl fmt::Display for Duration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let total = self.0.as_nanos();
        if total == 0 {
            return f.write_str("0s");
        }
        let mut rest = total;
        let mut out = String::new();
        for (unit, scale) in
            [("h", 3_600_000_000_000u128), ("m", 60_000_000_000), ("s", 1_000_000_000), ("ms", 1_000_000), ("us", 1_000), ("ns", 1)]
        {
            let n = rest / scale;
            if n > 0 {
                out.push_str(&format!("{n}{unit}"));
                rest -= n * scale;
            }
        }
        f.write_str(&out)
    }
}

impl Serialize for Duration {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Duration {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

impl utoipa::PartialSchema for Duration {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        utoipa::openapi::ObjectBuilder::new()
            .schema_type(utoipa::openapi::schema::Type::String)
            .pattern(Some(crate::schema_rules::DURATION))
            .description(Some("A duration such as 250ms, 5s, 1m30s or 24h"))
            .into()
    }
}

impl utoipa::ToSchema for Duration {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_prints_canonically() {
        let cases = [
            ("5s", "5s"),
            ("250ms", "250ms"),
            ("1m30s", "1m30s"),
            ("90s", "1m30s"),
            ("1.5h", "1h30m"),
            ("24h", "24h"),
            ("0", "0s"),
            ("100us", "100us"),
            ("1h0m0s", "1h"),
        ];
        for (input, canonical) in cases {
            let d: Duration = input.parse().unwrap_or_else(|e| panic!("{input}: {e}"));
            assert_eq!(d.to_string(), canonical, "{input}");
        }
    }

    #[test]
    fn rejects_what_is_not_a_duration() {
        for bad in ["", "5", "5 parsecs", "s", "-5s", "5sec", "1..5s", "5s ", "1d", "abc"] {
            let err = bad.parse::<Duration>().unwrap_err();
            assert!(err.to_string().contains(&format!("{bad:?}")), "{err}");
        }
    }

    #[test]
    fn very_long_durations_are_capped_and_round_trip() {
        for long in ["99999999999999999999999999999h", "1099511627776s", "5124095576030431h15s", "9999999999h9999999999h"] {
            let d: Duration = long.parse().unwrap();
            assert_eq!(d, Duration::from_secs(MAX_SECS), "{long}");
            assert_eq!(d.to_string().parse::<Duration>().unwrap(), d);
        }
        let below: Duration = "1000000h".parse().unwrap();
        assert_eq!(below, Duration::from_secs(3_600_000_000));
        assert_eq!("1.1234567890123456789s".parse::<Duration>().unwrap().get(), std::time::Duration::new(1, 123_456_789));
    }

    #[test]
    fn serde_uses_the_string_form() {
        let d: Duration = serde_json::from_str("\"2m\"").unwrap();
        assert_eq!(d, Duration::from_secs(120));
        assert_eq!(serde_json::to_string(&d).unwrap(), "\"2m\"");
        let err = serde_json::from_str::<Duration>("\"5 parsecs\"").unwrap_err();
        assert!(err.to_string().starts_with("invalid duration \"5 parsecs\""), "{err}");
    }
}
