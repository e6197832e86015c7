//! The Sealpost broker.
//!
//! It accepts QUIC connections with mutual TLS 1.3 only, maps each client certificate to a principal,
//! enforces the operator's per-topic ACL, verifies each published sealed batch once (signature, signer bound
//! to the principal, sequence chain), stores it durably (an ack follows an `fdatasync` that covers it), and
//! streams stored batches to subscribers. It never holds a topic's content key and never sees a payload.
//!
//! The async shell ([`server`]) only moves bytes; decisions live in synchronous modules with their own
//! tests: [`session`] (sans-IO: admission and per-principal limits, authorization, the policy cache, what to
//! do with each frame on each kind of stream), [`acl`] (who may do what), [`writer::sequencer`] (does a batch
//! continue its chain, or is it a retry), [`store`] (what is durable), [`budget`] (what peers can make the
//! broker hold), [`limits`] (the limits, defined once), [`reload`] (what a configuration reload may
//! change). docs/locks.md lists every lock and their order.
//!
//! # Features
//!
//! - `dev` (default): [`dev`], the `sealpost-broker dev` setup, and [`pki`], a throwaway certificate
//!   authority for development and tests. They pull in rcgen; a program that embeds the broker and makes
//!   its certificates elsewhere turns them off with `default-features = false`.
#![forbid(unsafe_code)]
#![deny(missing_docs)]

pub mod acl;
pub mod audit;
pub mod budget;
pub mod config;
pub mod crl;
#[cfg(feature = "dev")]
#[cfg(feature = "dev")]
pub mod dev;
mod error;
pub mod event;
pub mod limits;
pub mod metrics;
#[cfg(any(test, feature = "dev"))]
pub mod pki;
pub mod ratelimit;
pub mod reload;
pub mod retention;
pub mod server;
pub mod session;
pub mod store;
pub mod tls;
pub mod writer;

pub use error::{Error, Result};
