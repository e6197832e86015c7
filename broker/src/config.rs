//! The broker's configuration file.
//!
//! This module owns the TOML shape of the file, its defaults and the resolution of the paths in it (the
//! `[limits]` and `[memory]` tables are types of their own, [`ServerLimits`] and
//! [`MemoryLimits`], with their defaults; a program that embeds the broker uses the same types). It
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
use crate::limits::ServerLimits;
use crate::retention::Retention;
use crate::{Error, Result};

/// The whole configuration file.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(from = "ConfigFile")]
pub struct Config {
    /// UDP address the QUIC endpoint listens on. Default: `127.0.0.1:7443`.
    pub listen: SocketAddr,
    /// Folder of the durable store (created if missing). Default: `./sealpost-data`.
    pub data_dir: PathBuf,
    /// Certificates and key of mutual TLS. Required.
    pub tls: TlsConfig,
    /// The operator's ACL file (see [`crate::acl`]). Required.
    pub acl: PathBuf,
    /// The topic authority's ed25519 public key, hex. The broker stores only topic policies signed by it.
    /// Default: none, and then no policy is accepted and nothing can be published.
    pub authority: Option<sealpost_protocol::PublicKey>,
    /// Connection and size limits: the `[limits]` table, and in `limits.memory` the `[memory]` table (what
    /// peers can make the broker hold in memory: in-flight budgets, the frame deadline and QUIC windows, see
    /// [`crate::budget`]). Every field of both has a default.
    pub limits: ServerLimits,
    /// Storage engine. Default: sled.
    pub storage: StorageConfig,
    /// The broker's own log on standard error: the `[log]` table.
    pub log: LogConfig,
    /// The metrics endpoint. Default: off.
    pub metrics: MetricsConfig,
    /// The audit log (the `[audit]` table, see [`crate::audit`]). Default: none, no audit log.
    pub audit: Option<AuditConfig>,
    /// What the broker may remove from its log (the `[retention]` table, see [`crate::retention`]).
    /// Default: nothing is ever removed.
    pub retention: Retention,
}

/// The file as written: [`Config`] with `[memory]` beside `[limits]`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ConfigFile {
    #[serde(default = "default_listen")]
    listen: SocketAddr,
    #[serde(default = "default_data_dir")]
    data_dir: PathBuf,
    tls: TlsConfig,
    acl: PathBuf,
    #[serde(default)]
    authority: Option<sealpost_protocol::PublicKey>,
    #[serde(default)]
    limits: ServerLimits,
    #[serde(default)]
    storage: StorageConfig,
    #[serde(default)]
    memory: MemoryLimits,
    #[serde(default)]
    log: LogConfig,
    #[serde(default)]
    metrics: MetricsConfig,
    #[serde(default)]
    audit: Option<AuditConfig>,
    #[serde(default)]
    retention: Retention,
}

impl From<ConfigFile> for Config {
    fn from(file: ConfigFile) -> Config {
        let ConfigFile {
            listen,
            data_dir,
            tls,
            acl,
            authority,
            limits,
            storage,
            memory,
            log,
            metrics,
            audit,
            retention,
        } = file;
        let limits = ServerLimits { memory, ..limits };
        Config { listen, data_dir, tls, acl, authority, limits, storage, log, metrics, audit, retention }
    }
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
    /// Read at start-up and at each reload ([`crate::reload`]). Default: none (no revocation checking).
    #[serde(default)]
    pub crls: Vec<PathBuf>,
    /// What to do with a CRL past its next-update: `"warn"` (default: load it and log a warning) or
    /// `"refuse"` (start, reload and `check-config` fail naming the file; see [`crate::crl`]).
    #[serde(default)]
    pub crl_expired: crate::crl::CrlExpired,
}

