//! Following a topic's log: every batch any broker appends, handed to the log's [`Sink`] in order.
//!
//! One task per topic this broker has read or written, on the engine's runtime, for as long as the store
//! lives. It reads the stream through an ordered consumer (JetStream delivers only what a quorum stored)
//! from the sequence after the last one it handed on, and watches it: when the consumer delivers nothing
//! for [`STALL`] the task asks the stream for its last sequence, and if the stream holds more than the
//! consumer delivered (its server died: the client's own heartbeat would take 15 s or more to notice)
//! it re-creates the consumer from there. Errors of the consumer re-create it the same way.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Weak};

use async_nats::jetstream::{self as js, consumer};
use futures_util::StreamExt;

use super::log::TopicLog;
use super::{names, STALL};
use crate::store::Sink;

/// Follows `log` from stream sequence `next` until the store closes or the log is dropped.
pub(super) async fn follow(
    js: js::Context,
    log: Weak<TopicLog>,
    mut next: u64,
    sink: Sink,
    closed: Arc<AtomicBool>,
) {
    while !closed.load(Ordering::SeqCst) {
        let Some((stream_name, topic)) = log.upgrade().map(|l| (l.stream.clone(), l.topic.clone())) else {
            return;
        };
        let stream = match js.get_stream_no_info(&stream_name).await {
            Ok(stream) => stream,
            Err(_) => return,
        };
        let config = consumer::pull::OrderedConfig {
            deliver_policy: consumer::DeliverPolicy::ByStartSequence { start_sequence: next },
            ..Default::default()
        };
        let messages = match stream.create_consumer(config).await {
            Ok(consumer) => consumer.messages().await,
            Err(e) => {
                tracing::debug!(%topic, "cannot follow the log yet: {e}");
                tokio::time::sleep(STALL).await;
                continue;
            }
        };
        let mut messages = match messages {
            Ok(messages) => messages,
            Err(e) => {
                tracing::debug!(%topic, "cannot follow the log yet: {e}");
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
                    let headers = message.headers.clone().unwrap_or_default();
                    match names::stored_of(&headers, message.payload.clone()) {
                        Ok(batch) => {
                            let Some(log) = log.upgrade() else { return };
                            log.state().observe(seq, &batch);
                            next = seq + 1;
                            sink(&topic, batch);
                        }
                        Err(e) => {
                            tracing::error!(%topic, seq, "a message of the log is not a stored batch: {e}");
                            next = seq + 1;
                        }
                    }
                }
                Ok(Some(Err(e))) => {
                    tracing::debug!(%topic, "following the log: {e}; re-creating the consumer from {next}");
                    break;
                }
                Ok(None) => break,
                Err(_) => {
                    // Quiet for a while: does the stream hold more than was delivered?
                    let Ok(mut stream) = js.get_stream(&stream_name).await else { continue };
                    if let Ok(info) = stream.info().await {
                        if info.state.last_sequence >= next {
                            tracing::info!(%topic, "the consumer following the log stalled; re-creating it from sequence {next}");
                            break;
                        }
                    }
                }
            }
        }
    }
}
