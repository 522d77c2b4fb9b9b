//! One gateway's DPS stream: register it in the zone (its ingress address goes upstream in
//! the inventory, its egress address to the zone's sidecars), send its configuration and again
//! on every change that affects it, and unregister it when it leaves.
//!
//! In: the gateway's Hello (authenticated by the zone's zone-proxy token), its ACK/NACK, and the zone
//! store's changes. Out: `Config` messages holding a `GatewayConfig`, only when it changed.

use std::net::SocketAddr;

use strait_api::dps::{gateway_message, GatewayHello, GatewayMessage, PROTOCOL_VERSION};
use tonic::{Status, Streaming};

use super::DpsShared;
use crate::gateways::{self, Registration};

fn unavailable(e: impl std::fmt::Display) -> Status {
    Status::unavailable(format!("zone store: {e}"))
}

/// Checks a gateway's Hello; returns its registration.
pub fn check_hello(hello: &GatewayHello) -> Result<Registration, Status> {
    if hello.protocol != PROTOCOL_VERSION {
        return Err(Status::failed_precondition(format!(
            "protocol {} is not supported; this zone speaks {PROTOCOL_VERSION}",
            hello.protocol
        )));
    }
    if let Err(e) = strait_api::names::check_dns_label(&hello.name) {
        return Err(Status::invalid_argument(format!("name: {e}")));
    }
    for (field, value) in [("ingress_address", &hello.ingress_address), ("egress_address", &hello.egress_address)] {
        match value.parse::<SocketAddr>() {
            Ok(a) if a.ip().is_unspecified() || a.port() == 0 => {
                return Err(Status::invalid_argument(format!(
                    "{field}: {value} is not an address others can reach (give the gateway's advertised address)"
                )))
            }
            Ok(_) => {}
            Err(e) => return Err(Status::invalid_argument(format!("{field}: {value:?} is not ip:port: {e}"))),
        }
    }
    let metrics_address = match hello.metrics_address.as_str() {
        "" => None,
        value => match value.parse::<SocketAddr>() {
            Ok(a) if !a.ip().is_unspecified() && a.port() != 0 => Some(value.to_string()),
            Ok(_) => return Err(Status::invalid_argument(format!("metrics_address: {value} is not an address Prometheus can reach"))),
            Err(e) => return Err(Status::invalid_argument(format!("metrics_address: {value:?} is not ip:port: {e}"))),
        },
    };
    Ok(Registration {
        name: hello.name.clone(),
        ingress_address: hello.ingress_address.clone(),
        egress_address: hello.egress_address.clone(),
        metrics_address,
    })
}

/// A connected gateway.
pub struct GatewaySession {
    pub(super) shared: DpsShared,
    pub(super) registration: Registration,
    /// The zone-proxy token it connected with; the session ends when it expires or is revoked.
    pub(super) token: super::TokenHold,
    pub(super) tx: super::Outbox,
}

impl GatewaySession {
    /// Runs until the gateway leaves, then unregisters it.
    pub async fn run(self, inbound: Streaming<GatewayMessage>) {
        let name = self.registration.name.clone();
        let result = self.serve(inbound).await;
        let reason = match &result {
            Ok(()) => "gateway closed the stream".to_string(),
            Err(s) => s.message().to_string(),
        };
        let store = self.shared.resources.store();
        if let Err(e) = gateways::unregister(store.as_ref(), &name).await {
            tracing::warn!(error = %e, "could not unregister the gateway");
        }
        crate::inventory::refresh(&self.shared.inventory).await;
        self.shared.connected.lock().unwrap_or_else(|p| p.into_inner()).remove(&format!("gateway/{name}"));
        tracing::info!(reason, "gateway disconnected");
        if let Err(status) = result {
            let _ = self.tx.send(Box::new(Err(status))).await;
        }
    }

    async fn serve(&self, mut inbound: Streaming<GatewayMessage>) -> Result<(), Status> {
        let store = self.shared.resources.store().clone();
        // Follow changes before registering, so no change between the two is missed.
        let mut changes = self.shared.changes.subscribe();
        // A revocation that arrived between the authentication and this subscription is seen now.
        self.token.check(&self.shared.resources).await?;
        gateways::register(store.as_ref(), &self.registration).await.map_err(unavailable)?;
        crate::inventory::refresh(&self.shared.inventory).await;
        let mut last: Option<Vec<u8>> = None;
        self.push_config(&mut last).await?;
        let mut leading = self.shared.leading.clone();
        loop {
            tokio::select! {
                status = super::lost_leadership(&mut leading) => return Err(status),
                () = self.shared.shutdown.cancelled() => return Err(Status::unavailable("the zone control plane is shutting down")),
                status = self.token.expired() => return Err(status),
                change = changes.next() => {
                    let Some(change) = change else { return Err(Status::unavailable("the zone control plane is shutting down")) };
                    let (relevant, revoked) = changes.burst(change, gateways::affects_gateways);
                    if revoked {
                        self.token.check(&self.shared.resources).await?;
                    }
                    if relevant {
                        self.push_config(&mut last).await?;
                    }
                }
                message = inbound.message() => match message {
                    Ok(Some(GatewayMessage { message: Some(gateway_message::Message::Ack(ack)) })) => {
                        tracing::debug!(version = ack.version, "gateway configuration applied");
                    }
                    Ok(Some(GatewayMessage { message: Some(gateway_message::Message::Nack(nack)) })) => {
                        tracing::warn!(version = nack.version, error = %nack.error, "gateway rejected its configuration (NACK)");
                    }
                    Ok(Some(_)) => return Err(Status::invalid_argument("only ACK and NACK may follow the Hello")),
                    Ok(None) => return Ok(()),
                    Err(s) => return Err(Status::aborted(format!("gateway stream failed: {}", s.message()))),
                },
            }
        }
    }

    async fn push_config(&self, last: &mut Option<Vec<u8>>) -> Result<(), Status> {
        let version = self.shared.resources.store().revision();
        let config = gateways::config(&self.shared.resources, &self.shared.zone).await.map_err(unavailable)?;
        let Some(message) = super::changed_config(&config, version, last)? else { return Ok(()) };
        tracing::debug!(version, "sending gateway configuration");
        self.tx.send(Box::new(Ok(message))).await.map_err(|_| Status::cancelled("gateway stream closed"))
    }
}
