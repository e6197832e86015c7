//! Frames on QUIC streams: the only place the broker turns stream bytes into [`Frame`]s and back.
//!
//! A [`FrameReader`] cuts a stream into frames with the protocol's [`FrameBuffer`] (which grows only with
//! the bytes that arrive) and holds each frame within the connection's [`Budget`] and the frame deadline:
//! see [`crate::budget`] for what that bounds.
//!
//! # Copies
//!
//! A frame's bytes are copied once on the way in, from QUIC's chunks into the frame's buffer; a published
//! batch is then a slice of that buffer ([`Frame::decode_bytes`]). On the way out [`write_frame`] hands QUIC
//! a frame's small head and its batch as separate [`Bytes`](bytes::Bytes) ([`Frame::encode_split`],
//! `write_all_chunks`): a delivered batch is not copied by the broker at all.

use std::time::Duration;

use quinn::VarInt;
use sealpost_protocol::{Error as ProtocolError, Frame, FrameBuffer};

use crate::budget::{Budget, Reservation};
use crate::session::Refusal;
use crate::{Error, Result};

/// Most bytes taken from QUIC at a time for one frame.
const READ_CHUNK: usize = 64 * 1024;

/// A frame read from a stream, with the reservation that covers its bytes: hold it until the request the
/// frame carries is answered (for a publish, until its batch is durable).
#[derive(Debug)]
pub struct Received {
    /// The frame.
    pub frame: Frame,
    /// Its share of the connection's budget.
    pub reservation: Reservation,
}

/// Reads frames from the receive half of a stream.
pub struct FrameReader {
    recv: quinn::RecvStream,
    buf: FrameBuffer,
    budget: Budget,
    timeout: Duration,
}

impl FrameReader {
    /// Reads frames of at most `max_frame_len` bytes from `recv`, reserving each from `budget`; a frame must
    /// be complete within `timeout` once its reservation is granted.
    pub fn new(recv: quinn::RecvStream, max_frame_len: u32, budget: Budget, timeout: Duration) -> Self {
        Self { recv, buf: FrameBuffer::new(max_frame_len), budget, timeout }
    }

    /// The next frame, or `None` if the stream ended cleanly between frames.
    ///
    /// Between frames it waits as long as the peer likes (an idle stream holds no frame bytes). From the
    /// first byte of a frame on, the whole frame must arrive within the deadline, or
    /// [`Error::FrameTimeout`]: that covers its length prefix, the wait for its reservation (taken once the
    /// prefix is in, before the body is read: meanwhile the peer's bytes wait in QUIC's flow-controlled
    /// buffers), and its body. Cancel-safe: bytes read so far stay buffered (the deadline starts afresh).
    pub async fn next(&mut self) -> Result<Option<Received>> {
        if self.buf.is_empty() && !self.read_some(self.buf.wanted()?).await? {
            return Ok(None);
        }
        let timeout = self.timeout;
        tokio::time::timeout(timeout, self.rest_of_frame()).await.map_err(|_| Error::FrameTimeout(timeout))?
    }

    /// Reads the rest of a frame whose first byte is in: prefix, reservation, body.
    async fn rest_of_frame(&mut self) -> Result<Option<Received>> {
        let total = loop {
            if let Some(total) = self.buf.pending_frame_len()? {
                break total;
            }
            self.read_more(self.buf.wanted()?).await?;
        };
        let reservation = self.budget.reserve(total).await;
        loop {
            if let Some(bytes) = self.buf.next_frame_bytes()? {
                let frame = Frame::decode_bytes(bytes)?;
                return Ok(Some(Received { frame, reservation }));
            }
            self.read_more(self.buf.wanted()?.min(READ_CHUNK)).await?;
        }
    }

    /// Reads at most `max` bytes of a frame that has begun: an end of stream is an error.
    async fn read_more(&mut self, max: usize) -> Result<()> {
        match self.read_some(max).await? {
            true => Ok(()),
            false => Err(ProtocolError::Truncated("frame").into()),
        }
    }

    /// Reads at most `max` bytes into the buffer: `false` at a clean end of stream between frames, an error
    /// at an end inside one.
    async fn read_some(&mut self, max: usize) -> Result<bool> {
        match self.recv.read_chunk(max, true).await {
            Ok(Some(chunk)) => {
                self.buf.extend(&chunk.bytes);
                Ok(true)
            }
            Ok(None) if self.buf.is_empty() => Ok(false),
            Ok(None) => Err(ProtocolError::Truncated("frame").into()),
            Err(e) => Err(Error::Io(e.into())),
        }
    }

    /// Tells the peer to stop sending on this stream, with the stable code of `err`.
    pub fn stop(&mut self, err: &Error) {
        let _ = self.recv.stop(VarInt::from(err.code().0));
    }
}

/// The next request of a stream that answers its requests one at a time (policies, admin): `first` while
/// it is not taken, then the next frame read. `Ok(None)` once the peer finished its side or the broker
/// shuts down; an error is what to refuse the stream with.
pub async fn next_request(
    first: &mut Option<Frame>,
    reader: &mut FrameReader,
    shutdown: &mut tokio::sync::watch::Receiver<bool>,
) -> Result<Option<Frame>> {
    if let Some(frame) = first.take() {
        return Ok(Some(frame));
    }
    tokio::select! {
        received = reader.next() => Ok(received?.map(|r| r.frame)),
        _ = shutdown.changed() => Ok(None),
    }
}

/// Writes one frame: its head, then its batch (if it carries one) without copying it.
pub async fn write_frame(send: &mut quinn::SendStream, frame: &Frame) -> Result<()> {
    let (head, batch) = frame.encode_split()?;
    send.write_all_chunks(&mut [head, batch]).await.map_err(|e| Error::Io(e.into()))
}

/// Refuses a stream as the session says: sends its error frame, finishes the stream and stops reading it
/// with its code. Returns the refusal's error.
pub async fn refuse(send: &mut quinn::SendStream, reader: &mut FrameReader, refusal: Refusal) -> Result<()> {
    reader.stop(&refusal.error);
    write_frame(send, &refusal.frame()).await?;
    let _ = send.finish();
    Err(refusal.error)
}
