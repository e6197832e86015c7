//! Reloading a running `sealpost-broker serve` (docs/operations.md, "Reloading"): a CRL reload closes the
//! revoked client's connections within a second while the others go on; an ACL reload ends the streams
//! (subscriptions, publish streams) it no longer allows with `NOT_AUTHORIZED` and the rest of the connection goes on; a reload that fails its
//! checks keeps the running configuration and shows in the log, the audit log and the metrics.
//!
//! Every wait is bounded and waits for something to happen (a close, a frame, a log line, a metric).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::StreamExt;
use sealpost_broker::pki::{Issued, LeafSpec};
use sealpost_client::{Client, Identity, PublisherOptions, SubscribeOptions};
use sealpost_protocol::{ErrorCode, Frame, StartAt, Topic};

use crate::harness::*;

/// How soon a revoked certificate's connections must be closed after the reload.
const REVOCATION_BOUND: Duration = Duration::from_secs(1);

fn topic(name: &str) -> Topic {
    Topic::new(name).unwrap()
}

/// A subprocess broker whose configuration names a CRL (empty at first), a metrics endpoint and an audit
/// log: what a reload changes and where it shows.
struct Scene {
    env: Env,
    broker: BrokerProcess,
    metrics: SocketAddr,
}

impl Scene {
    fn start() -> Scene {
        let mut env = Env::new();
        let config = env.write_config();
        let dir = env.dir.path().to_path_buf();
        write_atomically(&dir.join("crl.pem"), &env.ca.crl(&[]).unwrap());
        sealpost_broker::audit::AuditKey::generate().write_new(&dir.join("audit.key")).unwrap();
        let text = std::fs::read_to_string(&config).unwrap();
        // `[tls]` is the file's last table: the CRL list joins it.
        let text = format!(
            "{text}crls = [\"crl.pem\"]\n\n[metrics]\nlisten = \"127.0.0.1:0\"\n\n[audit]\ndir = \"audit\"\nkey = \"audit.key\"\n"
        );
        write_atomically(&config, &text);
        let broker = BrokerProcess::start(&config);
        let log = broker.log_text();
        let url = log.lines().find_map(|l| l.split("metrics on ").nth(1)).expect("a metrics line").trim();
        let metrics = url.trim_start_matches("http://").trim_end_matches("/metrics").parse().unwrap();
        Scene { env, broker, metrics }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.env.dir.path().join(name)
    }

    /// A client certificate of `who`, kept by the test (so that a CRL can name it).
    fn certificate(&self, who: &str) -> Issued {
        self.env.ca.issue(&LeafSpec::client(who, &[self.env.key(who).public_key()])).unwrap()
    }

    async fn raw(&self, cert: &Issued) -> RawClient {
        RawClient::connect(self.broker.addr, &self.env.ca.cert_pem(), ClientAuth::Cert(cert)).await.unwrap()
    }

    fn sighup(&self) {
        let sent = std::process::Command::new("kill")
            .args(["-HUP", &self.broker.pid().to_string()])
            .status()
            .unwrap();
        assert!(sent.success());
    }

