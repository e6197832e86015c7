//! Following streams: what any broker appends, handed on in order as it is committed.
//!
//! [`follow`] reads one stream through an ordered consumer (JetStream delivers only what a quorum
//! stored) from the sequence after the last one it handed on, and watches it: when the consumer delivers
//! nothing for [`STALL`] it asks the stream for its last sequence, and if the stream holds more than the
//! consumer delivered (its server died: the client's own heartbeat would take 15 s or more to notice),
//! it re-creates the consumer from there. An error of the consumer re-creates it the same way; a stream
//! that does not exist yet is waited for. It runs until the store is dropped.
//!
//! Two kinds of streams are followed: each topic's log this broker has read or written ([`topic`]: its
//! batches go to the [`Sink`]), and the policy stream ([`policies`]: any policy stored tells the sink).
//! What they see reaches the broker through [`relay`], on a thread of its own.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Weak};

use async_nats::jetstream::{self as js, consumer};
use futures_util::StreamExt;

use sealpost_protocol::Topic;

use super::log::TopicLog;
use super::{names, STALL};
use crate::store::{Sink, StoredBatch};

/// Follows `log`'s stream from sequence `next`: each batch updates the log's state and goes to `sink`.
pub(super) async fn topic(
    js: js::Context,
    log: Weak<TopicLog>,
    next: u64,
    sink: Sink,
    closed: Arc<AtomicBool>,
) {
    let Some((stream, topic)) = log.upgrade().map(|l| (l.stream.clone(), l.topic.clone())) else { return };
    follow(js, stream, next, closed, move |seq, message| {
        let Some(log) = log.upgrade() else { return false };
        let headers = message.headers.clone().unwrap_or_default();
        match names::stored_of(&headers, message.payload.clone()) {
            Ok(batch) => {
                log.state().observe(seq, &batch);
                (sink.committed)(&topic, batch);
            }
            Err(e) => tracing::error!(%topic, seq, "a message of the log is not a stored batch: {e}"),
        }
        true
    })
    .await
}

/// Follows the policy stream `stream` from what it holds now on: each policy stored tells `sink`.
pub(super) async fn policies(
    js: js::Context,
    stream: String,
    next: u64,
    sink: Sink,
    closed: Arc<AtomicBool>,
) {
    follow(js, stream, next, closed, move |_, _| {
        (sink.policies_changed)();
        true
    })
    .await
}

/// Follows `stream` from sequence `next`, handing each message to `each` (with its sequence) until it
/// says to stop or `closed` is set.
async fn follow(
    js: js::Context,
    stream_name: String,
    mut next: u64,
    closed: Arc<AtomicBool>,
    mut each: impl FnMut(u64, &js::Message) -> bool + Send,
) {
    while !closed.load(Ordering::SeqCst) {
        let Ok(stream) = js.get_stream_no_info(&stream_name).await else { return };
        let config = consumer::pull::OrderedConfig {
            deliver_policy: consumer::DeliverPolicy::ByStartSequence { start_sequence: next },
            ..Default::default()
        };
        let messages = match stream.create_consumer(config).await {
            Ok(consumer) => consumer.messages().await.map_err(|e| e.to_string()),
            Err(e) => Err(e.to_string()),
        };
        let mut messages = match messages {
            Ok(messages) => messages,
            Err(e) => {
                tracing::debug!(stream = %stream_name, "cannot follow the stream yet: {e}");
                tokio::time::sleep(STALL).await;
                continue;
            }
        };
        loop {
            if closed.load(Ordering::SeqCst) {
                return;
            }
            match tokio::time::timeout(STALL, messages.next()).await {
                Ok(Some(Ok(message))) => {
                    let Ok(seq) = message.info().map(|i| i.stream_sequence) else { continue };
                    if seq < next {
                        continue;
                    }
                    next = seq + 1;
                    if !each(seq, &message) {
                        return;
                    }
                }
                Ok(Some(Err(e))) => {
                    tracing::debug!(stream = %stream_name, "following: {e}; re-creating the consumer from {next}");
                    break;
                }
                Ok(None) => break,
                Err(_) => {
                    // Quiet for a while: does the stream hold more than was delivered?
                    if let Ok(stream) = js.get_stream(&stream_name).await {
                        if stream.cached_info().state.last_sequence >= next {
                            tracing::info!(stream = %stream_name, "the consumer following the stream stalled; re-creating it from sequence {next}");
                            break;
                        }
                    }
                }
            }
        }
    }
}

/// What followers hand on, through [`relay`].
enum Followed {
    Committed(Topic, StoredBatch),
    PoliciesChanged,
}

/// `sink`, called on a thread of its own (`sealpost-nats-sink`) in the order the followers hand things on:
/// the engine's runtime must never wait for the broker's locks, since the broker may hold one of them
/// while it waits for the engine (the durable ends' lock while it reads a topic's end). Falls back to
/// calling `sink` in place if the thread cannot be started.
pub(super) fn relay(sink: Sink) -> Sink {
    let (tx, rx) = std::sync::mpsc::channel::<Followed>();
    let target = sink.clone();
    let started = std::thread::Builder::new().name("sealpost-nats-sink".into()).spawn(move || {
        for followed in rx {
            match followed {
                Followed::Committed(topic, batch) => (target.committed)(&topic, batch),
                Followed::PoliciesChanged => (target.policies_changed)(),
            }
        }
    });
    if let Err(e) = started {
        tracing::error!("cannot start the thread that hands on what other brokers append: {e}");
        return sink;
    }
    let policies = tx.clone();
    Sink {
        committed: Arc::new(move |topic: &Topic, batch| {
            let _ = tx.send(Followed::Committed(topic.clone(), batch));
        }),
        policies_changed: Arc::new(move || {
            let _ = policies.send(Followed::PoliciesChanged);
        }),
    }
}
