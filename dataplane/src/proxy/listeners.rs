//! The data path's listeners, bound when the sidecar starts, from what its Dataplane declares,
//! before it connects to the zone: one per inbound (mTLS from other sidecars, on every
//! interface), one per explicit outbound (on its local address, 127.0.0.1 by default) and, with
//! `transparentProxying`, the redirected outbound port (on 127.0.0.1) and the redirected
//! inbound port (on every interface).
//!
//! Why from the Dataplane and not from the zone's configuration: the zone builds that
//! configuration from the very Dataplane the sidecar registers, so every listener is known at
//! start; binding first makes a port that is taken a start-up error (the binary exits, naming
//! the listener and the address) instead of a log line once the zone has answered, and lets a
//! Dataplane ask for port 0 (any free port): the sidecar registers the ports it bound
//! ([`Listeners::registered`]), so other sidecars reach the real one.
//!
//! In: the Dataplane and the readiness latch. Out: [`Listeners`]: each socket, bound, with
//! what it serves and a readiness guard released only when the data path accepts on it (which
//! it does once the first certificate is in; connections made before then wait in the
//! socket's backlog); [`Addresses`], what the sidecar's handle reports; or a [`BindError`].

use std::io;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};

use serde::Serialize;
use strait_api::dataplane::Networking;
use strait_api::names::PROTOCOL_TAG;
use strait_api::{Resource, Spec};
use strait_proxy_core::readiness::{BlockReady, Ready};

use super::destinations::Protocol;

/// Why a listener of the Dataplane could not be bound.
#[derive(Debug, thiserror::Error)]
pub enum BindError {
    /// The operating system refused the address (usually: the port is taken).
    #[error("binding {listener} to {address}: {source}")]
    Bind {
        /// Which listener: `inbound[0] (web)`.
        listener: String,
        /// Where.
        address: SocketAddr,
        /// What the operating system said.
        source: io::Error,
    },
    /// An address of the Dataplane is not an IP address.
    #[error("{listener}: {address:?} is not an IP address")]
    Address {
        /// Which listener.
        listener: String,
        /// The address given.
        address: String,
    },
    /// An inbound on port 0 without `servicePort`: the application's port would be the one
    /// the sidecar picks.
    #[error("{listener}: port 0 (any free port) needs servicePort, the port the application listens on")]
    ServicePort {
        /// Which listener.
        listener: String,
    },
    /// The Dataplane is not one (a bug of the caller: the configuration validated its type).
    #[error("the Dataplane file holds a {0}, not a Dataplane")]
    NotADataplane(String),
}

/// What an inbound listener serves.
#[derive(Debug, Clone)]
pub struct Inbound {
    /// The port it listens on, as registered with the zone.
    pub port: u16,
    /// The service it fronts.
    pub service: String,
    /// What the application speaks.
    pub protocol: Protocol,
    /// Where the application listens.
    pub forward_to: SocketAddr,
}

/// What an explicit outbound listener serves.
#[derive(Debug, Clone)]
pub struct Outbound {
    /// The destination service.
    pub service: String,
}

/// A bound listener, not accepting yet.
#[derive(Debug)]
pub struct Bound<T> {
    /// What it serves.
    pub serves: T,
    /// Where it is bound.
    pub address: SocketAddr,
    /// `inbound[0] (web)`, `outbound[0] (api)` or `redirected outbound (transparentProxying)`.
    pub name: String,
    socket: std::net::TcpListener,
    accepting: Accepting,
}

impl<T> Bound<T> {
    /// Hands the socket to `serve` on the runtime this is called on (the data path's), then
    /// releases the readiness guard. Should the socket not join the runtime, the reason is
    /// logged and the sidecar never reports ready.
    pub fn serve(self, serve: impl FnOnce(tokio::net::TcpListener, T)) {
        match tokio::net::TcpListener::from_std(self.socket) {
            Ok(listener) => {
                serve(listener, self.serves);
                self.accepting.release();
            }
            Err(error) => {
                tracing::error!(listener = self.name, address = %self.address, %error, "cannot accept on a bound listener; the sidecar stays unready");
            }
        }
    }
}

/// Holds readiness back until its listener accepts. Dropped any other way (the data path
/// ended or panicked first), it keeps readiness blocked for good: a guard that were simply
/// dropped would report a listener that nobody serves.
#[derive(Debug)]
struct Accepting(Option<BlockReady>);

impl Accepting {
    fn release(mut self) {
        drop(self.0.take());
    }
}

impl Drop for Accepting {
    fn drop(&mut self) {
        if let Some(guard) = self.0.take() {
            std::mem::forget(guard);
        }
    }
}

