//! Replicas of a service on one durable subscription (docs/operations.md, "Durable subscriptions"): the
//! broker serves it to one subscriber at a time, the others stand by, and when the one reading stops a
//! standby takes over from what it committed. Before, two subscribers of one durable name each received
//! every message.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use bytes::Bytes;
use futures_util::StreamExt;
use sealpost_client::{Client, Identity, PublisherOptions, SubscribeOptions, Subscription};
use sealpost_protocol::{Offset, StartAt, Topic};

use crate::harness::*;

fn chat() -> Topic {
    Topic::new("demo.chat").unwrap()
}

fn workers() -> SubscribeOptions {
    SubscribeOptions { from: StartAt::Earliest, durable: Some("workers".into()), shared: false }
}

/// alice's client and publisher on demo.chat, after publishing `m0` to `m{n-1}`.
async fn alice_published(
    env: &Env,
    addr: std::net::SocketAddr,
    n: usize,
) -> (Client, sealpost_client::Publisher) {
    let alice = within("connect", Client::connect(&Identity::load(env.identity("alice", addr)).unwrap()))
        .await
        .unwrap();
    let publisher = within("publisher", alice.publisher(chat(), PublisherOptions::default())).await.unwrap();
    for i in 0..n {
        within("publish", publisher.publish(format!("m{i}"))).await.unwrap();
    }
    (alice, publisher)
}

/// Two replicas of bob's service, each a client with an identity file (and so a state folder) of its own.
async fn bob_replicas(env: &Env, addr: std::net::SocketAddr) -> (Client, Client) {
    let identity = env.identity("bob", addr);
    let copy = identity.with_file_name("bob-2.toml");
    std::fs::copy(&identity, &copy).unwrap();
    let first = within("connect", Client::connect(&Identity::load(identity).unwrap())).await.unwrap();
    let second = within("connect", Client::connect(&Identity::load(copy).unwrap())).await.unwrap();
    (first, second)
}

/// The payloads of the next `n` messages, acking each.
async fn read(subscription: &mut Subscription, n: usize) -> Vec<(Offset, Bytes)> {
    let mut got = Vec::new();
    for _ in 0..n {
        let message = within("a message", subscription.next()).await.unwrap().unwrap();
        subscription.ack(&message).unwrap();
        got.push((message.offset, message.payload));
    }
    got
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_subscriber_of_a_durable_name_stands_by_and_takes_over_where_the_first_stopped() {
    let mut env = Env::new();
    let broker = env.start(Engine::Sled).await;
    let addr = broker.local_addr();
    let (alice, publisher) = alice_published(&env, addr, 10).await;
    let (first, second) = bob_replicas(&env, addr).await;

    let mut reading = within("subscribe", first.subscribe(chat(), workers())).await.unwrap();
    let standby = tokio::spawn(async move {
        let subscription = second.subscribe(chat(), workers()).await;
        (second, subscription)
    });
    let seen = read(&mut reading, 5).await;
    assert_eq!(seen.last().unwrap().1, Bytes::from("m4"));
    // A message published now reaches the first subscriber; the second is still standing by.
    within("publish", publisher.publish("m10")).await.unwrap();
    let more = read(&mut reading, 5).await;
    assert_eq!(more.first().unwrap().1, Bytes::from("m5"));
    assert!(!standby.is_finished(), "the second subscriber was served while the first reads");

    // The first stops after m9 (closing commits its last ack): the second takes over at m10.
    within("close", reading.close()).await.unwrap();
    let (second, subscription) = within("the standby takes over", standby).await.unwrap();
    let mut taken_over = subscription.unwrap();
    let next = read(&mut taken_over, 1).await;
    assert_eq!(next, vec![(Offset(10), Bytes::from("m10"))]);
    within("close", taken_over.close()).await.unwrap();
    second.close().await;
    first.close().await;
    alice.close().await;
    broker.shutdown().await.unwrap();
}

/// The subscriber reading goes away without closing (its connection ends): the standby takes over from
/// the last ack the broker committed, and reads on to the end. At least once: it may see again what the
/// first one read after its last committed ack, never less.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn when_the_reading_subscriber_dies_a_standby_takes_over_and_nothing_is_skipped() {
    let mut env = Env::new();
    let broker = env.start(Engine::Memory).await;
    let addr = broker.local_addr();
    let (alice, _publisher) = alice_published(&env, addr, 20).await;
    let (first, second) = bob_replicas(&env, addr).await;

    let mut reading = within("subscribe", first.subscribe(chat(), workers())).await.unwrap();
    let standby = tokio::spawn(async move {
        let subscription = second.subscribe(chat(), workers()).await;
        (second, subscription)
    });
    let seen = read(&mut reading, 8).await;
    assert_eq!(seen.last().unwrap().0, Offset(7));
    // Gone: its connection closes without an Unsubscribe.
    drop(reading);
    first.close().await;

    let (second, subscription) = within("the standby takes over", standby).await.unwrap();
    let mut taken_over = subscription.unwrap();
    let first_offset = within("a message", taken_over.next()).await.unwrap().unwrap().offset;
    assert!(first_offset <= Offset(8), "skipped past the first subscriber's last ack: {first_offset}");
    let rest = read(&mut taken_over, 19 - first_offset.0 as usize).await;
    assert_eq!(rest.last().unwrap(), &(Offset(19), Bytes::from("m19")));
    second.close().await;
    alice.close().await;
    broker.shutdown().await.unwrap();
}

