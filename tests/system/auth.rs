//! Who may connect, publish and subscribe: each refusal against a real broker, and the broker keeps
//! serving others afterwards.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use crate::harness::*;
use bytes::Bytes;
use futures_util::StreamExt;
use sealpost_broker::pki::{DevCa, LeafSpec};
use sealpost_client::{Action, Client, Error, ErrorCode, Identity, PublisherOptions, SubscribeOptions};
use sealpost_protocol::{StartAt, Topic};

fn chat() -> Topic {
    Topic::new("demo.chat").unwrap()
}

/// A connection that must be refused: the handshake, or at the latest the first exchange, fails.
async fn assert_refused(addr: std::net::SocketAddr, trusted_ca: &str, auth: ClientAuth<'_>) {
    let Ok(raw) = RawClient::connect(addr, trusted_ca, auth).await else { return };
    let head = sealpost_protocol::Frame::Head {
        request_id: 1,
        topic: chat(),
        publisher: sealpost_protocol::SigningKey::from_bytes(&[1; 32]).public_key(),
    };
    let answer = raw.exchange(&[head], 1).await;
    assert!(answer.is_err(), "a refused client got an answer: {answer:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn certificate_from_another_ca_is_refused() {
    let mut env = Env::new();
    let broker = env.start(Engine::Memory).await;
    let other_ca = DevCa::generate("another CA").unwrap();
    let cert = other_ca.issue(&LeafSpec::client("alice", &[env.key("alice").public_key()])).unwrap();
    assert_refused(broker.local_addr(), &env.ca.cert_pem(), ClientAuth::Cert(&cert)).await;

    // The real client reports it as a rejected certificate.
    std::fs::write(env.dir.path().join("other-ca.pem"), other_ca.cert_pem()).unwrap();
    let path = env.identity_with_cert("alice", broker.local_addr(), &cert, "ca.pem");
    let err = within("connect", async {
        let client = Client::connect(&Identity::load(path).unwrap()).await?;
        client.publisher(chat(), PublisherOptions::default()).await.map(|_| ())
    })
    .await
    .unwrap_err();
    assert!(matches!(err, Error::CertificateRejected { .. } | Error::ConnectionLost { .. }), "{err}");
    broker_still_serves(&env, broker.local_addr()).await;
    broker.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connection_without_client_certificate_is_refused() {
    let mut env = Env::new();
    let broker = env.start(Engine::Memory).await;
    assert_refused(broker.local_addr(), &env.ca.cert_pem(), ClientAuth::None).await;
    broker_still_serves(&env, broker.local_addr()).await;
    broker.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_refuses_a_broker_it_does_not_trust() {
    let mut env = Env::new();
    let broker = env.start(Engine::Memory).await;
    let other_ca = DevCa::generate("not the broker's CA").unwrap();
    std::fs::write(env.dir.path().join("other-ca.pem"), other_ca.cert_pem()).unwrap();
    let cert = env.ca.issue(&LeafSpec::client("alice", &[env.key("alice").public_key()])).unwrap();
    let path = env.identity_with_cert("alice", broker.local_addr(), &cert, "other-ca.pem");
    let err = within("connect", Client::connect(&Identity::load(path).unwrap())).await.unwrap_err();
    assert!(matches!(err, Error::BrokerNotTrusted { .. }), "{err}");
    assert!(err.to_string().starts_with("broker certificate not trusted"), "{err}");
    broker.shutdown().await.unwrap();
}

async fn refused_publish(env: &Env, who: &str, addr: std::net::SocketAddr) -> Error {
    let client =
        within("connect", Client::connect(&Identity::load(env.identity(who, addr)).unwrap())).await.unwrap();
    within("publish", async {
        let publisher = client.publisher(chat(), PublisherOptions::default()).await?;
        publisher.publish(Bytes::from("should not be stored")).await.map(|_| ())
    })
    .await
    .unwrap_err()
}

async fn refused_subscribe(env: &Env, who: &str, addr: std::net::SocketAddr) -> Error {
    let client =
        within("connect", Client::connect(&Identity::load(env.identity(who, addr)).unwrap())).await.unwrap();
    let options = SubscribeOptions { from: StartAt::Earliest, durable: None, shared: false };
    let result = within("subscribe", async {
        let mut sub = client.subscribe(chat(), options).await?;
        // A refusal may also arrive as the stream's first item.
        match sub.next().await {
            Some(Err(e)) => Err(e),
            other => Ok(other.map(|m| m.map(|m| m.offset))),
        }
    })
    .await;
    result.unwrap_err()
}

fn assert_not_authorized(err: &Error, action: Action) {
    match err {
        Error::Refused { action: a, code, topic, .. } => {
            assert_eq!((*a, *code), (action, ErrorCode::NOT_AUTHORIZED), "{err}");
            assert_eq!(topic, &chat());
        }
        other => panic!("expected a refusal, got {other}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mallory_is_refused_publish_and_subscribe() {
    let mut env = Env::new();
    let broker = env.start(Engine::Memory).await;
    let err = refused_publish(&env, "mallory", broker.local_addr()).await;
    assert_not_authorized(&err, Action::Publish);
    assert_eq!(err.to_string(), "not authorized to publish on demo.chat");
    let err = refused_subscribe(&env, "mallory", broker.local_addr()).await;
    assert_not_authorized(&err, Action::Subscribe);
    broker_still_serves(&env, broker.local_addr()).await;
    broker.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bob_is_refused_publish() {
    let mut env = Env::new();
    let broker = env.start(Engine::Memory).await;
    let err = refused_publish(&env, "bob", broker.local_addr()).await;
    assert_not_authorized(&err, Action::Publish);
    // Nothing bob tried was stored: the first message on the topic is alice's.
    broker_still_serves(&env, broker.local_addr()).await;
    let bob = within(
        "connect",
        Client::connect(&Identity::load(env.identity("bob", broker.local_addr())).unwrap()),
    )
    .await
    .unwrap();
    let mut sub = bob
        .subscribe(chat(), SubscribeOptions { from: StartAt::Earliest, durable: None, shared: false })
        .await
        .unwrap();
    let first = within("message", sub.next()).await.unwrap().unwrap();
    assert_eq!((first.offset.0, first.payload), (0, Bytes::from("still here")));
    broker.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn denied_topic_with_data_and_topic_never_used_answer_the_same() {
    let mut env = Env::new();
    let broker = env.start(Engine::Memory).await;
    broker_still_serves(&env, broker.local_addr()).await; // demo.chat now holds data
    let cert = env.ca.issue(&LeafSpec::client("mallory", &[env.key("mallory").public_key()])).unwrap();
    let raw =
        RawClient::connect(broker.local_addr(), &env.ca.cert_pem(), ClientAuth::Cert(&cert)).await.unwrap();
    let sub = |topic: &str| sealpost_protocol::Frame::Subscribe {
        request_id: 9,
        topic: Topic::new(topic).unwrap(),
        from: StartAt::Earliest,
        durable: None,
    };
    let exists = raw.exchange(&[sub("demo.chat")], 1).await.unwrap();
    let never_used = raw.exchange(&[sub("demo.never-used")], 1).await.unwrap();
    assert_eq!(exists, never_used);
    assert!(
        matches!(&exists[0], sealpost_protocol::Frame::Error { code: ErrorCode::NOT_AUTHORIZED, .. }),
        "{exists:?}"
    );
    broker.shutdown().await.unwrap();
}
