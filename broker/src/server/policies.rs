//! A policy stream's task: each request handed to the session, its action executed (a policy stored
//! through the log), its answer written, one at a time.

use std::sync::Arc;

use sealpost_protocol::Frame;
use tokio::sync::watch;

use super::wire::{next_request, refuse, write_frame, FrameReader};
use crate::session::{Connection, PolicyAction, PolicyStream};
use crate::writer::Log;
use crate::Result;

/// Serves a policy stream whose first frame is `first`.
pub(super) async fn serve(
    first: Frame,
    mut send: quinn::SendStream,
    mut reader: FrameReader,
    session: &Connection,
    log: &Arc<Log>,
    mut shutdown: watch::Receiver<bool>,
) -> Result<()> {
    let stream = session.policy_stream();
    let mut next = Some(first);
    loop {
        let frame = match next_request(&mut next, &mut reader, &mut shutdown).await {
            Ok(Some(frame)) => frame,
            Ok(None) => break,
            Err(e) => return refuse(&mut send, &mut reader, PolicyStream::broken(e)).await,
        };
        let answer = match stream.on_frame(frame, log.store().as_ref()) {
            PolicyAction::Send(frame) => frame,
            PolicyAction::Store { request_id, policy } => {
                let (topic, epoch, bytes) =
                    (policy.topic().clone(), policy.epoch().0, policy.as_bytes().clone());
                let written = log.put_policy(topic, epoch, bytes).await;
                stream.stored(request_id, *policy, written)
            }
            PolicyAction::Refuse(refusal) => return refuse(&mut send, &mut reader, refusal).await,
        };
        write_frame(&mut send, &answer).await?;
    }
    let _ = send.finish();
    Ok(())
}
