//! The workloads W1-W5, written once against [`crate::system`] and run unchanged on every system. Each
//! starts a fresh server (its own data folder), measures, and stops it; every wait is bounded.
//!
//! - W1, closed loop: one publisher keeps `window` messages unacknowledged while one subscriber reads from
//!   the start; throughput of acks and of deliveries, then the disk the data takes. Produce-only: the same
//!   publisher with no subscriber.
//! - W2, open loop: one publisher sends at a fixed rate; each latency counts from the message's *intended*
//!   send time (no coordinated omission), publish->ack and publish->delivery, into HdrHistograms.
//! - W3: one publisher, `subscribers` subscribers on their own connections; deliveries per second.
//! - W4: W2 on one server, then `idle` more connections each subscribed to another topic, then W2 again;
//!   the server process's resident memory at each step.
//! - W5: fill a server with messages, stop it gracefully, start it again and time until it has served a
//!   subscription and an acknowledged publish.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::StreamExt;
use hdrhistogram::Histogram;

use crate::progress::Progress;
use crate::settings::Settings;
use crate::system::{
    Conn, Env, From, Memory, Publisher, Restart, Server, Subscriber, System, IDLE_TOPIC, TOPIC,
};

/// Bounds every wait for a whole phase.
const PHASE_LIMIT: Duration = Duration::from_secs(900);

pub struct W1 {
    /// Messages sent: `--messages`, or fewer if the run reached its time cap.
    pub messages: u64,
    pub acked_per_s: f64,
    /// None for produce-only.
    pub delivered_per_s: Option<f64>,
    pub disk_bytes: u64,
}

pub struct Latency {
    pub ack: Histogram<u64>,
    pub delivery: Histogram<u64>,
    /// Messages per second actually sent in the measured part.
    pub achieved: f64,
    /// From each message's intended send time to the call that sends it: the bench's own pacing lag,
    /// included in `ack` and `delivery` (as it would be for an application), shown so it can be told apart.
    pub lag: Histogram<u64>,
}

pub struct W3 {
    pub messages: u64,
    pub published_per_s: f64,
    pub deliveries_per_s: f64,
}

pub struct W4 {
    pub baseline: Latency,
    pub with_idle: Latency,
    pub idle: usize,
    /// How long opening and subscribing the idle connections took.
    pub connect_time: Duration,
    pub after_start: Memory,
    pub after_baseline: Memory,
    pub with_idle_connected: Memory,
    pub after_with_idle: Memory,
}

pub struct W5 {
    pub messages: u64,
    pub fill_per_s: f64,
    pub disk_bytes: u64,
    pub restart: Restart,
}

/// Publishes up to `n` copies of `payload`, keeping at most `window` unacknowledged, and stops sending new
/// ones at `stop` (a system far slower than the rest would otherwise take minutes); returns how many it
/// sent, all acknowledged.
async fn closed_loop(
    publisher: &Publisher,
    n: u64,
    payload: Bytes,
    window: usize,
    stop: Instant,
    progress: &Progress,
) -> u64 {
    let mut pending = VecDeque::with_capacity(window);
    let mut sent = 0;
    while sent < n && (sent % 256 != 0 || Instant::now() < stop) {
        pending.push_back(publisher.send(payload.clone()).await);
        sent += 1;
        if pending.len() >= window {
            pending.pop_front().unwrap().await.unwrap();
            progress.add(1);
        }
    }
    for ack in pending {
        ack.await.unwrap();
        progress.add(1);
    }
    sent
}

/// Reads messages until it has read as many as `target` says (it is told once publishing stopped);
/// returns when it read the last one.
fn spawn_reader(
    conn: Conn,
    mut sub: Subscriber,
    mut target: tokio::sync::watch::Receiver<u64>,
) -> tokio::task::JoinHandle<Instant> {
    tokio::spawn(async move {
        let mut seen = 0u64;
        loop {
            if seen >= *target.borrow() {
                break;
            }
            tokio::select! {
                m = sub.next() => {
                    m.unwrap();
                    seen += 1;
                }
                changed = target.changed() => changed.unwrap(),
            }
        }
        drop(conn);
        Instant::now()
    })
}

