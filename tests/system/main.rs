//! The system tests, one test binary: a real broker on 127.0.0.1:0 (in-process, or the `sealpost-broker`
//! binary as a subprocess), real QUIC with mutual TLS, certificates made in the test, and the real client
//! and CLI. One module per area; a test's name is `MODULE::TEST` (`cargo test --test system attacks::`).
//!
//! - [`harness`]: what the tests share: a deployment made in the test ([`harness::Env`]), brokers in
//!   process and as subprocesses, a bare QUIC client that speaks frames, bounded waits.
//! - [`process`]: starts a process and waits (bounded) for its ready line; also used by
//!   `broker/tests/dev.rs` and the load bench (`benches/load/`).
//! - [`faultfs`]: a FUSE passthrough that fails fsync on demand (`failstop` puts the data folder on it).
//! - [`cluster`]: a 3-node NATS JetStream cluster on loopback (`benches/nats/nats-server.sh cluster`),
//!   started once per test binary and shared under a lock: tests that kill nodes run alone.
//!
//! The tests run in parallel, as cargo runs any test binary, and nothing in them is process-wide: each test
//! makes its own temp folder, CA and keys, gets its ports from the OS, and measures subprocess brokers by
//! their own pid (`memory`); the disk-full test (`crash`) mounts a tmpfs of its own, the fail-stop test
//! (`failstop`) a FUSE file system of its own. Nothing here sets an environment variable, changes the
//! working directory or measures this process itself. The one exception is the NATS cluster ([`cluster`]):
//! one per test binary, on ports the script picks, which tests share (each with streams of its own) and
//! which a test that kills nodes holds alone.

mod harness;
mod process;

mod acks;
mod attacks;
mod audit;
mod auth;
mod backup;
mod cli;
mod cluster;
mod crash;
mod crl;
mod durability;
mod failstop;
mod faultfs;
mod groups;
mod headers;
mod history;
mod instances;
mod jetstream;
mod limits;
mod logs;
mod memory;
mod metrics;
mod onboarding;
mod outage;
mod pubsub;
mod reload;
mod retention;
mod rollback;
mod storage_damage;
mod tls;
mod walkthrough;

/// The engine `attacks` stores honestly in: memory (`jetstream::attacks` runs the same file on a
/// JetStream cluster).
async fn honest_store() -> (Box<dyn sealpost_broker::store::Store>, Box<dyn std::any::Any + Send + Sync>) {
    (Box::new(sealpost_broker::store::MemoryStore::new()), Box::new(()))
}