fn shared_workers() -> SubscribeOptions {
    SubscribeOptions { from: StartAt::Earliest, durable: Some("workers".into()), shared: true }
}

/// `each` messages from each of `publishers` (one chain each), numbered from `from`: `p{k}-{i}`.
async fn publish_chains(publishers: &[sealpost_client::Publisher], from: usize, each: usize) {
    for i in from..from + each {
        for (k, publisher) in publishers.iter().enumerate() {
            within("publish", publisher.publish(format!("p{k}-{i}"))).await.unwrap();
        }
    }
}

/// The payloads of the next `n` messages, acking each, checking that each chain comes in order.
async fn read_in_order(subscription: &mut Subscription, n: usize) -> Vec<String> {
    let got: Vec<String> = read(subscription, n)
        .await
        .into_iter()
        .map(|(_, payload)| String::from_utf8(payload.to_vec()).unwrap())
        .collect();
    let mut last = std::collections::HashMap::new();
    for line in &got {
        let (chain, i) = line.split_once('-').unwrap();
        let i: usize = i.parse().unwrap();
        if let Some(before) = last.insert(chain.to_owned(), i) {
            assert!(i > before, "{chain}-{i} after {chain}-{before}");
        }
    }
    got
}

/// Members of a shared durable subscription split the chains; one that leaves gracefully hands its
/// chains to the other (which is rewound, and given nothing it or the leaver acknowledged), and one that
/// joins takes an even share. Every message is read, each chain in order and verified (an integrity
/// event would fail `read`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn members_of_a_shared_subscription_split_the_chains_and_hand_them_over_when_one_leaves() {
    let mut env = Env::new();
    let broker = env.start(Engine::Sled).await;
    let addr = broker.local_addr();
    let (alice, _) = alice_published(&env, addr, 0).await;
    let (first, second) = bob_replicas(&env, addr).await;
    let mut a = within("subscribe", first.subscribe(chat(), shared_workers())).await.unwrap();
    let mut b = within("subscribe", second.subscribe(chat(), shared_workers())).await.unwrap();
    let mut publishers = Vec::new();
    for _ in 0..4 {
        publishers
            .push(within("publisher", alice.publisher(chat(), PublisherOptions::default())).await.unwrap());
    }
    publish_chains(&publishers, 0, 50).await;

    // Two chains each: 100 messages each, none to both.
    let from_a = read_in_order(&mut a, 100).await;
    let from_b = read_in_order(&mut b, 100).await;
    let chains = |got: &[String]| -> std::collections::BTreeSet<String> {
        got.iter().map(|line| line.split_once('-').unwrap().0.to_owned()).collect()
    };
    assert_eq!(chains(&from_a).len(), 2, "{:?}", chains(&from_a));
    assert!(chains(&from_a).is_disjoint(&chains(&from_b)), "a chain went to both");

    // The first leaves, having acknowledged everything: the second is given all that follows, nothing
    // twice.
    within("close", a.close()).await.unwrap();
    publish_chains(&publishers, 50, 25).await;
    let after = read_in_order(&mut b, 100).await;
    let expected: std::collections::BTreeSet<String> =
        (50..75).flat_map(|i| (0..4).map(move |k| format!("p{k}-{i}"))).collect();
    assert_eq!(after.iter().cloned().collect::<std::collections::BTreeSet<_>>(), expected);

    // A third member joins and takes two chains: what follows is split, all of it read (at least once:
    // what the second had not acknowledged when the chains moved may come again).
    let third = within("connect", Client::connect(&Identity::load(env.identity("bob", addr)).unwrap()))
        .await
        .unwrap();
    let mut c = within("subscribe", third.subscribe(chat(), shared_workers())).await.unwrap();
    publish_chains(&publishers, 75, 25).await;
    let mut got = std::collections::BTreeSet::new();
    let wanted: std::collections::BTreeSet<String> =
        (75..100).flat_map(|i| (0..4).map(move |k| format!("p{k}-{i}"))).collect();
    let (mut from_b, mut from_c) = (0, 0);
    while !wanted.is_subset(&got) {
        let (line, from_third) = tokio::select! {
            line = read_in_order(&mut b, 1) => (line, false),
            line = read_in_order(&mut c, 1) => (line, true),
        };
        if from_third {
            from_c += 1
        } else {
            from_b += 1
        }
        got.extend(line);
    }
    assert!(from_b > 0 && from_c > 0, "the work was not split: {from_b} and {from_c}");
    drop((b, c));
    third.close().await;
    second.close().await;
    first.close().await;
    alice.close().await;
    broker.shutdown().await.unwrap();
}

