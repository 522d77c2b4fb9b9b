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
                });
            }
        });
    }
}
