//! One endpoint of a destination and the state it keeps across configuration changes: how
//! many requests (or TCP connections) are in flight to it, its passive health, and its pooled
//! HTTP/2 connection.
//!
//! Passive health: an endpoint that failed to connect is ejected for a while (1 s, doubling on
//! each further failure up to 30 s), so a dead endpoint or a dead zone is skipped; each
//! successful connect brings it back at once and feeds the smoothed handshake time that
//! locality uses to find the nearest zone.
//!
//! In: connect outcomes (from the TCP path, and from the HTTP pool through
//! [`ConnectOutcome`]) and request starts. Out: [`Endpoint::in_flight`] for the balancer,
//! [`Health::available`] and [`Health::rtt`] for locality. Everything is an atomic: no lock
//! and no allocation per request.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use rustls::pki_types::ServerName;

use super::http::pool::{ConnectOutcome, Slot};

/// An endpoint with requests in flight and none ended for this long counts as stalled.
pub const STALLED: Duration = Duration::from_millis(250);
/// The load a stalled endpoint starts from: more than any endpoint's requests in flight.
const STALLED_LOAD: usize = usize::MAX / 2;

const EJECT_BASE: Duration = Duration::from_secs(1);
const EJECT_MAX: Duration = Duration::from_secs(30);

/// Milliseconds since the process's first use of this clock (the clock of ejections).
pub fn now_ms() -> u64 {
    static START: OnceLock<Instant> = OnceLock::new();
    START.get_or_init(Instant::now).elapsed().as_millis() as u64
}

/// One endpoint of a destination: a peer sidecar's inbound, or, for another zone, this
/// zone's egress gateway.
#[derive(Debug)]
pub struct Endpoint {
    /// Where to connect: the peer sidecar's inbound, or the egress.
    pub address: SocketAddr,
    /// The zone it runs in.
    pub zone: Arc<str>,
    /// The SNI sent to it (`<service>.<mesh>.strait`; through the egress, with the zone
    /// between mesh and `strait`): a routing label for gateways.
    pub sni: ServerName<'static>,
    in_flight: AtomicUsize,
    /// When a request (or connection) to it last ended ([`now_ms`]).
    last_done_ms: AtomicU64,
    /// The pooled HTTP connections to it.
    pub pool: Slot,
    /// Ejection after failed connects, and the measured handshake time.
    pub health: Health,
}

impl Endpoint {
    /// A new endpoint with no history.
    pub fn new(address: SocketAddr, zone: Arc<str>, sni: ServerName<'static>) -> Self {
        Endpoint {
            address,
            zone,
            sni,
            in_flight: AtomicUsize::new(0),
            last_done_ms: AtomicU64::new(now_ms()),
            pool: Slot::default(),
            health: Health::default(),
        }
    }

    /// Its load for least-request balancing: its requests in flight, behind every endpoint
    /// that is not stalled when it has some but none has ended for [`STALLED`] (a stopped
    /// process, a stalled host). So it gets no new request while its requests hang, however
    /// busy the others are: counted as one more request, it still won picks whenever the other
    /// endpoint had two in flight, as on a loaded machine, and those requests hung too.
    pub fn load(&self) -> usize {
        self.load_at(now_ms())
    }

    fn load_at(&self, now_ms: u64) -> usize {
        let in_flight = self.in_flight();
        let stalled = in_flight > 0 && now_ms.saturating_sub(self.last_done_ms.load(Ordering::Relaxed)) > STALLED.as_millis() as u64;
        if stalled {
            STALLED_LOAD + in_flight
        } else {
            in_flight
        }
    }

    /// Requests (or TCP connections) in flight to it.
    pub fn in_flight(&self) -> usize {
        self.in_flight.load(Ordering::Relaxed)
    }

    /// Counts a request in flight until the guard is dropped.
    pub fn start(self: &Arc<Self>) -> InFlight {
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        InFlight(self.clone())
    }
}

/// A request counted in flight on an endpoint until its response has ended.
#[derive(Debug)]
pub struct InFlight(Arc<Endpoint>);

impl InFlight {
    /// The endpoint.
    pub fn endpoint(&self) -> &Endpoint {
        &self.0
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
        self.0.last_done_ms.store(now_ms(), Ordering::Relaxed);
    }
}

