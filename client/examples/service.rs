//! A small service on `sealpost-client`: it publishes a burst of events with a window of receipts in
//! flight, then consumes a durable subscription of the same topic until Ctrl-C (or until it has read a
//! given number of messages), handling every integrity and loss event, acknowledging each message once it
//! is processed, and closes cleanly.
//!
//! ```sh
//! cargo run -p sealpost-broker -- dev    # in another terminal: a broker and identities in ./sealpost-dev
//! cargo run -p sealpost-client --example service -- sealpost-dev/identities/alice.toml demo.events 100
//! ```
//!
//! Arguments: the identity file (or `SEALPOST_IDENTITY`), the topic (default `demo.events`), and how many
//! messages to read before stopping (default: until Ctrl-C). `RUST_LOG=info` shows the client's reconnects.
//! Run it twice: the durable subscription resumes after the last message the first run acknowledged.
//! Run several at once and they share the subscription as a consumer group, each message read by one.

use std::time::Duration;

use anyhow::{bail, Context};
use futures_util::stream::{FuturesOrdered, StreamExt};
use sealpost_client::{
    Client, ClientOptions, ConnectionState, Error, Identity, Message, ProtocolError, PublisherOptions,
    Reconnect, RetryBudget, StartAt, SubscribeOptions, Subscription, Topic,
};

/// Messages published per run.
const EVENTS: usize = 1_000;
/// Most messages awaiting their receipts at once: the producer's own bound (the client queues without
/// one).
const WINDOW: usize = 128;
/// The shared durable subscription's name: the broker keeps its acknowledged position across runs.
const DURABLE: &str = "service-example";

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_writer(std::io::stderr)
        .init();

    let mut args = std::env::args_os().skip(1);
    let path = match args.next().or_else(|| std::env::var_os("SEALPOST_IDENTITY")) {
        Some(path) => path,
        None => bail!("usage: service IDENTITY.toml [TOPIC] [COUNT] (or set SEALPOST_IDENTITY)"),
    };
    let topic: Topic = match args.next() {
        Some(topic) => topic.to_string_lossy().parse()?,
        None => "demo.events".parse()?,
    };
    let count: Option<usize> = match args.next() {
        Some(count) => Some(count.to_string_lossy().parse().context("COUNT must be a number")?),
        None => None,
    };

    let identity = Identity::load(&path)?;
    // The identity file's settings (as `Client::connect` uses them), then: retry sooner after a loss than
    // the default, back off to at most 10 s between attempts, and ride out an outage of up to 5 minutes
    // (also while connecting) before failing.
    let mut options = ClientOptions::from_identity(&identity);
    options.reconnect = Reconnect {
        initial_delay: Duration::from_millis(50),
        max_delay: Duration::from_secs(10),
        budget: RetryBudget::Duration(Duration::from_secs(300)),
    };
    let client = Client::connect_with(&identity, options).await?;
    // Follow the connection, as a service would report it (a log line, a health check).
    let mut state = client.connection_state();
    tokio::spawn(async move {
        while state.changed().await.is_ok() {
            let now = state.borrow_and_update().clone();
            eprintln!("connection: {now:?}");
            if matches!(now, ConnectionState::Closed) {
                break;
            }
        }
    });

    let outcome = run(&client, identity.principal().to_string(), topic, count).await;
    // Whatever happened, close the connection (publisher and subscription are closed by then).
    client.close().await;
    outcome
}

async fn run(client: &Client, me: String, topic: Topic, count: Option<usize>) -> anyhow::Result<()> {
    publish(client, &me, topic.clone()).await?;

    // A shared durable subscription (a consumer group): the first run starts from the earliest message;
    // later runs resume after what the runs acknowledged; runs at the same time share the messages, each
    // given whole publisher chains. Starting fails with `NotASubscriber`, `NoPolicy` or `NoContentKey`
    // if the topic's policy does not let this identity read (the message says whom to ask), or `Refused`.
    let options = SubscribeOptions { from: StartAt::Earliest, durable: Some(DURABLE.into()), shared: true };
    let mut subscription = client.subscribe(topic, options).await?;
    let consumed = consume(&mut subscription, count).await;
    // Sends the last acknowledgement and waits until the broker has it (for a durable subscription, fails
    // if it could not be committed).
    let closed = subscription.close().await;
    let read = consumed?;
    closed?;
    eprintln!("read {read} messages");
    Ok(())
}

