//! The broker's configuration file.
//!
//! This module owns the TOML shape of the file, its defaults and the resolution of the paths in it. It
//! guarantees that a loaded [`Config`] names no unknown key (a typo is an error, not a silently ignored
//! setting), that its limits are usable, and that [`Config::load`] resolves every relative path in it
//! (the default `data_dir` included) against **the folder of the file**, so a configuration names the same
//! files whatever the broker's working directory. It does not read the files the paths name (the TLS and
//! ACL loaders do).
//!
//! A minimal file:
//!
//! ```toml
//! acl = "acl.toml"
//!
//! [tls]
//! ca = "ca.pem"
//! cert = "broker.pem"
//! key = "broker.key"
//! ```

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::budget::MemoryLimits;
use crate::{Error, Result};

/// The whole configuration file.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// UDP address the QUIC endpoint listens on. Default: `127.0.0.1:7443`.
    #[serde(default = "default_listen")]
    pub listen: SocketAddr,
    /// Folder of the durable store (created if missing). Default: `./sealpost-data`.
    #[serde(default = "default_data_dir")]
    pub data_dir: PathBuf,
    /// Certificates and key of mutual TLS. Required.
    pub tls: TlsConfig,
    /// The operator's ACL file (see [`crate::acl`]). Required.
    pub acl: PathBuf,
    /// The topic authority's ed25519 public key, hex. The broker stores only topic policies signed by it.
    /// Default: none, and then no policy is accepted and nothing can be published.
    #[serde(default)]
    pub authority: Option<sealpost_protocol::PublicKey>,
    /// Connection and size limits. Every field has a default.
    #[serde(default)]
    pub limits: LimitsConfig,
    /// Storage engine. Default: sled.
    #[serde(default)]
    pub storage: StorageConfig,
    /// What peers can make the broker hold in memory: in-flight budgets, the frame deadline and QUIC
    /// windows (see [`crate::budget`]). Every field has a default.
    #[serde(default)]
    pub memory: MemoryLimits,
}

/// The `[tls]` table: PEM files. Every field is required.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    /// CA bundle that client certificates must chain to. No default.
    pub ca: PathBuf,
    /// The broker's certificate chain, leaf first. No default.
    pub cert: PathBuf,
    /// The broker's private key. No default.
    pub key: PathBuf,
    /// Certificate revocation lists (PEM) of the client CA: a client certificate they revoke is refused.
    /// Read at start-up. Default: none (no revocation checking).
    #[serde(default)]
    pub crls: Vec<PathBuf>,
}

/// The `[limits]` table.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LimitsConfig {
    /// Largest frame a peer may send, in bytes (version byte and body, not the 4-byte length prefix).
    /// Default: 4 MiB (4194304). At least 1 KiB.
    pub max_frame_len: u32,
    /// Most messages in one sealed batch. Default: 65536. At least 1.
    pub max_batch_messages: u32,
    /// Most simultaneous connections. Default: 10000. At least 1.
    pub max_connections: u32,
    /// Most simultaneous streams a connection may open. Default: 256. At least 1.
    pub max_streams_per_connection: u32,
    /// Most simultaneous streams of one principal, over its connections; a stream beyond is refused with
    /// `LIMIT_EXCEEDED`. Default: 1024. At least 1.
    pub max_streams_per_principal: u32,
    /// Most simultaneous streams over all connections; a stream beyond is refused with `LIMIT_EXCEEDED`.
    /// Default: 65536. At least 1.
    pub max_streams: u32,
    /// A connection without traffic for this long is closed, in milliseconds. Default: 30000. At least 1.
    pub idle_timeout_ms: u64,
    /// How many bytes of stored batches a subscriber reads from the store at a time (at least one batch is
    /// always read). Default: 1 MiB (1048576). At least 1.
    pub subscriber_read_bytes: usize,
    /// Bytes of recently appended batches the broker keeps in memory, over all topics, so that subscribers
    /// that keep up are served without reading the store. Default: 8 MiB (8388608). 0 keeps none.
    pub tail_cache_bytes: usize,
    /// Most simultaneous connections of one principal. Default: 64. At least 1.
    pub max_connections_per_principal: u32,
    /// Most simultaneous subscriptions on one connection. Default: 128. At least 1.
    pub max_subscriptions_per_connection: u32,
    /// Messages per second one principal may publish, across its connections (token bucket, burst of one
    /// second). Default: 0, unlimited.
    pub publish_msgs_per_sec: u64,
    /// Bytes of sealed batches per second one principal may publish (token bucket, burst of one second).
    /// Default: 0, unlimited.
    pub publish_bytes_per_sec: u64,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        Self {
            max_frame_len: sealpost_protocol::Limits::DEFAULT_MAX_FRAME_LEN,
            max_batch_messages: 65_536,
            max_connections: 10_000,
            max_streams_per_connection: 256,
            max_streams_per_principal: 1024,
            max_streams: 65_536,
            idle_timeout_ms: 30_000,
            subscriber_read_bytes: 1024 * 1024,
            tail_cache_bytes: crate::writer::DEFAULT_TAIL_BYTES,
            max_connections_per_principal: 64,
            max_subscriptions_per_connection: 128,
            publish_msgs_per_sec: 0,
            publish_bytes_per_sec: 0,
        }
    }
}

