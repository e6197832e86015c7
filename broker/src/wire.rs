//! Frames on QUIC streams: the only place the broker turns stream bytes into [`Frame`]s and back.

use sealpost_protocol::{Error as ProtocolError, Frame};

use crate::{Error, Result};

/// Reads one frame, bounding its length by `max_frame_len` before allocating. `Ok(None)` on a clean end
/// of stream between frames.
pub async fn read_frame(recv: &mut quinn::RecvStream, max_frame_len: u32) -> Result<Option<Frame>> {
    let mut prefix = [0u8; 4];
    match recv.read_exact(&mut prefix).await {
        Ok(()) => {}
        Err(quinn::ReadExactError::FinishedEarly(0)) => return Ok(None),
        Err(quinn::ReadExactError::FinishedEarly(_)) => {
            return Err(ProtocolError::Truncated("frame length").into())
        }
        Err(quinn::ReadExactError::ReadError(e)) => return Err(Error::Io(e.into())),
    }
    let len = Frame::length(prefix, max_frame_len)?;
    let mut body = vec![0u8; len];
    match recv.read_exact(&mut body).await {
        Ok(()) => {}
        Err(quinn::ReadExactError::FinishedEarly(_)) => return Err(ProtocolError::Truncated("frame").into()),
        Err(quinn::ReadExactError::ReadError(e)) => return Err(Error::Io(e.into())),
    }
    Ok(Some(Frame::decode_body(&body)?))
}

/// Writes one frame.
pub async fn write_frame(send: &mut quinn::SendStream, frame: &Frame) -> Result<()> {
    let bytes = frame.to_vec()?;
    send.write_all(&bytes).await.map_err(|e| Error::Io(e.into()))
}

/// The error frame a peer is sent for `err`: the stable code and a message with no internal detail.
pub fn error_frame(request_id: Option<u64>, err: &Error) -> Frame {
    let message = match err {
        Error::Storage(_) | Error::Io(_) | Error::Config(_) => "internal error".to_string(),
        other => other.to_string(),
    };
    Frame::Error { request_id, code: err.code(), message }
}