/// Publishes `EVENTS` messages, at most `WINDOW` of them awaiting their receipts, each awaited in order.
async fn publish(client: &Client, me: &str, topic: Topic) -> anyhow::Result<()> {
    // `max_in_flight` is the client's window of batches on the wire; `WINDOW` bounds what this producer
    // has queued but not yet stored.
    let publisher =
        client.publisher(topic, PublisherOptions { max_in_flight: 16, ..Default::default() }).await?;
    let mut pending = FuturesOrdered::new();
    let mut last = None;
    for i in 0..EVENTS {
        if pending.len() == WINDOW {
            // Receipts resolve in publishing order: the oldest is the next one.
            if let Some(receipt) = pending.next().await {
                last = Some(receipt?);
            }
        }
        pending.push_back(publisher.publish(format!("event {i} from {me}")));
    }
    while let Some(receipt) = pending.next().await {
        last = Some(receipt?);
    }
    // Everything is stored already; `close` ends the publish stream.
    publisher.close().await?;
    if let Some(receipt) = last {
        eprintln!("published {EVENTS} messages, the last at offset {}", receipt.offset);
    }
    Ok(())
}

/// Reads `subscription` until Ctrl-C, `count` messages, or its end; returns how many messages it read.
async fn consume(subscription: &mut Subscription, count: Option<usize>) -> anyhow::Result<usize> {
    let mut read = 0;
    let mut stop = std::pin::pin!(tokio::signal::ctrl_c());
    while count.is_none_or(|limit| read < limit) {
        let item = tokio::select! {
            _ = &mut stop => break,
            item = subscription.next() => item,
        };
        let Some(item) = item else { break };
        match item {
            Ok(message) => {
                process(&message);
                read += 1;
                // After processing: a crash before this line means the message is delivered again.
                subscription.ack(&message)?;
            }
            // A batch failed a check. After a gap (batches of that publisher withheld or deleted) the
            // batch itself is authentic and its messages follow; after any other check nothing of it is
            // yielded.
            Err(Error::Integrity { offset, check: ProtocolError::Gap { expected, got }, .. }) => {
                eprintln!("warning: gap before offset {offset}: sequence {expected} expected, {got} came");
            }
            Err(e @ Error::Integrity { .. }) => eprintln!("warning: batch rejected: {e}"),
            // Correctly signed, by a key the topic's policy does not list as a publisher.
            Err(e @ Error::UntrustedPublisher { .. }) => eprintln!("warning: batch rejected: {e}"),
            // The broker served a topic policy that failed a check; the old policies stay in force.
            Err(e @ Error::Policy { .. }) => eprintln!("warning: policy rejected: {e}"),
            // The broker's storage lost messages it had stored, or its retention removed them.
            Err(e @ Error::DataLost { .. }) => eprintln!("warning: {e}"),
            Err(e @ Error::Retired { .. }) => eprintln!("note: {e}"),
            // The broker no longer holds batches of a chain this subscription had verified.
            Err(e @ Error::RolledBack { .. }) => eprintln!("warning: {e}"),
            // Anything else ended the subscription: a refusal, an outage that outlasted the retry budget, ...
            Err(e) => return Err(e.into()),
        }
    }
    Ok(read)
}

/// The service's work: here, one line per message (its length, not its content).
fn process(message: &Message) {
    println!(
        "{} seq {} at offset {}: {} bytes",
        message.publisher,
        message.seq,
        message.offset,
        message.payload.len()
    );
}