/// Every listener of the Dataplane, bound.
#[derive(Debug)]
pub struct Listeners {
    /// One per inbound, in the Dataplane's order.
    pub inbound: Vec<Bound<Inbound>>,
    /// One per explicit outbound, in the Dataplane's order.
    pub outbound: Vec<Bound<Outbound>>,
    /// The redirected outbound port, with `transparentProxying`.
    pub redirected: Option<Bound<()>>,
    /// The redirected inbound port, with `transparentProxying`.
    pub redirected_inbound: Option<Bound<()>>,
}

/// Where the sidecar's listeners are bound (the real ports, also when the Dataplane said 0).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Addresses {
    /// One per inbound, in the Dataplane's order.
    pub inbound: Vec<SocketAddr>,
    /// One per explicit outbound, in the Dataplane's order.
    pub outbound: Vec<SocketAddr>,
    /// The redirected outbound port, with `transparentProxying`.
    pub redirected: Option<SocketAddr>,
    /// The redirected inbound port, with `transparentProxying`.
    pub redirected_inbound: Option<SocketAddr>,
}

const LOCALHOST: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);

impl Listeners {
    /// Binds every listener of `dataplane`, each holding readiness back until the data path
    /// accepts on it; the first that fails is the error (those already bound are closed).
    pub async fn bind(dataplane: &Resource, ready: &Ready) -> Result<Listeners, BindError> {
        let Spec::Dataplane(spec) = &dataplane.spec else { return Err(BindError::NotADataplane(dataplane.kind.to_string())) };
        let networking: &Networking = &spec.networking;
        let mut listeners = Listeners { inbound: Vec::new(), outbound: Vec::new(), redirected: None, redirected_inbound: None };
        for (i, inbound) in networking.inbound.iter().enumerate() {
            let name = format!("inbound[{i}] ({})", inbound.service());
            let app_ip = ip(inbound.service_address.as_deref(), &name)?;
            let app_port = inbound.service_port.unwrap_or(inbound.port);
            if app_port == 0 {
                return Err(BindError::ServicePort { listener: name });
            }
            let bound = bind(SocketAddr::from(([0, 0, 0, 0], inbound.port)), name, ready).await?;
            let protocol = Protocol::from_tag(inbound.tags.get(PROTOCOL_TAG).map(String::as_str));
            let serves = Inbound {
                port: bound.address.port(),
                service: inbound.service().into(),
                protocol,
                forward_to: SocketAddr::new(app_ip, app_port),
            };
            listeners.inbound.push(bound.serving(serves));
        }
        for (i, outbound) in networking.outbound.iter().enumerate() {
            let name = format!("outbound[{i}] ({})", outbound.service());
            let address = SocketAddr::new(ip(outbound.address.as_deref(), &name)?, outbound.port);
            let bound = bind(address, name, ready).await?;
            listeners.outbound.push(bound.serving(Outbound { service: outbound.service().into() }));
        }
        if let Some(transparent) = &networking.transparent_proxying {
            let address = SocketAddr::new(LOCALHOST, transparent.redirect_port_outbound);
            listeners.redirected = Some(bind(address, "redirected outbound (transparentProxying)".into(), ready).await?);
            let address = SocketAddr::from(([0, 0, 0, 0], transparent.redirect_port_inbound));
            listeners.redirected_inbound = Some(bind(address, "redirected inbound (transparentProxying)".into(), ready).await?);
        }
        Ok(listeners)
    }

    /// Where each listener is bound.
    pub fn addresses(&self) -> Addresses {
        Addresses {
            inbound: self.inbound.iter().map(|b| b.address).collect(),
            outbound: self.outbound.iter().map(|b| b.address).collect(),
            redirected: self.redirected.as_ref().map(|b| b.address),
            redirected_inbound: self.redirected_inbound.as_ref().map(|b| b.address),
        }
    }

    /// Sets the ports actually bound in `dataplane`, as the sidecar registers it with the zone.
    pub fn register(&self, dataplane: &mut Resource) {
        if let Spec::Dataplane(spec) = &mut dataplane.spec {
            let networking = &mut spec.networking;
            for (declared, bound) in networking.inbound.iter_mut().zip(&self.inbound) {
                if declared.port != bound.address.port() {
                    // Port 0 came with servicePort (checked when binding).
                    declared.service_port = Some(declared.service_port.unwrap_or(declared.port));
                    declared.port = bound.address.port();
                }
            }
            for (declared, bound) in networking.outbound.iter_mut().zip(&self.outbound) {
                declared.port = bound.address.port();
            }
            if let (Some(declared), Some(bound)) = (&mut networking.transparent_proxying, &self.redirected) {
                declared.redirect_port_outbound = bound.address.port();
            }
            if let (Some(declared), Some(bound)) = (&mut networking.transparent_proxying, &self.redirected_inbound) {
                declared.redirect_port_inbound = bound.address.port();
            }
        }
    }
}

