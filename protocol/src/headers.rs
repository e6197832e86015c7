//! User headers: optional name/value pairs that a publisher attaches to a message, sealed with it.
//!
//! Headers live **inside** each record's ciphertext (batch format version 3, see [`batch`](crate::batch)),
//! in front of the payload, so they are exactly as confidential and as authentic as the payload: the
//! broker cannot read, add, drop, reorder or alter them without the record failing its AEAD check or the
//! batch failing its signature. The broker learns only what it learns of a payload, its length (the header
//! section's length is part of the record's), and that the batch carries headers at all (its version byte).
//!
//! # Rules
//!
//! - A **name** ([`HeaderName`]) is 1 to [`MAX_HEADER_NAME_LEN`] bytes of ASCII letters, digits, `.`, `_`
//!   and `-` (so it is valid UTF-8, needs no escaping in logs or on a command line, and cannot contain the
//!   `=` of the CLI's `KEY=VALUE`). Names are case-sensitive: `Content-Type` and `content-type` are two
//!   names. A message has each name at most once.
//! - A **value** is UTF-8 text of 0 to [`MAX_HEADER_VALUE_LEN`] bytes. Headers are metadata meant to be
//!   read by programs and people (a content type, a trace id, a reply-to topic); binary data belongs in the
//!   payload. Values may be as secret as the payload, so [`Headers`]' `Debug` shows the names only.
//! - A message has at most [`MAX_HEADERS`] headers.
//!
//! The limits are constants of the format, not settings: a message a publisher can seal is a message every
//! subscriber can open, whatever its configuration. They bound the header section of one message to
//! 1 + 32 × (1 + 64 + 2 + 4096) = 133,217 bytes, and the section counts towards the batch size limit like
//! the payload does.
//!
//! # Encoding (the header section of a version-3 record's plaintext)
//!
//! ```text
//! count         u8          0..=MAX_HEADERS
//! `count` times, in strictly ascending bytewise order of name (so no name twice):
//!   name_len    u8          1..=MAX_HEADER_NAME_LEN
//!   name        [name_len]  A-Z a-z 0-9 . _ -
//!   value_len   u16         0..=MAX_HEADER_VALUE_LEN, big-endian
//!   value       [value_len] UTF-8
//! ```
//!
//! The payload is the rest of the plaintext. The order is fixed and every length is exact, so a set of
//! headers has one encoding: the decoder, which [`VerifiedBatch::decrypt`](crate::VerifiedBatch::decrypt)
//! runs on every record of a version-3 batch, refuses unsorted or repeated names, a name or a value outside
//! its rule, and a count or a length over its limit. A message without headers costs one byte
//! (`count = 0`) in a version-3 batch, and nothing in a batch of version 1 or 2, which
//! [`seal_with_headers`](crate::seal_with_headers) writes whenever no message of the batch has headers.

use std::borrow::Borrow;
use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use crate::reader::Reader;
use crate::{Error, Result};

/// Most headers on one message.
pub const MAX_HEADERS: usize = 32;
/// Longest header name, in bytes.
pub const MAX_HEADER_NAME_LEN: usize = 64;
/// Longest header value, in bytes.
pub const MAX_HEADER_VALUE_LEN: usize = 4096;

/// A validated header name: 1 to [`MAX_HEADER_NAME_LEN`] bytes of ASCII letters, digits, `.`, `_` and `-`.
/// Case-sensitive; ordered bytewise, which is the order of the encoding.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct HeaderName(String);

impl HeaderName {
    /// Validates `name`: [`Error::InvalidHeader`] if it is empty or has a byte outside the rule,
    /// [`Error::TooLarge`] if it is longer than [`MAX_HEADER_NAME_LEN`].
    pub fn new(name: impl Into<String>) -> Result<Self> {
        let name = name.into();
        check_name(name.as_bytes())?;
        Ok(Self(name))
    }

    /// The name as a string.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

fn check_name(name: &[u8]) -> Result<()> {
    if name.is_empty() {
        return Err(Error::InvalidHeader("empty name"));
    }
    if name.len() > MAX_HEADER_NAME_LEN {
        return Err(Error::TooLarge {
            what: "header name",
            len: name.len() as u64,
            max: MAX_HEADER_NAME_LEN as u64,
        });
    }
    if !name.iter().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-')) {
        return Err(Error::InvalidHeader("a name character other than A-Z a-z 0-9 . _ -"));
    }
    Ok(())
}