/// The `[storage]` table.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
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
    /// A segment file is closed, and the next one started, once it holds this many bytes: the unit in
    /// which retention gives space back (see `[retention]`), which reads a segment it deletes once, whole.
    /// 65536 to 268435456 (256 MiB). Default: 64 MiB (67108864).
    pub segment_bytes: u64,
    /// The NATS JetStream cluster of `engine = "jetstream"`: the `[storage.jetstream]` table.
    pub jetstream: JetStreamConfig,
}

/// The `[storage.jetstream]` table: where the JetStream engine keeps the log (see
/// [`crate::store::jetstream`]).
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct JetStreamConfig {
    /// NATS server URLs, any of the cluster's (`nats://host:port`, `tls://host:port`). Default:
    /// `["nats://127.0.0.1:4222"]`.
    pub servers: Vec<String>,
    /// A NATS credentials file (JWT and NKey seed). Default: none.
    pub credentials: Option<PathBuf>,
    /// CA certificates (PEM) that sign the NATS servers' certificates; requires TLS. Default: none.
    pub ca: Option<PathBuf>,
    /// Client certificate (PEM) for NATS servers that verify clients; with `key`. Default: none.
    pub cert: Option<PathBuf>,
    /// The key of `cert` (PEM). Default: none.
    pub key: Option<PathBuf>,
    /// First part of every stream, subject and bucket name (1 to 32 of `A-Za-z0-9_-`): deployments
    /// with different prefixes share an account without meeting. Default: `"SEALPOST"`.
    pub prefix: String,
    /// Replicas of every stream and bucket the broker creates. Default: 3.
    pub replicas: usize,
    /// How long the broker retries an append the cluster did not take (a stream leader election takes
    /// seconds) before the publish fails with `UNAVAILABLE`. Default: 20000 (20 s).
    pub publish_timeout_ms: u64,
}

impl Default for JetStreamConfig {
    fn default() -> Self {
        let options = crate::store::JetStreamOptions::default();
        JetStreamConfig {
            servers: options.servers,
            credentials: None,
            ca: None,
            cert: None,
            key: None,
            prefix: options.prefix,
            replicas: options.replicas,
            publish_timeout_ms: options.publish_timeout.as_millis().try_into().unwrap_or(u64::MAX),
        }
    }
}

impl JetStreamConfig {
    /// The engine's options.
    pub fn options(&self) -> crate::store::JetStreamOptions {
        crate::store::JetStreamOptions {
            servers: self.servers.clone(),
            credentials: self.credentials.clone(),
            ca: self.ca.clone(),
            cert: self.cert.clone(),
            key: self.key.clone(),
            prefix: self.prefix.clone(),
            replicas: self.replicas,
            publish_timeout: std::time::Duration::from_millis(self.publish_timeout_ms),
        }
    }
}

impl StorageConfig {
    /// The engine [`store::open`](crate::store::open) opens, with these settings.
    pub fn engine(&self) -> crate::store::Engine {
        match self.engine {
            StorageEngine::Sled => crate::store::Engine::Disk {
                options: crate::store::DiskOptions {
                    cache_bytes: self.cache_bytes,
                    reserve_bytes: self.reserve_bytes,
                    segment_bytes: self.segment_bytes,
                },
                scrub_bytes_per_sec: self.scrub_bytes_per_sec,
            },
            StorageEngine::Memory => crate::store::Engine::Memory,
            StorageEngine::Jetstream => crate::store::Engine::JetStream(self.jetstream.options()),
        }
    }
}

