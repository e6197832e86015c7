//! The sealed batch: 1..N messages from one publisher on one topic, encrypted and signed once.
//!
//! # Encoding (versions 3 and 2 written; version 1 still read, and written for the legacy chain)
//!
//! All integers are big-endian. The encoding is canonical: [`SealedBatch::decode`] (with, for what lies
//! inside the ciphertexts, [`VerifiedBatch::decrypt`]) accepts exactly the bytes [`seal_with_headers`]
//! produces, with no trailing bytes and no alternative forms, so a batch has one encoding and one digest.
//!
//! ```text
//! header:
//!   version       u8         = 3, 2 (or 1)
//!   topic_len     u8         1..=255
//!   topic         [topic_len]   a valid Topic
//!   epoch         u64
//!   publisher     [32]       ed25519 public key of the signer
//!   chain         [16]       versions 2 and 3 only: the publisher instance's ChainId, never all zeros
//!   first_seq     u64        >= 1; the batch holds first_seq ..= first_seq + count - 1
//!   count         u32        1..=max_batch_messages
//!   prev_digest   [32]       digest of the previous batch of this chain on this topic, or 32 zero bytes
//!   created_at    u64        milliseconds since the Unix epoch, as claimed by the publisher
//! records, `count` times:
//!   nonce         [24]       random XChaCha20 nonce
//!   ct_len        u32        >= 16 (versions 1 and 2), >= 17 (version 3)
//!   ciphertext    [ct_len]   XChaCha20-Poly1305(plaintext), 16-byte tag last
//! signature       [64]       ed25519
//!
//! plaintext of a record:
//!   versions 1 and 2:  payload
//!   version 3:         header section (see `headers`: count u8, then each name and value), then payload
//! ```
//!
//! A batch of version 1 has no `chain` field: its chain is [`ChainId::LEGACY`] (all zeros), which is how
//! data folders written before chain ids read. [`seal`] writes version 1 for that chain and version 2 for
//! any other, and the decoder refuses a version-2 or version-3 batch naming the legacy chain, so every
//! header has one encoding. Any other version is [`Error::UnsupportedVersion`].
//!
//! Version 3 differs from version 2 only inside the ciphertexts: each record's plaintext starts with the
//! message's [header section](crate::headers). [`seal_with_headers`] writes version 3 when at least one
//! message of the batch has headers, and version 2 (or 1) otherwise, so a message without headers costs
//! nothing in a batch without headers and one byte (a header count of 0) in a batch with some. Since only
//! a version-3 batch in which some message has headers is ever sealed, [`VerifiedBatch::decrypt`] refuses
//! one in which none has any. The legacy chain cannot carry headers.
//!
//! # Cryptography
//!
//! - `header_digest = BLAKE3-derive_key("sealpost 2026-12-20 batch header v2", header bytes)` (version 1:
//!   `"sealpost 2026-11-23 batch header v1"`).
//!   Version 3: `"sealpost 2026-12-06 batch header v3"`.
//! - Record `i` is sealed under the epoch's content key with associated data `header_digest || i (u32)`, so
//!   a record cannot be moved to another batch, another position, topic, epoch or sequence.
//! - `digest = BLAKE3-derive_key("sealpost 2026-12-20 batch v2", header_digest || records bytes)` (version
//!   1: `"sealpost 2026-11-23 batch v1"`; version 3: `"sealpost 2026-12-06 batch v3"`). The contexts name
//!   the version, so no digest of one version can stand for another's, and the version byte is inside the
//!   header bytes besides: a broker that relabels a version-3 batch as version 2 (to have its header
//!   sections read as payload) breaks the signature.
//! - `signature = ed25519(publisher, "sealpost/v1 batch signature\0" || digest)`, checked with
//!   `verify_strict`. One signature and one verification per batch: per message, the cost is the AEAD and
//!   the hash.
//!
//! The broker can decode the header and verify the signature (it needs no secret for that), but it cannot
//! decrypt records: it sees the length of each record (header section and payload together) and, from the
//! version byte, whether the batch carries headers, never the headers themselves.

use bytes::{Bytes, BytesMut};
use chacha20poly1305::aead::{AeadInPlace, KeyInit};
use chacha20poly1305::{Tag, XChaCha20Poly1305, XNonce};
use rand_core::CryptoRngCore;