/// Passive health of one endpoint: ejection after a failed connect, ejection by outlier
/// detection (MeshCircuitBreaker), and the handshake time.
#[derive(Debug, Default)]
pub struct Health {
    failures: AtomicU32,
    ejected_until_ms: AtomicU64,
    /// Smoothed TCP + TLS handshake time, microseconds; 0 until measured.
    rtt_us: AtomicU64,
    /// Consecutive failures: any (5xx or local origin), gateway (502-504 or local origin),
    /// local origin (connect failures, resets, timeouts).
    consecutive: [AtomicU32; 3],
    /// Outlier ejections so far (the next one lasts this many times the base time, plus one).
    ejections: AtomicU32,
    outlier_until_ms: AtomicU64,
    /// Requests answered, and of them failed, since the failure-percentage detector last
    /// looked (MeshCircuitBreaker `failurePercentage`, every `interval`).
    interval: [AtomicU32; 2],
    /// Active health checking (MeshHealthCheck): whether the checks took it out of the pool,
    /// the passed and failed checks in a row, when the next check is due, and whether one runs.
    checked_down: std::sync::atomic::AtomicBool,
    checks_in_a_row: [AtomicU32; 2],
    next_check_ms: AtomicU64,
    checking: std::sync::atomic::AtomicBool,
}

/// What became of one request to an endpoint, for outlier detection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// A response with this status.
    Status(u16),
    /// A TCP connection made.
    Connected,
    /// No response, for a reason on this side or the connection's: a connect failure, a
    /// reset, a timeout.
    LocalOrigin,
}

impl Health {
    /// A connection was opened in `took`.
    pub fn connected(&self, took: Duration) {
        self.failures.store(0, Ordering::Relaxed);
        self.ejected_until_ms.store(0, Ordering::Relaxed);
        let sample = took.as_micros().min(u128::from(u32::MAX)) as u64;
        let old = self.rtt_us.load(Ordering::Relaxed);
        let next = if old == 0 { sample } else { (old * 3 + sample) / 4 };
        self.rtt_us.store(next.max(1), Ordering::Relaxed);
    }

    /// A connection could not be opened: eject for a while.
    pub fn failed(&self) {
        let n = self.failures.fetch_add(1, Ordering::Relaxed).min(16);
        let eject = EJECT_BASE.saturating_mul(1 << n.min(5)).min(EJECT_MAX);
        self.ejected_until_ms.store(now_ms() + eject.as_millis() as u64, Ordering::Relaxed);
    }

    /// Whether picks may use the endpoint now.
    pub fn available(&self, now_ms: u64) -> bool {
        self.ejected_until_ms.load(Ordering::Relaxed) <= now_ms
            && self.outlier_until_ms.load(Ordering::Relaxed) <= now_ms
            && !self.checked_down.load(Ordering::Relaxed)
    }

    /// Whether active health checks took the endpoint out of the pool.
    pub fn checked_down(&self) -> bool {
        self.checked_down.load(Ordering::Relaxed)
    }

    /// Claims the next active check when it is due at `now_ms` (and none runs): the next one
    /// is then due after `interval`. The caller runs the check and reports it to [`Health::checked`].
    pub fn claim_check(&self, now_ms: u64, interval: Duration) -> bool {
        let due = self.next_check_ms.load(Ordering::Relaxed);
        if now_ms < due || self.checking.swap(true, Ordering::Relaxed) {
            return false;
        }
        self.next_check_ms.store(now_ms + interval.as_millis() as u64, Ordering::Relaxed);
        true
    }

    /// The result of an active check: after `unhealthy` failures in a row the endpoint leaves
    /// the pool, after `healthy` passes in a row it comes back. Returns the new state when it
    /// changed (`true`: healthy again).
    pub fn checked(&self, passed: bool, unhealthy: u32, healthy: u32) -> Option<bool> {
        let (this, other) = if passed {
            (&self.checks_in_a_row[0], &self.checks_in_a_row[1])
        } else {
            (&self.checks_in_a_row[1], &self.checks_in_a_row[0])
        };
        other.store(0, Ordering::Relaxed);
        let n = this.fetch_add(1, Ordering::Relaxed).saturating_add(1);
        let down = self.checked_down.load(Ordering::Relaxed);
        if passed && down && n >= healthy {
            self.checked_down.store(false, Ordering::Relaxed);
            return Some(true);
        }
        if !passed && !down && n >= unhealthy {
            self.checked_down.store(true, Ordering::Relaxed);
            return Some(false);
        }
        None
    }

    /// Ends the claim of [`Health::claim_check`]: the next check may run when due.
    pub fn release_check(&self) {
        self.checking.store(false, Ordering::Relaxed);
    }

    /// Forgets active checking (its policy is gone): the endpoint is in the pool again.
    pub fn unchecked(&self) {
        if self.checked_down.swap(false, Ordering::Relaxed) {
            for c in &self.checks_in_a_row {
                c.store(0, Ordering::Relaxed);
            }
        }
    }

    /// Whether outlier detection has the endpoint ejected now.
    pub fn outlier_ejected(&self, now_ms: u64) -> bool {
        self.outlier_until_ms.load(Ordering::Relaxed) > now_ms
    }

