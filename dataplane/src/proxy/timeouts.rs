//! MeshTimeout, as the sidecar applies it: on the way to a destination (`to`, per destination)
//! and on an inbound (`from`, every caller alike).
//!
//! In: a merged MeshTimeout conf (or none). Out: [`Timeouts`]: the connect and idle limits of
//! connections, and the limits of an HTTP exchange: a deadline (`requestTimeout`,
//! `maxStreamDuration`, whichever comes first), a stream idle limit (no frame either way), and
//! the lifetime of pooled HTTP/2 connections (`maxConnectionDuration`). Zero disables a limit.

use std::time::Duration;

use strait_api::policies::timeout::TimeoutConf;

/// The timeouts of one destination or inbound.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Timeouts {
    /// TCP connect (plus, to a peer sidecar, the TLS and HTTP/2 handshakes).
    pub connect: Duration,
    /// An HTTP request, from its arrival until its response is complete; `None`: no limit.
    pub request: Option<Duration>,
    /// A TCP connection in which no byte moved either way for this long is closed (MeshTimeout
    /// `idleTimeout`, 1 h by default); `None`: no limit.
    pub idle: Option<Duration>,
    /// An HTTP stream may last this long in all, request and response bodies included
    /// (`http.maxStreamDuration`); `None`: no limit.
    pub max_stream: Option<Duration>,
    /// A request or response body with no frame for this long is cut, and the response
    /// headers must come within it (`http.streamIdleTimeout`; each direction is timed on its
    /// own, so an upload longer than it, with the headers yet to come, is cut too); `None`: no
    /// limit.
    pub stream_idle: Option<Duration>,
    /// A pooled HTTP/2 connection is replaced (outbound), or closed gracefully (inbound), once
    /// this old (`http.maxConnectionDuration`); `None`: no limit.
    pub max_connection: Option<Duration>,
}

/// Which limit an HTTP exchange ran into, for the answer that says so.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limit {
    /// How long it was.
    pub after: Duration,
    /// What it is (`request timeout`).
    pub name: &'static str,
    /// Its field, as in the policy (`MeshTimeout http.requestTimeout`).
    pub field: &'static str,
}

impl std::fmt::Display for Limit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "the {} of {:?} ({})", self.name, self.after, self.field)
    }
}

const REQUEST: (&str, &str) = ("request timeout", "MeshTimeout http.requestTimeout");
const STREAM: (&str, &str) = ("stream duration limit", "MeshTimeout http.maxStreamDuration");
const IDLE: (&str, &str) = ("stream idle timeout", "MeshTimeout http.streamIdleTimeout");

fn limit(after: Option<Duration>, (name, field): (&'static str, &'static str)) -> Option<Limit> {
    after.map(|after| Limit { after, name, field })
}

impl Timeouts {
    /// To a destination without a MeshTimeout, as Kuma's defaults: 5 s to connect, 15 s per
    /// request, 1 h idle.
    pub const DEFAULT: Timeouts = Timeouts {
        connect: Duration::from_secs(5),
        request: Some(Duration::from_secs(15)),
        idle: Some(strait_proxy_core::copy::DEFAULT_IDLE_TIMEOUT),
        max_stream: None,
        stream_idle: None,
        max_connection: None,
    };

    /// On an inbound without a MeshTimeout `from`: 5 s to connect to the application, 1 h
    /// idle, no request limit (the callers' own timeouts apply).
    pub const INBOUND: Timeouts = Timeouts { request: None, ..Timeouts::DEFAULT };

    /// The timeouts of a merged `to` conf, [`Timeouts::DEFAULT`] for what it leaves out.
    pub fn from_conf(conf: Option<&TimeoutConf>) -> Timeouts {
        Timeouts::with_defaults(conf, Timeouts::DEFAULT)
    }

    /// The timeouts of an inbound's merged `from` conf, [`Timeouts::INBOUND`] for what it leaves out.
    pub fn inbound(conf: Option<&TimeoutConf>) -> Timeouts {
        Timeouts::with_defaults(conf, Timeouts::INBOUND)
    }

    /// These timeouts with what `conf` sets instead (a MeshTimeout on a route's requests,
    /// over its destination's).
    pub fn overridden_by(self, conf: &TimeoutConf) -> Timeouts {
        Timeouts::with_defaults(Some(conf), self)
    }

