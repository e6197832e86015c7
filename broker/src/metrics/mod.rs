//! Metrics: what an operator of a running broker measures, in Prometheus' text format.
//!
//! [`Metrics`] owns every metric of the broker (docs/operations.md lists them, with their labels and
//! meaning). It learns what happened in three ways:
//!
//! - as an [`Observer`](crate::event::Observer) of the session's [`Event`](crate::event::Event)s
//!   (`observer.rs`): connections, refusals, publishes, subscriptions,
//!   policies, deliveries;
//! - through direct hooks where an event is not natural: the writer calls [`Metrics::synced`] (fsync
//!   latency and group-commit size), [`Metrics::stored`] (messages and bytes stored, a topic's next offset)
//!   and [`Metrics::committed`] (a durable subscription's position); the publish stream calls
//!   [`Metrics::acked`] (publish -> ack latency);
//! - at scrape time, for what only the file system knows: the store's size on disk and the free space
//!   left above the reserve, and each durable subscription's lag (its topic's next offset minus its
//!   committed one).
//!
//! [`http`] serves the text on `GET /metrics`.
//!
//! # Guarantees
//!
//! - **Cheap on the publish path.** Counters, gauges and histograms are atomics. A label set is looked up
//!   in a read-locked map (prometheus-client's `Family`, and this module's [`TopicLabels`]); a write lock is
//!   taken only the first time a label value is seen, which the bounds below make rare. Nothing allocates
//!   per message; the writer never waits for a scrape (a scrape takes the same read locks).
//! - **Bounded labels.** No label value comes from a payload. Topic labels come from validated topic names,
//!   escaped, at most `metrics.max_topic_labels` of them (the first seen), every later topic counted under
//!   `topic="*"` (a value no topic can have); with `metrics.topic_labels = false` every topic is `*`.
//!   Principal labels come from verified certificates only. Durable subscription names are chosen by
//!   peers: the lag gauge is kept for at most `max_topic_labels` subscriptions, of labelled topics only.
//!   Reason and code labels are fixed tables ([`Refused::name`](crate::event::Refused::name), [`code_name`]).
//!
//! # What it does not do
//!
//! It keeps no history (Prometheus does), counts from the broker's start (counters restart at 0), and does
//! not read the store: a topic's next offset and policy epoch are known once a publish or a policy since
//! the start has told them. Topics are never forgotten (the label set only grows, up to its bound).

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::time::Duration;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{
    DescriptorEncoder, EncodeLabelSet, EncodeLabelValue, EncodeMetric, LabelValueEncoder,
};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::{ConstGauge, Gauge};
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::{Registry, Unit};
use sealpost_protocol::{ErrorCode, Offset, Principal, Topic};

use crate::event::{code_name, Action};

pub mod http;
mod observer;

/// How many topics get a label of their own by default (`metrics.max_topic_labels`).
pub const DEFAULT_MAX_TOPIC_LABELS: usize = 100;

/// The label value of every topic beyond the bound, or of all topics with topic labels off: `*`, which no
/// topic name can contain.
pub const OTHER_TOPICS: &str = "*";

/// What [`Metrics`] measures, and where the store lives.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MetricsSettings {
    /// Whether per-topic series carry a `topic` label (else every topic is [`OTHER_TOPICS`]).
    pub topic_labels: bool,
    /// Most topics with a label of their own.
    pub max_topic_labels: usize,
    /// The store's data folder, for its size and free space at scrape time (`None`: the memory engine).
    pub data_dir: Option<PathBuf>,
    /// The free space appends leave on the file system (`storage.reserve_bytes`).
    pub reserve_bytes: u64,
}

impl Default for MetricsSettings {
    fn default() -> Self {
        MetricsSettings {
            topic_labels: true,
            max_topic_labels: DEFAULT_MAX_TOPIC_LABELS,
            data_dir: None,
            reserve_bytes: 0,
        }
    }
}

/// A label value: a validated name, escaped for the text format once when it is first seen (shared, so a
/// label set is cloned without allocating).
#[derive(Clone, Debug, Hash, PartialEq, Eq, PartialOrd, Ord)]
struct LabelValue(Arc<str>);