/// A member of bob's shared `workers` group on demo.chat: `sealpost sub --shared` in a process of its own
/// (with an identity file, and so a state folder, of its own), whose printed lines and log lines are
/// sent to the test as they come.
struct SharedMember {
    child: std::process::Child,
}

/// A line a member process printed: (member, on stdout?, the line).
type Line = (usize, bool, String);

impl SharedMember {
    fn start(identity: &std::path::Path, n: usize, lines: &std::sync::mpsc::Sender<Line>) -> Self {
        use std::io::BufRead;
        use std::process::{Command, Stdio};
        let own = identity.with_file_name(format!("bob-member-{n}.toml"));
        std::fs::copy(identity, &own).unwrap();
        let mut child = Command::new(cargo_bin("sealpost"))
            .arg("--identity")
            .arg(&own)
            .args(["sub", "demo.chat", "--from", "earliest", "--durable", "workers", "--shared"])
            // The client says "subscribed" once the broker answered: the member has joined.
            .env("RUST_LOG", "warn,sealpost_client::subscribe=debug")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        for (out, pipe) in [
            (true, Box::new(child.stdout.take().unwrap()) as Box<dyn std::io::Read + Send>),
            (false, Box::new(child.stderr.take().unwrap())),
        ] {
            let lines = lines.clone();
            std::thread::spawn(move || {
                for line in std::io::BufReader::new(pipe).lines() {
                    let Ok(line) = line else { break };
                    if lines.send((n, out, line)).is_err() {
                        break;
                    }
                }
            });
        }
        SharedMember { child }
    }

    /// Freezes the process (SIGSTOP): it reads and acknowledges nothing more, its connection stays open.
    fn freeze(&self) {
        let status =
            std::process::Command::new("kill").args(["-STOP", &self.child.id().to_string()]).status();
        assert!(status.unwrap().success());
    }

    fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for SharedMember {
    fn drop(&mut self) {
        self.kill();
    }
}

/// The next line from the members, within 30 s; `None` if they went silent.
fn next_line(lines: &std::sync::mpsc::Receiver<Line>) -> Option<Line> {
    lines.recv_timeout(std::time::Duration::from_secs(30)).ok()
}

/// What the members printed, said when they go silent: how many each, the first of each publisher's
/// messages nobody printed, and their log lines.
fn silent(printed: &[Vec<String>], seen: &std::collections::HashSet<String>, events: &[String]) -> String {
    let counts: Vec<usize> = printed.iter().map(Vec::len).collect();
    let missing: Vec<String> = (0..6)
        .filter_map(|p| {
            let absent: Vec<usize> = (0..5_000).filter(|i| !seen.contains(&format!("p{p}-{i}"))).collect();
            (!absent.is_empty()).then(|| format!("p{p}: {} missing from {}", absent.len(), absent[0]))
        })
        .collect();
    format!(
        "the members went silent for 30 s; printed {counts:?}; missing {missing:?}; their logs: {events:#?}"
    )
}

/// Issue 17's consumer group: three members of one shared durable subscription split 30,000 messages
/// from six publishers (six chains), each message printed by exactly one of the members still running;
/// one member is SIGKILLed mid-stream, and the chains it held, with what it had not acknowledged, go to
/// the other two once the broker notices (its idle timeout, 6 s here): nothing is lost. Each member
/// verifies what it prints end to end: no integrity event is printed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_members_share_30000_messages_and_a_killed_members_work_goes_to_the_others() {
    const PUBLISHERS: usize = 6;
    const EACH: usize = 5_000;
    let mut env = Env::new();
    let limits = sealpost_broker::server::ServerLimits {
        idle_timeout: std::time::Duration::from_secs(6),
        ..Default::default()
    };
    let broker = env.start_with(Engine::Sled, "127.0.0.1:0".parse().unwrap(), limits).await;
    let addr = broker.local_addr();

