//! The one interface every workload drives, over Sealpost or NATS JetStream, so that both systems run the
//! same workload code: start a server, connect, publish (returning the acknowledgement to await later),
//! subscribe from the start or from now, read payloads, measure the server's memory and disk, restart it.
//!
//! The mapping: a Sealpost topic is a JetStream subject of one stream ([`nats::STREAM`]); a Sealpost
//! subscription (non-durable, from `Earliest` or `Latest`) is a JetStream ordered pull consumer (ephemeral,
//! in order, no per-message acks, `DeliverPolicy::All` or `New`); a Sealpost publish receipt (after fsync)
//! is a JetStream publish ack (after fsync only with `sync_interval: always`).
//!
//! With `--compare cluster` two systems run on the repository's 3-node cluster ([`crate::cluster`]): the
//! Sealpost broker with its JetStream engine under a prefix of the run's own, and raw JetStream on a
//! stream of the run's own with three replicas; the run's objects are deleted when it stops.

use std::future::Future;
use std::path::Path;
use std::pin::Pin;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::StreamExt;
use sealpost_client::{Client, PublisherOptions, SubscribeOptions};
use sealpost_protocol::{StartAt, Topic};

use crate::cluster::{Footprint, NatsCluster};
use crate::nats::{self, Fsync, NatsServer};
use crate::pki::Pki;
use crate::sealpost::{SealpostServer, Storage};

/// The topic the workloads publish to.
pub const TOPIC: &str = "bench.load";
/// The topic W4's idle connections subscribe to (nothing is published there).
pub const IDLE_TOPIC: &str = "bench.idle";

/// A system the bench measures.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum System {
    Sealpost,
    Nats(Fsync),
    /// The Sealpost broker with `storage.engine = "jetstream"` on the 3-node cluster.
    SealpostJetStream,
    /// Raw JetStream on the 3-node cluster, a stream with three replicas.
    NatsR3,
}

impl System {
    /// The name in JSON and tables.
    pub fn name(self) -> &'static str {
        match self {
            System::Sealpost => "sealpost",
            System::Nats(Fsync::Default) => "nats-default",
            System::Nats(Fsync::Always) => "nats-always",
            System::SealpostJetStream => "sealpost-jetstream",
            System::NatsR3 => "nats-r3",
        }
    }

    pub fn describe(self) -> &'static str {
        match self {
            System::Sealpost => {
                "sealpost: broker process (segment log + sled index, fsync before ack), QUIC + mutual TLS, sealed (signed + \
                 encrypted) batches, publisher defaults (max_batch 256, adaptive batching, no linger)"
            }
            System::Nats(Fsync::Default) => {
                "nats-default: nats-server JetStream, file store, TLS with client certificates (verify: true), \
                 default fsync (ack before fsync, fsync every 2 min), async-nats client"
            }
            System::Nats(Fsync::Always) => "nats-always: the same with `sync_interval: always` (fsync before ack)",
            System::SealpostJetStream => {
                "sealpost-jetstream: the same broker process and client (QUIC + mutual TLS, sealed batches), \
                 storage.engine = \"jetstream\" on the 3-node cluster: a stream per topic with 3 replicas, \
                 publish_timeout_ms 20000, a fresh prefix per run; the broker's connection to NATS has no TLS \
                 (the cluster has none); acked once the stream's leader has a quorum (2 of 3 nodes, each \
                 fsyncing before it answers)"
            }
            System::NatsR3 => {
                "nats-r3: raw JetStream on the same 3-node cluster: a stream with num_replicas 3, file store, \
                 sync_interval: always on every node (fsync before ack), a fresh stream per run; async-nats \
                 client WITHOUT TLS (the cluster has none; the single-node nats systems use mutual TLS)"
            }
        }
    }
}

/// What a workload needs to reach a running server.
pub struct Env<'a> {
    pub pki: &'a Pki,
    pub nats_bin: Option<&'a Path>,
    /// Unacknowledged publishes a publisher may keep in flight.
    pub window: usize,
    /// Whether the Sealpost broker runs with its observers on (`--observe`).
    pub observe: bool,
    /// The 3-node cluster of `--compare cluster`.
    pub cluster: Option<&'a NatsCluster>,
}

/// A running server of one [`System`].
pub enum Server {
    Sealpost(SealpostServer),
    Nats(NatsServer, usize),
    /// A broker on the cluster, and what its run made there.
    SealpostJetStream(SealpostServer, Footprint),
    /// The cluster's servers, the run's stream, the publish window, and the stream as a footprint.
    NatsR3 {
        urls: Vec<String>,
        stream: String,
        window: usize,
        footprint: Footprint,
    },
}

/// How long a restarted server took: until its process said it listens, and until it had served a
/// publish (acknowledged) and a subscription (delivered that message).
pub struct Restart {
    pub listening: Duration,
    pub served: Duration,
}

/// Resident memory of a server process, from `/proc/PID/status`.
#[derive(Clone, Copy, Default)]
pub struct Memory {
    pub rss_bytes: u64,
    pub peak_rss_bytes: u64,
}