impl Bound<()> {
    fn serving<T>(self, serves: T) -> Bound<T> {
        Bound { serves, address: self.address, name: self.name, socket: self.socket, accepting: self.accepting }
    }
}

fn ip(address: Option<&str>, listener: &str) -> Result<IpAddr, BindError> {
    match address {
        None => Ok(LOCALHOST),
        Some(a) => a.parse().map_err(|_| BindError::Address { listener: listener.into(), address: a.into() }),
    }
}

/// Binds like every tokio listener (`SO_REUSEADDR`, a backlog of 1024), then leaves the
/// control side's runtime: the data path accepts on its own.
async fn bind(address: SocketAddr, name: String, ready: &Ready) -> Result<Bound<()>, BindError> {
    let failed = |source| BindError::Bind { listener: name.clone(), address, source };
    let listener = tokio::net::TcpListener::bind(address).await.map_err(failed)?;
    let bound = listener.local_addr().map_err(failed)?;
    let socket = listener.into_std().map_err(failed)?;
    let accepting = Accepting(Some(ready.register(format!("{name} accepting on {bound}"))));
    tracing::debug!(listener = name, address = %bound, "bound");
    Ok(Bound { serves: (), address: bound, name, socket, accepting })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dataplane(yaml_inbound: &str, any_port: bool) -> Resource {
        let yaml = format!(
            "type: Dataplane\nname: web-1\nmesh: default\nspec:\n  networking:\n    address: 10.0.0.1\n    inbound: [{yaml_inbound}]\n    outbound: [{{port: 15900, tags: {{strait.io/service: api}}}}]\n    transparentProxying: {{redirectPortOutbound: 15901, redirectPortInbound: 15902}}\n"
        );
        let mut dp = Resource::from_str_any(&yaml).unwrap();
        if let (true, Spec::Dataplane(spec)) = (any_port, &mut dp.spec) {
            spec.networking.inbound.iter_mut().for_each(|i| i.port = 0);
            spec.networking.outbound.iter_mut().for_each(|o| o.port = 0);
            spec.networking.transparent_proxying.iter_mut().for_each(|t| {
                t.redirect_port_outbound = 0;
                t.redirect_port_inbound = 0;
            });
        }
        dp
    }

    #[tokio::test]
    async fn port_zero_is_bound_and_registered_as_the_port_bound() {
        let ready = Ready::new();
        let dp = dataplane("{port: 15903, servicePort: 8080, tags: {strait.io/service: web, strait.io/protocol: http}}", true);
        let listeners = Listeners::bind(&dp, &ready).await.unwrap();
        let addresses = listeners.addresses();
        assert!(addresses.inbound[0].port() != 0 && addresses.outbound[0].port() != 0);
        assert_eq!(addresses.redirected.map(|a| a.ip()), Some(LOCALHOST));
        assert_eq!(listeners.inbound[0].serves.forward_to, "127.0.0.1:8080".parse().unwrap());
        assert_eq!(listeners.inbound[0].serves.protocol, Protocol::Http);
        assert_eq!(addresses.redirected_inbound.map(|a| a.ip().is_unspecified()), Some(true), "inbound comes from other hosts");
        assert_eq!(ready.pending().len(), 4, "each listener holds readiness back: {:?}", ready.pending());

        let mut registered = dp.clone();
        listeners.register(&mut registered);
        let Spec::Dataplane(registered) = registered.spec else { panic!("a Dataplane") };
        let n = registered.networking;
        assert_eq!((n.inbound[0].port, n.inbound[0].service_port), (addresses.inbound[0].port(), Some(8080)));
        assert_eq!(n.outbound[0].port, addresses.outbound[0].port());
        let tp = n.transparent_proxying.unwrap();
        assert_eq!(Some(tp.redirect_port_outbound), addresses.redirected.map(|a| a.port()));
        assert_eq!(Some(tp.redirect_port_inbound), addresses.redirected_inbound.map(|a| a.port()));

        let mut listeners = listeners;
        let served = listeners.inbound.pop().unwrap();
        served.serve(|_, _| ());
        assert_eq!(ready.pending().len(), 3, "accepting releases its guard: {:?}", ready.pending());
        drop(listeners);
        assert_eq!(ready.pending().len(), 3, "a listener dropped before it accepts keeps readiness blocked");
    }

    #[tokio::test]
    async fn port_zero_needs_the_application_port() {
        let dp = dataplane("{port: 15904, tags: {strait.io/service: web}}", true);
        let error = Listeners::bind(&dp, &Ready::new()).await.unwrap_err();
        assert!(matches!(error, BindError::ServicePort { .. }), "{error}");
        assert_eq!(error.to_string(), "inbound[0] (web): port 0 (any free port) needs servicePort, the port the application listens on");
    }
}
