//! Resource limits against a real broker: each is enforced with a clear error, and the broker goes on
//! serving within them.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use crate::harness::*;
use bytes::Bytes;
use sealpost_broker::pki::LeafSpec;
use sealpost_broker::server::{Broker, ServerLimits};
use sealpost_client::{
    Client, ClientOptions, Error, ErrorCode, Identity, PublisherOptions, Reconnect, RetryBudget,
    SubscribeOptions,
};
use sealpost_protocol::{StartAt, Topic};

fn chat() -> Topic {
    Topic::new("demo.chat").unwrap()
}

async fn start(env: &mut Env, limits: ServerLimits) -> Broker {
    env.start_with(Engine::Memory, "127.0.0.1:0".parse().unwrap(), limits).await
}

async fn client(env: &Env, who: &str, broker: &Broker) -> Client {
    let identity = Identity::load(env.identity(who, broker.local_addr())).unwrap();
    within("connect", Client::connect(&identity)).await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_beyond_the_per_principal_limit_are_refused() {
    let mut env = Env::new();
    let broker =
        start(&mut env, ServerLimits { max_connections_per_principal: 2, ..ServerLimits::default() }).await;
    let (first, second) = (client(&env, "alice", &broker).await, client(&env, "alice", &broker).await);
    for c in [&first, &second] {
        within("policies", c.policies(&chat())).await.unwrap();
    }
    // A third connection of alice completes its handshake, then the broker closes it.
    let identity = Identity::load(env.identity("alice", broker.local_addr())).unwrap();
    let options = ClientOptions {
        reconnect: Reconnect {
            budget: RetryBudget::Retries(1),
            initial_delay: Duration::from_millis(10),
            ..Reconnect::default()
        },
        ..ClientOptions::default()
    };
    let third = within("connect", Client::connect_with(&identity, options)).await.unwrap();
    let err = within("third connection", third.policies(&chat())).await.unwrap_err();
    assert!(matches!(err, Error::ConnectionLost { .. } | Error::Unreachable { .. }), "{err}");
    // The limit is per principal: bob still connects, and alice's first two still work.
    within("bob", client(&env, "bob", &broker).await.policies(&chat())).await.unwrap();
    within("policies", first.policies(&chat())).await.unwrap();
    broker.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscriptions_beyond_the_per_connection_limit_are_refused() {
    let mut env = Env::new();
    let limits = ServerLimits { max_subscriptions_per_connection: 2, ..ServerLimits::default() };
    let broker = start(&mut env, limits).await;
    let bob = client(&env, "bob", &broker).await;
    let options = || SubscribeOptions { from: StartAt::Earliest, durable: None, shared: false };
    let _a = within("subscribe", bob.subscribe(chat(), options())).await.unwrap();
    let _b = within("subscribe", bob.subscribe(chat(), options())).await.unwrap();
    let err = within("third subscription", bob.subscribe(chat(), options())).await.err().unwrap();
    match &err {
        Error::Refused { code, .. } => assert_eq!(*code, ErrorCode::LIMIT_EXCEEDED, "{err}"),
        other => panic!("expected a LIMIT_EXCEEDED refusal, got {other}"),
    }
    // Another connection has its own allowance.
    let other = client(&env, "bob", &broker).await;
    within("subscribe", other.subscribe(chat(), options())).await.unwrap();
    broker.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publishes_beyond_the_principal_rate_are_refused() {
    let mut env = Env::new();
    let broker = start(&mut env, ServerLimits { publish_msgs_per_sec: 20, ..ServerLimits::default() }).await;
    let alice = client(&env, "alice", &broker).await;
    let publisher = alice.publisher(chat(), PublisherOptions { max_batch: 1, ..PublisherOptions::default() });
    let publisher = within("publisher", publisher).await.unwrap();
    let mut acked = 0;
    let mut refusal = None;
    // One message per batch, each awaited: the burst (20) passes, then the bucket runs dry long before
    // 500 messages, however slow this machine is.
    for i in 0..500 {
        match within("publish", publisher.publish(Bytes::from(format!("m{i}")))).await {
            Ok(_) => acked += 1,
            Err(e) => {
                refusal = Some(e);
                break;
            }
        }
    }
    let err = refusal.expect("500 messages passed a 20 msgs/s limit");
    assert!(matches!(&err, Error::Refused { code: ErrorCode::RATE_LIMITED, .. }), "{err}");
    assert!((20..500).contains(&acked), "{acked} acknowledged");
    // Other principals are not limited by alice's rate: bob can still read what was stored.
    let bob = client(&env, "bob", &broker).await;
    let options = SubscribeOptions { from: StartAt::Earliest, durable: None, shared: false };
    let mut sub = within("subscribe", bob.subscribe(chat(), options)).await.unwrap();
    let first = within("message", futures_util::StreamExt::next(&mut sub)).await.unwrap().unwrap();
    assert_eq!(first.payload, Bytes::from("m0"));
    broker.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscriptions_of_one_connection_share_its_budget_without_waiting_on_each_other() {
    // Sixteen subscriptions of one connection each start with a read of 64 KiB: together they fill the
    // connection's 1 MiB budget. Every batch is 200 KiB, larger than a read. A subscription that kept its
    // 64 KiB while it waited for the rest would wait for the others, which wait for it: nothing would be
    // delivered. Each must put its part back and take the batch's size whole.
    let mut env = Env::new();
    let limits = ServerLimits {
        max_frame_len: 512 * 1024,
        subscriber_read_bytes: 64 * 1024,
        // Reads from the store, which yield to the other tasks between the read's reservation and the
        // batch's: every subscription holds its part before any has read.
        tail_cache_bytes: 0,
        memory: sealpost_broker::budget::MemoryLimits {
            inflight_bytes_per_connection: 1024 * 1024,
            ..ServerLimits::default().memory
        },
        ..ServerLimits::default()
    };
    let broker = start(&mut env, limits).await;
    let alice = client(&env, "alice", &broker).await;
    let publisher = alice.publisher(chat(), PublisherOptions { max_batch: 1, ..PublisherOptions::default() });
    let publisher = within("publisher", publisher).await.unwrap();
    const MESSAGES: usize = 4;
    let bob = client(&env, "bob", &broker).await;
    let mut readers = tokio::task::JoinSet::new();
    for _ in 0..16 {
        let options = SubscribeOptions { from: StartAt::Earliest, durable: None, shared: false };
        let mut sub = within("subscribe", bob.subscribe(chat(), options)).await.unwrap();
        readers.spawn(async move {
            let mut firsts = Vec::new();
            for _ in 0..MESSAGES {
                let message = futures_util::StreamExt::next(&mut sub).await.unwrap().unwrap();
                assert_eq!(message.payload.len(), 200 * 1024);
                firsts.push(message.payload[0]);
            }
            firsts
        });
    }
    // Every subscription waits at the end of the topic: each batch wakes all sixteen at once.
    for i in 0..MESSAGES {
        within("publish", publisher.publish(Bytes::from(vec![i as u8; 200 * 1024]))).await.unwrap();
    }
    let expected: Vec<u8> = (0..MESSAGES as u8).collect();
    let mut done = 0;
    while let Some(read) = within("every subscription is served", readers.join_next()).await {
        assert_eq!(read.unwrap(), expected);
        done += 1;
    }
    assert_eq!(done, 16);
    broker.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_connection_is_closed_by_the_broker() {
    let mut env = Env::new();
    let limits = ServerLimits { idle_timeout: Duration::from_millis(300), ..ServerLimits::default() };
    let broker = start(&mut env, limits).await;
    let cert = env.ca.issue(&LeafSpec::client("alice", &[env.key("alice").public_key()])).unwrap();
    let raw =
        RawClient::connect(broker.local_addr(), &env.ca.cert_pem(), ClientAuth::Cert(&cert)).await.unwrap();
    // Silent: the idle timeout (the smaller of both sides') closes it.
    let reason = within("idle close", raw.conn.closed()).await;
    assert!(matches!(reason, quinn::ConnectionError::TimedOut), "{reason:?}");
    broker.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_beyond_the_total_limit_are_refused() {
    let mut env = Env::new();
    let broker = start(&mut env, ServerLimits { max_connections: 1, ..ServerLimits::default() }).await;
    let alice = client(&env, "alice", &broker).await;
    within("policies", alice.policies(&chat())).await.unwrap();
    // The broker refuses the second connection before any handshake work: a client allowed no retry is
    // told at once (a refusal a slot may cure: with a budget, the client keeps trying within it).
    let bob = Identity::load(env.identity("bob", broker.local_addr())).unwrap();
    let once = ClientOptions {
        reconnect: Reconnect { budget: RetryBudget::Retries(0), ..Reconnect::default() },
        ..ClientOptions::default()
    };
    let err = within("second connection", Client::connect_with(&bob, once)).await.err().unwrap();
    assert!(err.is_retryable(), "{err}");
    assert!(matches!(err, Error::Unreachable { .. } | Error::ConnectionLost { .. }), "{err}");
    // The first connection is still served.
    within("policies", alice.policies(&chat())).await.unwrap();
    broker.shutdown().await.unwrap();
}

/// The stream limit is QUIC stream credit: a connection can have `max_streams_per_connection` streams open
/// at once; opening one more waits (in QUIC that is not an error) until one of them closes, and the
/// connection goes on working.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streams_beyond_the_per_connection_limit_wait_until_one_closes() {
    use std::future::Future;
    use std::task::Poll;

    const LIMIT: u32 = 4;
    let mut env = Env::new();
    let broker =
        start(&mut env, ServerLimits { max_streams_per_connection: LIMIT, ..ServerLimits::default() }).await;
    let cert = env.ca.issue(&LeafSpec::client("alice", &[env.key("alice").public_key()])).unwrap();
    let raw =
        RawClient::connect(broker.local_addr(), &env.ca.cert_pem(), ClientAuth::Cert(&cert)).await.unwrap();
    let head = sealpost_protocol::Frame::Head {
        request_id: 1,
        topic: chat(),
        publisher: env.key("alice").public_key(),
    };
    // LIMIT streams, each asked a question and answered, all left open.
    let mut streams = Vec::new();
    for _ in 0..LIMIT {
        let (mut send, mut recv) = within("a stream within the limit", raw.conn.open_bi()).await.unwrap();
        send.write_all(&head.to_vec().unwrap()).await.unwrap();
        assert_eq!(read_frame(&mut recv).await.name(), "HeadIs");
        streams.push((send, recv));
    }
    // The broker's initial credit is LIMIT streams: one more cannot open now.
    let mut extra = std::pin::pin!(raw.conn.open_bi());
    let waiting = std::future::poll_fn(|cx| Poll::Ready(extra.as_mut().poll(cx).is_pending())).await;
    assert!(waiting, "stream {} opened beyond the limit of {LIMIT}", LIMIT + 1);

    // Closing one stream (both sides finish) gives the credit back, and the waiting stream opens and works.
    let (mut send, mut recv) = streams.remove(0);
    send.finish().unwrap();
    within("the broker finishes the closed stream", recv.read_to_end(1 << 20)).await.unwrap();
    let (mut send, mut recv) = within("the waiting stream opens", extra).await.unwrap();
    send.write_all(&head.to_vec().unwrap()).await.unwrap();
    assert_eq!(read_frame(&mut recv).await.name(), "HeadIs");
    broker_still_serves(&env, broker.local_addr()).await;
    broker.shutdown().await.unwrap();
}

/// A frame whose first bytes arrived must be complete within the frame deadline: a client that sends a
/// length prefix and a little of the body, then nothing (QUIC keeps the connection alive with pings), has
/// its stream stopped with `FRAME_TIMEOUT` and told so; its connection goes on, and a stream that is idle
/// *between* frames is left alone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frame_not_completed_within_the_deadline_is_stopped_with_frame_timeout() {
    use sealpost_broker::budget::MemoryLimits;
    use sealpost_protocol::Frame;

    const DEADLINE: Duration = Duration::from_millis(300);
    let mut env = Env::new();
    let memory = MemoryLimits { frame_timeout_ms: DEADLINE.as_millis() as u64, ..MemoryLimits::default() };
    let broker = start(&mut env, ServerLimits { memory, ..ServerLimits::default() }).await;
    let cert = env.ca.issue(&LeafSpec::client("alice", &[env.key("alice").public_key()])).unwrap();
    let raw =
        RawClient::connect(broker.local_addr(), &env.ca.cert_pem(), ClientAuth::Cert(&cert)).await.unwrap();
    let get = Frame::GetPolicies { request_id: 1, topic: chat() };

    // An idle stream between two whole frames: answered both times.
    let (mut idle_send, mut idle_recv) = raw.conn.open_bi().await.unwrap();
    idle_send.write_all(&get.to_vec().unwrap()).await.unwrap();
    assert_eq!(read_frame(&mut idle_recv).await.name(), "Policies");

    // A frame that claims 256 bytes and sends 2.
    let (mut send, mut recv) = raw.conn.open_bi().await.unwrap();
    send.write_all(&[0, 0, 1, 0, 1, 0]).await.unwrap();
    let stopped = within("the broker stops the stalled stream", send.stopped()).await.unwrap();
    assert_eq!(stopped.map(u64::from), Some(u64::from(ErrorCode::FRAME_TIMEOUT.0)));
    match read_frame(&mut recv).await {
        Frame::Error { code, .. } => assert_eq!(code, ErrorCode::FRAME_TIMEOUT),
        other => panic!("expected a FRAME_TIMEOUT error frame, got {other:?}"),
    }

    // The idle stream has now been idle longer than the deadline: it was not stopped.
    idle_send.write_all(&get.to_vec().unwrap()).await.unwrap();
    assert_eq!(read_frame(&mut idle_recv).await.name(), "Policies");
    // And the connection serves new streams.
    let answers = within("a new stream", raw.exchange(&[get], 1)).await.unwrap();
    assert_eq!(answers[0].name(), "Policies");
    broker.shutdown().await.unwrap();
}

/// Every open stream holds state in the broker: beyond the principal's stream limit (over all its
/// connections) a stream is refused at once with `LIMIT_EXCEEDED`, other principals are not affected, and a
/// stream that closes makes room again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streams_beyond_the_principals_limit_are_refused_with_limit_exceeded() {
    use sealpost_protocol::Frame;

    let mut env = Env::new();
    let broker =
        start(&mut env, ServerLimits { max_streams_per_principal: 3, ..ServerLimits::default() }).await;
    let cert = env.ca.issue(&LeafSpec::client("alice", &[env.key("alice").public_key()])).unwrap();
    let ca = env.ca.cert_pem();
    let connect = || RawClient::connect(broker.local_addr(), &ca, ClientAuth::Cert(&cert));
    let (first, second) = (connect().await.unwrap(), connect().await.unwrap());
    let get = Frame::GetPolicies { request_id: 1, topic: chat() };
    // Three streams over two connections, each answered and left open.
    let mut open = Vec::new();
    for raw in [&first, &second, &second] {
        let (mut send, mut recv) = raw.conn.open_bi().await.unwrap();
        send.write_all(&get.to_vec().unwrap()).await.unwrap();
        assert_eq!(read_frame(&mut recv).await.name(), "Policies");
        open.push((send, recv));
    }
    let (mut send, mut recv) = first.conn.open_bi().await.unwrap();
    send.write_all(&get.to_vec().unwrap()).await.unwrap();
    let refused = within("the fourth stream is refused", recv.read_to_end(1024)).await.unwrap_err();
    let limit = quinn::VarInt::from(ErrorCode::LIMIT_EXCEEDED.0);
    assert!(
        matches!(refused, quinn::ReadToEndError::Read(quinn::ReadError::Reset(code)) if code == limit),
        "{refused}"
    );
    // The limit is alice's: bob is served.
    let bob_cert = env.ca.issue(&LeafSpec::client("bob", &[env.key("bob").public_key()])).unwrap();
    let bob = RawClient::connect(broker.local_addr(), &ca, ClientAuth::Cert(&bob_cert)).await.unwrap();
    assert_eq!(
        within("bob", bob.exchange(std::slice::from_ref(&get), 1)).await.unwrap()[0].name(),
        "Policies"
    );

    // One stream closes (both sides finish): a new one is served. The broker finishes its side just before
    // its task gives the slot back, so a new stream may still find none: retry.
    let (mut send, mut recv) = open.remove(0);
    send.finish().unwrap();
    within("the broker finishes the closed stream", recv.read_to_end(1 << 20)).await.unwrap();
    let mut served = false;
    for _ in 0..100 {
        if let Ok(answers) = within("a new stream", first.exchange(std::slice::from_ref(&get), 1)).await {
            assert_eq!(answers[0].name(), "Policies");
            served = true;
            break;
        }
    }
    assert!(served, "no new stream was served after one closed");
    broker.shutdown().await.unwrap();
}