impl Server {
    pub async fn start(system: System, env: &Env<'_>) -> Server {
        match system {
            System::Sealpost => Server::Sealpost(SealpostServer::start(
                env.pki,
                &[TOPIC, IDLE_TOPIC],
                env.observe,
                &Storage::Disk,
            )),
            System::Nats(fsync) => {
                let bin = env.nats_bin.expect("nats-server was found before any NATS workload");
                let server = NatsServer::start(bin, env.pki, fsync);
                let (_, js) = server.connect(env.window).await.unwrap();
                NatsServer::create_stream(&js).await.unwrap();
                Server::Nats(server, env.window)
            }
            System::SealpostJetStream => {
                let cluster = env.cluster.expect("the cluster was started before any cluster workload");
                let prefix = crate::cluster::fresh_name("lb");
                let storage = Storage::JetStream { servers: &cluster.urls, prefix: &prefix, replicas: 3 };
                // Stores the policies in JetStream, which blocks this thread.
                let server = tokio::task::block_in_place(|| {
                    SealpostServer::start(env.pki, &[TOPIC, IDLE_TOPIC], env.observe, &storage)
                });
                // The engine's objects: `{PREFIX}_...` streams and the `KV_{PREFIX}_DURABLES` bucket.
                let upper = prefix.to_ascii_uppercase();
                let footprint =
                    cluster.footprint(Vec::new(), vec![format!("{upper}_"), format!("KV_{upper}_")]);
                Server::SealpostJetStream(server, footprint)
            }
            System::NatsR3 => {
                let cluster = env.cluster.expect("the cluster was started before any cluster workload");
                let stream = crate::cluster::fresh_name("BENCH_R3_");
                let js = cluster.connect(env.window).await.unwrap();
                nats::create_stream(&js, &stream, 3).await.unwrap();
                let footprint = cluster.footprint(vec![stream.clone()], Vec::new());
                Server::NatsR3 { urls: cluster.urls.clone(), stream, window: env.window, footprint }
            }
        }
    }

    pub async fn connect(&self) -> anyhow::Result<Conn> {
        Ok(match self {
            Server::Sealpost(s) | Server::SealpostJetStream(s, _) => {
                Conn::Sealpost(Client::connect(&s.identity).await?)
            }
            Server::Nats(s, window) => {
                let (_, js) = s.connect(*window).await?;
                Conn::Nats(Box::new(js), nats::STREAM.to_string())
            }
            Server::NatsR3 { urls, stream, window, .. } => {
                Conn::Nats(Box::new(crate::cluster::connect(urls, *window).await?), stream.clone())
            }
        })
    }

    /// The server process (the broker's, for a broker on the cluster; none for raw JetStream on it).
    fn pid(&self) -> Option<u32> {
        match self {
            Server::Sealpost(s) | Server::SealpostJetStream(s, _) => s.pid(),
            Server::Nats(s, _) => s.pid(),
            Server::NatsR3 { .. } => None,
        }
    }

    pub fn memory(&self) -> Memory {
        let Some(pid) = self.pid() else { return Memory::default() };
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
        let kib = |key: &str| {
            status
                .lines()
                .find(|l| l.starts_with(key))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse::<u64>().ok())
                .unwrap_or(0)
                * 1024
        };
        Memory { rss_bytes: kib("VmRSS:"), peak_rss_bytes: kib("VmHWM:") }
    }

    /// Bytes allocated on disk under the server's data folder (what `du` counts); on the cluster, by the
    /// run's streams on all three nodes (every replica) and, for a broker, its data folder.
    pub fn disk_bytes(&self) -> u64 {
        match self {
            Server::Sealpost(s) => allocated_bytes(&s.data_dir()),
            Server::Nats(s, _) => allocated_bytes(&s.data_dir()),
            Server::SealpostJetStream(s, footprint) => {
                allocated_bytes(&s.data_dir()) + footprint.disk_bytes()
            }
            Server::NatsR3 { footprint, .. } => footprint.disk_bytes(),
        }
    }

    /// Stops the server; on the cluster, also deletes what the run made there.
    pub async fn stop(&mut self) {
        match self {
            Server::Sealpost(s) => s.stop(),
            Server::Nats(s, _) => s.stop(),
            Server::SealpostJetStream(s, footprint) => {
                s.stop();
                footprint.remove().await.expect("deleting the run's streams from the cluster");
            }
            Server::NatsR3 { footprint, .. } => {
                footprint.remove().await.expect("deleting the run's stream from the cluster")
            }
        }
    }

    /// Starts the stopped server again on the same data and measures until it serves (bounded: 10 min).
    pub async fn restart(&mut self) -> Restart {
        let (spawned, listening) = match self {
            Server::Sealpost(s) => {
                s.restart();
                (s.spawned, s.listening)
            }
            Server::Nats(s, _) => {
                s.restart();
                (s.spawned, s.listening)
            }
            Server::SealpostJetStream(..) | Server::NatsR3 { .. } => {
                unreachable!("--compare cluster runs W1 and W2 only, which restart nothing")
            }
        };
        let deadline = spawned + Duration::from_secs(600);
        loop {
            match self.serve_once().await {
                Ok(()) => break,
                Err(e) if Instant::now() < deadline => {
                    // Not ready yet (connection refused, stream not recovered): try again at once.
                    let _ = e;
                    tokio::task::yield_now().await;
                }
                Err(e) => panic!("restarted server did not serve within 10 minutes: {e:#}"),
            }
        }
        Restart { listening: listening - spawned, served: spawned.elapsed() }
    }

    /// Subscribes from now, publishes one message, awaits its acknowledgement and reads it back.
    async fn serve_once(&self) -> anyhow::Result<()> {
        let conn = tokio::time::timeout(Duration::from_secs(10), self.connect()).await??;
        let publisher = conn.publisher(TOPIC).await?;
        let mut sub = conn.subscribe(TOPIC, From::Now).await?;
        let marker = Bytes::from_static(b"restart marker");
        publisher.send(marker.clone()).await.await?;
        let got = tokio::time::timeout(Duration::from_secs(10), sub.next()).await??;
        anyhow::ensure!(got == marker, "read back another message than the one just published");
        Ok(())
    }
}

