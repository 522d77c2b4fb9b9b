//! Authorization of inbound callers by MeshTrafficPermission: whether the current
//! configuration lets a caller, known by the SPIFFE identity its certificate proved, reach an
//! inbound port of this sidecar.
//!
//! In: the current configuration ([`ProxyState`], read lock-free), the inbound port and the
//! caller's verified identity. Out: allow or deny. No matching rule means deny (a new Mesh has
//! an allow-all permission that users may delete). TCP connections are decided once, at
//! accept ([`for_port`]); HTTP/2 sessions between sidecars per request, with the decision
//! cached per session until the configuration version changes ([`SessionDecision`]), so a
//! permission change applies to the next request on a pooled connection.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use strait_api::policies::traffic_permission::Action;
use strait_api::proxy_policies::rule_for;
use strait_pki::Identity;

use crate::dps_client::ProxyState;

/// Whether the current configuration lets `caller` reach inbound `port`.
pub fn allowed(state: &ProxyState, port: u16, caller: &Identity) -> bool {
    let config = state.config.load();
    let Some(config) = config.as_ref() else { return false };
    let Some(inbound) = config.1.inbounds.iter().find(|i| i.port == port) else { return false };
    let rules = &inbound.policies.traffic_permission;
    // The caller's identity is spiffe://<mesh>/<service>; callers from another mesh never match.
    if caller.trust_domain() != config.1.mesh {
        return false;
    }
    let tags: BTreeMap<String, String> =
        [(strait_api::names::SERVICE_TAG.to_string(), caller.path().trim_start_matches('/').to_string())].into();
    match rule_for(rules, &tags).map(|r| r.conf.action) {
        Some(Action::Allow) => true,
        Some(Action::AllowWithShadowDeny) => {
            tracing::info!(caller = %caller, port, "shadow deny: allowed, but a Deny would have refused it");
            true
        }
        Some(Action::Deny) | None => false,
    }
}

/// The check of inbound `port` for the TCP accept loop, which logs denials.
pub fn for_port(state: Arc<ProxyState>, port: u16) -> impl Fn(&Identity) -> bool + Send + Sync + 'static {
    move |caller: &Identity| {
        let ok = allowed(&state, port, caller);
        if !ok {
            tracing::debug!(caller = %caller, port, "denied by MeshTrafficPermission");
        }
        ok
    }
}

/// The decision for one HTTP/2 session's peer, recomputed only when the configuration
/// version changes: a request costs two atomic loads.
#[derive(Debug, Default)]
pub struct SessionDecision {
    /// (configuration version + 1) << 1 | allowed; 0 before the first decision.
    decision: AtomicU64,
}

impl SessionDecision {
    /// Whether `peer` may reach inbound `port` under the current configuration.
    pub fn allowed(&self, state: &ProxyState, port: u16, peer: &Identity) -> bool {
        let version = state.config.load().as_ref().map_or(0, |c| c.0).wrapping_add(1);
        let cached = self.decision.load(Ordering::Relaxed);
        if cached >> 1 == version {
            return cached & 1 == 1;
        }
        let allowed = allowed(state, port, peer);
        self.decision.store(version << 1 | u64::from(allowed), Ordering::Relaxed);
        allowed
    }
}

#[cfg(test)]
mod tests {
    use strait_api::policies::traffic_permission::TrafficPermissionConf;
    use strait_api::proxy_config::{InboundConfig, Protocol, ProxyConfig};
    use strait_api::proxy_policies::{CallerRule, InboundPolicies};

    use super::*;

    type Rule = CallerRule<TrafficPermissionConf>;

    fn rule(service: Option<&str>, action: &str) -> Rule {
        let matches = service.map(|s| [(strait_api::names::SERVICE_TAG.to_string(), s.to_string())].into()).unwrap_or_default();
        let action = serde_json::from_value(serde_json::Value::String(action.into())).unwrap();
        CallerRule { matches, conf: TrafficPermissionConf { action }, origin: vec![] }
    }

    fn state(version: u64, rules: Option<Vec<Rule>>) -> ProxyState {
        let state = ProxyState::default();
        let policies = InboundPolicies { traffic_permission: rules.unwrap_or_default(), ..Default::default() };
        let config = ProxyConfig {
            mesh: "default".into(),
            dataplane: "backend-1".into(),
            zone: "zone-1".into(),
            identity: "spiffe://default/backend".into(),
            inbounds: vec![InboundConfig {
                port: 8080,
                service_address: "127.0.0.1".into(),
                service_port: 80,
                service: "backend".into(),
                protocol: Protocol::Tcp,
                policies,
            }],
            outbounds: vec![],
            trust_bundle: Default::default(),
            certificate_lifetime_secs: 3600,
            proxy: Default::default(),
            transparent_outbound_port: None,
        };
        state.config.store(Some(Arc::new((version, config))));
        state
    }

    #[test]
    fn the_first_matching_rule_decides_and_no_rule_denies() {
        let web = Identity::parse("spiffe://default/web").unwrap();
        let other_mesh = Identity::parse("spiffe://other/web").unwrap();
        let allow_web_deny_rest = Some(vec![rule(Some("web"), "Allow"), rule(None, "Deny")]);
        let cases = [
            ("allowed by its service", allow_web_deny_rest.clone(), &web, 8080, true),
            ("another mesh never matches", allow_web_deny_rest.clone(), &other_mesh, 8080, false),
            ("a port with no inbound", allow_web_deny_rest, &web, 9090, false),
            ("denied by the catch-all", Some(vec![rule(Some("api"), "Allow"), rule(None, "Deny")]), &web, 8080, false),
            ("shadow deny allows", Some(vec![rule(None, "AllowWithShadowDeny")]), &web, 8080, true),
            ("no rule at all", Some(vec![]), &web, 8080, false),
            ("no permission policy", None, &web, 8080, false),
        ];
        for (what, rules, caller, port, expected) in cases {
            assert_eq!(allowed(&state(1, rules), port, caller), expected, "{what}");
        }
        assert!(!allowed(&ProxyState::default(), 8080, &web), "no configuration yet");
    }

    #[test]
    fn a_session_decision_follows_the_configuration_version() {
        let web = Identity::parse("spiffe://default/web").unwrap();
        let session = SessionDecision::default();
        let state = state(1, Some(vec![rule(None, "Allow")]));
        assert!(session.allowed(&state, 8080, &web));
        let denied = self::state(2, Some(vec![rule(None, "Deny")]));
        state.config.store(denied.config.load_full());
        assert!(!session.allowed(&state, 8080, &web), "a new version is decided again");
    }
}