impl StorageConfig {
    /// Checks the table: a usable segment size.
    pub fn validate(&self) -> Result<()> {
        if self.engine == StorageEngine::Jetstream {
            let js = &self.jetstream;
            if js.servers.is_empty() {
                return Err(Error::Config("storage.jetstream.servers is empty".into()));
            }
            if !(1..=5).contains(&js.replicas) {
                return Err(Error::Config(format!(
                    "storage.jetstream.replicas = {} is not between 1 and 5",
                    js.replicas
                )));
            }
            if js.cert.is_some() != js.key.is_some() {
                return Err(Error::Config("storage.jetstream.cert and key go together".into()));
            }
            if !(1_000..=600_000).contains(&js.publish_timeout_ms) {
                return Err(Error::Config(format!(
                    "storage.jetstream.publish_timeout_ms = {} is not between 1000 and 600000 (a leader \
                     election takes seconds)",
                    js.publish_timeout_ms
                )));
            }
        }
        if !(64 * 1024..=256 * 1024 * 1024).contains(&self.segment_bytes) {
            return Err(Error::Config(format!(
                "storage.segment_bytes = {} is not between 65536 and 268435456",
                self.segment_bytes
            )));
        }
        Ok(())
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
            segment_bytes: disk.segment_bytes,
            jetstream: JetStreamConfig::default(),
        }
    }
}

/// The `[metrics]` table: the Prometheus endpoint ([`crate::metrics`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MetricsConfig {
    /// TCP address of the `GET /metrics` endpoint. Default: none, no endpoint (`sealpost-broker dev` sets
    /// `127.0.0.1:9464`). An address other than loopback requires `tls = true`, or the broker refuses to
    /// start.
    pub listen: Option<SocketAddr>,
    /// Require TLS with a client certificate from `tls.ca` (the broker's own certificate and key as the
    /// server's). Default: false; must be true beyond loopback.
    pub tls: bool,
    /// Label per-topic series with their topic. Default: true. Off, every topic is counted under
    /// `topic="*"`.
    pub topic_labels: bool,
    /// Most topics with a label of their own: the first seen since the start; later ones are counted under
    /// `topic="*"`. Also bounds the durable subscriptions whose lag is exported. Default: 100; at most
    /// 10000.
    pub max_topic_labels: usize,
}

impl Default for MetricsConfig {
    fn default() -> Self {
        MetricsConfig {
            listen: None,
            tls: false,
            topic_labels: true,
            max_topic_labels: crate::metrics::DEFAULT_MAX_TOPIC_LABELS,
        }
    }
}

/// Most `metrics.max_topic_labels` accepts: a bound on the series a scrape holds.
pub const MAX_TOPIC_LABELS: usize = 10_000;

impl MetricsConfig {
    /// Checks the table: a plain endpoint only on loopback, a bounded number of topic labels.
    pub fn validate(&self) -> Result<()> {
        if let Some(listen) = self.listen {
            crate::metrics::http::check_listen(listen, self.tls)?;
        }
        if self.max_topic_labels > MAX_TOPIC_LABELS {
            return Err(Error::Config(format!(
                "metrics.max_topic_labels = {} is above {MAX_TOPIC_LABELS}",
                self.max_topic_labels
            )));
        }
        Ok(())
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
    /// In a NATS JetStream cluster that several brokers share (`"jetstream"`): the `[storage.jetstream]`
    /// table says where.
    Jetstream,
}

/// The `[log]` table: how the broker writes its log to standard error. Which lines are written is set
/// with `RUST_LOG` (default `info`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogConfig {
    /// `"text"` (the default: one line per event, for people) or `"json"` (one JSON object per line, for
    /// log collectors). Colour codes are written only when standard error is a terminal and `NO_COLOR` is
    /// not set, in either format.
    pub format: LogFormat,
}

/// A log format (see [`LogConfig`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// One line per event, for people. The default.
    #[default]
    Text,
    /// One JSON object per line: `timestamp`, `level`, `target`, `message`, the event's fields and those
    /// of the spans it happened in (`principal`, `remote`, `topic` where there are such).
    Json,
}