pub async fn w1(system: System, env: &Env<'_>, s: &Settings, subscribe: bool) -> W1 {
    let mut server = Server::start(system, env).await;
    let (target, told) = tokio::sync::watch::channel(u64::MAX);
    let reader = if subscribe {
        let conn = server.connect().await.unwrap();
        let sub = conn.subscribe(TOPIC, From::Start).await.unwrap();
        Some(spawn_reader(conn, sub, told))
    } else {
        None
    };
    let conn = server.connect().await.unwrap();
    let publisher = conn.publisher(TOPIC).await.unwrap();
    let progress = Progress::start(format!("W1 {} acked", system.name()), s.messages);
    let start = Instant::now();
    let payload = Bytes::from(vec![0x5a; s.size]);
    let publish = closed_loop(&publisher, s.messages, payload, env.window, start + s.cap, &progress);
    let n = tokio::time::timeout(PHASE_LIMIT, publish).await.expect("W1 publishing took over 15 minutes");
    let acked = start.elapsed();
    drop(progress);
    target.send(n).unwrap();
    let delivered = match reader {
        Some(reader) => Some(tokio::time::timeout(PHASE_LIMIT, reader).await.unwrap().unwrap() - start),
        None => None,
    };
    let disk_bytes = server.disk_bytes();
    drop(publisher);
    drop(conn);
    server.stop().await;
    W1 {
        messages: n,
        acked_per_s: n as f64 / acked.as_secs_f64(),
        delivered_per_s: delivered.map(|d| n as f64 / d.as_secs_f64()),
        disk_bytes,
    }
}

fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 600_000_000, 3).unwrap()
}

fn micros_since(t: Instant) -> u64 {
    (Instant::now().saturating_duration_since(t).as_micros() as u64).max(1)
}

/// W2 on a running server: one second of warm-up, then `seconds` measured, at `s.rate`.
pub async fn latency(server: &Server, s: &Settings, seconds: u64) -> Latency {
    let period = Duration::from_nanos(1_000_000_000 / s.rate);
    let warmup = s.rate;
    let total = warmup + s.rate * seconds;
    let sub_conn = server.connect().await.unwrap();
    let mut sub = sub_conn.subscribe(TOPIC, From::Now).await.unwrap();
    let start = Instant::now() + Duration::from_millis(100);
    let at = move |i: u64| start + period * i as u32;
    let reader = tokio::spawn(async move {
        let mut delivery = histogram();
        for _ in 0..total {
            let payload = sub.next().await.unwrap();
            let i = u64::from_be_bytes(payload[..8].try_into().unwrap());
            if i >= warmup {
                delivery.record(micros_since(at(i))).unwrap();
            }
        }
        drop(sub_conn);
        delivery
    });
    let conn = server.connect().await.unwrap();
    let publisher = conn.publisher(TOPIC).await.unwrap();
    let mut ack = histogram();
    let mut pending = futures_util::stream::FuturesUnordered::new();
    let deadline = tokio::time::Instant::now() + PHASE_LIMIT;
    // The schedule is kept by an OS thread: tokio's timer ticks in whole milliseconds, which would send
    // ~0.5 ms late on average and count that as the system's latency. The thread hands each due index
    // over as soon as it is due; what the hand-over costs is counted, as for any application.
    let (due, mut due_rx) = tokio::sync::mpsc::unbounded_channel::<u64>();
    let pacer = std::thread::spawn(move || {
        for i in 0..total {
            let wait = at(i).saturating_duration_since(Instant::now());
            if !wait.is_zero() {
                std::thread::sleep(wait);
            }
            if due.send(i).is_err() {
                break;
            }
        }
    });
    let mut lag = histogram();
    let mut sent_all = false;
    while !sent_all {
        tokio::select! {
            next = due_rx.recv() => match next {
                Some(i) => {
                    let (intended, record) = (at(i), i >= warmup);
                    if record {
                        lag.record(micros_since(intended)).unwrap();
                    }
                    let mut payload = vec![0u8; s.size.max(8)];
                    payload[..8].copy_from_slice(&i.to_be_bytes());
                    let acked = publisher.send(Bytes::from(payload)).await;
                    pending.push(async move { (acked.await, intended, record) });
                }
                None => sent_all = true,
            },
            Some((result, intended, record)) = pending.next(), if !pending.is_empty() => {
                result.unwrap();
                if record {
                    ack.record(micros_since(intended)).unwrap();
                }
            }
        }
    }
    pacer.join().unwrap();
    let sent = Instant::now();
    while let Some(next) = tokio::time::timeout_at(deadline, pending.next()).await.expect("W2 acks") {
        let (result, intended, record) = next;
        result.unwrap();
        if record {
            ack.record(micros_since(intended)).unwrap();
        }
    }
    let achieved = (total - warmup) as f64 / (sent - at(warmup)).as_secs_f64();
    let delivery = tokio::time::timeout_at(deadline, reader).await.expect("W2 deliveries").unwrap();
    Latency { ack, delivery, achieved, lag }
}