    let (tx, lines) = std::sync::mpsc::channel();
    let bob = env.identity("bob", addr);
    let mut members: Vec<SharedMember> = (0..3).map(|n| SharedMember::start(&bob, n, &tx)).collect();
    drop(tx);
    let mut printed: Vec<Vec<String>> = vec![Vec::new(); 3];
    let mut events: Vec<String> = Vec::new();
    let mut joined = [false; 3];
    let mut seen = std::collections::HashSet::new();
    while joined.contains(&false) {
        let line = next_line(&lines);
        match line.unwrap_or_else(|| panic!("{}", silent(&printed, &seen, &events))) {
            (n, false, line) if line.contains("subscribed") => joined[n] = true,
            (n, false, line) => events.push(format!("member {n}: {line}")),
            (n, true, line) => panic!("member {n} printed {line:?} before anything was published"),
        }
    }

    // Six publishers (six chains), in a task of their own, 5,000 messages each, windowed.
    let alice = within("connect", Client::connect(&Identity::load(env.identity("alice", addr)).unwrap()))
        .await
        .unwrap();
    let publishing = tokio::spawn(async move {
        let mut all = Vec::new();
        for _ in 0..PUBLISHERS {
            all.push(alice.publisher(chat(), PublisherOptions::default()).await.unwrap());
        }
        let sends = all.iter().enumerate().map(|(p, publisher)| async move {
            let mut window = futures_util::stream::FuturesOrdered::new();
            for i in 0..EACH {
                window.push_back(publisher.publish(format!("p{p}-{i}")));
                if window.len() >= 256 {
                    window.next().await.unwrap().unwrap();
                }
            }
            while let Some(sent) = window.next().await {
                sent.unwrap();
            }
        });
        futures_util::future::join_all(sends).await;
        alice.close().await;
    });

    // Member 0 is killed once it printed 1,000 messages; the others read on until every message was
    // printed by someone.
    let mut killed = false;
    while seen.len() < PUBLISHERS * EACH {
        let line = next_line(&lines);
        match line.unwrap_or_else(|| panic!("{}", silent(&printed, &seen, &events))) {
            (n, true, line) => {
                // What the killed member printed before it died (still in its pipe) was processed: it
                // counts.
                seen.insert(line.clone());
                printed[n].push(line);
                if n == 0 && printed[0].len() == 1_000 {
                    members[0].kill();
                    killed = true;
                }
            }
            (n, false, line) => events.push(format!("member {n}: {line}")),
        }
    }
    within("publishing", publishing).await.unwrap();

    let counts: Vec<usize> = printed.iter().map(Vec::len).collect();
    eprintln!("printed by each member (member 0 killed after 1,000): {counts:?}");
    assert!(killed, "member 0 printed fewer than 1,000 messages: {counts:?}");
    // Each message printed by exactly one of the members still running.
    let mut survivors = std::collections::HashSet::new();
    for line in printed[1].iter().chain(&printed[2]) {
        assert!(survivors.insert(line.clone()), "{line} printed twice by the members still running");
    }
    for (n, lines) in printed.iter().enumerate() {
        assert!(!lines.is_empty(), "member {n} was given nothing: {counts:?}");
    }
    // Each survivor printed each chain in order (a chain it was given after the kill starts later).
    for lines in &printed[1..] {
        let mut last = std::collections::HashMap::new();
        for line in lines {
            let (p, i) = line.trim_start_matches('p').split_once('-').unwrap();
            let i: usize = i.parse().unwrap();
            if let Some(before) = last.insert(p.to_owned(), i) {
                assert!(i > before, "p{p}-{i} printed after p{p}-{before}");
            }
        }
    }
    let integrity: Vec<_> = events.iter().filter(|e| e.contains("sealpost:")).collect();
    assert!(integrity.is_empty(), "integrity events: {integrity:?}");
    drop(members);
    broker.shutdown().await.unwrap();
}

