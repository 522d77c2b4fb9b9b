//! Building blocks that both proxies need: the sidecar (`strait-dp`) and the east-west
//! gateway (`strait-gateway`), written once here so neither proxy imports the other.
//!
//! In: accepted sockets, workload certificates and the mesh trust bundle, metrics registries
//! and drain handles from the proxy's wiring (`app.rs`). Out: the data-path pieces, each in
//! the module named after it:
//!
//! | module | what |
//! |---|---|
//! | [`tls`] | the crypto provider (ring), TLS 1.3, SPIFFE-checking rustls verifiers and configs |
//! | [`identity`] | the certificate slot: current TLS configs, swapped on rotation |
//! | [`copy`] | bidirectional copy with half-close, byte counts and idle timeout |
//! | [`cp_client`] | the control plane stream's TLS channel, refusals and reconnect back-off |
//! | [`sni`] | SNI and ALPN of a ClientHello, peeked without consuming it |
//! | [`drain`] | two-phase shutdown: stop accepting, finish until a deadline, then force |
//! | [`readiness`] | the readiness latch and its guards |
//! | [`admin`] | the admin HTTP server: `/ready`, `/metrics`, `/config_dump` |
//! | [`metrics`] | a lock-free latency histogram for the request path |
//! | [`orig_dst`] | `SO_ORIGINAL_DST` for connections redirected by iptables |
//! | [`tunnel`] | the mTLS TCP tunnel: inbound termination and outbound connections |
//!
//! `unsafe` is denied everywhere but in [`orig_dst`], which needs one `getsockopt` call.
#![deny(unsafe_code)]

pub mod admin;
pub mod copy;
pub mod cp_client;
pub mod drain;
pub mod identity;
pub mod metrics;
pub mod orig_dst;
pub mod readiness;
pub mod sni;
pub mod tls;
pub mod tunnel;

pub use drain::{Drain, DrainWatcher};
pub use identity::{IdentityStore, TlsIdentity};
pub use readiness::{BlockReady, Ready};
