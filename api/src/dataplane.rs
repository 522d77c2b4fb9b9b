//! Dataplane: one proxy, its address, the services it serves (inbounds) and the services it
//! calls through explicit local ports (outbounds).

use std::collections::BTreeMap;
use std::net::IpAddr;

use serde::{Deserialize, Serialize};

use crate::names::{self, PROTOCOL_TAG, SERVICE_TAG};
use crate::target_ref::validate_tags;
use crate::validate::{Validate, Validator};

/// The spec of a Dataplane.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct DataplaneSpec {
    /// Addresses and ports.
    pub networking: Networking,
}

/// Network settings of a proxy.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Networking {
    /// The IP address other proxies reach this one at.
    pub address: String,
    /// Services this proxy fronts.
    #[serde(default)]
    pub inbound: Vec<Inbound>,
    /// Services reached through local ports.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub outbound: Vec<Outbound>,
    /// iptables interception settings, when used.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub transparent_proxying: Option<TransparentProxying>,
}

/// A service port this proxy accepts traffic for.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Inbound {
    /// Port the proxy listens on for mTLS traffic from other proxies.
    pub port: u16,
    /// Port of the application (default: `port`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service_port: Option<u16>,
    /// Address of the application (default 127.0.0.1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service_address: Option<String>,
    /// Tags; `strait.io/service` is required, `strait.io/protocol` defaults to tcp.
    pub tags: BTreeMap<String, String>,
    /// How the sidecar checks that the application behind this inbound answers (default: a
    /// TCP connect every 5 s, out after 2 failures, back after 1 pass).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service_probe: Option<ServiceProbe>,
    /// Whether the application is ready, as the sidecar's probe last found it. The zone sets
    /// it from the sidecar's reports; an inbound that is not ready gets no traffic, from its
    /// zone or from others. Registered with `ready: false`, an inbound stays out until its
    /// probe first passes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub health: Option<InboundHealth>,
}

/// The sidecar's probe of the application behind an inbound.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ServiceProbe {
    /// Turns the probe off: the inbound is always ready.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub disabled: Option<bool>,
    /// Time between probes (default 5s).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interval: Option<crate::Duration>,
    /// Time a probe may take (default 1s).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<crate::Duration>,
    /// Failed probes in a row before the inbound is not ready (default 2).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unhealthy_threshold: Option<u32>,
    /// Passed probes in a row before it is ready again (default 1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub healthy_threshold: Option<u32>,
    /// Probe with an HTTP `GET` (passed: a 2xx or 3xx answer) rather than a TCP connect.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http: Option<HttpProbe>,
}

/// An HTTP probe of the application.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct HttpProbe {
    /// Path requested, such as `/healthz`.
    pub path: String,
}

/// An inbound's readiness.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct InboundHealth {
    /// Whether the application answers its probe.
    pub ready: bool,
}

/// A service the application reaches at a local port.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Outbound {
    /// Local port.
    pub port: u16,
    /// Local address (default 127.0.0.1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub address: Option<String>,
    /// Tags; `strait.io/service` names the destination.
    pub tags: BTreeMap<String, String>,
}

/// Where iptables sends intercepted traffic.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct TransparentProxying {
    /// Outbound redirect port (default 15001).
    #[serde(default = "outbound_port")]
    pub redirect_port_outbound: u16,
    /// Inbound redirect port (default 15006).
    #[serde(default = "inbound_port")]
    pub redirect_port_inbound: u16,
    /// The services this workload reaches through transparent proxying. Unset, its sidecar
    /// gets every service of the mesh; set, only these (with its explicit outbounds and the
    /// services their routes send to), and a connection to any other address passes through
    /// outside the mesh. In a large mesh this keeps each sidecar's configuration, and the
    /// zone's work on every change, to what the workload uses.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reachable_services: Option<Vec<String>>,
}

fn outbound_port() -> u16 {
    15001
}

fn inbound_port() -> u16 {
    15006
}

/// Protocols a service may declare with `strait.io/protocol`.
pub const PROTOCOLS: &[&str] = &["tcp", "http", "http2", "grpc"];

impl Inbound {
    /// The service this inbound serves.
    pub fn service(&self) -> &str {
        self.tags.get(SERVICE_TAG).map(String::as_str).unwrap_or_default()
    }

