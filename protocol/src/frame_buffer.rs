//! Delimiting frames in a byte stream, sans-IO: the one place a stream's bytes are cut into frames.
//!
//! A [`FrameBuffer`] is fed the bytes a stream delivers ([`extend`](FrameBuffer::extend)) and hands back
//! whole frames ([`next_frame`](FrameBuffer::next_frame)). It owns two guarantees that every reader of frames
//! needs, whatever its I/O:
//!
//! - **Check before allocate.** The 4-byte length prefix is validated against the frame limit as soon as it
//!   is complete ([`Frame::length`]), so an oversized claim is refused before a byte of its body is read.
//! - **Memory follows the bytes that arrived, not the bytes a peer claims.** Nothing is reserved for a
//!   frame's claimed length: the buffer grows with what the peer actually sent (doubling, so at most twice
//!   what arrived, and never beyond the frame's length), so a peer that claims 4 MiB and sends 64 KiB makes
//!   its reader hold at most 128 KiB, not 4 MiB. A reader that must bound what peers hold in total reads
//!   [`pending_frame_len`](FrameBuffer::pending_frame_len) once the prefix is in and takes that much from a
//!   budget before it asks for the body.
//! - **No copy out.** A whole frame leaves as [`Bytes`] that own the buffer it arrived in, and
//!   [`next_frame`](FrameBuffer::next_frame) decodes it with [`Frame::decode_bytes`], so a frame's byte
//!   fields (a published or delivered batch) are slices of that buffer: the bytes a stream delivered are
//!   copied once, into this buffer, and never again by the frame layer.
//!
//! It never asks for more than the current frame: [`wanted`](FrameBuffer::wanted) says how many bytes the
//! current frame still lacks, so a reader that reads at most that many never holds bytes of the next frame.
//! It performs no I/O and reads no clock; deadlines belong to the caller.

use bytes::Bytes;

use crate::frame::Frame;
use crate::Result;

/// Bytes of a frame's length prefix.
const PREFIX_LEN: usize = 4;

/// Cuts a byte stream into whole frames. See the [module documentation](self).
#[derive(Debug)]
pub struct FrameBuffer {
    /// The bytes from the start of the current frame on.
    buf: Vec<u8>,
    max_frame_len: u32,
}

impl FrameBuffer {
    /// An empty buffer for frames of at most `max_frame_len` bytes (version byte and body, as in
    /// [`Frame::length`]).
    pub fn new(max_frame_len: u32) -> Self {
        Self { buf: Vec::new(), max_frame_len }
    }

    /// Whether no byte of a frame has arrived since the last whole frame: a stream that ends now ends
    /// cleanly, between frames.
    pub fn is_empty(&self) -> bool {
        self.buf.is_empty()
    }

    /// Bytes held, of the frame being received.
    pub fn buffered(&self) -> usize {
        self.buf.len()
    }

    /// The whole length of the frame being received (its prefix included), once its prefix is in: what a
    /// reader must be able to hold before it asks for the rest. `Ok(None)` while the prefix is incomplete;
    /// an error if the prefix claims an empty frame or more than the limit.
    pub fn pending_frame_len(&self) -> Result<Option<usize>> {
        match self.buf.first_chunk::<PREFIX_LEN>() {
            None => Ok(None),
            Some(prefix) => Ok(Some(PREFIX_LEN + Frame::length(*prefix, self.max_frame_len)?)),
        }
    }

    /// How many more bytes the current frame needs (at least 1): read at most this many from the stream.
    pub fn wanted(&self) -> Result<usize> {
        Ok(match self.pending_frame_len()? {
            None => PREFIX_LEN - self.buf.len(),
            Some(total) => total.saturating_sub(self.buf.len()).max(1),
        })
    }

    /// Appends bytes the stream delivered. The buffer grows with them (doubling, but never past the end of
    /// the current frame once its length is known); nothing is reserved ahead for a claimed length.
    pub fn extend(&mut self, bytes: &[u8]) {
        let needed = self.buf.len().saturating_add(bytes.len());
        if needed > self.buf.capacity() {
            let frame_end = self.pending_frame_len().ok().flatten().unwrap_or(needed);
            let target = self.buf.capacity().saturating_mul(2).min(frame_end).max(needed);
            self.buf.reserve_exact(target - self.buf.len());
        }
        self.buf.extend_from_slice(bytes);
    }

