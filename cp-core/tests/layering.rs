//! The crate graph keeps the shape DESIGN.md gives it: the two control planes share
//! `strait-cp-core` and never link each other, and the proxies link no control plane and not
//! each other (tests may use anything as a dev-dependency).

use std::path::Path;

/// The names under `[dependencies]` of a workspace member's manifest.
fn normal_dependencies(member: &str) -> Vec<String> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join(member).join("Cargo.toml");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let mut in_dependencies = false;
    let mut names = Vec::new();
    for line in text.lines().map(str::trim) {
        if line.starts_with('[') {
            in_dependencies = line == "[dependencies]";
            continue;
        }
        if in_dependencies && !line.starts_with('#') {
            if let Some((name, _)) = line.split_once(['=', '.']) {
                if !name.trim().is_empty() {
                    names.push(name.trim().to_string());
                }
            }
        }
    }
    assert!(!names.is_empty(), "{} has no [dependencies]", path.display());
    names
}

#[test]
fn no_component_links_another() {
    let forbidden: &[(&str, &[&str])] = &[
        ("zone-cp", &["strait-global-cp"]),
        ("global-cp", &["strait-zone-cp"]),
        ("dataplane", &["strait-global-cp", "strait-zone-cp", "strait-gateway", "strait-cp-core"]),
        ("gateway", &["strait-global-cp", "strait-zone-cp", "strait-dataplane", "strait-cp-core"]),
    ];
    for (member, banned) in forbidden {
        let deps = normal_dependencies(member);
        for b in *banned {
            assert!(!deps.iter().any(|d| d == b), "{member} depends on {b}: share the code through a library crate instead");
        }
    }
}

#[test]
fn both_control_planes_share_cp_core() {
    for member in ["zone-cp", "global-cp"] {
        assert!(normal_dependencies(member).iter().any(|d| d == "strait-cp-core"), "{member}");
    }
}