pub async fn w2(system: System, env: &Env<'_>, s: &Settings) -> Latency {
    let mut server = Server::start(system, env).await;
    let result = latency(&server, s, s.seconds).await;
    server.stop().await;
    result
}

pub async fn w3(system: System, env: &Env<'_>, s: &Settings) -> W3 {
    let mut server = Server::start(system, env).await;
    let (target, told) = tokio::sync::watch::channel(u64::MAX);
    let mut readers = Vec::new();
    for _ in 0..s.subscribers {
        let conn = server.connect().await.unwrap();
        let sub = conn.subscribe(TOPIC, From::Start).await.unwrap();
        readers.push(spawn_reader(conn, sub, told.clone()));
    }
    let conn = server.connect().await.unwrap();
    let publisher = conn.publisher(TOPIC).await.unwrap();
    let progress = Progress::start(format!("W3 {} acked", system.name()), s.w3_messages);
    let start = Instant::now();
    let payload = Bytes::from(vec![0x5a; s.size]);
    let publish = closed_loop(&publisher, s.w3_messages, payload, env.window, start + s.cap, &progress);
    let n = tokio::time::timeout(PHASE_LIMIT, publish).await.expect("W3 publishing took over 15 minutes");
    let published = start.elapsed();
    drop(progress);
    target.send(n).unwrap();
    let mut last = start;
    for reader in readers {
        last = last.max(tokio::time::timeout(PHASE_LIMIT, reader).await.unwrap().unwrap());
    }
    drop(publisher);
    drop(conn);
    server.stop().await;
    W3 {
        messages: n,
        published_per_s: n as f64 / published.as_secs_f64(),
        deliveries_per_s: (n * s.subscribers as u64) as f64 / (last - start).as_secs_f64(),
    }
}

pub async fn w4(system: System, env: &Env<'_>, s: &Settings) -> W4 {
    let mut server = Server::start(system, env).await;
    let after_start = server.memory();
    let baseline = latency(&server, s, s.w4_seconds).await;
    let after_baseline = server.memory();
    let started = Instant::now();
    let idle: Vec<_> = futures_util::stream::iter(0..s.idle)
        .map(|_| async {
            let conn = server.connect().await.unwrap();
            let sub = conn.subscribe(IDLE_TOPIC, From::Now).await.unwrap();
            (conn, sub)
        })
        .buffer_unordered(16)
        .collect()
        .await;
    let connect_time = started.elapsed();
    let with_idle_connected = server.memory();
    let with_idle = latency(&server, s, s.w4_seconds).await;
    let after_with_idle = server.memory();
    let idle_count = idle.len();
    drop(idle);
    server.stop().await;
    W4 {
        baseline,
        with_idle,
        idle: idle_count,
        connect_time,
        after_start,
        after_baseline,
        with_idle_connected,
        after_with_idle,
    }
}

pub async fn w5(system: System, env: &Env<'_>, s: &Settings) -> W5 {
    let mut server = Server::start(system, env).await;
    let n = s.restart_messages;
    let conn = server.connect().await.unwrap();
    let publisher = conn.publisher(TOPIC).await.unwrap();
    let progress = Progress::start(format!("W5 {} fill", system.name()), n);
    let start = Instant::now();
    let payload = Bytes::from(vec![0x5a; s.size]);
    let fill =
        closed_loop(&publisher, n, payload, env.window, start + Duration::from_secs(4 * 3600), &progress);
    tokio::time::timeout(Duration::from_secs(4 * 3600), fill).await.expect("W5 fill took over 4 hours");
    let fill_per_s = n as f64 / start.elapsed().as_secs_f64();
    drop(progress);
    drop(publisher);
    drop(conn);
    server.stop().await;
    let disk_bytes = server.disk_bytes();
    let restart = server.restart().await;
    server.stop().await;
    W5 { messages: n, fill_per_s, disk_bytes, restart }
}