impl EncodeLabelValue for LabelValue {
    fn encode(&self, encoder: &mut LabelValueEncoder) -> std::fmt::Result {
        std::fmt::Write::write_str(encoder, &self.0)
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TopicLabel {
    topic: LabelValue,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabel {
    reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RefusalLabels {
    action: &'static str,
    code: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PrincipalLabel {
    principal: LabelValue,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ResultLabel {
    result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct KindLabel {
    kind: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, PartialOrd, Ord, EncodeLabelSet)]
struct DurableLabels {
    topic: LabelValue,
    principal: LabelValue,
    name: LabelValue,
}

/// Escapes a label value for the text format: `\` and `"` (names never hold a line break).
fn escaped(value: &str) -> LabelValue {
    if !value.contains(['\\', '"', '\n']) {
        return LabelValue(Arc::from(value));
    }
    let mut out = String::with_capacity(value.len() + 4);
    for c in value.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
    LabelValue(Arc::from(out))
}

/// The topic label of each topic seen, up to the bound. See the [module documentation](self).
#[derive(Debug)]
pub struct TopicLabels {
    enabled: bool,
    max: usize,
    other: LabelValue,
    known: RwLock<HashMap<Topic, LabelValue>>,
}

impl TopicLabels {
    /// Labels for at most `max` topics, or none if not `enabled`.
    pub fn new(enabled: bool, max: usize) -> TopicLabels {
        let other = LabelValue(Arc::from(OTHER_TOPICS));
        TopicLabels { enabled, max, other, known: RwLock::new(HashMap::new()) }
    }

    /// The label of `topic`: its own (escaped) name if it has or can get one, else [`OTHER_TOPICS`].
    fn of(&self, topic: &Topic) -> LabelValue {
        if !self.enabled {
            return self.other.clone();
        }
        if let Some(label) = self.known.read().unwrap_or_else(PoisonError::into_inner).get(topic) {
            return label.clone();
        }
        let mut known = self.known.write().unwrap_or_else(PoisonError::into_inner);
        if let Some(label) = known.get(topic) {
            return label.clone();
        }
        if known.len() >= self.max {
            return self.other.clone();
        }
        let label = escaped(topic.as_str());
        known.insert(topic.clone(), label.clone());
        label
    }

    /// The label of `topic` as text (escaped).
    pub fn label(&self, topic: &Topic) -> Arc<str> {
        self.of(topic).0
    }

    fn is_other(&self, label: &LabelValue) -> bool {
        Arc::ptr_eq(&label.0, &self.other.0)
    }
}

/// The broker's metrics. See the [module documentation](self).
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    topics: TopicLabels,
    connections_open: Gauge,
    connections_accepted: Family<PrincipalLabel, Counter>,
    connections_refused: Family<ReasonLabel, Counter>,
    refusals: Family<RefusalLabels, Counter>,
    rate_limited: Counter,
    publishes: Family<TopicLabel, Counter>,
    published_messages: Family<TopicLabel, Counter>,
    stored_messages: Family<TopicLabel, Counter>,
    stored_bytes: Family<TopicLabel, Counter>,
    next_offset: Family<TopicLabel, Gauge>,
    first_offset: Family<TopicLabel, Gauge>,
    retention_segments: Counter,
    retention_bytes: Counter,
    delivered_messages: Family<TopicLabel, Counter>,
    delivered_bytes: Family<TopicLabel, Counter>,
    acks_received: Family<TopicLabel, Counter>,
    shared_members: Family<TopicLabel, Gauge>,
    shared_rewinds: Family<TopicLabel, Counter>,
    shared_ack_overdue: Family<TopicLabel, Counter>,
    offset_commits: Family<TopicLabel, Counter>,
    subscriptions: Family<KindLabel, Counter>,
    policies_stored: Counter,
    policy_epoch: Family<TopicLabel, Gauge>,
    fsync_seconds: Histogram,
    group_commit_requests: Histogram,
    publish_ack_seconds: Histogram,
    shutdowns: Counter,
    config_reloads: Family<ResultLabel, Counter>,
    config_loaded_at: Gauge,
    revoked: Family<KindLabel, Counter>,
    durables: Arc<Durables>,
}

/// The durable subscriptions whose lag is exported: committed offsets, bounded.
#[derive(Debug, Default)]
struct Durables {
    max: usize,
    committed: Mutex<BTreeMap<DurableLabels, u64>>,
}

/// What is computed at scrape time: the store's size and free space, and the lag of durable
/// subscriptions.
#[derive(Debug)]
struct AtScrape {
    data_dir: Option<PathBuf>,
    reserve_bytes: u64,
    durables: Arc<Durables>,
    next_offset: Family<TopicLabel, Gauge>,
}

impl Metrics {
    /// Every metric at zero, registered.
    pub fn new(settings: MetricsSettings) -> Metrics {
        let mut registry = Registry::with_prefix("sealpost");
        let seconds = || Histogram::new(exponential_buckets(0.000_1, 2.0, 16));
        let m = Metrics {
            registry: Registry::default(),
            topics: TopicLabels::new(settings.topic_labels, settings.max_topic_labels),
            connections_open: Gauge::default(),
            connections_accepted: Family::default(),
            connections_refused: Family::default(),
            refusals: Family::default(),
            rate_limited: Counter::default(),
            publishes: Family::default(),
            published_messages: Family::default(),
            stored_messages: Family::default(),
            stored_bytes: Family::default(),
            next_offset: Family::default(),
            first_offset: Family::default(),
            retention_segments: Counter::default(),
            retention_bytes: Counter::default(),
            delivered_messages: Family::default(),
            delivered_bytes: Family::default(),
            acks_received: Family::default(),
            shared_members: Family::default(),
            shared_rewinds: Family::default(),
            shared_ack_overdue: Family::default(),
            offset_commits: Family::default(),
            subscriptions: Family::default(),
            policies_stored: Counter::default(),
            policy_epoch: Family::default(),
            fsync_seconds: seconds(),
            group_commit_requests: Histogram::new(exponential_buckets(1.0, 2.0, 11)),
            publish_ack_seconds: seconds(),
            shutdowns: Counter::default(),
            config_reloads: Family::default(),
            config_loaded_at: Gauge::default(),
            revoked: Family::default(),
            durables: Arc::new(Durables { max: settings.max_topic_labels, ..Durables::default() }),
        };
        let r = &mut registry;
        r.register("connections_open", "Client connections open now", m.connections_open.clone());
        r.register(
            "connections_accepted",
            "Client connections accepted (TLS and admission passed), by principal",
            m.connections_accepted.clone(),
        );
        r.register(
            "connections_refused",
            "Client connections refused, by reason",
            m.connections_refused.clone(),
        );
        r.register("refusals", "Requests refused or failed, by action and error code", m.refusals.clone());
        r.register("rate_limited", "Publishes refused by the publish rate limit", m.rate_limited.clone());
        r.register("publishes", "Batches authorized and handed to the writer, by topic", m.publishes.clone());
        r.register(
            "published_messages",
            "Messages in batches authorized and handed to the writer, by topic",
            m.published_messages.clone(),
        );
        r.register(
            "stored_messages",
            "Messages stored (retries of stored batches not counted), by topic",
            m.stored_messages.clone(),
        );
        r.register_with_unit(
            "stored",
            "Bytes of sealed batches stored, by topic",
            Unit::Bytes,
            m.stored_bytes.clone(),
        );
        r.register(
            "topic_first_offset",
            "The first offset retention left of a topic (only topics whose first offset moved since the start)",
            m.first_offset.clone(),
        );
        r.register(
            "retention_segments_removed",
            "Segment files retention deleted (the memory engine: batches)",
            m.retention_segments.clone(),
        );
        r.register_with_unit(
            "retention_freed",
            "Bytes retention gave back to the file system",
            Unit::Bytes,
            m.retention_bytes.clone(),
        );
        r.register(
            "topic_next_offset",
            "The offset the next stored message of a topic gets (known once stored to since the start)",
            m.next_offset.clone(),
        );
        r.register(
            "delivered_messages",
            "Messages delivered to subscribers, by topic",
            m.delivered_messages.clone(),
        );
        r.register_with_unit(
            "delivered",
            "Bytes of sealed batches delivered to subscribers, by topic",
            Unit::Bytes,
            m.delivered_bytes.clone(),
        );
        r.register(
            "acks_received",
            "Acknowledgements received from durable subscriptions, by topic",
            m.acks_received.clone(),
        );
        r.register(
            "shared_members",
            "Members of shared durable subscriptions (consumer groups) now, by topic",
            m.shared_members.clone(),
        );
        r.register(
            "shared_rewinds",
            "Rewinds sent to members of shared durable subscriptions (given chains to read back when another left), by topic",
            m.shared_rewinds.clone(),
        );
        r.register(
            "shared_ack_overdue",
            "Members of shared durable subscriptions whose stream was ended for leaving a batch unacknowledged longer than limits.shared_ack_wait_ms, by topic",
            m.shared_ack_overdue.clone(),
        );
        r.register(
            "offset_commits",
            "Durable subscriptions' offsets committed (each the newest ack received since the last), by topic",
            m.offset_commits.clone(),
        );
        r.register(
            "subscriptions",
            "Subscriptions started, by kind: ephemeral, durable (resumed) or durable_created",
            m.subscriptions.clone(),
        );
        r.register("policies_stored", "Topic policies stored", m.policies_stored.clone());
        r.register(
            "topic_policy_epoch",
            "The epoch of a topic's current policy (known once stored since the start)",
            m.policy_epoch.clone(),
        );
        r.register_with_unit(
            "fsync_duration",
            "Duration of the writer's syncs of the store (one per group commit)",
            Unit::Seconds,
            m.fsync_seconds.clone(),
        );
        r.register(
            "group_commit_requests",
            "Requests per group commit (one sync each)",
            m.group_commit_requests.clone(),
        );
        r.register_with_unit(
            "publish_ack_duration",
            "From a publish frame read to its answer: verified, stored and synced (or refused by the writer)",
            Unit::Seconds,
            m.publish_ack_seconds.clone(),
        );
        r.register("shutdowns", "Shutdowns begun (0 or 1)", m.shutdowns.clone());
        r.register(
            "config_reloads",
            "Configuration reloads, by result: ok (applied) or refused (the running configuration kept)",
            m.config_reloads.clone(),
        );
        r.register_with_unit(
            "config_last_reload_success_timestamp",
            "When the running configuration was loaded (the start, or the last reload applied), Unix time",
            Unit::Seconds,
            m.config_loaded_at.clone(),
        );
        r.register(
            "revoked",
            "What reloads took away, by kind: connection (closed: its certificate no longer verifies), \
             subscription or publish (a stream ended: the ACL no longer allows it)",
            m.revoked.clone(),
        );
        r.register_collector(Box::new(AtScrape {
            data_dir: settings.data_dir,
            reserve_bytes: settings.reserve_bytes,
            durables: m.durables.clone(),
            next_offset: m.next_offset.clone(),
        }));
        Metrics { registry, ..m }
    }

    /// The text exposition (OpenMetrics 1.0, which Prometheus reads) of every metric now.
    pub fn encode(&self) -> String {
        let mut text = String::with_capacity(16 * 1024);
        // Writing to a String cannot fail; a collector's error would leave the text cut short.
        if prometheus_client::encoding::text::encode(&mut text, &self.registry).is_err() {
            tracing::warn!("metrics encoding failed");
        }
        text
    }

    /// The same metrics in Prometheus' classic text format (0.0.4), for scrapers that do not ask for
    /// OpenMetrics (and `promtool check metrics`): see [`classic_text`].
    pub fn encode_classic(&self) -> String {
        classic_text(&self.encode())
    }

    /// The label of `topic` (bounded: see the [module documentation](self)).
    fn topic(&self, topic: &Topic) -> TopicLabel {
        TopicLabel { topic: self.topics.of(topic) }
    }

    fn refused(&self, action: Action, code: ErrorCode) {
        let labels = RefusalLabels { action: action.name(), code: code_name(code) };
        self.refusals.get_or_create(&labels).inc();
        if code == ErrorCode::RATE_LIMITED {
            self.rate_limited.inc();
        }
    }

    /// The writer synced a group of `requests` requests in `took`.
    pub fn synced(&self, requests: usize, took: Duration) {
        self.fsync_seconds.observe(took.as_secs_f64());
        self.group_commit_requests.observe(requests as f64);
    }

    /// The writer stored a batch of `messages` messages and `bytes` bytes on `topic`, which now ends at
    /// `next`.
    pub fn stored(&self, topic: &Topic, messages: u32, bytes: usize, next: Offset) {
        let label = self.topic(topic);
        self.stored_messages.get_or_create(&label).inc_by(messages.into());
        self.stored_bytes.get_or_create(&label).inc_by(bytes as u64);
        if !self.topics.is_other(&label.topic) {
            let next = i64::try_from(next.0).unwrap_or(i64::MAX);
            self.next_offset.get_or_create(&label).set(next);
        }
    }

    /// A retention pass did `done`.
    pub fn retained(&self, done: &crate::store::Retained) {
        self.retention_segments.inc_by(done.segments_removed);
        self.retention_bytes.inc_by(done.bytes_freed);
        for (topic, first) in &done.topics {
            let label = self.topic(topic);
            if !self.topics.is_other(&label.topic) {
                self.first_offset.get_or_create(&label).set(i64::try_from(first.0).unwrap_or(i64::MAX));
            }
        }
    }

    /// The writer recorded `next` as the position of the durable subscription `name` of `principal` on
    /// `topic`.
    pub fn committed(&self, topic: &Topic, principal: &Principal, name: &str, next: Offset) {
        let topic = self.topics.of(topic);
        if self.topics.is_other(&topic) {
            return;
        }
        let labels = DurableLabels { topic, principal: escaped(principal.as_str()), name: escaped(name) };
        let mut committed = self.durables.committed.lock().unwrap_or_else(PoisonError::into_inner);
        if committed.len() < self.durables.max || committed.contains_key(&labels) {
            committed.insert(labels, next.0);
        }
    }

    /// The running configuration was loaded at `unix_seconds` (at the start: a reload sets it itself).
    pub fn config_loaded_at(&self, unix_seconds: u64) {
        self.config_loaded_at.set(i64::try_from(unix_seconds).unwrap_or(i64::MAX));
    }

    /// A publish read when `took` ago was answered.
    pub fn acked(&self, took: Duration) {
        self.publish_ack_seconds.observe(took.as_secs_f64());
    }
}

/// prometheus-client's OpenMetrics text, as Prometheus' classic text format (0.0.4) says it. The samples
/// are the same; only the metadata differs: a counter family is named with its `_total` suffix in its
/// `# HELP` and `# TYPE` lines (OpenMetrics names the family without it), and the `# UNIT` lines and the
/// final `# EOF` are left out.
pub fn classic_text(openmetrics: &str) -> String {
    let counters: std::collections::HashSet<&str> = openmetrics
        .lines()
        .filter_map(|line| line.strip_prefix("# TYPE ")?.strip_suffix(" counter"))
        .collect();
    let mut out = String::with_capacity(openmetrics.len() + 64 * counters.len());
    for line in openmetrics.lines() {
        if line == "# EOF" || line.starts_with("# UNIT ") {
            continue;
        }
        let meta = ["# HELP ", "# TYPE "].into_iter().find_map(|tag| Some((tag, line.strip_prefix(tag)?)));
        match meta.and_then(|(tag, rest)| Some((tag, rest.split_once(' ')?))) {
            Some((tag, (name, rest))) if counters.contains(name) => {
                out.push_str(tag);
                out.push_str(name);
                out.push_str("_total ");
                out.push_str(rest);
            }
            _ => out.push_str(line),
        }
        out.push('\n');
    }
    out
}

/// Bytes of the files under `dir`, recursively (symbolic links not followed). Unreadable entries count 0.
fn size_on_disk(dir: &std::path::Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(dir) else { return 0 };
    entries
        .flatten()
        .map(|entry| match entry.metadata() {
            Ok(meta) if meta.is_dir() => size_on_disk(&entry.path()),
            Ok(meta) if meta.is_file() => meta.len(),
            _ => 0,
        })
        .sum()
}

fn gauge(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    unit: Option<&Unit>,
    value: i64,
) -> std::fmt::Result {
    let gauge = ConstGauge::new(value);
    let metric = encoder.encode_descriptor(name, help, unit, gauge.metric_type())?;
    gauge.encode(metric)
}

impl Collector for AtScrape {
    fn encode(&self, mut encoder: DescriptorEncoder) -> std::fmt::Result {
        let as_i64 = |v: u64| i64::try_from(v).unwrap_or(i64::MAX);
        if let Some(dir) = &self.data_dir {
            let bytes = Some(&Unit::Bytes);
            let size = size_on_disk(dir);
            gauge(&mut encoder, "store_size", "Bytes of the files in the data folder", bytes, as_i64(size))?;
            if let Ok(stat) = rustix::fs::statvfs(dir.as_path()) {
                let available = stat.f_bavail.saturating_mul(stat.f_frsize);
                let above = available.saturating_sub(self.reserve_bytes);
                gauge(
                    &mut encoder,
                    "store_available",
                    "Free bytes appends may still use: free space on the data folder's file system above the reserve",
                    bytes,
                    as_i64(above),
                )?;
            }
            gauge(
                &mut encoder,
                "store_reserve",
                "Free space appends leave on the file system (storage.reserve_bytes)",
                bytes,
                as_i64(self.reserve_bytes),
            )?;
        }
        let committed: Vec<(DurableLabels, u64)> = {
            let committed = self.durables.committed.lock().unwrap_or_else(PoisonError::into_inner);
            committed.iter().map(|(labels, offset)| (labels.clone(), *offset)).collect()
        };
        let lag = ConstGauge::new(0i64);
        let mut family = encoder.encode_descriptor(
            "durable_subscription_lag_messages",
            "Messages of a topic after a durable subscription's committed offset (bounded: see docs/operations.md)",
            None,
            lag.metric_type(),
        )?;
        for (labels, offset) in committed {
            let topic = TopicLabel { topic: labels.topic.clone() };
            let Some(next) = self.next_offset.get(&topic).map(|g| g.get()) else { continue };
            let lag = ConstGauge::new(next.saturating_sub(as_i64(offset)).max(0));
            lag.encode(family.encode_family(&labels)?)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests;
