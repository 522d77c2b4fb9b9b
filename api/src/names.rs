//! Name rules shared by every resource: DNS-1123 names, label keys and values, tag keys.
//!
//! In: user-supplied strings. Out: `Err(message)` saying what was expected.

/// Tag naming the service of an inbound or outbound.
pub const SERVICE_TAG: &str = "strait.io/service";
/// Tag naming the protocol of an inbound (`tcp`, `http`, `http2`, `grpc`).
pub const PROTOCOL_TAG: &str = "strait.io/protocol";
/// Tag naming the zone of an endpoint; set by the control plane.
pub const ZONE_TAG: &str = "strait.io/zone";

/// A DNS-1123 label: at most 63 lowercase letters, digits and '-', starting and ending alphanumeric.
pub fn check_dns_label(s: &str) -> Result<(), String> {
    if s.is_empty() {
        return Err("must not be empty".into());
    }
    if s.len() > 63 {
        return Err(format!("{s:?} is longer than 63 characters"));
    }
    let ok_chars = s.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
    let ok_ends = s.as_bytes()[0].is_ascii_alphanumeric() && s.as_bytes()[s.len() - 1].is_ascii_alphanumeric();
    if ok_chars && ok_ends {
        Ok(())
    } else {
        Err(format!(
            "{s:?} is not a valid name: use lowercase letters, digits and '-', starting and ending with a letter or digit (DNS-1123 label)"
        ))
    }
}

/// A DNS-1123 subdomain: dot-separated labels, at most 253 characters.
pub fn check_dns_subdomain(s: &str) -> Result<(), String> {
    if s.is_empty() {
        return Err("must not be empty".into());
    }
    if s.len() > 253 {
        return Err(format!("{s:?} is longer than 253 characters"));
    }
    if s.split('.').all(|label| check_dns_label(label).is_ok()) {
        Ok(())
    } else {
        Err(format!(
            "{s:?} is not a valid name: use lowercase letters, digits, '-' and '.', each part starting and ending with a letter or digit (DNS-1123 subdomain)"
        ))
    }
}

/// A label or tag key: an optional DNS subdomain prefix and '/', then a name of at most 63
/// characters of letters, digits, '-', '_' and '.', starting and ending alphanumeric.
pub fn check_label_key(s: &str) -> Result<(), String> {
    let (prefix, name) = match s.rsplit_once('/') {
        Some((p, n)) => (Some(p), n),
        None => (None, s),
    };
    if let Some(p) = prefix {
        check_dns_subdomain(p).map_err(|_| format!("key {s:?} has an invalid prefix {p:?}: expected a DNS subdomain"))?;
    }
    if name.is_empty() || name.len() > 63 || !is_label_value_shaped(name) {
        return Err(format!(
            "key {s:?} is invalid: the name part must be 1-63 letters, digits, '-', '_' or '.', starting and ending with a letter or digit"
        ));
    }
    Ok(())
}

/// A label or tag value: empty, or at most 63 letters, digits, '-', '_' and '.', alphanumeric at both ends.
pub fn check_label_value(s: &str) -> Result<(), String> {
    if s.is_empty() || (s.len() <= 63 && is_label_value_shaped(s)) {
        Ok(())
    } else {
        Err(format!("value {s:?} is invalid: use at most 63 letters, digits, '-', '_' or '.', starting and ending with a letter or digit"))
    }
}

fn is_label_value_shaped(s: &str) -> bool {
    let b = s.as_bytes();
    b.iter().all(|c| c.is_ascii_alphanumeric() || matches!(c, b'-' | b'_' | b'.'))
        && b[0].is_ascii_alphanumeric()
        && b[b.len() - 1].is_ascii_alphanumeric()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dns_labels() {
        for ok in ["a", "web", "web-1", "0abc", &"a".repeat(63)] {
            assert!(check_dns_label(ok).is_ok(), "{ok}");
        }
        for bad in ["", "Web", "-web", "web-", "we_b", "we.b", &"a".repeat(64)] {
            assert!(check_dns_label(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn dns_subdomains() {
        assert!(check_dns_subdomain("allow.web-1").is_ok());
        assert!(check_dns_subdomain("a..b").is_err());
        assert!(check_dns_subdomain("UPPER").is_err());
    }

    #[test]
    fn label_keys_and_values() {
        for ok in ["app", "strait.io/service", "k8s.io/app_name", "a.b-c_d"] {
            assert!(check_label_key(ok).is_ok(), "{ok}");
        }
        for bad in ["", "/x", "Bad_Prefix/x", "x/", "-x", "a/b/c"] {
            assert!(check_label_key(bad).is_err(), "{bad}");
        }
        for ok in ["", "v1", "web_1.x"] {
            assert!(check_label_value(ok).is_ok(), "{ok}");
        }
        for bad in ["-v", "v ", &"v".repeat(64)] {
            assert!(check_label_value(bad).is_err(), "{bad}");
        }
    }
}