    /// Whether it gets traffic: ready unless its sidecar's probe (or its registration) says not.
    pub fn is_ready(&self) -> bool {
        self.health.is_none_or(|h| h.ready)
    }
}

impl Outbound {
    /// The service this outbound reaches.
    pub fn service(&self) -> &str {
        self.tags.get(SERVICE_TAG).map(String::as_str).unwrap_or_default()
    }
}

fn check_port(v: &mut Validator, field: &'static str, port: u16) {
    if port == 0 {
        v.error_at(field, "must be between 1 and 65535");
    }
}

fn check_service_tags(v: &mut Validator, tags: &BTreeMap<String, String>) {
    match tags.get(SERVICE_TAG) {
        None => v.error_at("tags", format!("needs the {SERVICE_TAG} tag")),
        Some(s) => {
            if let Err(e) = names::check_dns_subdomain(s) {
                v.field("tags", |v| v.key(SERVICE_TAG, |v| v.error(e)));
            }
        }
    }
    if let Some(p) = tags.get(PROTOCOL_TAG) {
        if !PROTOCOLS.contains(&p.as_str()) {
            v.field("tags", |v| {
                v.key(PROTOCOL_TAG, |v| v.error(format!("{p:?} is not a protocol; expected one of {}", PROTOCOLS.join(", "))))
            });
        }
    }
    validate_tags(v, "tags", tags);
}

fn check_ip(v: &mut Validator, field: &'static str, addr: &Option<String>) {
    if let Some(a) = addr {
        if a.parse::<IpAddr>().is_err() {
            v.error_at(field, format!("{a:?} is not an IP address"));
        }
    }
}

impl Validate for DataplaneSpec {
    fn validate(&self, v: &mut Validator) {
        let n = &self.networking;
        v.field("networking", |v| {
            if n.address.parse::<IpAddr>().is_err() {
                v.error_at(
                    "address",
                    format!("{:?} is not an IP address (other sidecars connect to it; host names are not supported)", n.address),
                );
            }
            if n.inbound.is_empty() {
                v.error_at("inbound", "needs at least one inbound");
            }
            v.each("inbound", &n.inbound, |v, i| {
                check_port(v, "port", i.port);
                if i.service_port == Some(0) {
                    v.error_at("servicePort", "must be between 1 and 65535");
                }
                check_ip(v, "serviceAddress", &i.service_address);
                check_service_tags(v, &i.tags);
                if let Some(probe) = &i.service_probe {
                    v.field("serviceProbe", |v| {
                        crate::policies::check_positive(v, "interval", probe.interval);
                        crate::policies::check_positive(v, "timeout", probe.timeout);
                        crate::policies::check_min(v, "unhealthyThreshold", probe.unhealthy_threshold, 1);
                        crate::policies::check_min(v, "healthyThreshold", probe.healthy_threshold, 1);
                        if let Some(http) = &probe.http {
                            if !http.path.starts_with('/') {
                                v.field("http", |v| v.error_at("path", format!("{:?} must start with '/'", http.path)));
                            }
                        }
                    });
                }
            });
            v.each("outbound", &n.outbound, |v, o| {
                check_port(v, "port", o.port);
                check_ip(v, "address", &o.address);
                check_service_tags(v, &o.tags);
            });
            let mut seen = BTreeMap::new();
            for (i, inbound) in n.inbound.iter().enumerate() {
                if let Some(first) = seen.insert(inbound.port, i) {
                    v.field("inbound", |v| {
                        v.index(i, |v| v.error_at("port", format!("{} is already used by inbound[{first}]", inbound.port)))
                    });
                }
            }
            if let Some(tp) = &n.transparent_proxying {
                v.field("transparentProxying", |v| {
                    check_port(v, "redirectPortOutbound", tp.redirect_port_outbound);
                    check_port(v, "redirectPortInbound", tp.redirect_port_inbound);
                    if tp.redirect_port_inbound == tp.redirect_port_outbound {
                        v.error_at("redirectPortInbound", "must differ from redirectPortOutbound");
                    }
                    if let Some(reachable) = &tp.reachable_services {
                        v.each("reachableServices", reachable, |v, service| {
                            if let Err(e) = names::check_dns_subdomain(service) {
                                v.error(e);
                            }
                        });
                    }
                });
            }
        });
    }
}
