//! A publish stream's tasks: a reader that hands each frame to the session and executes its action at once
//! (a batch goes to the log in arrival order), and a writer that sends the answers in request order as
//! they resolve.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, watch};

use super::wire::{write_frame, FrameReader, Received};
use super::Revision;
use crate::session::{Connection, PublishAction, PublishStream};
use crate::writer::Log;
use crate::{Error, Result};

/// How long a publish stream waits, once its answers are written, for the peer to acknowledge them: the
/// connection is closed after its streams end (at shutdown, and when the storage failed), and closing it
/// drops stream data the peer has not acknowledged, such as the storage error of the last publishes.
const ANSWERS_DELIVERED: Duration = Duration::from_secs(5);

/// The answer to one request: ready at once, or once the log or the store has answered.
type Answer = Pin<Box<dyn Future<Output = sealpost_protocol::Frame> + Send>>;

/// Serves a publish stream whose first frame is `first`.
pub(super) async fn serve(
    first: Received,
    mut send: quinn::SendStream,
    mut reader: FrameReader,
    session: &Connection,
    log: &Arc<Log>,
    (mut shutdown, mut revision): (watch::Receiver<bool>, watch::Receiver<Arc<Revision>>),
) -> Result<()> {
    let stream = session.publish_stream();
    let (answers, mut pending) =
        mpsc::channel::<Answer>(session.endpoint().limits().max_in_flight_per_stream);
    // Answers go out in request order; each waits for its batch to be durable.
    let writer = tokio::spawn(async move {
        while let Some(answer) = pending.recv().await {
            let frame = answer.await;
            if write_frame(&mut send, &frame).await.is_err() {
                return;
            }
        }
        if send.finish().is_ok() {
            let _ = tokio::time::timeout(ANSWERS_DELIVERED, send.stopped()).await;
        }
    });
    let mut next = Some(first);
    let result = loop {
        let received = match next.take() {
            Some(received) => received,
            None => tokio::select! {
                received = reader.next() => match received {
                    Ok(Some(received)) => received,
                    Ok(None) => break Ok(()),
                    Err(e) => {
                        // The stream's framing is broken or too slow: answer once, then stop reading it.
                        reader.stop(&e);
                        let frame = PublishStream::broken(&e);
                        let _ = answers.send(Box::pin(async move { frame })).await;
                        break Err(e);
                    }
                },
                // After a reload: the ACL may no longer allow what this stream publishes. The refusal goes
                // out after the answers already due.
                Ok(()) = revision.changed() => match stream.still_authorized() {
                    Ok(()) => continue,
                    Err(refusal) => {
                        reader.stop(&refusal.error);
                        let frame = refusal.frame();
                        let _ = answers.send(Box::pin(async move { frame })).await;
                        break Err(refusal.error);
                    }
                },
                _ = shutdown.changed() => break Ok(()),
            },
        };
        let answer = execute(&stream, received, log);
        if answers.send(answer).await.is_err() {
            break Ok(());
        }
    };
    drop(answers);
    let _ = writer.await;
    result
}

/// Has the session decide about one frame and starts what it says **now**: a batch reaches the log before
/// the next frame is read. The returned answer holds the frame's reservation until it resolves (for a
/// publish, until its batch is durable).
fn execute(stream: &PublishStream, received: Received, log: &Arc<Log>) -> Answer {
    let Received { frame, reservation } = received;
    let now = Instant::now();
    match stream.on_frame(frame, log.store().as_ref(), now) {
        PublishAction::Send(frame) => Box::pin(async move { frame }),
        PublishAction::Submit { request_id, topic, batch } => {
            let appended = log.submit(topic, *batch);
            let (stream, metrics) = (stream.clone(), log.metrics().cloned());
            Box::pin(async move {
                let answer = stream.published(request_id, appended.await);
                if let Some(metrics) = metrics {
                    metrics.acked(now.elapsed());
                }
                drop(reservation);
                answer
            })
        }
        PublishAction::ReadHead { request_id, topic, publisher, chain } => {
            let store = log.store().clone();
            Box::pin(async move {
                let head =
                    tokio::task::spawn_blocking(move || store.publisher_head(&topic, &publisher, chain))
                        .await
                        .map_err(|e| Error::Storage(e.to_string()))
                        .and_then(|r| r);
                PublishStream::head_is(request_id, head)
            })
        }
    }
}