use crate::chain::ChainId;
use crate::digest::context;
use crate::epoch::Epoch;
use crate::headers::Headers;
use crate::keys::{ContentKey, KeyLookup, PublicKey, SigningKey};
use crate::reader::Reader;
use crate::topic::Topic;
use crate::{Digest, Error, Limits, Result, Timestamp};

/// The batch format version this build writes for a batch without headers (on every chain but
/// [`ChainId::LEGACY`]).
pub const BATCH_VERSION: u8 = 2;
/// The batch format version whose records carry a header section: written for a batch in which some
/// message has headers.
pub const BATCH_VERSION_3: u8 = 3;
/// The first batch format version, without a chain id; still read, and written for [`ChainId::LEGACY`].
pub const BATCH_VERSION_1: u8 = 1;
/// Length of an XChaCha20 nonce.
pub const NONCE_LEN: usize = 24;
/// Length of a Poly1305 tag.
pub const TAG_LEN: usize = 16;
/// Length of an ed25519 signature.
pub const SIGNATURE_LEN: usize = 64;
/// Bytes a record adds to its payload: nonce, length field and tag (and, in a version-3 batch, the
/// message's header section: [`Headers::encoded_len`]).
pub const RECORD_OVERHEAD: usize = NONCE_LEN + 4 + TAG_LEN;

/// Prefix of the message an ed25519 batch signature covers. Distinct from every other signed message in
/// Sealpost, so a batch signature can never be passed off as anything else.
const SIGNATURE_DOMAIN: &[u8] = b"sealpost/v1 batch signature\0";

/// The signed header of a batch.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BatchHeader {
    /// The topic the batch was sealed for.
    pub topic: Topic,
    /// The content-key epoch its records are encrypted under.
    pub epoch: Epoch,
    /// The publisher's signing key.
    pub publisher: PublicKey,
    /// The publisher instance's chain; [`ChainId::LEGACY`] for a batch of version 1.
    pub chain: ChainId,
    /// Sequence number of the first message.
    pub first_seq: u64,
    /// Number of messages, at least 1.
    pub count: u32,
    /// Digest of the previous batch of this chain on this topic, or [`Digest::ZERO`] for its first.
    pub prev_digest: Digest,
    /// When the publisher sealed it.
    pub created_at: Timestamp,
    /// Whether the records carry header sections (format version 3); never on [`ChainId::LEGACY`].
    pub with_headers: bool,
}

/// Length of a [`ChainId`] in a version-2 header.
const CHAIN_LEN: usize = 16;

impl BatchHeader {
    /// Sequence number that the publisher's next batch on this topic starts at.
    pub fn next_seq(&self) -> u64 {
        // Cannot overflow: decode and seal both reject a batch whose range would.
        self.first_seq + u64::from(self.count)
    }

    /// The format version the header is encoded in: 1 for [`ChainId::LEGACY`], else 3 for a batch with
    /// headers and 2 for one without.
    pub fn version(&self) -> u8 {
        if self.chain.is_legacy() {
            BATCH_VERSION_1
        } else if self.with_headers {
            BATCH_VERSION_3
        } else {
            BATCH_VERSION
        }
    }

    /// Length of the encoded header.
    fn encoded_len(&self) -> usize {
        let chain = if self.chain.is_legacy() { 0 } else { CHAIN_LEN };
        2 + self.topic.as_str().len() + 8 + 32 + chain + 8 + 4 + 32 + 8
    }

    fn encode(&self, out: &mut Vec<u8>) {
        let topic = self.topic.as_str().as_bytes();
        out.push(self.version());
        // Topic::new guarantees 1..=255 bytes.
        out.push(topic.len() as u8);
        out.extend_from_slice(topic);
        out.extend_from_slice(&self.epoch.0.to_be_bytes());
        out.extend_from_slice(self.publisher.as_bytes());
        if !self.chain.is_legacy() {
            out.extend_from_slice(self.chain.as_bytes());
        }
        out.extend_from_slice(&self.first_seq.to_be_bytes());
        out.extend_from_slice(&self.count.to_be_bytes());
        out.extend_from_slice(self.prev_digest.as_bytes());
        out.extend_from_slice(&self.created_at.0.to_be_bytes());
    }

