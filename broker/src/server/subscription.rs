//! A subscription stream's tasks: deliveries out, read from the log's tail or the store (off the async
//! workers) within the connection's budget, as far as the session's cursor says; acks in, handed to the
//! session, the newest committed through the log, one commit at a time.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use sealpost_protocol::{Offset, Topic};
use tokio::sync::watch;
use tracing::info;

use super::wire::{write_frame, FrameReader};
use super::Revision;
use crate::budget::Budget;
use crate::session::{AckAction, Commit, Connection, Next, Started, Subscribing, Subscription};
use crate::store::{Store, Stored};
use crate::writer::Log;
use crate::{Error, Result};

/// Serves a subscription the session accepted.
pub(super) async fn serve(
    mut subscribing: Subscribing,
    mut send: quinn::SendStream,
    reader: FrameReader,
    session: &Connection,
    log: &Arc<Log>,
    (mut shutdown, mut revision): (watch::Receiver<bool>, watch::Receiver<Arc<Revision>>),
) -> Result<()> {
    let mut end = log.durable_end(subscribing.topic())?;
    let store = log.store().clone();
    // A durable subscription is served to one subscriber at a time (`session::durable`), or shared by the
    // members of its group (`session::group`): stand by, not answered, until its lease is free (held by
    // another subscriber, or by a group when this one is exclusive); then start from what was committed.
    if let Some(key) = subscribing.durable_key() {
        let leases = session.endpoint().durables().clone();
        let mut told = false;
        loop {
            let released = leases.released().notified();
            tokio::pin!(released);
            released.as_mut().enable();
            if subscribing.is_shared() {
                let durable_end = *end.borrow_and_update();
                match subscribing.join(store.as_ref(), durable_end) {
                    Ok(true) => break,
                    Ok(false) => {}
                    Err(refusal) => {
                        write_frame(&mut send, &refusal.frame()).await?;
                        let _ = send.finish();
                        return Err(refusal.error);
                    }
                }
            } else if let Some(lease) = leases.try_take(key.clone()) {
                subscribing.hold(lease);
                break;
            }
            if !std::mem::replace(&mut told, true) {
                let (topic, principal, name) = &key;
                info!(%principal, %topic, durable = %name, "standing by: another subscriber is reading this durable subscription");
            }
            tokio::select! {
                () = &mut released => {}
                // The subscriber gave up waiting, or went away.
                _ = send.stopped() => return Ok(()),
                _ = shutdown.changed() => return Ok(()),
            }
        }
    }
    let durable_end = *end.borrow_and_update();
    let Started { subscribed, subscription, mut cursor } =
        match subscribing.start(store.as_ref(), durable_end) {
            Ok(started) => started,
            Err(refusal) => {
                write_frame(&mut send, &refusal.frame()).await?;
                let _ = send.finish();
                return Err(refusal.error);
            }
        };
    write_frame(&mut send, &subscribed).await?;
    let topic = subscription.topic().clone();

    // Acks and unsubscribe arrive on the receive half; this task ends when the client is done.
    let acks = tokio::spawn(read_acks(subscription, reader, log.clone()));
    tokio::pin!(acks);

    let budget: &Budget = session.budget();
    let mut group_changed = cursor.group_changed();
    loop {
        if let Some(changed) = group_changed.as_mut() {
            changed.borrow_and_update();
        }
        // Do the ACL (after a reload) and the topic's policy (after a new epoch) still allow this
        // subscription? Asked before every read, never while a frame is half written.
        revision.borrow_and_update();
        if let Err(refusal) = cursor.still_authorized(store.as_ref()) {
            acks.abort();
            write_frame(&mut send, &refusal.frame()).await?;
            let _ = send.finish();
            return Err(refusal.error);
        }
        // A member of a group given chains to read back says so before anything else.
        if let Some(rewind) = cursor.take_rewind() {
            tokio::select! {
                written = write_frame(&mut send, &rewind) => written?,
                _ = &mut acks => return Ok(()),
                _ = shutdown.changed() => return Ok(()),
            }
        }
        // A member of a group that leaves a batch unacknowledged too long is ended, and its work moves.
        if cursor.ack_deadline().is_some_and(|at| at <= Instant::now()) {
            if let Some(refusal) = cursor.overdue(Instant::now()) {
                acks.abort();
                // Told if it still reads; not waited for if it does not.
                let _ = tokio::time::timeout(OVERDUE_WRITE, write_frame(&mut send, &refusal.frame())).await;
                let _ = send.finish();
                return Err(refusal.error);
            }
        }
        let durable_end = *end.borrow_and_update();
        if let Some(read) = cursor.next_read(durable_end) {
            // What is read is held until QUIC takes it: it counts against the connection's budget, and
            // is reserved whole before it is read. A single batch larger than a read is put back with
            // its reservation, and read again once its whole size is reserved: holding part of the
            // budget while waiting for more could leave subscriptions each holding a part and waiting
            // on the others. (The second read returns the same batch: stored bytes do not change.)
            let mut want = read.max_bytes;
            let (mut held, items) = loop {
                let held = tokio::select! {
                    held = budget.reserve(want) => held,
                    _ = &mut acks => return Ok(()),
                    _ = shutdown.changed() => return Ok(()),
                };
                let items = read_from(log, &store, &topic, read.from, want).await?;
                let size = items.iter().map(Stored::bytes_len).sum::<usize>();
                if size <= held.bytes() {
                    break (held, items);
                }
                want = size;
            };
            held.shrink_to(items.iter().map(Stored::bytes_len).sum::<usize>());
            let before = cursor.position();
            for item in items {
                let len = item.bytes_len();
                match cursor.deliver(item, durable_end, Instant::now()) {
                    Next::Send(frame) => tokio::select! {
                        written = write_frame(&mut send, &frame) => written?,
                        _ = &mut acks => return Ok(()),
                        _ = shutdown.changed() => return Ok(()),
                        // A member that stopped reading its stream: ended (the frame is cut, so the stream
                        // is reset), and what it was given goes to the other members with the rest of its
                        // work. (The deadline is that of its oldest unacknowledged batch when the write
                        // began: one blocked that long means it does not read.)
                        () = until(cursor.ack_deadline()) => {
                            let refusal = cursor.stalled();
                            acks.abort();
                            let _ = send.reset(quinn::VarInt::from(refusal.code().0));
                            return Err(refusal.error);
                        }
                    },
                    Next::Skip => {}
                    Next::Stop => break,
                }
                held.shrink_to(held.bytes().saturating_sub(len));
            }
            drop(held);
            if cursor.position() != before {
                continue;
            }
        }
        let group = async {
            match group_changed.as_mut() {
                Some(changed) => changed.changed().await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            changed = end.changed() => if changed.is_err() { return Ok(()) },
            _ = &mut acks => return Ok(()),
            Ok(()) = revision.changed() => {}
            Ok(()) = group => {}
            // Its oldest unacknowledged batch (perhaps one just delivered) falls due: checked at the top.
            () = until(cursor.ack_deadline()) => {}
            _ = shutdown.changed() => return Ok(()),
        }
    }
}

/// How long the error frame to a member found overdue may take to go out (it may have stopped reading).
const OVERDUE_WRITE: Duration = Duration::from_secs(1);

/// Resolves at `deadline`, never without one.
async fn until(deadline: Option<Instant>) {
    match deadline {
        Some(at) => tokio::time::sleep_until(at.into()).await,
        None => std::future::pending().await,
    }
}

/// Up to `max_bytes` of `topic` from `from` on (at least one batch): from the log's in-memory tail when a
/// subscriber keeps up, else from the store, which may also yield lost ranges (damaged storage); they go
/// out as `Lost` frames, in offset order.
async fn read_from(
    log: &Log,
    store: &Arc<dyn Store>,
    topic: &Topic,
    from: Offset,
    max_bytes: usize,
) -> Result<Vec<Stored>> {
    if let Some(batches) = log.read_tail(topic, from, max_bytes) {
        return Ok(batches.into_iter().map(Stored::Batch).collect());
    }
    let (store, topic) = (store.clone(), topic.clone());
    tokio::task::spawn_blocking(move || store.read(&topic, from, max_bytes))
        .await
        .map_err(|e| Error::Storage(e.to_string()))?
}

/// Reads the subscriber's frames until it is done, committing durable acks through the log: at most one
/// commit with the log at a time, the newest ack received meanwhile going with the next one
/// ([`Subscription::next_commit`]). Frames keep being read while a commit waits for its group commit, and
/// what was acked before the stream ended, failed or was refused is still committed.
async fn read_acks(mut subscription: Subscription, mut reader: FrameReader, log: Arc<Log>) -> Result<()> {
    let mut committing: Option<Pin<Box<dyn Future<Output = Result<()>> + Send>>> = None;
    let mut end: Option<Result<()>> = None;
    loop {
        if committing.is_none() {
            if let Some(Commit { topic, principal, name, next_offset }) = subscription.next_commit() {
                let log = log.clone();
                committing =
                    Some(Box::pin(
                        async move { log.commit_offset(topic, principal, name, next_offset).await },
                    ));
            } else if let Some(end) = end.take() {
                return end;
            }
        }
        let commit = async {
            match committing.as_mut() {
                Some(commit) => commit.await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            done = commit => {
                committing = None;
                subscription.commit_done(done.is_ok());
                done?;
            }
            // Cancel-safe: a frame partly read when a commit completes stays buffered.
            frame = reader.next(), if end.is_none() => {
                let action = match frame {
                    Ok(Some(received)) => subscription.on_frame(received.frame),
                    Ok(None) => AckAction::End,
                    Err(e) => AckAction::Refuse(e),
                };
                match action {
                    AckAction::Continue => {}
                    AckAction::End => end = Some(Ok(())),
                    AckAction::Refuse(err) => {
                        reader.stop(&err);
                        end = Some(Err(err));
                    }
                }
            }
        }
    }
}
