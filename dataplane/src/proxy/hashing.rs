//! Consistent hashing for `MeshLoadBalancingStrategy` RingHash and Maglev: requests with the
//! same key (a header, cookie, query parameter or the caller's address) go to the same
//! endpoint, and when endpoints come and go only about 1/N of the keys move.
//!
//! In: the endpoints of a destination (when its table is built) and, per request or
//! connection, its hash key. Out: the index of the endpoint for a key, the first in table
//! order that the caller may use now (available, in the zone locality allows), so ejected or
//! far endpoints are passed over without rebuilding anything (the ring's next points, the
//! table's next slots). Hashes are FNV-1a with a
//! splitmix64 finaliser: fixed, so every sidecar maps a key to the same endpoint. Built once
//! per configuration; a lookup is a binary search (ring) or an index (Maglev), no allocation.

use std::net::IpAddr;

use http::{HeaderMap, Uri};
use strait_api::policies::load_balancing::{HashPolicy, HashPolicyType};

/// Points per endpoint on a ring, by endpoint count: fixed within each range, so that adding
/// or removing an endpoint moves only its own keys (a ring of hundreds of endpoints has fewer
/// points each, to stay small).
fn ring_points(endpoints: usize) -> usize {
    match endpoints {
        0..=256 => 256,
        257..=2048 => 64,
        _ => 16,
    }
}
/// Maglev lookup table size: a prime far above the endpoint count, as Envoy's default.
const MAGLEV_SIZE: usize = 65_537;

/// A stable 64-bit hash of `bytes`.
pub fn hash_bytes(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in bytes {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    mix(h)
}

/// splitmix64's finaliser: spreads close inputs over the whole range.
fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// Where keys land: a hash ring or a Maglev table, over endpoint indices.
pub enum Table {
    /// Points on a ring (hash, endpoint index), sorted; a key goes to the next point.
    Ring(Vec<(u64, u16)>),
    /// A lookup table: a key goes to the endpoint of its slot.
    Maglev(Box<[u16]>),
}

impl std::fmt::Debug for Table {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Table::Ring(points) => write!(f, "Ring({} points)", points.len()),
            Table::Maglev(slots) => write!(f, "Maglev({} slots)", slots.len()),
        }
    }
}

impl Table {
    /// A ring over endpoints identified by `ids` (stable hashes of each endpoint).
    pub fn ring(ids: &[u64]) -> Table {
        let n = ids.len().min(usize::from(u16::MAX));
        if n == 0 {
            return Table::Ring(Vec::new());
        }
        let per = ring_points(n);
        let mut points = Vec::with_capacity(n * per);
        for (i, id) in ids.iter().take(n).enumerate() {
            for replica in 0..per as u64 {
                points.push((mix(id ^ mix(replica + 1)), i as u16));
            }
        }
        points.sort_unstable();
        Table::Ring(points)
    }

    /// A Maglev table over endpoints identified by `ids`: each endpoint in turn takes the
    /// next free slot of its own permutation, so all get the same share of slots and a
    /// change of endpoints moves few of them. Endpoints take turns in the order of their ids,
    /// so the table does not depend on the order they are listed in.
    pub fn maglev(ids: &[u64]) -> Table {
        let n = ids.len().min(usize::from(u16::MAX));
        if n == 0 {
            return Table::Maglev(Box::default());
        }
        let size = MAGLEV_SIZE as u64;
        let mut order: Vec<usize> = (0..n).collect();
        order.sort_by_key(|i| ids[*i]);
        let perms: Vec<(u64, u64)> = order.iter().map(|i| (mix(ids[*i] ^ 1) % size, mix(ids[*i] ^ 2) % (size - 1) + 1)).collect();
        let mut next = vec![0u64; n];
        let mut table = vec![u16::MAX; MAGLEV_SIZE].into_boxed_slice();
        let mut filled = 0;
        'fill: loop {
            for (turn, (offset, skip)) in perms.iter().enumerate() {
                let mut slot = ((offset + next[turn] * skip) % size) as usize;
                while table[slot] != u16::MAX {
                    next[turn] += 1;
                    slot = ((offset + next[turn] * skip) % size) as usize;
                }
                table[slot] = order[turn] as u16;
                next[turn] += 1;
                filled += 1;
                if filled == MAGLEV_SIZE {
                    break 'fill;
                }
            }
        }
        Table::Maglev(table)
    }

    /// The endpoint index for `key`: the first in table order for which `usable` holds; None
    /// when the table is empty or no endpoint it holds is usable.
    pub fn lookup(&self, key: u64, usable: impl Fn(usize) -> bool) -> Option<usize> {
        match self {
            Table::Ring(points) if !points.is_empty() => {
                let start = points.partition_point(|p| p.0 < key);
                (0..points.len()).map(|step| usize::from(points[(start + step) % points.len()].1)).find(|i| usable(*i))
            }
            // The key's slot, else the next slots in order: the same answer for the same
            // usable endpoints, whichever zone they are in.
            Table::Maglev(slots) if !slots.is_empty() => {
                let start = (key % slots.len() as u64) as usize;
                (0..slots.len()).map(|step| usize::from(slots[(start + step) % slots.len()])).find(|i| usable(*i))
            }
            _ => None,
        }
    }
}

