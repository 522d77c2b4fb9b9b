//! The other replicas of the global, for what only the replica that holds a zone's stream can
//! answer: inspections of the zone's sidecars are forwarded to its REST API (found in the shared
//! zone status, [`crate::kds::board`]), once: a forwarded request is never forwarded again.
//!
//! In: the CA that signs the replicas' API certificates. Out: [`Peers::inspect`].

use std::time::Duration;

use crate::kds::board::Holder;

/// Marks a request one replica forwarded to another (its value: the sender's replica id).
pub const FORWARDED_BY: &str = "strait-forwarded-by";

/// Longer than a zone's own time to answer, so the peer's answer (or its 504) arrives first.
const TIMEOUT: Duration = Duration::from_secs(crate::inspect::ZONE_TIMEOUT.as_secs() + 4);

/// A client of the other replicas' REST APIs; cheap to clone.
#[derive(Clone)]
pub struct Peers {
    client: reqwest::Client,
    replica: String,
}

/// What a replica answered: its JSON, or its status and why.
pub type Forwarded = Result<serde_json::Value, (u16, String)>;

impl Peers {
    /// A client that verifies the replicas with the CA certificates in `ca_pem` (their API
    /// certificates are the system CA's, shared through the store), or plain HTTP (`None`,
    /// with `--api-plaintext`). `replica` is this replica's id, sent along.
    pub fn new(ca_pem: Option<&[u8]>, replica: &str) -> Result<Peers, String> {
        let mut builder = reqwest::Client::builder().timeout(TIMEOUT).connect_timeout(Duration::from_secs(3));
        if let Some(pem) = ca_pem {
            builder = builder.use_preconfigured_tls(strait_pki::api_client::global_api_client_config(pem)?);
        }
        Ok(Peers { client: builder.build().map_err(|e| e.to_string())?, replica: replica.to_string() })
    }

    /// Asks `holder`'s replica to inspect Dataplane `dataplane` of `mesh` (in `zone`, or in any
    /// zone it holds).
    pub async fn inspect(&self, holder: &Holder, mesh: &str, dataplane: &str, what: &str, zone: Option<&str>) -> Forwarded {
        let Some(api) = &holder.api else {
            return Err((
                404,
                format!(
                    "zone {}'s stream is held by replica {}, which advertises no API address to forward to (give it --advertise-api-url), so ask that replica",
                    holder.zone, holder.replica
                ),
            ));
        };
        let failed = |status: u16, why: String| {
            (status, format!("forwarding to replica {} at {api} (which holds zone {}): {why}", holder.replica, holder.zone))
        };
        let mut url = reqwest::Url::parse(api).map_err(|e| failed(502, e.to_string()))?;
        url.path_segments_mut().map_err(|()| failed(502, "not a base URL".into()))?.extend([
            "meshes",
            mesh,
            "dataplanes",
            dataplane,
            "inspect",
        ]);
        url.query_pairs_mut().append_pair("what", what);
        if let Some(zone) = zone {
            url.query_pairs_mut().append_pair("zone", zone);
        }
        let response = self
            .client
            .get(url)
            .header(FORWARDED_BY, &self.replica)
            .send()
            .await
            .map_err(|e| failed(if e.is_timeout() { 504 } else { 502 }, strait_runtime::telemetry::error_chain(&e)))?;
        let status = response.status().as_u16();
        let body: serde_json::Value = response.json().await.map_err(|e| failed(502, format!("answered {status} without JSON: {e}")))?;
        if status == 200 {
            return Ok(body);
        }
        let message = body["message"].as_str().unwrap_or("no message").to_string();
        Err((
            if status == 404 { 404 } else { status.max(500) },
            format!("replica {} (holding zone {}): {message}", holder.replica, holder.zone),
        ))
    }
}
