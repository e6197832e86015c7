//! A frame stream: one bidirectional QUIC stream, opened by the client, that carries [`Frame`]s both ways.
//!
//! Reading goes through the protocol's [`FrameBuffer`]: the 4-byte length prefix is validated against the
//! frame limit before anything else, the buffer grows only with the bytes that arrive (a broker claiming a
//! large frame does not make the client allocate it), and never more than the current frame's bytes are
//! read from the stream. [`Link::read`] is cancel-safe (bytes read so far stay in the link's buffer), so it
//! can sit in a `select!` beside timers and commands.
//!
//! Copies: a frame's bytes are copied once, from QUIC's chunks into the frame buffer; the frame is then
//! decoded with [`Frame::decode_bytes`], so a delivered batch is a slice of that buffer. Frames that are
//! already encoded ([`Link::send_encoded`], a sealed batch's `Publish` frame) are handed to QUIC as
//! [`Bytes`], which it keeps without copying until they are acknowledged, and resends reuse them.

use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use sealpost_protocol::{Frame, FrameBuffer};

use crate::error::{Error, Result};

use super::connector::Connector;
use super::error_map::ErrorMap;

/// An open frame stream.
pub(crate) struct Link {
    errors: Arc<ErrorMap>,
    send: quinn::SendStream,
    recv: quinn::RecvStream,
    buf: FrameBuffer,
    out: Vec<u8>,
    opened: Instant,
}

impl Link {
    /// Opens a new stream on the client's current connection (dialing one if it is down).
    pub(crate) async fn open(connector: &Connector) -> Result<Link> {
        let conn = connector.connection().await?;
        let (send, recv) = conn.open_bi().await.map_err(|e| connector.errors.connection(&e))?;
        Ok(Link {
            errors: connector.errors.clone(),
            send,
            recv,
            buf: FrameBuffer::new(connector.max_frame_len),
            out: Vec::new(),
            opened: Instant::now(),
        })
    }

    /// How long the stream has been open.
    pub(crate) fn age(&self) -> std::time::Duration {
        self.opened.elapsed()
    }

    /// Encodes and sends one frame.
    pub(crate) async fn send(&mut self, frame: &Frame) -> Result<()> {
        self.out.clear();
        frame.encode(&mut self.out)?;
        self.send.write_all(&self.out).await.map_err(|e| self.errors.write(e))
    }

    /// Sends bytes that are already one or more encoded frames. QUIC keeps `frames` as they are (a
    /// reference to their buffer) until they are acknowledged: they are not copied.
    pub(crate) async fn send_encoded(&mut self, frames: Bytes) -> Result<()> {
        self.send.write_chunk(frames).await.map_err(|e| self.errors.write(e))
    }

    /// Ends the client's side of the stream: the broker reads what was sent, then the end.
    pub(crate) fn finish(&mut self) {
        let _ = self.send.finish();
    }

    /// The next frame, or `None` if the broker ended the stream cleanly between frames. Cancel-safe.
    pub(crate) async fn read(&mut self) -> Result<Option<Frame>> {
        /// Most bytes taken from QUIC at a time.
        const READ_CHUNK: usize = 64 * 1024;
        loop {
            let bad = |e: sealpost_protocol::Error| Error::violation(format!("bad frame: {e}"));
            if let Some(frame) = self.buf.next_frame_bytes().map_err(bad)? {
                // Byte fields (a delivered batch) stay slices of the frame's buffer: no copy.
                return Frame::decode_bytes(frame).map(Some).map_err(bad);
            }
            let want = self.buf.wanted().map_err(bad)?.min(READ_CHUNK);
            match self.recv.read_chunk(want, true).await {
                Ok(Some(chunk)) => self.buf.extend(&chunk.bytes),
                Ok(None) if self.buf.is_empty() => return Ok(None),
                Ok(None) => {
                    return Err(Error::ConnectionLost {
                        reason: "the broker ended the stream inside a frame".into(),
                    })
                }
                Err(e) => return Err(self.errors.read(e)),
            }
        }
    }
}

/// The error for a frame the broker should not have sent here.
pub(crate) fn unexpected(frame: &Frame, context: &str) -> Error {
    Error::violation(format!("unexpected {} frame in answer to {context}", frame.name()))
}