/// The `[audit]` table: the tamper-evident audit log ([`crate::audit`]). `dir` and `key` are required;
/// the rest have defaults.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuditConfig {
    /// Folder of the `audit-NNNNNN.jsonl` files (created, mode 0700, if missing). No default.
    pub dir: PathBuf,
    /// The audit key's secret file (`sealpost-broker audit keygen`), mode 0600. No default.
    pub key: PathBuf,
    /// A file is rotated once it reaches this size, in bytes (at least 4096). Default: 64 MiB
    /// (67108864).
    #[serde(default = "AuditConfig::default_max_file_bytes")]
    pub max_file_bytes: u64,
    /// A signed checkpoint after this many entries (at least 1). Default: 1000.
    #[serde(default = "AuditConfig::default_checkpoint_entries")]
    pub checkpoint_entries: u64,
    /// A signed checkpoint this many seconds after the last one, even when idle (1 to 86400). Default: 60.
    #[serde(default = "AuditConfig::default_checkpoint_seconds")]
    pub checkpoint_seconds: u64,
    /// Entries the queue holds before new ones are counted as dropped (1 to 16777216). Default: 65536.
    #[serde(default = "AuditConfig::default_queue")]
    pub queue: usize,
}

impl AuditConfig {
    /// A configuration with `dir`, `key` and every default.
    pub fn new(dir: PathBuf, key: PathBuf) -> AuditConfig {
        AuditConfig {
            dir,
            key,
            max_file_bytes: Self::default_max_file_bytes(),
            checkpoint_entries: Self::default_checkpoint_entries(),
            checkpoint_seconds: Self::default_checkpoint_seconds(),
            queue: Self::default_queue(),
        }
    }

    fn default_max_file_bytes() -> u64 {
        64 * 1024 * 1024
    }
    fn default_checkpoint_entries() -> u64 {
        1000
    }
    fn default_checkpoint_seconds() -> u64 {
        60
    }
    fn default_queue() -> usize {
        65_536
    }

