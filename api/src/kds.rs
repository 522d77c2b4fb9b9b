//! The zone sync protocol (KDS) between `strait-global` and `strait-zone`, generated from
//! `proto/strait/kds/v1/kds.proto`.
//!
//! In/out: the protobuf messages and the tonic client and server of the `ZoneSync` service.

#![allow(missing_docs, clippy::all, clippy::pedantic)]

tonic::include_proto!("strait.kds.v1");

/// The protocol version this build speaks.
pub const PROTOCOL_VERSION: u32 = 1;
