//! Endpoint picking: round robin, least request (the less loaded of N random endpoints,
//! power of two choices by default), random, and consistent hashing (RingHash, Maglev; see
//! [`super::hashing`]), as `MeshLoadBalancingStrategy` chooses.
//! Without a strategy, least request with two choices: an endpoint that stops answering (a
//! stopped process, a stalled host) keeps its requests in flight, so from the next pick on it
//! loses every comparison and callers move to the others at once, long before any timeout
//! could tell (Linkerd balances the same way by default).
//!
//! In: the merged MeshLoadBalancingStrategy of a destination (typed), its endpoints' ids
//! (for the hash table) and, per pick, how many requests each candidate has in flight. Out:
//! the index of the endpoint to use. No I/O and no locks: a pick is an atomic add or a few
//! random numbers (a hashed pick is a table lookup, in [`super::destinations`]).

use std::sync::atomic::{AtomicUsize, Ordering};

use rand::Rng;
use strait_api::policies::load_balancing::{HashPolicy, LoadBalancerType, LoadBalancingConf};

use super::hashing::Table;

/// How a destination picks an endpoint.
#[derive(Debug)]
pub enum Balancer {
    /// Each endpoint in turn.
    RoundRobin(AtomicUsize),
    /// The endpoint with the fewest requests in flight among `choices` random ones.
    LeastRequest {
        /// Random candidates compared per pick (2: power of two choices).
        choices: usize,
    },
    /// A random endpoint.
    Random,
    /// Consistent hashing: the endpoint the table gives a request's key; random without a key.
    Hash {
        /// What a request is hashed on, tried in order.
        policies: Vec<HashPolicy>,
        /// Where keys land.
        table: Table,
    },
}

impl Default for Balancer {
    /// Least request over two distinct random endpoints: the balancer without a strategy.
    fn default() -> Self {
        Balancer::LeastRequest { choices: 2 }
    }
}

impl Balancer {
    /// The balancer a merged `MeshLoadBalancingStrategy` conf asks for, over endpoints with
    /// stable ids `ids` (hash tables only); the default (least request of two) when the conf
    /// sets none; an error for a conf this sidecar cannot apply.
    pub fn from_conf(conf: Option<&LoadBalancingConf>, ids: &[u64]) -> Result<Balancer, String> {
        let Some(lb) = conf.and_then(|c| c.load_balancer.as_ref()) else { return Ok(Balancer::default()) };
        match lb.kind {
            LoadBalancerType::RoundRobin => Ok(Balancer::RoundRobin(AtomicUsize::new(0))),
            LoadBalancerType::LeastRequest => {
                let choices = lb.least_request.as_ref().and_then(|l| l.choice_count).unwrap_or(2);
                Ok(Balancer::LeastRequest { choices: usize::try_from(choices).unwrap_or(2).max(2) })
            }
            LoadBalancerType::Random => Ok(Balancer::Random),
            LoadBalancerType::RingHash | LoadBalancerType::Maglev => {
                let policies = lb.hash_policies().to_vec();
                if policies.is_empty() {
                    return Err(format!("MeshLoadBalancingStrategy loadBalancer.type {:?} needs hash policies", lb.kind));
                }
                let table = if lb.kind == LoadBalancerType::RingHash { Table::ring(ids) } else { Table::maglev(ids) };
                Ok(Balancer::Hash { policies, table })
            }
        }
    }

    /// The index (below `len`) of the endpoint to use; `load(i)` is endpoint i's requests in flight.
    pub fn pick(&self, len: usize, load: impl Fn(usize) -> usize) -> Option<usize> {
        match len {
            0 => None,
            1 => Some(0),
            _ => Some(match self {
                Balancer::RoundRobin(next) => next.fetch_add(1, Ordering::Relaxed) % len,
                Balancer::Random | Balancer::Hash { .. } => rand::thread_rng().gen_range(0..len),
                Balancer::LeastRequest { choices } => least_of_distinct(len, *choices, &load),
            }),
        }
    }
}