pub fn allocated_bytes(dir: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    let mut total = 0;
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else { continue };
        for entry in entries.flatten() {
            let Ok(meta) = entry.metadata() else { continue };
            if meta.is_dir() {
                stack.push(entry.path());
            } else {
                total += meta.blocks() * 512;
            }
        }
    }
    total
}

/// Where a subscription starts.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum From {
    /// The first message the topic holds.
    Start,
    /// Only messages published after subscribing.
    Now,
}

/// A client connection.
pub enum Conn {
    Sealpost(Client),
    /// A JetStream context and the name of the stream that holds the bench subjects.
    Nats(Box<async_nats::jetstream::Context>, String),
}

/// An acknowledgement to await: resolves when the server has accepted (Sealpost: stored and synced) the
/// message.
pub type Ack = Pin<Box<dyn Future<Output = anyhow::Result<()>> + Send>>;

pub enum Publisher {
    Sealpost(sealpost_client::Publisher),
    Nats(Box<async_nats::jetstream::Context>, async_nats::Subject),
}

pub enum Subscriber {
    Sealpost(sealpost_client::Subscription),
    Nats(Pin<Box<async_nats::jetstream::consumer::pull::Ordered>>),
}

impl Conn {
    /// A publisher on `topic`, with the client's default options (Sealpost: adaptive batching, which sends
    /// at once when nothing is in flight and gathers what arrives meanwhile into the next batch).
    pub async fn publisher(&self, topic: &str) -> anyhow::Result<Publisher> {
        Ok(match self {
            Conn::Sealpost(client) => {
                Publisher::Sealpost(client.publisher(Topic::new(topic)?, PublisherOptions::default()).await?)
            }
            Conn::Nats(js, _) => Publisher::Nats(js.clone(), async_nats::Subject::from(topic)),
        })
    }

    pub async fn subscribe(&self, topic: &str, from: From) -> anyhow::Result<Subscriber> {
        Ok(match self {
            Conn::Sealpost(client) => {
                let from = match from {
                    From::Start => StartAt::Earliest,
                    From::Now => StartAt::Latest,
                };
                let options = SubscribeOptions { from, durable: None, shared: false };
                Subscriber::Sealpost(client.subscribe(Topic::new(topic)?, options).await?)
            }
            Conn::Nats(js, stream) => {
                use async_nats::jetstream::consumer::{pull::OrderedConfig, DeliverPolicy};
                let stream = js.get_stream(stream.as_str()).await?;
                let deliver_policy = match from {
                    From::Start => DeliverPolicy::All,
                    From::Now => DeliverPolicy::New,
                };
                let config =
                    OrderedConfig { filter_subject: topic.to_string(), deliver_policy, ..Default::default() };
                let consumer = stream.create_consumer(config).await?;
                Subscriber::Nats(Box::pin(consumer.messages().await?))
            }
        })
    }
}

impl Publisher {
    /// Sends `payload` and returns its acknowledgement without waiting for it.
    pub async fn send(&self, payload: Bytes) -> Ack {
        match self {
            Publisher::Sealpost(p) => {
                let receipt = p.publish(payload);
                Box::pin(async move {
                    receipt.await?;
                    Ok(())
                })
            }
            Publisher::Nats(js, subject) => match js.publish(subject.clone(), payload).await {
                Ok(ack) => Box::pin(async move {
                    ack.await?;
                    Ok(())
                }),
                Err(e) => Box::pin(async move { Err(e.into()) }),
            },
        }
    }
}

impl Subscriber {
    /// The next message's payload.
    pub async fn next(&mut self) -> anyhow::Result<Bytes> {
        match self {
            Subscriber::Sealpost(s) => match s.next().await {
                Some(m) => Ok(m?.payload),
                None => anyhow::bail!("sealpost subscription ended"),
            },
            Subscriber::Nats(s) => match s.next().await {
                Some(m) => Ok(m.map_err(|e| anyhow::anyhow!("{e}"))?.message.payload),
                None => anyhow::bail!("jetstream consumer ended"),
            },
        }
    }
}