    fn decode(r: &mut Reader<'_>, limits: &Limits) -> Result<Self> {
        let version = r.u8("batch version")?;
        if !matches!(version, BATCH_VERSION_1 | BATCH_VERSION | BATCH_VERSION_3) {
            return Err(Error::UnsupportedVersion { what: "batch", version });
        }
        let topic_len = r.u8("topic length")?;
        let topic = core::str::from_utf8(r.take(topic_len.into(), "topic")?)
            .map_err(|_| Error::Malformed("topic is not UTF-8"))?;
        let topic = Topic::new(topic)?;
        let epoch = Epoch(r.u64("epoch")?);
        let publisher = PublicKey::from_bytes(&r.array("publisher key")?)?;
        let chain = if version != BATCH_VERSION_1 {
            let chain = ChainId(r.array("chain id")?);
            if chain.is_legacy() {
                return Err(Error::Malformed(if version == BATCH_VERSION {
                    "a version-2 batch names the legacy chain"
                } else {
                    "a version-3 batch names the legacy chain"
                }));
            }
            chain
        } else {
            ChainId::LEGACY
        };
        let first_seq = r.u64("first sequence")?;
        let count = r.u32("count")?;
        let prev_digest = Digest(r.array("previous digest")?);
        let created_at = Timestamp(r.u64("timestamp")?);
        check_range(first_seq, count, limits)?;
        let with_headers = version == BATCH_VERSION_3;
        Ok(Self { topic, epoch, publisher, chain, first_seq, count, prev_digest, created_at, with_headers })
    }

    /// The domain-separated digest of the canonical header bytes of format `version`.
    fn digest_of(version: u8, bytes: &[u8]) -> Digest {
        blake3::Hasher::new_derive_key(context::batch_header(version)).update(bytes).finalize().into()
    }
}

fn check_range(first_seq: u64, count: u32, limits: &Limits) -> Result<()> {
    if first_seq == 0 {
        return Err(Error::Malformed("sequence numbers start at 1"));
    }
    if count == 0 {
        return Err(Error::Malformed("empty batch"));
    }
    if count > limits.max_batch_messages {
        return Err(Error::TooLarge {
            what: "batch message count",
            len: count.into(),
            max: limits.max_batch_messages.into(),
        });
    }
    if first_seq.checked_add(count.into()).is_none() {
        return Err(Error::Malformed("sequence range overflows"));
    }
    Ok(())
}

fn batch_digest(version: u8, header_digest: &Digest, records: &[u8]) -> Digest {
    blake3::Hasher::new_derive_key(context::batch(version))
        .update(header_digest.as_bytes())
        .update(records)
        .finalize()
        .into()
}

fn signed_message(digest: &Digest) -> [u8; SIGNATURE_DOMAIN.len() + 32] {
    let mut msg = [0u8; SIGNATURE_DOMAIN.len() + 32];
    msg[..SIGNATURE_DOMAIN.len()].copy_from_slice(SIGNATURE_DOMAIN);
    msg[SIGNATURE_DOMAIN.len()..].copy_from_slice(digest.as_bytes());
    msg
}

fn record_aad(header_digest: &Digest, index: u32) -> [u8; 36] {
    let mut aad = [0u8; 36];
    aad[..32].copy_from_slice(header_digest.as_bytes());
    aad[32..].copy_from_slice(&index.to_be_bytes());
    aad
}

/// A structurally valid batch whose signature has **not** been checked yet.
///
/// Holds the canonical bytes (cheap to clone, to store and to forward) and the parsed header. Call
/// [`verify`](Self::verify) before trusting anything in it.
#[derive(Clone, Debug)]
pub struct SealedBatch {
    bytes: Bytes,
    header: BatchHeader,
    header_len: usize,
}

impl SealedBatch {
    /// Parses `bytes` as a sealed batch: checks the size limit first, then the version, then every length
    /// field against the bytes actually present. Does no cryptography and allocates nothing beyond the
    /// topic name.
    pub fn decode(bytes: Bytes, limits: &Limits) -> Result<Self> {
        if bytes.len() > limits.max_batch_len as usize {
            return Err(Error::TooLarge {
                what: "batch",
                len: bytes.len() as u64,
                max: limits.max_batch_len.into(),
            });
        }
        let mut r = Reader::new(&bytes);
        let header = BatchHeader::decode(&mut r, limits)?;
        let header_len = r.position();
        // A version-3 record holds at least its header count.
        let min_ct_len = TAG_LEN + usize::from(header.with_headers);
        for _ in 0..header.count {
            r.take(NONCE_LEN, "record nonce")?;
            let ct_len = r.u32("record length")? as usize;
            if ct_len < min_ct_len {
                return Err(Error::Malformed(if header.with_headers {
                    "record shorter than its tag and header count"
                } else {
                    "record shorter than its tag"
                }));
            }
            r.take(ct_len, "record ciphertext")?;
        }
        r.take(SIGNATURE_LEN, "signature")?;
        if r.remaining() != 0 {
            return Err(Error::Malformed("trailing bytes after signature"));
        }
        Ok(Self { bytes, header, header_len })
    }