/// The least loaded of `choices` distinct random endpoints (of all of them when there are no
/// more). Distinct, as in Linkerd's P2C: with replacement, two endpoints would compare one
/// with itself half the time, and a stalled endpoint would keep a quarter of the picks.
fn least_of_distinct(len: usize, choices: usize, load: &impl Fn(usize) -> usize) -> usize {
    let mut rng = rand::thread_rng();
    let better = |best: usize, candidate: usize| if load(candidate) < load(best) { candidate } else { best };
    if choices >= len {
        let start = rng.gen_range(0..len);
        return (1..len).map(|i| (start + i) % len).fold(start, better);
    }
    if choices == 2 {
        let a = rng.gen_range(0..len);
        let b = rng.gen_range(0..len - 1);
        return better(a, if b >= a { b + 1 } else { b });
    }
    let mut sample = rand::seq::index::sample(&mut rng, len, choices).into_iter();
    let first = sample.next().unwrap_or(0);
    sample.fold(first, better)
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn confs_choose_the_algorithm() {
        let cases = [
            (None, "Ok(LeastRequest { choices: 2 }"),
            (Some(json!({})), "Ok(LeastRequest { choices: 2 }"),
            (Some(json!({"loadBalancer": {"type": "RoundRobin"}})), "Ok(RoundRobin"),
            (Some(json!({"loadBalancer": {"type": "LeastRequest"}})), "Ok(LeastRequest { choices: 2 }"),
            (Some(json!({"loadBalancer": {"type": "LeastRequest", "leastRequest": {"choiceCount": 3}}})), "Ok(LeastRequest { choices: 3 }"),
            (Some(json!({"loadBalancer": {"type": "Random"}})), "Ok(Random"),
            (Some(json!({"loadBalancer": {"type": "RingHash", "ringHash": {"hashPolicies": []}}})), "Err(\"MeshLoadBalancingStrategy"),
            (Some(json!({"loadBalancer": {"type": "RingHash", "ringHash": {"hashPolicies": [{"type": "SourceIP"}]}}})), "Ok(Hash"),
            (Some(json!({"loadBalancer": {"type": "Maglev", "maglev": {"hashPolicies": [{"type": "SourceIP"}]}}})), "Ok(Hash"),
        ];
        for (conf, expected) in cases {
            let conf: Option<LoadBalancingConf> = conf.map(|c| serde_json::from_value(c).unwrap());
            let got = format!("{:?}", Balancer::from_conf(conf.as_ref(), &[]));
            assert!(got.starts_with(expected), "{conf:?}: {got}");
        }
    }

    #[test]
    fn round_robin_visits_each_endpoint_in_turn() {
        let b = Balancer::RoundRobin(AtomicUsize::new(0));
        let picks: Vec<usize> = (0..6).map(|_| b.pick(3, |_| 0).unwrap()).collect();
        assert_eq!(picks, [0, 1, 2, 0, 1, 2]);
        assert_eq!(b.pick(0, |_| 0), None);
        assert_eq!(b.pick(1, |_| 0), Some(0));
    }

    #[test]
    fn least_request_avoids_the_loaded_endpoint() {
        // Endpoint 0 has 100 requests in flight, the others none: two distinct candidates
        // always include an idle one, so the loaded endpoint is never picked.
        for (choices, len) in [(2, 2), (2, 3), (3, 5), (8, 3)] {
            let b = Balancer::LeastRequest { choices };
            let loads: Vec<usize> = (0..len).map(|i| if i == 0 { 100 } else { 0 }).collect();
            let mut counts = vec![0usize; len];
            for _ in 0..3000 {
                counts[b.pick(len, |i| loads[i]).unwrap()] += 1;
            }
            assert_eq!(counts[0], 0, "choices {choices} of {len}: {counts:?}");
            assert!(counts[1..].iter().all(|c| *c > 3000 / len / 2), "idle endpoints share the picks: {counts:?}");
        }
        // Equal loads: every endpoint gets its share.
        let b = Balancer::LeastRequest { choices: 2 };
        let mut counts = [0usize; 3];
        for _ in 0..3000 {
            counts[b.pick(3, |_| 0).unwrap()] += 1;
        }
        assert!(counts.iter().all(|c| *c > 700), "{counts:?}");
    }

    #[test]
    fn random_spreads_over_every_endpoint() {
        let b = Balancer::Random;
        let mut counts = [0usize; 4];
        for _ in 0..4000 {
            counts[b.pick(4, |_| 0).unwrap()] += 1;
        }
        assert!(counts.iter().all(|c| *c > 700), "{counts:?}");
    }
}
