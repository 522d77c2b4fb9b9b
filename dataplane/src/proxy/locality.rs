//! Zone locality: which endpoints a pick may use.
//!
//! Endpoints of the sidecar's own zone come first. When none of them is available, other
//! zones are tried in the order of `MeshLoadBalancingStrategy`'s `localityAwareness.crossZone`
//! failover steps (those whose `from` includes this zone); without steps, any other zone, the
//! nearest first by the handshake time measured to it. `localityAwareness.disabled` spreads
//! over every endpoint. Endpoints that passive health ejected (see [`super::endpoint`]) are
//! skipped, so a dead endpoint or a dead zone is passed over.
//!
//! In: the merged conf and the sidecar's zone. Out: [`Locality`], applied per pick by
//! [`Locality::candidates`] without locks or heap allocation.

use std::sync::Arc;

use strait_api::policies::load_balancing::{FailoverType, LoadBalancingConf};

use super::endpoint::{now_ms, Endpoint};

/// Most candidates a pick considers (the first ones in order, when there are more).
pub const MAX_CANDIDATES: usize = 64;

/// Which other zones a failover step allows.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Step {
    Any,
    Only(Vec<String>),
    AnyExcept(Vec<String>),
    Stop,
}

impl Step {
    fn allows(&self, zone: &str) -> bool {
        match self {
            Step::Any => true,
            Step::Only(zones) => zones.iter().any(|z| z == zone),
            Step::AnyExcept(zones) => !zones.iter().any(|z| z == zone),
            Step::Stop => false,
        }
    }
}

/// A destination's locality rules, as seen from one zone.
#[derive(Debug, Clone, PartialEq)]
pub struct Locality {
    disabled: bool,
    steps: Vec<Step>,
    /// `crossZone.failoverThreshold`: below this percentage of available local endpoints,
    /// the next zone's endpoints join the local ones.
    threshold: Option<f64>,
}

impl Default for Locality {
    fn default() -> Self {
        Locality { disabled: false, steps: vec![Step::Any], threshold: None }
    }
}

impl Locality {
    /// The rules of a merged `MeshLoadBalancingStrategy` conf for a caller in `zone`.
    pub fn from_conf(conf: Option<&LoadBalancingConf>, zone: &str) -> Locality {
        let Some(la) = conf.and_then(|c| c.locality_awareness.clone()) else { return Locality::default() };
        let threshold = la.cross_zone.as_ref().and_then(|c| c.failover_threshold);
        let failover = la.cross_zone.map(|c| c.failover).unwrap_or_default();
        let mut steps: Vec<Step> = failover
            .into_iter()
            .filter(|f| f.from.as_ref().is_none_or(|from| from.zones.iter().any(|z| z == zone)))
            .map(|f| match f.to.kind {
                FailoverType::Any => Step::Any,
                FailoverType::Only => Step::Only(f.to.zones),
                FailoverType::AnyExcept => Step::AnyExcept(f.to.zones),
                FailoverType::None => Step::Stop,
            })
            .collect();
        if steps.is_empty() {
            steps.push(Step::Any);
        }
        Locality { disabled: la.disabled.unwrap_or(false), steps, threshold }
    }