    /// The parsed, not yet verified, header.
    pub fn header(&self) -> &BatchHeader {
        &self.header
    }

    /// The canonical encoding.
    pub fn as_bytes(&self) -> &Bytes {
        &self.bytes
    }

    /// The canonical encoding, by value.
    pub fn into_bytes(self) -> Bytes {
        self.bytes
    }

    fn records_bytes(&self) -> &[u8] {
        &self.bytes[self.header_len..self.bytes.len() - SIGNATURE_LEN]
    }

    /// Checks the signature with `verify_strict` against the publisher key named in the header.
    pub fn verify(self) -> Result<VerifiedBatch> {
        let version = self.header.version();
        let header_digest = BatchHeader::digest_of(version, &self.bytes[..self.header_len]);
        let digest = batch_digest(version, &header_digest, self.records_bytes());
        let mut sig = [0u8; SIGNATURE_LEN];
        sig.copy_from_slice(&self.bytes[self.bytes.len() - SIGNATURE_LEN..]);
        self.header.publisher.verify_strict(&signed_message(&digest), &sig)?;
        Ok(VerifiedBatch { batch: self, header_digest, digest })
    }
}

/// A batch whose signature verified: its header and ciphertexts are exactly what the publisher named in
/// the header signed. Whether that publisher may publish on the topic is a separate question.
#[derive(Clone, Debug)]
pub struct VerifiedBatch {
    batch: SealedBatch,
    header_digest: Digest,
    digest: Digest,
}

impl VerifiedBatch {
    /// The signed header.
    pub fn header(&self) -> &BatchHeader {
        &self.batch.header
    }

    /// The digest the signature covers; the next batch of this publisher names it as `prev_digest`.
    pub fn digest(&self) -> Digest {
        self.digest
    }

    /// The canonical encoding.
    pub fn as_bytes(&self) -> &Bytes {
        &self.batch.bytes
    }

    /// The canonical encoding, by value.
    pub fn into_bytes(self) -> Bytes {
        self.batch.bytes
    }

    /// Decrypts every record with `key`: the payloads and, `headers[i]` for `payloads[i]`, the messages'
    /// headers (empty for every message of a batch of version 1 or 2).
    ///
    /// Fails with [`Error::TamperedRecord`] on the first record that does not authenticate, with
    /// [`Error::MalformedHeaders`] on the first whose header section does not decode, and with
    /// [`Error::Malformed`] for a version-3 batch in which no message has headers (which [`seal`] never
    /// writes); no plaintext is returned in those cases.
    pub fn decrypt(&self, key: &ContentKey) -> Result<(Vec<Bytes>, Vec<Headers>)> {
        let cipher = XChaCha20Poly1305::new(key.as_bytes().into());
        let records = self.batch.records_bytes();
        let count = self.header().count as usize;
        let with_headers = self.header().with_headers;
        let plain_len = records.len() - count * RECORD_OVERHEAD;
        let mut plain = BytesMut::with_capacity(plain_len);
        // Where each payload starts and ends in `plain`.
        let mut spans = Vec::with_capacity(count);
        let mut headers = Vec::with_capacity(count);
        let mut r = Reader::new(records);
        for index in 0..self.header().count {
            // Lengths were validated by decode; these reads cannot fail on a decoded batch.
            let nonce = r.take(NONCE_LEN, "record nonce")?;
            let ct_len = r.u32("record length")? as usize;
            let ct = r.take(ct_len, "record ciphertext")?;
            let (body, tag) = ct.split_at(ct_len - TAG_LEN);
            let start = plain.len();
            plain.extend_from_slice(body);
            cipher
                .decrypt_in_place_detached(
                    XNonce::from_slice(nonce),
                    &record_aad(&self.header_digest, index),
                    &mut plain[start..],
                    Tag::from_slice(tag),
                )
                .map_err(|_| Error::TamperedRecord { index })?;
            let mut payload_start = start;
            if with_headers {
                let (h, section_len) = Headers::decode_section(&plain[start..])
                    .map_err(|error| Error::MalformedHeaders { index, error: Box::new(error) })?;
                payload_start += section_len;
                headers.push(h);
            } else {
                headers.push(Headers::new());
            }
            spans.push((payload_start, plain.len()));
        }
        if with_headers && headers.iter().all(Headers::is_empty) {
            return Err(Error::Malformed("a version-3 batch in which no message has headers"));
        }
        let plain = plain.freeze();
        let payloads = spans.into_iter().map(|(start, end)| plain.slice(start..end)).collect();
        Ok((payloads, headers))
    }
}

