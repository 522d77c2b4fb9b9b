//! Kubernetes mode of a zone: what the cluster's objects mean to the mesh.
//!
//! [`dataplanes`] turns a Pod with a sidecar, and the Services that select it, into the
//! Dataplane the zone serves its sidecar.

pub mod controller;
pub mod dataplanes;