impl LimitsConfig {
    /// Room a publish frame needs around its batch: request id, variant tag and length varint.
    const FRAME_OVERHEAD: u32 = 64;
    /// Smallest accepted `max_frame_len`.
    const MIN_FRAME_LEN: u32 = 1024;

    /// The decoding limits these settings imply: a batch must fit in a frame with room for its envelope.
    pub fn protocol_limits(&self) -> sealpost_protocol::Limits {
        sealpost_protocol::Limits {
            max_frame_len: self.max_frame_len,
            max_batch_len: self.max_frame_len.saturating_sub(Self::FRAME_OVERHEAD),
            max_batch_messages: self.max_batch_messages,
            ..sealpost_protocol::Limits::default()
        }
    }

    fn validate(&self) -> Result<()> {
        let fail = |msg: &str| Err(Error::Config(format!("[limits] {msg}")));
        if self.max_frame_len < Self::MIN_FRAME_LEN {
            return fail("max_frame_len must be at least 1024");
        }
        for (name, value) in [
            ("max_batch_messages", u64::from(self.max_batch_messages)),
            ("max_connections", u64::from(self.max_connections)),
            ("max_streams_per_connection", u64::from(self.max_streams_per_connection)),
            ("max_streams_per_principal", u64::from(self.max_streams_per_principal)),
            ("max_streams", u64::from(self.max_streams)),
            ("idle_timeout_ms", self.idle_timeout_ms),
            ("subscriber_read_bytes", self.subscriber_read_bytes as u64),
            ("max_connections_per_principal", u64::from(self.max_connections_per_principal)),
            ("max_subscriptions_per_connection", u64::from(self.max_subscriptions_per_connection)),
        ] {
            if value == 0 {
                return fail(&format!("{name} must be at least 1"));
            }
        }
        Ok(())
    }
}

/// The `[storage]` table.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StorageConfig {
    /// Which engine stores batches. Default: `"sled"`.
    pub engine: StorageEngine,
    /// Approximate limit of sled's page cache, in bytes: most of the store's memory. Default: 128 MiB
    /// (134217728).
    pub cache_bytes: u64,
    /// Free space, in bytes, that appends leave on the file system holding `data_dir`: a publish that
    /// would eat into it fails with `STORAGE_FULL`, and publishing resumes by itself once space is made.
    /// Default: 64 MiB (67108864).
    pub reserve_bytes: u64,
    /// Bytes per second the background scrub reads to check every stored batch against its checksum; a
    /// damaged one is logged as an error and served as lost from then on. Default: 0, no scrub.
    pub scrub_bytes_per_sec: u64,
}

impl StorageConfig {
    /// The engine [`store::open`](crate::store::open) opens, with these settings.
    pub fn engine(&self) -> crate::store::Engine {
        match self.engine {
            StorageEngine::Sled => crate::store::Engine::Disk {
                options: crate::store::DiskOptions {
                    cache_bytes: self.cache_bytes,
                    reserve_bytes: self.reserve_bytes,
                },
                scrub_bytes_per_sec: self.scrub_bytes_per_sec,
            },
            StorageEngine::Memory => crate::store::Engine::Memory,
        }
    }
}