/// Where a new batch continues its publisher's chain, and when it was sealed.
#[derive(Clone, Debug)]
pub struct SealParams {
    /// The topic to seal for.
    pub topic: Topic,
    /// The epoch of the content key used.
    pub epoch: Epoch,
    /// The publisher instance's chain ([`ChainId::random`] once per instance); [`ChainId::LEGACY`] seals
    /// a batch of format version 1.
    pub chain: ChainId,
    /// Sequence number of the first message (see [`ChainHead`](crate::ChainHead)).
    pub first_seq: u64,
    /// Digest of the previous batch of this chain on this topic, or [`Digest::ZERO`].
    pub prev_digest: Digest,
    /// The caller's current time.
    pub created_at: Timestamp,
}

/// Seals `messages` into one batch: encrypts each under `key` with a fresh random nonce from `rng`, and
/// signs the whole with `signer`. No message has headers: the batch is of format version 2 (1 on
/// [`ChainId::LEGACY`]); see [`seal_with_headers`].
///
/// Fails with [`Error::TooLarge`] if the batch would exceed `limits`, and with [`Error::Malformed`] for an
/// empty batch or a sequence range that would overflow.
pub fn seal<M: AsRef<[u8]>>(
    signer: &SigningKey,
    key: &ContentKey,
    params: SealParams,
    messages: &[M],
    limits: &Limits,
    rng: &mut impl CryptoRngCore,
) -> Result<VerifiedBatch> {
    let payload_len: usize = messages.iter().map(|m| m.as_ref().len()).sum();
    seal_records(signer, key, params, false, messages.len(), payload_len, limits, rng, |index, out| {
        out.extend_from_slice(messages[index].as_ref())
    })
}

/// Seals `messages` into one batch as [`seal`] does, `headers[i]` sealed with `messages[i]` inside its
/// record. If any message has headers the batch is of format version 3, where every record starts with
/// its message's header section (one byte for a message without headers); if none has, it is the batch
/// [`seal`] makes.
///
/// Fails as [`seal`] does (the header sections count towards the size limit), with [`Error::Malformed`]
/// if `headers` and `messages` differ in length, and with [`Error::InvalidHeader`] for headers on
/// [`ChainId::LEGACY`], whose format (version 1) has no room for them.
pub fn seal_with_headers<M: AsRef<[u8]>>(
    signer: &SigningKey,
    key: &ContentKey,
    params: SealParams,
    messages: &[M],
    headers: &[Headers],
    limits: &Limits,
    rng: &mut impl CryptoRngCore,
) -> Result<VerifiedBatch> {
    if headers.len() != messages.len() {
        return Err(Error::Malformed("not one set of headers per message"));
    }
    let with_headers = headers.iter().any(|h| !h.is_empty());
    if with_headers && params.chain.is_legacy() {
        return Err(Error::InvalidHeader("headers on the legacy chain"));
    }
    let mut plain_len: usize = messages.iter().map(|m| m.as_ref().len()).sum();
    if with_headers {
        plain_len += headers.iter().map(Headers::encoded_len).sum::<usize>();
    }
    seal_records(signer, key, params, with_headers, messages.len(), plain_len, limits, rng, |index, out| {
        if with_headers {
            headers[index].encode_section(out);
        }
        out.extend_from_slice(messages[index].as_ref())
    })
}