    /// Counts `outcome`, and returns the consecutive failures (any, gateway, local origin)
    /// it leaves; a success clears them and shortens the next ejection.
    pub fn record(&self, outcome: Outcome) -> [u32; 3] {
        let (any, gateway, local) = match outcome {
            Outcome::Status(code) => (code >= 500, matches!(code, 502..=504), false),
            Outcome::Connected => (false, false, false),
            Outcome::LocalOrigin => (true, true, true),
        };
        self.interval[0].fetch_add(1, Ordering::Relaxed);
        if any {
            self.interval[1].fetch_add(1, Ordering::Relaxed);
        }
        if !any {
            for c in &self.consecutive {
                c.store(0, Ordering::Relaxed);
            }
            let _ = self.ejections.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1));
            return [0; 3];
        }
        let bump = |c: &AtomicU32, failed: bool| {
            if failed {
                c.fetch_add(1, Ordering::Relaxed).saturating_add(1)
            } else {
                c.store(0, Ordering::Relaxed);
                0
            }
        };
        [bump(&self.consecutive[0], any), bump(&self.consecutive[1], gateway), bump(&self.consecutive[2], local)]
    }

    /// Ejects the endpoint for `base` times its ejections so far (plus one), at most `max`,
    /// and clears its counts.
    pub fn eject(&self, base: Duration, max: Duration) -> Duration {
        let n = self.ejections.fetch_add(1, Ordering::Relaxed).saturating_add(1);
        let time = base.saturating_mul(n).min(max);
        self.outlier_until_ms.store(now_ms() + time.as_millis() as u64, Ordering::Relaxed);
        for c in &self.consecutive {
            c.store(0, Ordering::Relaxed);
        }
        time
    }

    /// The requests answered and failed since the last call, which starts a new interval.
    pub fn take_interval(&self) -> (u32, u32) {
        (self.interval[0].swap(0, Ordering::Relaxed), self.interval[1].swap(0, Ordering::Relaxed))
    }

    /// The smoothed handshake time, if measured.
    pub fn rtt(&self) -> Option<Duration> {
        match self.rtt_us.load(Ordering::Relaxed) {
            0 => None,
            us => Some(Duration::from_micros(us)),
        }
    }
}

/// The HTTP pool reports the connections it opens to the endpoint's health.
impl ConnectOutcome for Health {
    fn connected(&self, took: Duration) {
        Health::connected(self, took);
    }

    fn failed(&self) {
        Health::failed(self);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_endpoint_whose_requests_hang_loses_ties() {
        let endpoint =
            |port| Arc::new(Endpoint::new(SocketAddr::from(([127, 0, 0, 1], port)), "z".into(), ServerName::try_from("x.strait").unwrap()));
        let (hung, busy) = (endpoint(1), endpoint(2));
        let now = now_ms();
        assert_eq!((hung.load_at(now), busy.load_at(now)), (0, 0), "idle: no stall");
        let _hanging = hung.start();
        let _working = busy.start();
        assert_eq!(hung.load_at(now), busy.load_at(now), "both just started one");
        let later = now + STALLED.as_millis() as u64 + 1;
        // `busy` ends one and starts the next: it has ended a request lately.
        drop(busy.start());
        assert_eq!(busy.load_at(now_ms()), 1);
        assert_eq!(hung.load_at(later), STALLED_LOAD + 1, "one in flight, none ended: stalled");
        assert!(hung.load_at(later) > busy.load_at(now_ms()), "of two with one in flight each, the stalled one loses");
        let _more: Vec<_> = (0..100).map(|_| busy.start()).collect();
        assert!(hung.load_at(later) > busy.load_at(now_ms()), "and it loses to one busy with many that end");
    }

    #[test]
    fn ejections_grow_and_are_capped() {
        let h = Health::default();
        assert!(h.available(now_ms()));
        h.failed();
        assert!(!h.available(now_ms()));
        assert!(h.available(now_ms() + 1_001));
        for _ in 0..10 {
            h.failed();
        }
        assert!(!h.available(now_ms() + 29_000));
        assert!(h.available(now_ms() + 30_001));
    }

    #[test]
    fn in_flight_counts_until_the_guard_is_dropped() {
        let sni = ServerName::try_from("a.default.strait").unwrap();
        let endpoint = Arc::new(Endpoint::new(SocketAddr::from(([10, 0, 0, 1], 80)), "z1".into(), sni));
        let (a, b) = (endpoint.start(), endpoint.start());
        assert_eq!(endpoint.in_flight(), 2);
        drop(a);
        assert_eq!(endpoint.in_flight(), 1);
        drop(b);
        assert_eq!(endpoint.in_flight(), 0);
    }
}