fn check_value(value: &str) -> Result<()> {
    if value.len() > MAX_HEADER_VALUE_LEN {
        return Err(Error::TooLarge {
            what: "header value",
            len: value.len() as u64,
            max: MAX_HEADER_VALUE_LEN as u64,
        });
    }
    Ok(())
}

impl fmt::Display for HeaderName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(&self.0)
    }
}

impl fmt::Debug for HeaderName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "HeaderName({:?})", self.0)
    }
}

impl FromStr for HeaderName {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        Self::new(s)
    }
}

impl TryFrom<&str> for HeaderName {
    type Error = Error;
    fn try_from(s: &str) -> Result<Self> {
        Self::new(s)
    }
}

impl TryFrom<String> for HeaderName {
    type Error = Error;
    fn try_from(s: String) -> Result<Self> {
        Self::new(s)
    }
}

impl AsRef<str> for HeaderName {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

/// Compares as its `str` (bytewise), so a [`Headers`] can be looked up by `&str`.
impl Borrow<str> for HeaderName {
    fn borrow(&self) -> &str {
        &self.0
    }
}

/// The user headers of one message: at most [`MAX_HEADERS`] names, each with one UTF-8 value, kept in
/// the order of the encoding (bytewise by name). Every way of building one checks the rules of the
/// [module documentation](self), so a `Headers` always seals.
///
/// ```
/// use sealpost_protocol::Headers;
///
/// let headers = Headers::new().with("content-type", "text/plain")?.with("trace-id", "4bf92f35")?;
/// assert_eq!(headers.get("content-type"), Some("text/plain"));
/// assert_eq!(headers.iter().map(|(name, _)| name).collect::<Vec<_>>(), ["content-type", "trace-id"]);
/// // Debug shows the names, never the values.
/// assert_eq!(format!("{headers:?}"), r#"Headers { names: ["content-type", "trace-id"] }"#);
/// # Ok::<(), sealpost_protocol::Error>(())
/// ```
#[derive(Clone, Default, PartialEq, Eq, Hash)]
pub struct Headers {
    map: BTreeMap<HeaderName, String>,
}

impl Headers {
    /// No headers.
    pub fn new() -> Self {
        Self::default()
    }

    /// Sets header `name` to `value`, returning the value it replaces. Fails, changing nothing, if the
    /// name or the value breaks its rule, or if the name is new and the message already has
    /// [`MAX_HEADERS`] headers ([`Error::TooLarge`] with `what: "header count"`).
    pub fn insert(&mut self, name: &str, value: impl Into<String>) -> Result<Option<String>> {
        let value = value.into();
        check_value(&value)?;
        if let Some(old) = self.map.get_mut(name) {
            return Ok(Some(std::mem::replace(old, value)));
        }
        let name = HeaderName::new(name)?;
        if self.map.len() >= MAX_HEADERS {
            return Err(Error::TooLarge {
                what: "header count",
                len: self.map.len() as u64 + 1,
                max: MAX_HEADERS as u64,
            });
        }
        self.map.insert(name, value);
        Ok(None)
    }

    /// `self` with header `name` set to `value`, as [`insert`](Self::insert) does: for building headers
    /// in one expression.
    pub fn with(mut self, name: &str, value: impl Into<String>) -> Result<Self> {
        self.insert(name, value)?;
        Ok(self)
    }

    /// The value of header `name`, if set.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.map.get(name).map(String::as_str)
    }

    /// Removes header `name`, returning its value.
    pub fn remove(&mut self, name: &str) -> Option<String> {
        self.map.remove(name)
    }