/// Seals `n` records, record `i` holding the plaintext `write(i, out)` appends to `out` (`plain_len` bytes
/// over all records), in format version 3 if `with_headers`, else 2 (1 on the legacy chain).
#[allow(clippy::too_many_arguments)]
fn seal_records(
    signer: &SigningKey,
    key: &ContentKey,
    params: SealParams,
    with_headers: bool,
    n: usize,
    plain_len: usize,
    limits: &Limits,
    rng: &mut impl CryptoRngCore,
    mut write: impl FnMut(usize, &mut Vec<u8>),
) -> Result<VerifiedBatch> {
    let count = u32::try_from(n).map_err(|_| Error::TooLarge {
        what: "batch message count",
        len: n as u64,
        max: limits.max_batch_messages.into(),
    })?;
    check_range(params.first_seq, count, limits)?;
    let header = BatchHeader {
        topic: params.topic,
        epoch: params.epoch,
        publisher: signer.public_key(),
        chain: params.chain,
        first_seq: params.first_seq,
        count,
        prev_digest: params.prev_digest,
        created_at: params.created_at,
        with_headers,
    };
    let total = header.encoded_len() + n * RECORD_OVERHEAD + plain_len + SIGNATURE_LEN;
    if total > limits.max_batch_len as usize {
        return Err(Error::TooLarge { what: "batch", len: total as u64, max: limits.max_batch_len.into() });
    }
    let mut out = Vec::with_capacity(total);
    header.encode(&mut out);
    let header_len = out.len();
    let version = header.version();
    let header_digest = BatchHeader::digest_of(version, &out);
    let cipher = XChaCha20Poly1305::new(key.as_bytes().into());
    for (index, i) in (0u32..).zip(0..n) {
        let mut nonce = [0u8; NONCE_LEN];
        rng.fill_bytes(&mut nonce);
        out.extend_from_slice(&nonce);
        let len_at = out.len();
        out.extend_from_slice(&[0; 4]);
        let start = out.len();
        write(i, &mut out);
        let len = out.len() - start;
        // Bounded by max_batch_len above, which is a u32.
        out[len_at..start].copy_from_slice(&((len + TAG_LEN) as u32).to_be_bytes());
        let tag = cipher
            .encrypt_in_place_detached(
                XNonce::from_slice(&nonce),
                &record_aad(&header_digest, index),
                &mut out[start..],
            )
            .map_err(|_| Error::TooLarge { what: "record", len: len as u64, max: u32::MAX.into() })?;
        out.extend_from_slice(&tag);
    }
    let digest = batch_digest(version, &header_digest, &out[header_len..]);
    out.extend_from_slice(&signer.sign(&signed_message(&digest)));
    debug_assert_eq!(out.len(), total);
    let batch = SealedBatch { bytes: out.into(), header, header_len };
    Ok(VerifiedBatch { batch, header_digest, digest })
}

/// A batch that passed every check a subscriber can make on its own, with its plaintexts.
#[derive(Clone, Debug)]
pub struct OpenedBatch {
    /// The signed header.
    pub header: BatchHeader,
    /// The batch digest (what the signature covers).
    pub digest: Digest,
    /// The payloads, in sequence order: `messages[i]` has sequence `header.first_seq + i`.
    pub messages: Vec<Bytes>,
    /// The messages' headers: `headers[i]` were sealed with `messages[i]`. Empty for every message of a
    /// batch of version 1 or 2.
    pub headers: Vec<Headers>,
}

/// Opens a batch received for `expected_topic`: decodes it within `limits`, verifies its signature,
/// checks that it was sealed for that topic, finds its epoch's content key in `keys` and decrypts.
///
/// The checks run in that order, so an altered header or ciphertext shows as [`Error::BadSignature`], a
/// correctly signed batch served under another topic as [`Error::WrongTopic`], an epoch without a key as
/// [`Error::UnknownEpoch`], a signed record that does not decrypt as [`Error::TamperedRecord`], and one
/// whose header section breaks a rule as [`Error::MalformedHeaders`].
///
/// `open` does not check the publisher's sequence chain: feed the result's header and digest to a
/// [`ChainVerifier`](crate::ChainVerifier) for that.
pub fn open(
    bytes: Bytes,
    expected_topic: &Topic,
    keys: &impl KeyLookup,
    limits: &Limits,
) -> Result<OpenedBatch> {
    let batch = SealedBatch::decode(bytes, limits)?.verify()?;
    let header = batch.header();
    if &header.topic != expected_topic {
        return Err(Error::WrongTopic { expected: expected_topic.clone(), got: header.topic.clone() });
    }
    let key = keys.content_key(header.epoch).ok_or(Error::UnknownEpoch(header.epoch))?;
    let (messages, headers) = batch.decrypt(key)?;
    Ok(OpenedBatch { header: batch.header().clone(), digest: batch.digest(), messages, headers })
}

