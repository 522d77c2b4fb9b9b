//! Strait's public-key infrastructure.
//!
//! In: a mesh's CA settings (from the `Mesh` resource) and certificate signing requests from
//! zones and sidecars. Out: a root CA per mesh on the global control plane, intermediate CAs
//! for zones, short-lived SPIFFE workload certificates, and ready-built rustls configurations.
//! The certificate lifecycle arrives with zone sync (KDS) and the sidecar data plane.
#![forbid(unsafe_code)]

/// The SPIFFE ID of a service in a mesh: `spiffe://<mesh>/<service>`.
pub fn spiffe_id(mesh: &str, service: &str) -> String {
    format!("spiffe://{mesh}/{service}")
}

#[cfg(test)]
mod tests {
    #[test]
    fn spiffe_id_names_mesh_and_service() {
        assert_eq!(super::spiffe_id("default", "web"), "spiffe://default/web");
    }
}
