//! What both control planes' REST APIs share: the JSON error shape and request bodies.
//!
//! In: failures, raw request bodies, a router to serve. Out: HTTP error responses, parsed JSON
//! values, and a server that drains on shutdown.

pub mod body;
pub mod errors;
pub mod extract;
pub mod serve;
