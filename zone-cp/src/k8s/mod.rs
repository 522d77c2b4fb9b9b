//! Kubernetes mode of a zone: what the cluster's objects mean to the mesh.
//!
//! [`dataplanes`] turns a Pod with a sidecar, and the Services that select it, into the
//! Dataplane the zone serves its sidecar; [`controller`] keeps the zone's Dataplanes equal to
//! what the cluster's Pods and Services call for; [`identity`] verifies a sidecar's projected
//! service-account token with the API server and names its Pod; [`lease`] elects the one
//! replica that leads.

pub mod controller;
pub mod dataplanes;
pub mod identity;
pub mod lease;
