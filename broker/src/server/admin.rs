//! An admin stream's task: each query handed to the session, answered from the store off the async
//! workers, one at a time.

use std::sync::Arc;
use std::time::Instant;

use sealpost_protocol::Frame;
use tokio::sync::watch;

use super::wire::{next_request, refuse, write_frame, FrameReader};
use crate::session::{AdminAction, Connection, Refusal};
use crate::writer::Log;
use crate::{Error, Result};

/// Serves an admin stream whose first frame is `first`.
pub(super) async fn serve(
    first: Frame,
    mut send: quinn::SendStream,
    mut reader: FrameReader,
    session: &Connection,
    log: &Arc<Log>,
    mut shutdown: watch::Receiver<bool>,
) -> Result<()> {
    let stream = Arc::new(session.admin_stream());
    let mut next = Some(first);
    loop {
        let frame = match next_request(&mut next, &mut reader, &mut shutdown).await {
            Ok(Some(frame)) => frame,
            Ok(None) => break,
            Err(e) => return refuse(&mut send, &mut reader, Refusal::new(None, e)).await,
        };
        let answer = match stream.on_frame(frame) {
            AdminAction::Answer { request_id, query } => {
                let (stream, store) = (stream.clone(), log.store().clone());
                tokio::task::spawn_blocking(move || {
                    stream.answer(request_id, query, store.as_ref(), Instant::now())
                })
                .await
                .map_err(|e| Error::Storage(format!("admin query task failed: {e}")))?
            }
            AdminAction::Refuse(refusal) => return refuse(&mut send, &mut reader, refusal).await,
        };
        write_frame(&mut send, &answer).await?;
    }
    let _ = send.finish();
    Ok(())
}
