//! The gateway's side of DPS: register with the zone control plane (zone-proxy token, name, ingress
//! and egress addresses), apply each configuration (ACK, or NACK and keep the previous one),
//! keep the last one on disk so a restart while the control plane is down still serves, and
//! reconnect with back-off.
//!
//! In: the validated flags. Out: [`Gateway::routes`] swapped on each configuration, the QUIC
//! server identity and the links to other zones updated, readiness guards released.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use strait_api::dps::dataplane_sync_client::DataplaneSyncClient;
use strait_api::dps::{gateway_message, zone_message, Ack, GatewayHello, GatewayMessage, Nack, PROTOCOL_VERSION};
use strait_api::gateway_config::GatewayConfig;
use strait_proxy_core::cp_client::{self, classify, End};
use strait_proxy_core::BlockReady;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;

use crate::config::Validated;
use crate::routes::Routes;
use crate::Gateway;

/// Readiness guards: the first configuration, and a usable zone identity.
pub struct Guards {
    /// Released on the first configuration.
    pub config: Mutex<Option<BlockReady>>,
    /// Released once a configuration carries the zone identity.
    pub identity: Mutex<Option<BlockReady>>,
}

fn release(slot: &Mutex<Option<BlockReady>>) {
    slot.lock().unwrap_or_else(|p| p.into_inner()).take();
}

/// Where the last configuration is kept.
pub fn saved_path(data_dir: &Path) -> PathBuf {
    data_dir.join("gateway-config.json")
}

/// Applies `config`: builds its routes (off the async workers), swaps them in, updates the
/// QUIC identity, links and peers, and saves it. On error nothing changes.
pub async fn apply(gw: &Arc<Gateway>, guards: &Guards, data_dir: &Path, config: GatewayConfig) -> Result<(), String> {
    let built = {
        let config = config.clone();
        let policy = gw.addresses.clone();
        tokio::task::spawn_blocking(move || Routes::build(&config, &policy)).await.map_err(|e| e.to_string())??
    };
    let identity_changed = match (&built.tls, &gw.routes.load().tls) {
        (Some(new), Some(old)) => new.cert().chain() != old.cert().chain(),
        (new, _) => new.is_some(),
    };
    if let (true, Some(tls)) = (identity_changed, &built.tls) {
        gw.endpoint.set_server_config(Some(crate::quic::server(tls, gw.idle_timeout)?));
        tracing::info!(identity = %tls.identity(), "zone identity in use");
    }
    let has_identity = built.tls.is_some();
    gw.routes.store(Arc::new(built));
    gw.links.update(gw);
    gw.peers.close_revoked(gw);
    gw.links.close_revoked(gw);
    // Tunnels over TCP watch the routes themselves (see `Gateway::cut_when`).
    gw.routes_changed.send_replace(());
    release(&guards.config);
    if has_identity {
        release(&guards.identity);
    }
    save(data_dir, &config);
    Ok(())
}

/// Writes the configuration (it holds the zone identity's key: owner-only) atomically.
fn save(data_dir: &Path, config: &GatewayConfig) {
    let path = saved_path(data_dir);
    let tmp = path.with_extension("json.tmp");
    let written = serde_json::to_vec(config).map_err(std::io::Error::other).and_then(|json| {
        use std::io::Write;
        let mut options = std::fs::OpenOptions::new();
        options.write(true).create(true).truncate(true);
        #[cfg(unix)]
        std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
        let mut file = options.open(&tmp)?;
        // A leftover file keeps its mode despite `mode`: make it owner-only before writing.
        strait_runtime::files::private_file(&tmp)?;
        file.write_all(&json)?;
        file.sync_all()?;
        std::fs::rename(&tmp, &path)
    });
    if let Err(e) = written {
        tracing::warn!(path = %path.display(), error = %e, "could not save the configuration; a restart will wait for the control plane");
    }
}

/// The configuration saved by an earlier run, if any.
pub fn load_saved(data_dir: &Path) -> Option<GatewayConfig> {
    let path = saved_path(data_dir);
    let bytes = std::fs::read(&path).ok()?;
    match serde_json::from_slice(&bytes) {
        Ok(c) => Some(c),
        Err(e) => {
            tracing::warn!(path = %path.display(), error = %e, "ignoring a saved configuration that does not parse");
            None
        }
    }
}

/// The DPS client.
pub struct CpClient {
    /// Flags and files.
    pub config: Arc<Validated>,
    /// The gateway.
    pub gw: Arc<Gateway>,
    /// Readiness guards.
    pub guards: Arc<Guards>,
    /// Where Prometheus scrapes the admin endpoint, for the zone's service discovery.
    pub metrics_address: Option<std::net::SocketAddr>,
}

impl CpClient {
    /// Runs until cancelled; the zone unregisters the gateway when its stream closes.
    pub async fn run(self, cancel: CancellationToken) {
        let flags = &self.config.flags;
        cp_client::run(cancel, "gateway", &flags.cp.cp_address, flags.cp.cp_max_backoff, || self.session()).await
    }

    async fn session(&self) -> End {
        let flags = &self.config.flags;
        let channel = match cp_client::connect(&flags.cp.cp_address, &self.config.cp_ca_pem, &flags.cp.cp_server_name, None).await {
            Ok(c) => c,
            Err(e) => return End::Broken(e),
        };
        let (tx, rx) = mpsc::channel(8);
        let hello = GatewayHello {
            protocol: PROTOCOL_VERSION,
            name: flags.name.clone(),
            ingress_address: self.config.advertised_ingress.to_string(),
            egress_address: self.config.advertised_egress.to_string(),
            software_version: env!("CARGO_PKG_VERSION").into(),
            metrics_address: self.metrics_address.map(|a| a.to_string()).unwrap_or_default(),
        };
        let _ = tx.send(msg(gateway_message::Message::Hello(hello))).await;
        let request = match cp_client::with_bearer(ReceiverStream::new(rx), &self.config.token) {
            Ok(r) => r,
            Err(end) => return end,
        };
        let mut inbound = match DataplaneSyncClient::new(channel).gateway(request).await {
            Ok(r) => r.into_inner(),
            Err(s) => return classify(s),
        };
        tracing::info!(cp = %flags.cp.cp_address, gateway = %flags.name, "registered with the zone control plane");
        loop {
            match inbound.message().await {
                Ok(Some(m)) => {
                    let Some(zone_message::Message::Config(c)) = m.message else { continue };
                    let applied = match serde_json::from_slice::<GatewayConfig>(&c.json) {
                        Ok(config) => apply(&self.gw, &self.guards, &flags.data_dir, config).await,
                        Err(e) => Err(format!("not a gateway configuration: {e}")),
                    };
                    let reply = match applied {
                        Ok(()) => {
                            tracing::info!(version = c.version, "configuration applied");
                            gateway_message::Message::Ack(Ack { version: c.version })
                        }
                        Err(e) => {
                            tracing::warn!(version = c.version, error = %e, "rejected a configuration (NACK); keeping the previous one");
                            gateway_message::Message::Nack(Nack { version: c.version, error: e })
                        }
                    };
                    if tx.send(msg(reply)).await.is_err() {
                        return End::Broken("request stream closed".into());
                    }
                }
                Ok(None) => return End::Broken("the zone closed the stream".into()),
                Err(s) => return classify(s),
            }
        }
    }
}

fn msg(m: gateway_message::Message) -> GatewayMessage {
    GatewayMessage { message: Some(m) }
}
