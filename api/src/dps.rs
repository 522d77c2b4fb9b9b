//! The dataplane config protocol (DPS) between `strait-zone` and `strait-dp`, generated from
//! `proto/strait/dps/v1/dps.proto`.
//!
//! In/out: the protobuf messages and the tonic client and server of `DataplaneSync`.

#![allow(missing_docs, clippy::all, clippy::pedantic)]

tonic::include_proto!("strait.dps.v1");

/// The protocol version this build speaks.
pub const PROTOCOL_VERSION: u32 = 1;