/// The hash key of an HTTP request: the first of `policies` that finds a value in it.
pub fn request_key(policies: &[HashPolicy], headers: &HeaderMap, uri: &Uri, client: Option<IpAddr>) -> Option<u64> {
    policies.iter().find_map(|p| {
        let name = p.name.as_deref().unwrap_or_default();
        match p.kind {
            HashPolicyType::Header => headers.get(name).map(|v| hash_bytes(v.as_bytes())),
            HashPolicyType::Cookie => headers
                .get_all(http::header::COOKIE)
                .iter()
                .filter_map(|v| v.to_str().ok())
                .flat_map(|v| v.split(';'))
                .find_map(|pair| pair.trim().strip_prefix(name)?.strip_prefix('='))
                .map(|value| hash_bytes(value.as_bytes())),
            HashPolicyType::QueryParameter => uri
                .query()?
                .split('&')
                .find_map(|pair| pair.strip_prefix(name)?.strip_prefix('='))
                .map(|value| hash_bytes(value.as_bytes())),
            HashPolicyType::SourceIP => client.map(ip_key),
        }
    })
}

/// The hash key of a TCP connection: the caller's address, if a policy hashes on it.
pub fn connection_key(policies: &[HashPolicy], client: IpAddr) -> Option<u64> {
    policies.iter().any(|p| p.kind == HashPolicyType::SourceIP).then(|| ip_key(client))
}

fn ip_key(ip: IpAddr) -> u64 {
    match ip {
        IpAddr::V4(v4) => hash_bytes(&v4.octets()),
        IpAddr::V6(v6) => hash_bytes(&v6.octets()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ids(n: u64) -> Vec<u64> {
        (0..n).map(|i| hash_bytes(format!("10.0.0.{i}:8080").as_bytes())).collect()
    }

    /// Where 10,000 keys land with `ids`.
    fn placement(table: &Table) -> Vec<usize> {
        (0..10_000u64).map(|k| table.lookup(hash_bytes(&k.to_le_bytes()), |_| true).unwrap()).collect()
    }

    /// `strays`: how many of 10,000 keys may move between old endpoints when one is added (none
    /// on a ring; Maglev trades a few for its even spread).
    fn check_consistent(build: fn(&[u64]) -> Table, what: &str, strays: usize) {
        let four = ids(4);
        let before = placement(&build(&four));
        // Each endpoint gets about a quarter of the keys.
        for e in 0..4 {
            let share = before.iter().filter(|i| **i == e).count();
            assert!((1_500..3_500).contains(&share), "{what}: endpoint {e} got {share} of 10000 keys");
        }
        // Same endpoints listed in another order: the same placement.
        let reversed: Vec<u64> = four.iter().rev().copied().collect();
        let again: Vec<usize> = placement(&build(&reversed)).into_iter().map(|i| 3 - i).collect();
        assert_eq!(before, again, "{what}: the placement depends on the endpoints, not their order");
        // A fifth endpoint takes about a fifth of the keys, from the others only.
        let after = placement(&build(&ids(5)));
        let moved = before.iter().zip(&after).filter(|(b, a)| b != a).count();
        let stray = after.iter().zip(&before).filter(|(a, b)| a != b && **a != 4).count();
        assert!(stray <= strays, "{what}: {stray} keys moved between old endpoints");
        assert!((1_200..2_800).contains(&moved), "{what}: {moved} of 10000 keys moved, about 2000 expected");
    }

    #[test]
    fn ring_hash_is_consistent() {
        check_consistent(Table::ring, "ring", 0);
    }

    #[test]
    fn maglev_is_consistent() {
        check_consistent(Table::maglev, "maglev", 300);
    }

    #[test]
    fn unusable_endpoints_are_passed_over_and_the_rest_stay() {
        for table in [Table::ring(&ids(4)), Table::maglev(&ids(4))] {
            let before = placement(&table);
            let without_2: Vec<usize> = (0..10_000u64).map(|k| table.lookup(hash_bytes(&k.to_le_bytes()), |i| i != 2).unwrap()).collect();
            for (b, a) in before.iter().zip(&without_2) {
                assert!(*a != 2 && (*b == 2 || a == b), "only the keys of the unusable endpoint move: {b} -> {a}");
            }
            assert_eq!(table.lookup(1, |_| false), None);
        }
        assert_eq!(Table::ring(&[]).lookup(1, |_| true), None);
        assert_eq!(Table::maglev(&[]).lookup(1, |_| true), None);
    }

    #[test]
    fn keys_come_from_the_first_policy_that_finds_a_value() {
        let policy = |kind, name: Option<&str>| HashPolicy { kind, name: name.map(str::to_owned) };
        let policies = [
            policy(HashPolicyType::Header, Some("x-user")),
            policy(HashPolicyType::Cookie, Some("session")),
            policy(HashPolicyType::QueryParameter, Some("id")),
            policy(HashPolicyType::SourceIP, None),
        ];
        let uri: Uri = "http://api/items?x=1&id=42".parse().unwrap();
        let client = Some(IpAddr::from([10, 1, 2, 3]));
        let mut headers = HeaderMap::new();
        headers.insert("x-user", "ann".parse().unwrap());
        headers.insert(http::header::COOKIE, "theme=dark; session=s-9".parse().unwrap());
        assert_eq!(request_key(&policies, &headers, &uri, client), Some(hash_bytes(b"ann")));
        headers.remove("x-user");
        assert_eq!(request_key(&policies, &headers, &uri, client), Some(hash_bytes(b"s-9")));
        headers.remove(http::header::COOKIE);
        assert_eq!(request_key(&policies, &headers, &uri, client), Some(hash_bytes(b"42")));
        let plain: Uri = "http://api/items".parse().unwrap();
        assert_eq!(request_key(&policies, &headers, &plain, client), Some(hash_bytes(&[10, 1, 2, 3])));
        assert_eq!(request_key(&policies[..3], &headers, &plain, client), None, "no value: no key");
        assert_eq!(connection_key(&policies[..1], IpAddr::from([10, 1, 2, 3])), None);
        assert_eq!(connection_key(&policies, IpAddr::from([10, 1, 2, 3])), Some(hash_bytes(&[10, 1, 2, 3])));
    }
}
