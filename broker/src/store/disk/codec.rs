//! The byte encodings that the index's keys and values and the segments' records share: a kind byte and a
//! length-prefixed topic, big-endian integers, length-prefixed strings.
//!
//! Encoders write into a caller's buffer. Decoders check every length against the bytes present and never
//! panic: they answer `None` (or a "corrupt store" error) for bytes that do not decode.

use sealpost_protocol::{Offset, Principal, Topic};

use crate::{Error, Result};

/// The error for stored bytes that do not decode.
pub(super) fn corrupt(what: &str) -> Error {
    Error::Storage(format!("corrupt store: {what}"))
}

/// The big-endian `u64` at `at`.
pub(super) fn u64_at(bytes: &[u8], at: usize) -> Result<u64> {
    bytes
        .get(at..at + 8)
        .and_then(|b| b.try_into().ok())
        .map(u64::from_be_bytes)
        .ok_or_else(|| corrupt("short integer"))
}

/// The big-endian `u32` at `at`.
pub(super) fn u32_at(bytes: &[u8], at: usize) -> Result<u32> {
    bytes
        .get(at..at + 4)
        .and_then(|b| b.try_into().ok())
        .map(u32::from_be_bytes)
        .ok_or_else(|| corrupt("short integer"))
}

/// `kind | topic_len u8 | topic`, with room for `extra` more bytes.
pub(super) fn topic_prefix(kind: u8, topic: &Topic, extra: usize) -> Vec<u8> {
    let name = topic.as_str().as_bytes();
    let mut key = Vec::with_capacity(2 + name.len() + extra);
    key.push(kind);
    // Topic guarantees 1..=255 bytes.
    key.push(name.len() as u8);
    key.extend_from_slice(name);
    key
}

/// `topic_len u8 | topic | rest`, split.
pub(super) fn split_topic(bytes: &[u8]) -> Option<(Topic, &[u8])> {
    let (&len, rest) = bytes.split_first()?;
    let (name, rest) = rest.split_at_checked(len.into())?;
    Some((Topic::new(std::str::from_utf8(name).ok()?).ok()?, rest))
}

/// `u64 | rest`, split.
pub(super) fn take_u64(rest: &[u8]) -> Option<(u64, &[u8])> {
    let (n, rest) = rest.split_first_chunk::<8>()?;
    Some((u64::from_be_bytes(*n), rest))
}

/// `offset u64 | rest`, split.
pub(super) fn take_offset(rest: &[u8]) -> Option<(Offset, &[u8])> {
    take_u64(rest).map(|(n, rest)| (Offset(n), rest))
}

/// `len u32 | string | rest`, split.
pub(super) fn take_str(rest: &[u8]) -> Option<(String, &[u8])> {
    let (len, rest) = rest.split_first_chunk::<4>()?;
    let (s, rest) = rest.split_at_checked(usize::try_from(u32::from_be_bytes(*len)).ok()?)?;
    Some((String::from_utf8(s.to_vec()).ok()?, rest))
}

/// Appends `len u32 | principal | len u32 | name`, as durable keys and records end.
pub(super) fn principal_and_name(out: &mut Vec<u8>, principal: &Principal, name: &str) -> Result<()> {
    for part in [principal.as_str(), name] {
        let len = u32::try_from(part.len()).map_err(|_| Error::LimitExceeded("durable subscription name"))?;
        out.extend_from_slice(&len.to_be_bytes());
        out.extend_from_slice(part.as_bytes());
    }
    Ok(())
}
