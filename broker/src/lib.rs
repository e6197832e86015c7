//! The Sealpost broker.
//!
//! It accepts QUIC connections with mutual TLS 1.3 only, maps each client certificate to a principal,
//! enforces the operator's per-topic ACL, verifies each published sealed batch once (signature, signer bound
//! to the principal, sequence chain), stores it durably (an ack follows an `fdatasync` that covers it), and
//! streams stored batches to subscribers. It never holds a topic's content key and never sees a payload.
//!
//! The async shell ([`server`]) only moves bytes; decisions live in small synchronous modules with their own
//! tests: [`acl`] (who may do what), [`writer::sequencer`] (does a batch continue its chain, or is it a retry),
//! [`store`] (what is durable), [`budget`] (what peers can make the broker hold).
#![forbid(unsafe_code)]
#![deny(missing_docs)]

pub mod acl;
pub mod budget;
pub mod config;
pub mod dev;
mod error;
pub mod pki;
pub mod ratelimit;
pub mod server;
pub mod session;
pub mod store;
pub mod tls;
mod wire;
pub mod writer;

pub use error::{Error, Result};