    /// Fills `out` with the endpoints a pick may use now, and returns how many: available
    /// local ones (joined by those of the next zone when fewer than `failoverThreshold`
    /// percent of the local ones are available); else the first failover step with available
    /// ones (for "any zone", the zone with the shortest measured handshake); else, when every
    /// endpoint is ejected, the local ones, or the remote ones when there are none: better to
    /// try than to fail at once.
    pub fn candidates<'a>(
        &self,
        local: &'a [Arc<Endpoint>],
        remote: &'a [Arc<Endpoint>],
        out: &mut [Option<&'a Arc<Endpoint>>; MAX_CANDIDATES],
    ) -> usize {
        let now = now_ms();
        let fill =
            |out: &mut [Option<&'a Arc<Endpoint>>; MAX_CANDIDATES], it: &mut dyn Iterator<Item = &'a Arc<Endpoint>>| fill_from(out, 0, it);
        if self.disabled {
            let n = fill(out, &mut local.iter().chain(remote).filter(|e| e.health.available(now)));
            return if n > 0 { n } else { fill(out, &mut local.iter().chain(remote)) };
        }
        let n = fill(out, &mut local.iter().filter(|e| e.health.available(now)));
        if n > 0 {
            let below = self.threshold.is_some_and(|t| (n as f64) * 100.0 < t * local.len() as f64);
            return if below { n + self.next_zone(remote, now, out, n) } else { n };
        }
        let n = self.next_zone(remote, now, out, 0);
        if n > 0 {
            return n;
        }
        let n = fill(out, &mut local.iter());
        if n > 0 || self.steps.first() == Some(&Step::Stop) {
            return n;
        }
        fill(out, &mut remote.iter().filter(|e| self.steps.iter().any(|s| s.allows(&e.zone))))
    }
}

impl Locality {
    /// Puts the available endpoints of the first failover step that has some into `out` from
    /// `start`; returns how many.
    fn next_zone<'a>(
        &self,
        remote: &'a [Arc<Endpoint>],
        now: u64,
        out: &mut [Option<&'a Arc<Endpoint>>; MAX_CANDIDATES],
        start: usize,
    ) -> usize {
        for step in &self.steps {
            if *step == Step::Stop {
                break;
            }
            let usable = |e: &&Arc<Endpoint>| step.allows(&e.zone) && e.health.available(now);
            let n = if *step == Step::Any {
                // The nearest zone: unmeasured ones first, so each gets measured once.
                let Some(nearest) = remote.iter().filter(usable).min_by_key(|e| e.health.rtt().unwrap_or_default()) else { continue };
                fill_from(out, start, &mut remote.iter().filter(usable).filter(|e| e.zone == nearest.zone))
            } else {
                fill_from(out, start, &mut remote.iter().filter(usable))
            };
            if n > 0 {
                return n;
            }
        }
        0
    }
}

/// Puts what `it` yields into `out` from `start`, as far as it has room; returns how many.
fn fill_from<'a>(
    out: &mut [Option<&'a Arc<Endpoint>>; MAX_CANDIDATES],
    start: usize,
    it: &mut dyn Iterator<Item = &'a Arc<Endpoint>>,
) -> usize {
    let mut n = 0;
    for e in it.take(MAX_CANDIDATES.saturating_sub(start)) {
        out[start + n] = Some(e);
        n += 1;
    }
    n
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use serde_json::json;

    use super::*;

    fn endpoint(port: u16, zone: &str) -> Arc<Endpoint> {
        let sni = rustls::pki_types::ServerName::try_from("a.default.strait").unwrap();
        Arc::new(Endpoint::new(std::net::SocketAddr::from(([10, 0, 0, 1], port)), zone.into(), sni))
    }

    fn picked(l: &Locality, local: &[Arc<Endpoint>], remote: &[Arc<Endpoint>]) -> Vec<u16> {
        let mut out = [None; MAX_CANDIDATES];
        let n = l.candidates(local, remote, &mut out);
        out[..n].iter().map(|e| e.unwrap().address.port()).collect()
    }

    #[test]
    fn own_zone_first_then_the_nearest_other_zone() {
        let l = Locality::default();
        let local = vec![endpoint(1, "z1"), endpoint(2, "z1")];
        let remote = vec![endpoint(3, "z2"), endpoint(4, "z3")];
        assert_eq!(picked(&l, &local, &remote), [1, 2]);
        local[0].health.failed();
        assert_eq!(picked(&l, &local, &remote), [2], "an ejected endpoint is skipped");
        local[1].health.failed();
        assert_eq!(picked(&l, &local, &remote), [3], "no local endpoint left: an unmeasured zone first");
        remote[0].health.connected(Duration::from_millis(50));
        assert_eq!(picked(&l, &local, &remote), [4], "then the other unmeasured one");
        remote[1].health.connected(Duration::from_millis(80));
        assert_eq!(picked(&l, &local, &remote), [3], "then the nearest");
        remote[0].health.failed();
        assert_eq!(picked(&l, &local, &remote), [4], "a dead zone is skipped");
        remote[1].health.failed();
        assert_eq!(picked(&l, &local, &remote), [1, 2], "all ejected: try the local ones rather than fail");
        local[0].health.connected(Duration::from_millis(1));
        assert_eq!(picked(&l, &local, &remote), [1], "a success brings an endpoint back at once");
    }

    #[test]
    fn failover_steps_order_the_zones_for_callers_they_name() {
        let conf = json!({"localityAwareness": {"crossZone": {"failover": [
            {"from": {"zones": ["z9"]}, "to": {"type": "Only", "zones": ["z3"]}},
            {"to": {"type": "Only", "zones": ["z3"]}},
            {"to": {"type": "AnyExcept", "zones": ["z4"]}},
        ]}}});
        let typed = |v: serde_json::Value| -> LoadBalancingConf { serde_json::from_value(v).unwrap() };
        let l = Locality::from_conf(Some(&typed(conf)), "z1");
        let remote = vec![endpoint(2, "z2"), endpoint(3, "z3"), endpoint(4, "z4")];
        assert_eq!(picked(&l, &[], &remote), [3]);
        remote[1].health.failed();
        assert_eq!(picked(&l, &[], &remote), [2], "next step: any zone but z4");

        let none = json!({"localityAwareness": {"crossZone": {"failover": [{"to": {"type": "None"}}]}}});
        let l = Locality::from_conf(Some(&typed(none)), "z1");
        assert!(picked(&l, &[], &remote).is_empty(), "None: never leave the zone");

        let threshold =
            json!({"localityAwareness": {"crossZone": {"failoverThreshold": 50, "failover": [{"to": {"type": "Only", "zones": ["z3"]}}]}}});
        let l = Locality::from_conf(Some(&typed(threshold)), "z1");
        let here = vec![endpoint(11, "z1"), endpoint(12, "z1"), endpoint(13, "z1"), endpoint(14, "z1")];
        let there = vec![endpoint(2, "z2"), endpoint(5, "z3")];
        assert_eq!(picked(&l, &here, &there), [11, 12, 13, 14]);
        here[0].health.failed();
        here[1].health.failed();
        assert_eq!(picked(&l, &here, &there), [13, 14], "half the local ones: not below 50%");
        here[2].health.failed();
        assert_eq!(picked(&l, &here, &there), [14, 5], "below 50%: the next zone's endpoints join");

        let disabled = json!({"localityAwareness": {"disabled": true}});
        let l = Locality::from_conf(Some(&typed(disabled)), "z1");
        let local = vec![endpoint(1, "z1")];
        assert_eq!(picked(&l, &local, &remote), [1, 2, 4], "disabled: every available endpoint");
    }
}