#[cfg(test)]
mod tests {
    //! Records whose authentic plaintext breaks the rules of the header section: only a publisher (who
    //! holds the signing key and the content key) can seal them, so they are made here with the private
    //! [`seal_records`], which writes any plaintext.
    #![allow(clippy::unwrap_used)]

    use rand_chacha::rand_core::SeedableRng;

    use super::*;

    fn key() -> ContentKey {
        ContentKey::from_bytes(&[0xC0; 32])
    }

    /// Opens a batch of format version 3 (or 2 if `!with_headers`) whose records' plaintexts are `plain`.
    fn open_raw(with_headers: bool, plain: &[&[u8]]) -> Result<OpenedBatch> {
        let params = SealParams {
            topic: Topic::new("demo.chat").unwrap(),
            epoch: Epoch(7),
            chain: ChainId([0x5C; 16]),
            first_seq: 1,
            prev_digest: Digest::ZERO,
            created_at: Timestamp(0),
        };
        let len = plain.iter().map(|p| p.len()).sum();
        let signer = SigningKey::from_bytes(&[0xA1; 32]);
        let limits = Limits::default();
        let mut rng = rand_chacha::ChaCha20Rng::seed_from_u64(1);
        let b = seal_records(
            &signer,
            &key(),
            params,
            with_headers,
            plain.len(),
            len,
            &limits,
            &mut rng,
            |i, out| out.extend_from_slice(plain[i]),
        )
        .unwrap();
        open(b.into_bytes(), &Topic::new("demo.chat").unwrap(), &(Epoch(7), key()), &limits)
    }

    fn malformed(index: u32, error: Error) -> Error {
        Error::MalformedHeaders { index, error: Box::new(error) }
    }

    #[test]
    fn a_canonical_raw_record_opens() {
        let opened = open_raw(true, &[&[0, b'p'], &[1, 1, b'k', 0, 1, b'v', b'q']]).unwrap();
        assert_eq!(opened.messages, [Bytes::from_static(b"p"), Bytes::from_static(b"q")]);
        assert_eq!(opened.headers[1].get("k"), Some("v"));
    }

    #[test]
    fn an_authentic_record_with_unsorted_or_repeated_names_is_refused() {
        let unsorted: &[u8] = &[2, 1, b'b', 0, 0, 1, b'a', 0, 0];
        let repeated: &[u8] = &[2, 1, b'a', 0, 0, 1, b'a', 0, 0];
        for section in [unsorted, repeated] {
            assert_eq!(
                open_raw(true, &[&[1, 1, b'k', 0, 0], section]).unwrap_err(),
                malformed(1, Error::InvalidHeader("names not in strictly ascending order"))
            );
        }
    }

    #[test]
    fn an_authentic_record_breaking_a_limit_or_rule_is_refused_with_its_index() {
        assert_eq!(
            open_raw(true, &[&[33]]).unwrap_err(),
            malformed(0, Error::TooLarge { what: "header count", len: 33, max: 32 })
        );
        assert_eq!(
            open_raw(true, &[&[1, 1, b'k', 0, 0], &[1, 1, b'k', 0, 5, b'a']]).unwrap_err(),
            malformed(1, Error::Truncated("header value"))
        );
        assert_eq!(
            open_raw(true, &[&[1, 1, b' ', 0, 0]]).unwrap_err(),
            malformed(0, Error::InvalidHeader("a name character other than A-Z a-z 0-9 . _ -"))
        );
        assert_eq!(
            open_raw(true, &[&[1, 1, b'k', 0, 2, 0xC3, 0x28]]).unwrap_err(),
            malformed(0, Error::InvalidHeader("a value that is not UTF-8"))
        );
    }

    #[test]
    fn a_version_3_batch_in_which_no_message_has_headers_is_refused() {
        // `seal` writes version 2 for it: the other form is not canonical.
        assert_eq!(
            open_raw(true, &[&[0, b'p'], &[0]]).unwrap_err(),
            Error::Malformed("a version-3 batch in which no message has headers")
        );
        // The same plaintexts in version 2 are payloads that merely start with a zero byte.
        let opened = open_raw(false, &[&[0, b'p'], &[0]]).unwrap();
        assert_eq!(opened.messages, [Bytes::from_static(b"\0p"), Bytes::from_static(b"\0")]);
    }
}