    /// Every header as (name, value), bytewise by name.
    pub fn iter(&self) -> impl ExactSizeIterator<Item = (&str, &str)> + '_ {
        self.map.iter().map(|(name, value)| (name.as_str(), value.as_str()))
    }

    /// How many headers there are.
    pub fn len(&self) -> usize {
        self.map.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    /// Length of the encoded header section: what these headers add to a record of a version-3 batch
    /// (1 for no headers).
    pub fn encoded_len(&self) -> usize {
        1 + self.map.iter().map(|(name, value)| 1 + name.0.len() + 2 + value.len()).sum::<usize>()
    }

    /// Appends the header section to `out`.
    pub(crate) fn encode_section(&self, out: &mut Vec<u8>) {
        // Bounded by MAX_HEADERS, MAX_HEADER_NAME_LEN and MAX_HEADER_VALUE_LEN, which every way of
        // building a `Headers` checks: the casts cannot truncate.
        out.push(self.map.len() as u8);
        for (name, value) in &self.map {
            out.push(name.0.len() as u8);
            out.extend_from_slice(name.0.as_bytes());
            out.extend_from_slice(&(value.len() as u16).to_be_bytes());
            out.extend_from_slice(value.as_bytes());
        }
    }

    /// Parses the header section at the start of `plain`; returns the headers and the section's length
    /// (the payload starts there). Accepts exactly what [`encode_section`](Self::encode_section) writes:
    /// every length is checked against its limit and against the bytes present before anything is
    /// allocated for it, and names must be strictly ascending.
    pub(crate) fn decode_section(plain: &[u8]) -> Result<(Self, usize)> {
        let mut r = Reader::new(plain);
        let count = usize::from(r.u8("header count")?);
        if count > MAX_HEADERS {
            return Err(Error::TooLarge { what: "header count", len: count as u64, max: MAX_HEADERS as u64 });
        }
        let mut map = BTreeMap::new();
        let mut last: Option<&[u8]> = None;
        for _ in 0..count {
            let name_len = usize::from(r.u8("header name length")?);
            if name_len > MAX_HEADER_NAME_LEN {
                return Err(Error::TooLarge {
                    what: "header name",
                    len: name_len as u64,
                    max: MAX_HEADER_NAME_LEN as u64,
                });
            }
            let name = r.take(name_len, "header name")?;
            check_name(name)?;
            if last.is_some_and(|last| last >= name) {
                return Err(Error::InvalidHeader("names not in strictly ascending order"));
            }
            last = Some(name);
            let value_len = usize::from(u16::from_be_bytes(r.array("header value length")?));
            if value_len > MAX_HEADER_VALUE_LEN {
                return Err(Error::TooLarge {
                    what: "header value",
                    len: value_len as u64,
                    max: MAX_HEADER_VALUE_LEN as u64,
                });
            }
            let value = core::str::from_utf8(r.take(value_len, "header value")?)
                .map_err(|_| Error::InvalidHeader("a value that is not UTF-8"))?;
            // check_name passed: the name is ASCII, so valid UTF-8.
            let name = core::str::from_utf8(name).map_err(|_| Error::InvalidHeader("name not UTF-8"))?;
            map.insert(HeaderName(name.to_owned()), value.to_owned());
        }
        Ok((Self { map }, r.position()))
    }
}

/// Shows the names only: values may be as secret as the payload.
impl fmt::Debug for Headers {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let names: Vec<&str> = self.map.keys().map(HeaderName::as_str).collect();
        f.debug_struct("Headers").field("names", &names).finish()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn encoded(h: &Headers) -> Vec<u8> {
        let mut out = Vec::new();
        h.encode_section(&mut out);
        assert_eq!(out.len(), h.encoded_len());
        out
    }

    #[test]
    fn no_headers_encode_as_one_zero_byte() {
        assert_eq!(encoded(&Headers::new()), [0]);
        assert_eq!(Headers::decode_section(&[0, b'p']).unwrap(), (Headers::new(), 1));
    }

    #[test]
    fn section_matches_its_documented_bytes() {
        // Inserted out of order; encoded bytewise by name ("B" < "a").
        let h = Headers::new().with("a", "xy").unwrap().with("B", "").unwrap();
        assert_eq!(encoded(&h), [2, 1, b'B', 0, 0, 1, b'a', 0, 2, b'x', b'y']);
    }

    #[test]
    fn section_round_trips_and_the_payload_follows() {
        let h =
            Headers::new().with("content-type", "text/plain; charset=utf-8").unwrap().with("z", "é").unwrap();
        let mut plain = encoded(&h);
        let section = plain.len();
        plain.extend_from_slice(b"payload");
        assert_eq!(Headers::decode_section(&plain).unwrap(), (h, section));
    }