    /// The next whole frame's bytes (its length prefix included), if they are all in; call again until
    /// `Ok(None)`. An invalid length prefix is an error, and the stream's framing is then lost.
    pub fn next_frame_bytes(&mut self) -> Result<Option<Bytes>> {
        match self.pending_frame_len()? {
            Some(total) if self.buf.len() >= total => {
                // Bytes beyond the frame (a caller that read past `wanted`) start the next one.
                let rest = self.buf.split_off(total);
                Ok(Some(Bytes::from(std::mem::replace(&mut self.buf, rest))))
            }
            _ => Ok(None),
        }
    }

    /// The next whole frame, decoded, if it is all in. Its byte fields are slices of the frame's buffer
    /// ([`Frame::decode_bytes`]).
    pub fn next_frame(&mut self) -> Result<Option<Frame>> {
        match self.next_frame_bytes()? {
            Some(bytes) => Frame::decode_bytes(bytes).map(Some),
            None => Ok(None),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Error;

    fn ack(n: u64) -> Frame {
        Frame::Ack { subscription: 1, next_offset: crate::Offset(n) }
    }

    #[test]
    fn frames_come_out_whole_whatever_the_chunking() {
        let mut stream = Vec::new();
        for n in 0..20 {
            ack(n).encode(&mut stream).unwrap();
        }
        for chunk in [1, 2, 3, 5, 7, 64] {
            let mut buf = FrameBuffer::new(1024);
            let mut out = Vec::new();
            for piece in stream.chunks(chunk) {
                buf.extend(piece);
                while let Some(frame) = buf.next_frame().unwrap() {
                    out.push(frame);
                }
            }
            assert!(buf.is_empty());
            assert_eq!(out, (0..20).map(ack).collect::<Vec<_>>(), "chunks of {chunk}");
        }
    }

    #[test]
    fn wanted_never_reaches_into_the_next_frame() {
        let frame = ack(7).to_vec().unwrap();
        let mut buf = FrameBuffer::new(1024);
        assert_eq!(buf.wanted().unwrap(), 4);
        buf.extend(&frame[..2]);
        assert_eq!(buf.wanted().unwrap(), 2);
        buf.extend(&frame[2..4]);
        assert_eq!(buf.pending_frame_len().unwrap(), Some(frame.len()));
        assert_eq!(buf.wanted().unwrap(), frame.len() - 4);
        buf.extend(&frame[4..]);
        assert_eq!(buf.next_frame().unwrap(), Some(ack(7)));
        assert_eq!(buf.wanted().unwrap(), 4);
    }

    #[test]
    fn memory_follows_the_bytes_that_arrived_not_the_claimed_length() {
        let max = 4 * 1024 * 1024;
        let mut buf = FrameBuffer::new(max);
        buf.extend(&max.to_be_bytes());
        buf.extend(&[0u8; 1000]);
        assert_eq!(buf.pending_frame_len().unwrap(), Some(4 + max as usize));
        assert_eq!(buf.buffered(), 1004);
        assert!(buf.buf.capacity() < 64 * 1024, "capacity {}", buf.buf.capacity());
        assert_eq!(buf.next_frame().unwrap(), None);
    }

    #[test]
    fn the_buffer_never_grows_past_the_frame_it_receives() {
        let frame = Frame::Publish { request_id: 1, batch: Bytes::from(vec![7u8; 65_000]) }.to_vec().unwrap();
        let mut buf = FrameBuffer::new(1 << 20);
        for piece in frame.chunks(1200) {
            buf.extend(piece);
            assert!(buf.buf.capacity() <= frame.len(), "capacity {} > {}", buf.buf.capacity(), frame.len());
            assert!(buf.buf.capacity() <= 2 * buf.buffered().max(4), "capacity {}", buf.buf.capacity());
        }
        assert_eq!(buf.next_frame_bytes().unwrap().map(|b| b.len()), Some(frame.len()));
    }

    #[test]
    fn an_oversized_or_empty_claim_is_refused_as_soon_as_the_prefix_is_in() {
        let mut buf = FrameBuffer::new(1024);
        buf.extend(&1025u32.to_be_bytes()[..3]);
        assert_eq!(buf.pending_frame_len(), Ok(None));
        buf.extend(&1025u32.to_be_bytes()[3..]);
        assert_eq!(buf.wanted(), Err(Error::TooLarge { what: "frame", len: 1025, max: 1024 }));
        assert!(buf.next_frame().is_err());
        let mut buf = FrameBuffer::new(1024);
        buf.extend(&[0, 0, 0, 0]);
        assert_eq!(buf.next_frame(), Err(Error::Malformed("empty frame")));
    }

    #[test]
    fn undecodable_bodies_are_errors_not_panics() {
        let mut buf = FrameBuffer::new(1024);
        buf.extend(&[0, 0, 0, 2, 1, 200]);
        assert_eq!(buf.next_frame(), Err(Error::Malformed("frame body")));
    }
}
