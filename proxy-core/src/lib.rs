//! Building blocks that both proxies need: the sidecar (`strait-dp`) and the east-west
//! gateway (`strait-gateway`).
//!
//! In: accepted sockets and the current proxy configuration. Out: SNI peeking, bidirectional
//! copy, connection pools, two-phase drain and the admin server, written once here so neither
//! proxy imports the other. It fills in as the data plane and the gateways are built.
#![forbid(unsafe_code)]