    /// Waits (bounded) for a log line holding every one of `parts`; returns it.
    async fn log_line(&self, parts: &[&str]) -> String {
        within("a log line", async {
            loop {
                let found = self
                    .broker
                    .log_text()
                    .lines()
                    .find(|l| parts.iter().all(|p| l.contains(p)))
                    .map(str::to_owned);
                if let Some(line) = found {
                    return line;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
        .await
    }

    /// Waits (bounded) until the metric `series` reaches `at_least`.
    async fn metric(&self, series: &str, at_least: f64) -> f64 {
        within("a metric", async {
            loop {
                let value = scrape(self.metrics, series).await;
                if value >= at_least {
                    return value;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
        .await
    }

    /// Stops the broker cleanly (the audit log gets its final checkpoint), checks that its audit log
    /// verifies, and returns its entries.
    fn stop(self) -> Vec<serde_json::Value> {
        let dir = self.path("audit");
        let config = self.path("broker.toml");
        self.broker.terminate();
        let verified = std::process::Command::new(cargo_bin("sealpost-broker"))
            .args(["audit", "verify", "--config"])
            .arg(&config)
            .output()
            .unwrap();
        let out = String::from_utf8_lossy(&verified.stdout);
        assert_eq!(verified.status.code(), Some(0), "{out}{}", String::from_utf8_lossy(&verified.stderr));
        sealpost_broker::audit::list_files(&dir)
            .unwrap()
            .into_iter()
            .flat_map(|(_, p)| {
                std::fs::read_to_string(p).unwrap().lines().map(str::to_owned).collect::<Vec<_>>()
            })
            .map(|l| serde_json::from_str::<serde_json::Value>(&l).unwrap())
            .filter(|v| v.get("checkpoint").is_none())
            .collect()
    }
}

/// Writes `text` to `path` as an operator should: a complete file renamed into place.
fn write_atomically(path: &Path, text: &str) {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

/// The value of `series` in a scrape of the plain metrics endpoint at `addr` (0 if absent).
async fn scrape(addr: SocketAddr, series: &str) -> f64 {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = within("connect", tokio::net::TcpStream::connect(addr)).await.unwrap();
    let request = "GET /metrics HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n";
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut body = String::new();
    within("scrape", stream.read_to_string(&mut body)).await.unwrap();
    body.lines().find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok()).unwrap_or(0.0)
}

/// Opens a subscription stream of `topic` from the latest offset on `client`'s connection; returns the
/// stream once `Subscribed` came back.
async fn subscribe(client: &RawClient, name: &str) -> (quinn::SendStream, quinn::RecvStream) {
    let (mut send, mut recv) = client.conn.open_bi().await.unwrap();
    let subscribe =
        Frame::Subscribe { request_id: 1, topic: topic(name), from: StartAt::Latest, durable: None };
    send.write_all(&subscribe.to_vec().unwrap()).await.unwrap();
    let answer = read_frame(&mut recv).await;
    assert!(matches!(answer, Frame::Subscribed { .. }), "{answer:?}");
    (send, recv)
}

/// alice's publisher of `name` on a connection of her own.
async fn alice_publishes(env: &Env, addr: SocketAddr, name: &str, payload: &'static str) {
    let alice = Identity::load(env.identity("alice", addr)).unwrap();
    let alice = within("connect", Client::connect(&alice)).await.unwrap();
    let publisher =
        within("publisher", alice.publisher(topic(name), PublisherOptions::default())).await.unwrap();
    within("publish", publisher.publish(Bytes::from(payload))).await.unwrap();
}

/// Waits (bounded) for `conn` to be closed by the broker; its application close code and reason, and how
/// long after `since` it was seen.
async fn closed(conn: &quinn::Connection, since: Instant) -> (u64, String, Duration) {
    let error = within("the connection's close", conn.closed()).await;
    let after = since.elapsed();
    match error {
        quinn::ConnectionError::ApplicationClosed(close) => {
            (close.error_code.into_inner(), String::from_utf8_lossy(&close.reason).into_owned(), after)
        }
        other => panic!("not closed by the broker: {other}"),
    }
}

/// A CRL that revokes bob's certificate, applied on `trigger` (SIGHUP, or the file change alone): bob's
/// connection is closed within a second with CERTIFICATE_REVOKED (3), while alice's subscription, opened
/// before the reload, goes on receiving.
async fn revocation_closes_the_revoked_client_within_a_second(sighup: bool) {
    let scene = Scene::start();
    let addr = scene.broker.addr;
    let bob_cert = scene.certificate("bob");
    let bob = scene.raw(&bob_cert).await;
    let _bobs_subscription = subscribe(&bob, "demo.chat").await;
    let alice = Identity::load(scene.env.identity("alice", addr)).unwrap();
    let alice = within("connect", Client::connect(&alice)).await.unwrap();
    let options = SubscribeOptions { from: StartAt::Latest, durable: None, shared: false };
    let mut alices = within("subscribe", alice.subscribe(topic("demo.chat"), options)).await.unwrap();

    write_atomically(&scene.path("crl.pem"), &scene.env.ca.crl(&[&bob_cert]).unwrap());
    let reloaded = Instant::now();
    if sighup {
        scene.sighup();
    }
    let (code, reason, after) = closed(&bob.conn, reloaded).await;
    assert_eq!((code, reason.as_str()), (3, "client certificate revoked or no longer valid"));
    assert!(after < REVOCATION_BOUND, "bob's connection was closed {after:?} after the CRL was written");
    eprintln!("revoked connection closed {after:?} after the CRL was written (sighup: {sighup})");

    alice_publishes(&scene.env, addr, "demo.chat", "after the reload").await;
    let message = within("alice's delivery", alices.next()).await.unwrap().unwrap();
    assert_eq!(message.payload, Bytes::from("after the reload"));
    // bob's certificate is refused from now on, anyone else's is not.
    let again = RawClient::connect(addr, &scene.env.ca.cert_pem(), ClientAuth::Cert(&bob_cert)).await;
    if let Ok(again) = again {
        let get = Frame::GetPolicies { request_id: 1, topic: topic("demo.chat") };
        assert!(again.exchange(&[get], 1).await.is_err(), "a revoked certificate got an answer");
    }
    assert_eq!(scene.metric("sealpost_revoked_total{kind=\"connection\"}", 1.0).await, 1.0);
    scene.log_line(&["connection closed", "no longer verifies", "bob"]).await;
    let audit = scene.stop();
    let revoked = |e: &serde_json::Value| {
        e["action"] == "connect" && e["principal"] == "bob" && e["reason"] == "certificate_revoked"
    };
    assert!(audit.iter().any(revoked), "no certificate_revoked entry in {audit:#?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crl_reloaded_on_sighup_closes_the_revoked_clients_connection_within_a_second() {
    revocation_closes_the_revoked_client_within_a_second(true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crl_file_change_closes_the_revoked_clients_connection_within_a_second() {
    revocation_closes_the_revoked_client_within_a_second(false).await;
}

/// bob subscribes to demo.chat and demo.events on one connection; an ACL that denies him demo.chat ends
/// that stream with NOT_AUTHORIZED, and his demo.events subscription and the connection go on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_acl_reload_ends_the_stream_it_no_longer_allows_and_the_connection_goes_on() {
    let scene = Scene::start();
    let addr = scene.broker.addr;
    let bob = scene.raw(&scene.certificate("bob")).await;
    let (_chat_send, mut chat) = subscribe(&bob, "demo.chat").await;
    let (_events_send, mut events) = subscribe(&bob, "demo.events").await;

    let deny = "\n[[rule]]\nprincipals = [\"bob\"]\ntopics = [\"demo.chat\"]\nactions = [\"subscribe\"]\neffect = \"deny\"\n";
    write_atomically(&scene.path("acl.toml"), &format!("{ACL}{deny}"));
    match read_frame(&mut chat).await {
        Frame::Error { code, .. } => assert_eq!(code, ErrorCode::NOT_AUTHORIZED),
        other => panic!("expected NOT_AUTHORIZED on the demo.chat stream, got {other:?}"),
    }
    assert!(try_read_frame(&mut chat).await.is_err(), "the demo.chat stream did not end");

    alice_publishes(&scene.env, addr, "demo.events", "still subscribed").await;
    assert!(matches!(read_frame(&mut events).await, Frame::Deliver { .. }));
    // The connection takes new streams; a new subscription to demo.chat is refused.
    let get = Frame::GetPolicies { request_id: 2, topic: topic("demo.events") };
    assert!(matches!(bob.exchange(&[get], 1).await.unwrap()[..], [Frame::Policies { .. }]));
    let again =
        Frame::Subscribe { request_id: 3, topic: topic("demo.chat"), from: StartAt::Latest, durable: None };
    match &bob.exchange(&[again], 1).await.unwrap()[..] {
        [Frame::Error { code, .. }] => assert_eq!(*code, ErrorCode::NOT_AUTHORIZED),
        other => panic!("{other:?}"),
    }
    assert!(bob.conn.close_reason().is_none(), "the connection was closed");
    assert_eq!(scene.metric("sealpost_revoked_total{kind=\"subscription\"}", 1.0).await, 1.0);
    assert_eq!(scene.metric("sealpost_config_reloads_total{result=\"ok\"}", 1.0).await, 1.0);
    let audit = scene.stop();
    let ended = |e: &serde_json::Value| {
        e["action"] == "subscribe"
            && e["principal"] == "bob"
            && e["topic"] == "demo.chat"
            && e["decision"] == "refuse"
            && e["reason"] == "NOT_AUTHORIZED"
    };
    assert!(audit.iter().any(ended), "no refused subscribe entry in {audit:#?}");
    assert!(audit.iter().any(|e| e["action"] == "reload" && e["decision"] == "allow"), "{audit:#?}");
}

/// A broken ACL file, then a key that does not match the certificate: each reload is refused, names its
/// file in the log, counts as refused and is in the audit log; the broker serves as before, the
/// connection that was open included.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_that_fails_its_checks_keeps_the_running_configuration() {
    let scene = Scene::start();
    let addr = scene.broker.addr;
    let loaded_at = scene.metric("sealpost_config_last_reload_success_timestamp_seconds", 1.0).await;
    let bob = scene.raw(&scene.certificate("bob")).await;
    let (_send, mut chat) = subscribe(&bob, "demo.chat").await;

    write_atomically(&scene.path("acl.toml"), "[[rule]]\nprincipals = [\"bob\"]\n");
    let line = scene.log_line(&["configuration reload refused", "acl.toml"]).await;
    assert!(line.contains("ERROR"), "{line}");
    assert_eq!(scene.metric("sealpost_config_reloads_total{result=\"refused\"}", 1.0).await, 1.0);
    write_atomically(&scene.path("acl.toml"), ACL);
    scene.metric("sealpost_config_reloads_total{result=\"ok\"}", 1.0).await;

    let other = scene.env.ca.issue(&LeafSpec::local_server()).unwrap();
    write_atomically(&scene.path("server.key"), &other.key_pem);
    let line = scene.log_line(&["configuration reload refused", "server.key"]).await;
    assert!(line.contains("server.pem") && !line.contains("PRIVATE KEY"), "{line}");
    assert_eq!(scene.metric("sealpost_config_reloads_total{result=\"refused\"}", 2.0).await, 2.0);

    // Served as before: the open subscription, and new connections (under the old certificate and key).
    alice_publishes(&scene.env, addr, "demo.chat", "as before").await;
    assert!(matches!(read_frame(&mut chat).await, Frame::Deliver { .. }));
    broker_still_serves(&scene.env, addr).await;
    assert_eq!(scrape(scene.metrics, "sealpost_config_reloads_total{result=\"ok\"}").await, 1.0);
    assert!(
        scrape(scene.metrics, "sealpost_config_last_reload_success_timestamp_seconds").await >= loaded_at
    );
    let audit = scene.stop();
    let refused: Vec<&serde_json::Value> =
        audit.iter().filter(|e| e["action"] == "reload" && e["decision"] == "refuse").collect();
    assert_eq!(refused.len(), 2, "{audit:#?}");
    assert!(refused[0]["reason"].as_str().unwrap().contains("acl.toml"), "{refused:?}");
    assert!(refused[1]["reason"].as_str().unwrap().contains("server.key"), "{refused:?}");
}

/// alice's raw publish stream on demo.chat: once an ACL denies her publishing there, the stream ends with
/// NOT_AUTHORIZED (after the answers already due), and the connection goes on (she may still read
/// demo.chat's policies).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_acl_reload_ends_a_publish_stream_it_no_longer_allows() {
    use rand::SeedableRng;
    use sealpost_protocol::{seal, ChainHead, ChainId, Epoch, Limits, SealParams, Timestamp};
    let scene = Scene::start();
    let alice = scene.raw(&scene.certificate("alice")).await;
    let (_sub_send, mut chat) = subscribe(&alice, "demo.chat").await;
    let params = SealParams {
        topic: topic("demo.chat"),
        epoch: Epoch(1),
        chain: ChainId([7; 16]),
        first_seq: ChainHead::GENESIS.next_seq,
        prev_digest: ChainHead::GENESIS.prev_digest,
        created_at: Timestamp(1_763_856_000_000),
    };
    let mut rng = rand::rngs::StdRng::seed_from_u64(15);
    let key = scene.env.key("alice");
    let batch = seal(key, &scene.env.content_key, params, &["before"], &Limits::default(), &mut rng).unwrap();
    let (mut send, mut recv) = alice.conn.open_bi().await.unwrap();
    let publish = Frame::Publish { request_id: 1, batch: batch.into_bytes() };
    send.write_all(&publish.to_vec().unwrap()).await.unwrap();
    assert!(matches!(read_frame(&mut recv).await, Frame::Published { request_id: 1, .. }));
    assert!(matches!(read_frame(&mut chat).await, Frame::Deliver { .. }));

    let deny = "\n[[rule]]\nprincipals = [\"alice\"]\ntopics = [\"demo.chat\"]\nactions = [\"publish\"]\neffect = \"deny\"\n";
    write_atomically(&scene.path("acl.toml"), &format!("{ACL}{deny}"));
    match read_frame(&mut recv).await {
        Frame::Error { request_id: None, code, .. } => assert_eq!(code, ErrorCode::NOT_AUTHORIZED),
        other => panic!("expected NOT_AUTHORIZED on the publish stream, got {other:?}"),
    }
    assert!(try_read_frame(&mut recv).await.is_err(), "the publish stream did not end");
    // The connection goes on: alice may still read demo.chat.
    let get = Frame::GetPolicies { request_id: 2, topic: topic("demo.chat") };
    assert!(matches!(alice.exchange(&[get], 1).await.unwrap()[..], [Frame::Policies { .. }]));
    assert!(alice.conn.close_reason().is_none(), "the connection was closed");
    assert_eq!(scene.metric("sealpost_revoked_total{kind=\"publish\"}", 1.0).await, 1.0);
    drop(chat);
    scene.stop();
}