    /// Checks that every setting is usable.
    pub fn validate(&self) -> Result<()> {
        let bad = |what: &str| Err(Error::Config(format!("[audit] {what}")));
        if self.max_file_bytes < 4096 {
            return bad("max_file_bytes must be at least 4096");
        }
        if self.checkpoint_entries == 0 {
            return bad("checkpoint_entries must be at least 1");
        }
        if !(1..=86_400).contains(&self.checkpoint_seconds) {
            return bad("checkpoint_seconds must be between 1 and 86400");
        }
        if !(1..=16_777_216).contains(&self.queue) {
            return bad("queue must be between 1 and 16777216");
        }
        Ok(())
    }
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
        config.storage.validate()?;
        config.metrics.validate()?;
        config.retention.validate()?;
        if config.storage.engine == StorageEngine::Jetstream && !config.retention.is_empty() {
            return Err(Error::Config(
                "[retention] is not supported with storage.engine = \"jetstream\" yet: the engine keeps \
                 every batch"
                    .into(),
            ));
        }
        if let Some(audit) = &config.audit {
            audit.validate()?;
        }
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
        let audit = self.audit.iter_mut().flat_map(|a| [&mut a.dir, &mut a.key]);
        let js = &mut self.storage.jetstream;
        let nats = [&mut js.credentials, &mut js.ca, &mut js.cert, &mut js.key].into_iter().flatten();
        for p in fixed.into_iter().chain(self.tls.crls.iter_mut()).chain(audit).chain(nats) {
            if p.is_relative() {
                *p = base.join(&*p);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_log_format_is_text_unless_the_log_table_says_json() {
        let base = "acl = \"acl.toml\"\n[tls]\nca = \"ca.pem\"\ncert = \"b.pem\"\nkey = \"b.key\"\n";
        assert_eq!(Config::from_toml(base).unwrap().log.format, LogFormat::Text);
        let json = format!("{base}[log]\nformat = \"json\"\n");
        assert_eq!(Config::from_toml(&json).unwrap().log.format, LogFormat::Json);
        let unknown = format!("{base}[log]\nformat = \"xml\"\n");
        assert!(Config::from_toml(&unknown).is_err());
        let typo = format!("{base}[log]\nformt = \"json\"\n");
        assert!(Config::from_toml(&typo).is_err());
    }

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
    fn the_retention_table_and_the_segment_size_are_read_and_checked() {
        let c = Config::from_toml(MINIMAL).unwrap();
        assert!(c.retention.is_empty());
        assert_eq!(c.storage.segment_bytes, 64 * 1024 * 1024);
        let text = format!(
            "{MINIMAL}\n[storage]\nsegment_bytes = 1048576\n[retention]\nmax_total_bytes = 1000000\n\
             [[retention.topic]]\npattern = \"logs.>\"\nmax_age_secs = 60\n"
        );
        let c = Config::from_toml(&text).unwrap();
        assert_eq!(c.storage.segment_bytes, 1 << 20);
        assert_eq!(c.retention.max_total_bytes, Some(1_000_000));
        assert_eq!(c.retention.interval_ms, 5000);
        let rule = c.retention.rule(&"logs.app".parse().unwrap()).unwrap();
        assert_eq!(rule.max_age_secs, Some(60));
        assert!(
            config_error(&format!("{MINIMAL}\n[storage]\nsegment_bytes = 1024\n")).contains("segment_bytes")
        );
        let no_limit = format!("{MINIMAL}\n[[retention.topic]]\npattern = \"a\"\n");
        assert!(config_error(&no_limit).contains("sets no limit"));
        let typo = format!("{MINIMAL}\n[[retention.topic]]\npattern = \"a\"\nmax_byte = 1\n");
        assert!(Config::from_toml(&typo).is_err());
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
        assert_eq!(c.limits.idle_timeout, std::time::Duration::from_secs(30));
        assert_eq!(c.limits.subscriber_read_bytes, 1024 * 1024);
        assert_eq!(c.limits.tail_cache_bytes, 8 * 1024 * 1024);
        assert_eq!(c.storage.engine, StorageEngine::Sled);
        assert_eq!(c.limits.protocol_limits(), sealpost_protocol::Limits::default());
        assert_eq!(c.limits.memory, MemoryLimits::default());
        assert_eq!(c.limits, ServerLimits::default());
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
        assert_eq!(c.limits.idle_timeout, std::time::Duration::from_millis(1000));
        assert_eq!(c.limits.tail_cache_bytes, 0);
        assert_eq!(c.storage.engine, StorageEngine::Memory);
        assert_eq!(c.limits.protocol_limits().max_batch_len, 65536 - 64);
    }

    #[test]
    fn metrics_are_off_by_default_and_each_key_can_be_given() {
        let c = Config::from_toml(MINIMAL).unwrap();
        assert_eq!(c.metrics, MetricsConfig::default());
        assert_eq!(c.metrics.listen, None);
        assert!(c.metrics.topic_labels && !c.metrics.tls);
        assert_eq!(c.metrics.max_topic_labels, 100);
        let c = Config::from_toml(&format!(
            "{MINIMAL}\n[metrics]\nlisten = \"127.0.0.1:9464\"\ntls = true\ntopic_labels = false\nmax_topic_labels = 5\n"
        ))
        .unwrap();
        let expected = MetricsConfig {
            listen: Some("127.0.0.1:9464".parse().unwrap()),
            tls: true,
            topic_labels: false,
            max_topic_labels: 5,
        };
        assert_eq!(c.metrics, expected);
        let msg = config_error(&format!("{MINIMAL}\n[metrics]\nlisen = \"127.0.0.1:1\"\n"));
        assert!(msg.contains("lisen"), "{msg}");
        let msg = config_error(&format!("{MINIMAL}\n[metrics]\nmax_topic_labels = 10001\n"));
        assert!(msg.contains("max_topic_labels"), "{msg}");
    }

    #[test]
    fn a_metrics_endpoint_beyond_loopback_without_tls_is_refused() {
        let msg = config_error(&format!("{MINIMAL}\n[metrics]\nlisten = \"0.0.0.0:9464\"\n"));
        assert!(msg.contains("not a loopback address") && msg.contains("metrics.tls = true"), "{msg}");
        let c = Config::from_toml(&format!("{MINIMAL}\n[metrics]\nlisten = \"0.0.0.0:9464\"\ntls = true\n"));
        assert!(c.is_ok(), "{c:?}");
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
    fn the_jetstream_table_is_read_and_checked() {
        let text = format!(
            "{MINIMAL}\n[storage]\nengine = \"jetstream\"\n[storage.jetstream]\n\
             servers = [\"nats://n1:4222\", \"nats://n2:4222\"]\nprefix = \"prod\"\ncredentials = \"nats.creds\"\n"
        );
        let mut c = Config::from_toml(&text).unwrap();
        let options = c.storage.jetstream.options();
        assert_eq!((options.servers.len(), options.prefix.as_str(), options.replicas), (2, "prod", 3));
        assert_eq!(options.publish_timeout, std::time::Duration::from_secs(20));
        c.resolve_paths(Path::new("/etc/sealpost"));
        assert_eq!(c.storage.jetstream.credentials.as_deref(), Some(Path::new("/etc/sealpost/nats.creds")));
        let table = format!("{MINIMAL}\n[storage]\nengine = \"jetstream\"\n[storage.jetstream]\n");
        for (bad, key) in [
            ("servers = []", "servers"),
            ("replicas = 0", "replicas"),
            ("cert = \"c.pem\"", "cert"),
            ("publish_timeout_ms = 10", "publish_timeout_ms"),
        ] {
            assert!(config_error(&format!("{table}{bad}\n")).contains(key), "{bad}");
        }
        let retention = format!("{table}[retention]\nmax_total_bytes = 1000000\n");
        assert!(config_error(&retention).contains("[retention] is not supported"));
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
        assert_eq!(c.limits.memory.frame_timeout_ms, 250);
        assert_eq!(c.limits.memory.inflight_bytes_per_connection, 8 * 1024 * 1024);
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
    fn audit_is_off_without_its_table_and_parsed_with_it() {
        assert_eq!(Config::from_toml(MINIMAL).unwrap().audit, None);
        let c = Config::from_toml(&format!("{MINIMAL}\n[audit]\ndir = \"audit\"\nkey = \"audit.key\"\n"))
            .unwrap();
        assert_eq!(c.audit, Some(AuditConfig::new("audit".into(), "audit.key".into())));
        let c = Config::from_toml(&format!(
            "{MINIMAL}\n[audit]\ndir = \"a\"\nkey = \"k\"\nmax_file_bytes = 8192\ncheckpoint_entries = 10\n\
             checkpoint_seconds = 5\nqueue = 16\n"
        ))
        .unwrap();
        let a = c.audit.unwrap();
        assert_eq!(
            (a.max_file_bytes, a.checkpoint_entries, a.checkpoint_seconds, a.queue),
            (8192, 10, 5, 16)
        );
        let msg = config_error(&format!("{MINIMAL}\n[audit]\ndir = \"a\"\nkey = \"k\"\nqueu = 1\n"));
        assert!(msg.contains("queu"), "{msg}");
        let msg = config_error(&format!("{MINIMAL}\n[audit]\ndir = \"a\"\n"));
        assert!(msg.contains("key"), "{msg}");
        let msg =
            config_error(&format!("{MINIMAL}\n[audit]\ndir = \"a\"\nkey = \"k\"\ncheckpoint_seconds = 0\n"));
        assert!(msg.contains("checkpoint_seconds"), "{msg}");
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("broker.toml");
        std::fs::write(&path, format!("{MINIMAL}\n[audit]\ndir = \"audit\"\nkey = \"/etc/audit.key\"\n"))
            .unwrap();
        let a = Config::load(&path).unwrap().audit.unwrap();
        assert_eq!((a.dir, a.key), (dir.path().join("audit"), PathBuf::from("/etc/audit.key")));
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
