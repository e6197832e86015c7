//! Broker outages under a time budget ([`RetryBudget::Duration`]): the broker stops for a minute while a
//! publisher has messages in flight; the client says `Disconnected` at once and `Connected` once a
//! publisher reconnects; every message is acknowledged after the broker returns, and a reader finds each
//! exactly once, in order: nothing lost, nothing duplicated by the resends. And `Client::connect` waits for
//! a broker that is not up yet instead of failing at once.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use bytes::Bytes;
use futures_util::StreamExt;
use sealpost_client::{
    Client, ClientOptions, ConnectionState, Identity, PublisherOptions, Reconnect, RetryBudget,
    SubscribeOptions,
};
use sealpost_protocol::{StartAt, Topic};

use crate::harness::*;

/// How long the broker is away: the outage the issue names, longer than the old default retry count
/// survived in some runs.
const OUTAGE: Duration = Duration::from_secs(60);

fn chat() -> Topic {
    Topic::new("demo.chat").unwrap()
}

fn patient(budget: Duration) -> ClientOptions {
    ClientOptions {
        connect_timeout: Duration::from_millis(500),
        reconnect: Reconnect {
            initial_delay: Duration::from_millis(50),
            max_delay: Duration::from_secs(1),
            budget: RetryBudget::Duration(budget),
        },
        ..ClientOptions::default()
    }
}

async fn state_becomes(
    state: &mut tokio::sync::watch::Receiver<ConnectionState>,
    what: &str,
    wanted: fn(&ConnectionState) -> bool,
) {
    within(what, state.wait_for(wanted)).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_minute_long_outage_under_a_time_budget_loses_and_duplicates_nothing() {
    let mut env = Env::new();
    let broker = env.start(Engine::Sled).await;
    let addr = broker.local_addr();
    let identity = Identity::load(env.identity("alice", addr)).unwrap();
    let alice = within("connect", Client::connect_with(&identity, patient(OUTAGE * 2))).await.unwrap();
    let mut state = alice.connection_state();
    assert!(matches!(*state.borrow_and_update(), ConnectionState::Connected));
    let publisher = within("publisher", alice.publisher(chat(), PublisherOptions::default())).await.unwrap();
    let message = |i: usize| Bytes::from(format!("m{i}"));

    for i in 0..100 {
        within("publish before", publisher.publish(message(i))).await.unwrap();
    }
    within("broker stop", broker.shutdown()).await.unwrap();
    state_becomes(&mut state, "disconnected", |s| matches!(s, ConnectionState::Disconnected { .. })).await;

    // Published while the broker is away: they wait in the publisher, which keeps reconnecting.
    let during: Vec<_> = (100..200).map(|i| publisher.publish(message(i))).collect();
    tokio::time::sleep(OUTAGE).await;
    let broker = env.start_at(Engine::Sled, addr).await;
    for (i, receipt) in during.into_iter().enumerate() {
        let receipt = within("publish during", receipt).await;
        assert!(receipt.is_ok(), "message {} after the outage: {receipt:?}", 100 + i);
    }
    state_becomes(&mut state, "connected again", |s| matches!(s, ConnectionState::Connected)).await;
    let mut last = None;
    for i in 200..300 {
        last = Some(within("publish after", publisher.publish(message(i))).await.unwrap());
    }
    // Offsets 0 to 299 and no more: no resent batch was stored twice.
    assert_eq!(last.map(|r| r.offset), Some(sealpost_protocol::Offset(299)));
    within("publisher close", publisher.close()).await.unwrap();
    alice.close().await;
    assert!(matches!(*state.borrow(), ConnectionState::Closed));

    // bob reads every message once, in order: the resends of the outage were deduplicated.
    let bob = Identity::load(env.identity("bob", addr)).unwrap();
    let bob = within("connect", Client::connect(&bob)).await.unwrap();
    let options = SubscribeOptions { from: StartAt::Earliest, durable: None, shared: false };
    let mut subscription = within("subscribe", bob.subscribe(chat(), options)).await.unwrap();
    for i in 0..300 {
        let got = within("read", subscription.next()).await.unwrap().unwrap();
        assert_eq!(got.payload, message(i), "message {i}");
    }
    broker.shutdown().await.unwrap();
}

/// `Client::connect` started before the broker listens retries until it does.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connect_waits_for_a_broker_that_starts_later_within_its_budget() {
    let mut env = Env::new();
    let port = std::net::UdpSocket::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
    let identity = Identity::load(env.identity("alice", port)).unwrap();
    let connecting = tokio::spawn(async move {
        let client = Client::connect_with(&identity, patient(Duration::from_secs(30))).await?;
        Ok::<_, sealpost_client::Error>(client)
    });
    // Its first attempts find nobody: a failure it may retry.
    let refused = Client::connect_with(
        &Identity::load(env.identity("alice", port)).unwrap(),
        ClientOptions {
            reconnect: Reconnect { budget: RetryBudget::Retries(0), ..Reconnect::default() },
            ..patient(Duration::ZERO)
        },
    )
    .await;
    let Err(refused) = refused else { panic!("nobody listens yet") };
    assert!(refused.is_retryable(), "{refused}");
    let broker = env.start_at(Engine::Memory, port).await;
    let client = within("connect", connecting).await.unwrap().unwrap();
    assert!(matches!(*client.connection_state().borrow(), ConnectionState::Connected));
    client.close().await;
    broker.shutdown().await.unwrap();
}