    #[test]
    fn names_follow_the_rule() {
        for ok in ["a", "A-Z.a_z-0", &"n".repeat(MAX_HEADER_NAME_LEN)] {
            assert!(HeaderName::new(ok).is_ok(), "{ok}");
        }
        assert_eq!(HeaderName::new("").unwrap_err(), Error::InvalidHeader("empty name"));
        for bad in ["a=b", "a b", "é", "a/b", "a:b", "\0"] {
            assert_eq!(
                HeaderName::new(bad).unwrap_err(),
                Error::InvalidHeader("a name character other than A-Z a-z 0-9 . _ -"),
                "{bad:?}"
            );
        }
        assert_eq!(
            HeaderName::new("n".repeat(MAX_HEADER_NAME_LEN + 1)).unwrap_err(),
            Error::TooLarge { what: "header name", len: 65, max: 64 }
        );
    }

    #[test]
    fn limits_are_typed_errors_and_change_nothing() {
        let mut h = Headers::new();
        assert_eq!(
            h.insert("v", "x".repeat(MAX_HEADER_VALUE_LEN + 1)).unwrap_err(),
            Error::TooLarge { what: "header value", len: 4097, max: 4096 }
        );
        assert!(h.is_empty());
        h.insert("v", "x".repeat(MAX_HEADER_VALUE_LEN)).unwrap();
        for i in 1..MAX_HEADERS {
            h.insert(&format!("h{i:02}"), "").unwrap();
        }
        assert_eq!(h.len(), MAX_HEADERS);
        assert_eq!(
            h.insert("one-more", "").unwrap_err(),
            Error::TooLarge { what: "header count", len: 33, max: 32 }
        );
        // Replacing a value is not a new header.
        assert_eq!(h.insert("h01", "new").unwrap(), Some(String::new()));
        assert_eq!(h.len(), MAX_HEADERS);
        // The largest section decodes.
        let full = encoded(&h);
        assert_eq!(Headers::decode_section(&full).unwrap(), (h, full.len()));
    }

    #[test]
    fn decode_rejects_every_non_canonical_form() {
        let err = |bytes: &[u8]| Headers::decode_section(bytes).unwrap_err();
        // Repeated and descending names.
        assert_eq!(
            err(&[2, 1, b'a', 0, 0, 1, b'a', 0, 0]),
            Error::InvalidHeader("names not in strictly ascending order")
        );
        assert_eq!(
            err(&[2, 1, b'b', 0, 0, 1, b'a', 0, 0]),
            Error::InvalidHeader("names not in strictly ascending order")
        );
        // A name that is empty, or outside the rule.
        assert_eq!(err(&[1, 0, 0, 0]), Error::InvalidHeader("empty name"));
        assert_eq!(
            err(&[1, 1, b'=', 0, 0]),
            Error::InvalidHeader("a name character other than A-Z a-z 0-9 . _ -")
        );
        // A value that is not UTF-8.
        assert_eq!(err(&[1, 1, b'a', 0, 1, 0xFF]), Error::InvalidHeader("a value that is not UTF-8"));
        // Counts and lengths over their limits, refused before the bytes are read.
        assert_eq!(err(&[33]), Error::TooLarge { what: "header count", len: 33, max: 32 });
        assert_eq!(err(&[1, 65]), Error::TooLarge { what: "header name", len: 65, max: 64 });
        assert_eq!(
            err(&[1, 1, b'a', 0x10, 0x01]),
            Error::TooLarge { what: "header value", len: 4097, max: 4096 }
        );
        // Truncation anywhere.
        let full = [2, 1, b'a', 0, 1, b'x', 2, b'b', b'c', 0, 0];
        assert!(Headers::decode_section(&full).is_ok());
        for cut in 0..full.len() {
            assert!(matches!(err(&full[..cut]), Error::Truncated(_)), "cut at {cut}");
        }
    }

    #[test]
    fn debug_shows_names_not_values() {
        let h = Headers::new().with("secret-name", "hunter2").unwrap();
        let shown = format!("{h:?}");
        assert!(shown.contains("secret-name") && !shown.contains("hunter2"), "{shown}");
    }
}