/// A member that stops acknowledging (a process frozen with SIGSTOP: its connection stays open, so its idle
/// timeout never ends it here) is ended after `limits.shared_ack_wait_ms` (1 s here), and its chains and
/// unacknowledged messages go to the member still reading, which then reads every message the frozen one
/// had not printed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_that_stops_acknowledging_loses_its_work_to_the_others_after_the_ack_wait() {
    let mut env = Env::new();
    let limits = sealpost_broker::server::ServerLimits {
        shared_ack_wait: std::time::Duration::from_secs(1),
        idle_timeout: std::time::Duration::from_secs(120),
        ..Default::default()
    };
    let broker = env.start_with(Engine::Sled, "127.0.0.1:0".parse().unwrap(), limits).await;
    let addr = broker.local_addr();
    let (alice, _) = alice_published(&env, addr, 0).await;
    let (tx, lines) = std::sync::mpsc::channel();
    let bob = env.identity("bob", addr);
    let frozen = SharedMember::start(&bob, 0, &tx);
    drop(tx);
    let (mut printed, mut events, seen) = (vec![Vec::new()], Vec::new(), std::collections::HashSet::new());
    loop {
        match next_line(&lines).unwrap_or_else(|| panic!("{}", silent(&printed, &seen, &events))) {
            (_, false, line) if line.contains("subscribed") => break,
            (_, false, line) => events.push(line),
            (_, true, line) => panic!("printed {line:?} before anything was published"),
        }
    }
    let reader = within("connect", Client::connect(&Identity::load(env.identity("bob", addr)).unwrap()))
        .await
        .unwrap();
    let mut reading = within("subscribe", reader.subscribe(chat(), shared_workers())).await.unwrap();
    let mut publishers = Vec::new();
    for _ in 0..4 {
        publishers
            .push(within("publisher", alice.publisher(chat(), PublisherOptions::default())).await.unwrap());
    }
    // Enough that the process member is still printing when it freezes.
    const EACH: usize = 2_000;
    let receipts: Vec<_> = (0..EACH)
        .flat_map(|i| publishers.iter().enumerate().map(move |(k, p)| p.publish(format!("p{k}-{i}"))))
        .collect();
    for receipt in futures_util::future::join_all(receipts).await {
        receipt.unwrap();
    }
    // The process member printed something (it was given chains), then freezes.
    loop {
        match next_line(&lines).unwrap_or_else(|| panic!("{}", silent(&printed, &seen, &events))) {
            (_, true, line) => {
                printed[0].push(line);
                break;
            }
            (_, false, line) => events.push(line),
        }
    }
    frozen.freeze();
    // Whatever it printed before it froze (still in its pipe) counts as read.
    while let Ok((_, out, line)) = lines.try_recv() {
        if out {
            printed[0].push(line);
        }
    }
    let everything: std::collections::BTreeSet<String> =
        (0..EACH).flat_map(|i| (0..4).map(move |k| format!("p{k}-{i}"))).collect();
    let mut read: std::collections::BTreeSet<String> = printed[0].iter().cloned().collect();
    let started = std::time::Instant::now();
    while !everything.is_subset(&read) {
        // Well within the 120 s idle timeout: only the ack wait can move the frozen member's chains.
        let line = tokio::time::timeout(std::time::Duration::from_secs(20), read_in_order(&mut reading, 1))
            .await
            .unwrap_or_else(|_| {
                panic!("the frozen member's work never moved; read {} of {}", read.len(), 4 * EACH)
            });
        read.extend(line);
    }
    eprintln!(
        "the frozen member printed {}; the other read the rest within {:?}",
        printed[0].len(),
        started.elapsed()
    );
    assert!(printed[0].len() < 2 * EACH, "the frozen member read all of its chains before it froze");
    drop(frozen);
    drop(reading);
    reader.close().await;
    alice.close().await;
    broker.shutdown().await.unwrap();
}