    fn with_defaults(conf: Option<&TimeoutConf>, defaults: Timeouts) -> Timeouts {
        let Some(conf) = conf else { return defaults };
        // Set: its value, or no limit for 0; unset: the default.
        let limit = |set: Option<strait_api::Duration>, default: Option<Duration>| match set {
            Some(d) if d.get().is_zero() => None,
            Some(d) => Some(d.get()),
            None => default,
        };
        let http = conf.http.as_ref();
        Timeouts {
            connect: conf.connection_timeout.map_or(defaults.connect, |d| d.get()),
            request: limit(http.and_then(|h| h.request_timeout), defaults.request),
            idle: limit(conf.idle_timeout, defaults.idle),
            max_stream: limit(http.and_then(|h| h.max_stream_duration), defaults.max_stream),
            stream_idle: limit(http.and_then(|h| h.stream_idle_timeout), defaults.stream_idle),
            max_connection: limit(http.and_then(|h| h.max_connection_duration), defaults.max_connection),
        }
    }

    /// When an HTTP exchange must be complete: the sooner of `requestTimeout` and
    /// `maxStreamDuration`.
    pub fn deadline(&self) -> Option<Limit> {
        match (limit(self.request, REQUEST), limit(self.max_stream, STREAM)) {
            (Some(r), Some(s)) => Some(if s.after < r.after { s } else { r }),
            (r, s) => r.or(s),
        }
    }

    /// How long the response headers may take: the deadline, or the stream idle limit when it
    /// is sooner (nothing moves on a stream that waits for them).
    pub fn headers_limit(&self) -> Option<Limit> {
        match (self.deadline(), limit(self.stream_idle, IDLE)) {
            (Some(d), Some(i)) => Some(if i.after < d.after { i } else { d }),
            (d, i) => d.or(i),
        }
    }
}

/// The timeouts of inbound `port` in the configuration in force (its MeshTimeout `from`, which
/// selects every caller alike).
pub fn of_inbound(state: &crate::dps_client::ProxyState, port: u16) -> Timeouts {
    let config = state.config.load();
    let inbound = config.as_ref().and_then(|c| c.1.inbounds.iter().find(|i| i.port == port));
    Timeouts::inbound(inbound.and_then(|i| i.policies.timeout.first()).map(|rule| &rule.conf))
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn conf(v: serde_json::Value) -> TimeoutConf {
        serde_json::from_value(v).unwrap()
    }

    #[test]
    fn confs_set_limits_zero_disables_and_the_rest_default() {
        assert_eq!(Timeouts::from_conf(None), Timeouts::DEFAULT);
        assert_eq!(Timeouts::inbound(None).request, None, "inbound: the callers' timeouts apply");
        let t = Timeouts::from_conf(Some(&conf(json!({"connectionTimeout": "1s", "idleTimeout": "0s",
            "http": {"requestTimeout": "0s", "streamIdleTimeout": "2s", "maxStreamDuration": "30s", "maxConnectionDuration": "1m"}}))));
        assert_eq!(
            t,
            Timeouts {
                connect: Duration::from_secs(1),
                request: None,
                idle: None,
                max_stream: Some(Duration::from_secs(30)),
                stream_idle: Some(Duration::from_secs(2)),
                max_connection: Some(Duration::from_secs(60)),
            }
        );
        assert_eq!(
            t.deadline().map(|l| l.to_string()).as_deref(),
            Some("the stream duration limit of 30s (MeshTimeout http.maxStreamDuration)")
        );
        assert_eq!(
            t.headers_limit().map(|l| l.to_string()).as_deref(),
            Some("the stream idle timeout of 2s (MeshTimeout http.streamIdleTimeout)")
        );
        let d = Timeouts::from_conf(Some(&conf(json!({"http": {"maxStreamDuration": "1m"}}))));
        assert_eq!(d.deadline().map(|l| l.field), Some("MeshTimeout http.requestTimeout"), "15 s comes first");
        assert_eq!(Timeouts { request: None, ..Timeouts::INBOUND }.headers_limit(), None);
    }

    #[test]
    fn timeouts_come_from_mesh_timeout_with_defaults() {
        let secs = Duration::from_secs;
        let cases = [
            (None, Timeouts::DEFAULT),
            (Some(json!({})), Timeouts::DEFAULT),
            (Some(json!({"connectionTimeout": "2s"})), Timeouts { connect: secs(2), ..Timeouts::DEFAULT }),
            (
                Some(json!({"http": {"requestTimeout": "500ms"}})),
                Timeouts { request: Some(Duration::from_millis(500)), ..Timeouts::DEFAULT },
            ),
            (Some(json!({"http": {"requestTimeout": "0s"}})), Timeouts { request: None, ..Timeouts::DEFAULT }),
            (Some(json!({"idleTimeout": "30s"})), Timeouts { idle: Some(secs(30)), ..Timeouts::DEFAULT }),
            (Some(json!({"idleTimeout": "0s"})), Timeouts { idle: None, ..Timeouts::DEFAULT }),
        ];
        for (conf, expected) in cases {
            let conf: Option<TimeoutConf> = conf.map(|c| serde_json::from_value(c).unwrap());
            assert_eq!(Timeouts::from_conf(conf.as_ref()), expected, "{conf:?}");
        }
    }
}