impl Default for StorageConfig {
    fn default() -> Self {
        let disk = crate::store::DiskOptions::default();
        Self {
            engine: StorageEngine::default(),
            cache_bytes: disk.cache_bytes,
            reserve_bytes: disk.reserve_bytes,
            scrub_bytes_per_sec: 0,
        }
    }
}

/// A storage engine (see [`crate::store`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StorageEngine {
    /// On disk, in `data_dir` (`"sled"`). The default.
    #[default]
    Sled,
    /// In memory, lost on exit (`"memory"`): for tests and demos.
    Memory,
}

fn default_listen() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 7443))
}

fn default_data_dir() -> PathBuf {
    PathBuf::from("./sealpost-data")
}

impl Config {
    /// Parses and validates a configuration file's contents. Paths are left as written; see
    /// [`load`](Self::load) for resolving them.
    pub fn from_toml(text: &str) -> Result<Config> {
        let config: Config = toml::from_str(text).map_err(|e| Error::Config(e.to_string()))?;
        config.limits.validate()?;
        config.memory.validate(config.limits.max_frame_len, config.limits.subscriber_read_bytes)?;
        Ok(config)
    }

    /// Reads the file at `path`, parses and validates it, and resolves every relative path in it against
    /// the folder that contains `path`.
    pub fn load(path: &Path) -> Result<Config> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| Error::Config(format!("cannot read {}: {e}", path.display())))?;
        let mut config = Self::from_toml(&text).map_err(|e| match e {
            Error::Config(msg) => Error::Config(format!("{}: {msg}", path.display())),
            other => other,
        })?;
        let base = path.parent().unwrap_or_else(|| Path::new(""));
        config.resolve_paths(base);
        Ok(config)
    }

    /// Joins every relative path to `base`.
    pub fn resolve_paths(&mut self, base: &Path) {
        let fixed =
            [&mut self.data_dir, &mut self.acl, &mut self.tls.ca, &mut self.tls.cert, &mut self.tls.key];
        for p in fixed.into_iter().chain(self.tls.crls.iter_mut()) {
            if p.is_relative() {
                *p = base.join(&*p);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MINIMAL: &str = r#"
        acl = "acl.toml"
        [tls]
        ca = "ca.pem"
        cert = "broker.pem"
        key = "broker.key"
    "#;

    fn config_error(text: &str) -> String {
        match Config::from_toml(text) {
            Err(Error::Config(msg)) => msg,
            other => panic!("expected a config error, got {other:?}"),
        }
    }

    #[test]
    fn minimal_file_gets_the_defaults() {
        let c = Config::from_toml(MINIMAL).unwrap();
        assert_eq!(c.listen, "127.0.0.1:7443".parse().unwrap());
        assert_eq!(c.data_dir, PathBuf::from("./sealpost-data"));
        assert_eq!(c.acl, PathBuf::from("acl.toml"));
        assert_eq!(c.tls.ca, PathBuf::from("ca.pem"));
        assert_eq!(c.limits.max_frame_len, 4 * 1024 * 1024);
        assert_eq!(c.limits.max_batch_messages, 65_536);
        assert_eq!(c.limits.max_connections, 10_000);
        assert_eq!(c.limits.max_streams_per_connection, 256);
        assert_eq!(c.limits.idle_timeout_ms, 30_000);
        assert_eq!(c.limits.subscriber_read_bytes, 1024 * 1024);
        assert_eq!(c.limits.tail_cache_bytes, 8 * 1024 * 1024);
        assert_eq!(c.storage.engine, StorageEngine::Sled);
        assert_eq!(c.limits.protocol_limits(), sealpost_protocol::Limits::default());
        assert_eq!(c.memory, MemoryLimits::default());
    }

    #[test]
    fn every_setting_can_be_given() {
        let c = Config::from_toml(&format!(
            "listen = \"0.0.0.0:9000\"\ndata_dir = \"/var/lib/sp\"\n{MINIMAL}\n\
             [limits]\nmax_frame_len = 65536\nmax_batch_messages = 10\nmax_connections = 5\n\
             max_streams_per_connection = 4\nidle_timeout_ms = 1000\nsubscriber_read_bytes = 4096\n\
             tail_cache_bytes = 0\n\
             [storage]\nengine = \"memory\"\n"
        ))
        .unwrap();
        assert_eq!(c.listen.port(), 9000);
        assert_eq!(c.data_dir, PathBuf::from("/var/lib/sp"));
        assert_eq!(c.limits.max_frame_len, 65536);
        assert_eq!(c.limits.subscriber_read_bytes, 4096);
        assert_eq!(c.limits.tail_cache_bytes, 0);
        assert_eq!(c.storage.engine, StorageEngine::Memory);
        assert_eq!(c.limits.protocol_limits().max_batch_len, 65536 - 64);
    }

    #[test]
    fn unknown_field_is_a_clear_error() {
        let msg = config_error(&format!("{MINIMAL}\n[limits]\nmax_frame_length = 5\n"));
        assert!(msg.contains("max_frame_length"), "{msg}");
        let msg = config_error(&format!("lisen = \"127.0.0.1:1\"\n{MINIMAL}"));
        assert!(msg.contains("lisen"), "{msg}");
    }

    #[test]
    fn missing_tls_or_acl_is_an_error() {
        assert!(config_error("acl = \"a.toml\"").contains("tls"));
        let msg = config_error("[tls]\nca = \"a\"\ncert = \"b\"\nkey = \"c\"\n");
        assert!(msg.contains("acl"), "{msg}");
    }

    #[test]
    fn unknown_engine_and_unusable_limits_are_rejected() {
        assert!(config_error(&format!("{MINIMAL}\n[storage]\nengine = \"rocks\"\n")).contains("rocks"));
        let msg = config_error(&format!("{MINIMAL}\n[limits]\nmax_connections = 0\n"));
        assert!(msg.contains("max_connections"), "{msg}");
        let msg = config_error(&format!("{MINIMAL}\n[limits]\nmax_frame_len = 100\n"));
        assert!(msg.contains("max_frame_len"), "{msg}");
    }

    #[test]
    fn memory_budgets_can_be_given_and_must_fit_a_frame() {
        let c = Config::from_toml(&format!(
            "{MINIMAL}\n[memory]\nframe_timeout_ms = 250\ninflight_bytes_per_connection = 8388608\n"
        ))
        .unwrap();
        assert_eq!(c.memory.frame_timeout_ms, 250);
        assert_eq!(c.memory.inflight_bytes_per_connection, 8 * 1024 * 1024);
        let msg = config_error(&format!("{MINIMAL}\n[memory]\ninflight_bytes_per_connection = 1048576\n"));
        assert!(msg.contains("inflight_bytes_per_connection"), "{msg}");
        let msg = config_error(&format!("{MINIMAL}\n[memory]\nframe_timout_ms = 5\n"));
        assert!(msg.contains("frame_timout_ms"), "{msg}");
    }

    #[test]
    fn load_resolves_relative_paths_from_the_file_folder() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("broker.toml");
        std::fs::write(&path, format!("data_dir = \"data\"\n{}", MINIMAL.replace("ca.pem", "/etc/ca.pem")))
            .unwrap();
        let c = Config::load(&path).unwrap();
        assert_eq!(c.data_dir, dir.path().join("data"));
        assert_eq!(c.acl, dir.path().join("acl.toml"));
        assert_eq!(c.tls.cert, dir.path().join("broker.pem"));
        assert_eq!(c.tls.key, dir.path().join("broker.key"));
        assert_eq!(c.tls.ca, PathBuf::from("/etc/ca.pem"));
    }

    #[test]
    fn load_names_the_file_in_errors() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("broker.toml");
        std::fs::write(&path, "bogus = 1\n").unwrap();
        match Config::load(&path) {
            Err(Error::Config(msg)) => assert!(msg.contains("broker.toml") && msg.contains("bogus"), "{msg}"),
            other => panic!("{other:?}"),
        }
        assert!(matches!(Config::load(&dir.path().join("missing.toml")), Err(Error::Config(_))));
    }
}
