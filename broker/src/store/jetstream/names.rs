//! What the JetStream engine calls things: the names of a deployment's streams and bucket, the subjects
//! batches and policies are published on, the headers a stored batch carries, and the keys of durable
//! subscription offsets. Sans-IO: strings in, strings out.
//!
//! Every name starts from the deployment's prefix (`storage.jetstream.prefix`, default `SEALPOST`), so
//! several deployments can share one JetStream account. A topic's name does not fit JetStream's rules for
//! stream names or subject tokens (it may hold `.`, `*`, `>`), so its objects are named after a 128-bit
//! BLAKE3 hash of it, and the stream's description holds the topic itself.
//!
//! | object | name |
//! |---|---|
//! | a topic's log | stream `{PREFIX}_LOG_{hash}`, subjects `{prefix}.log.{hash}.>` |
//! | a publisher chain's batches | subject `{prefix}.log.{hash}.{publisher key, hex}.{chain id, hex}` |
//! | topic policies | stream `{PREFIX}_POLICIES`, subject `{prefix}.policy.{hash}.{epoch, 20 digits}` |
//! | durable offsets | key-value bucket `{PREFIX}_DURABLES`, key: hex of (topic, principal, name) |

use async_nats::HeaderMap;
use bytes::Bytes;
use sealpost_protocol::{ChainId, Digest, DurableKey, Offset, Principal, PublicKey, Topic};

use crate::store::{PublisherRecord, StoredBatch};
use crate::{Error, Result};

/// Header: the offset of the batch's first message.
pub(super) const OFFSET: &str = "Sealpost-Offset";
/// Header: the batch's number of messages.
pub(super) const COUNT: &str = "Sealpost-Count";
/// Header: the batch's first sequence number in its publisher's chain.
pub(super) const FIRST_SEQ: &str = "Sealpost-First-Seq";
/// Header: the batch's digest, hex.
pub(super) const DIGEST: &str = "Sealpost-Digest";
/// JetStream's deduplication header.
pub(super) const MSG_ID: &str = "Nats-Msg-Id";

/// Longest prefix accepted.
const MAX_PREFIX: usize = 32;

/// The names of one deployment's JetStream objects.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct Names {
    /// Upper case, for stream and bucket names.
    streams: String,
    /// Lower case, the first token of every subject.
    subjects: String,
}

impl Names {
    /// The names under `prefix`: 1 to 32 of `A-Z a-z 0-9 _ -`.
    pub(super) fn new(prefix: &str) -> Result<Names> {
        let valid = !prefix.is_empty()
            && prefix.len() <= MAX_PREFIX
            && prefix.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
        if !valid {
            return Err(Error::Config(format!(
                "storage.jetstream.prefix = {prefix:?}: 1 to {MAX_PREFIX} letters, digits, '_' or '-'"
            )));
        }
        Ok(Names { streams: prefix.to_ascii_uppercase(), subjects: prefix.to_ascii_lowercase() })
    }

    /// The token that stands for `topic` in names and subjects.
    fn key(topic: &Topic) -> String {
        let hash = blake3::hash(topic.as_str().as_bytes());
        hex::encode(&hash.as_bytes()[..16])
    }

    /// The stream that holds `topic`'s log.
    pub(super) fn log_stream(&self, topic: &Topic) -> String {
        format!("{}_LOG_{}", self.streams, Self::key(topic))
    }

    /// The first part of every log stream's name, for listing them.
    pub(super) fn log_stream_prefix(&self) -> String {
        format!("{}_LOG_", self.streams)
    }

    /// The subjects of `topic`'s log stream (all its chains).
    pub(super) fn log_subjects(&self, topic: &Topic) -> String {
        format!("{}.log.{}.>", self.subjects, Self::key(topic))
    }

    /// The subject of the batches of one publisher chain on `topic`.
    pub(super) fn chain_subject(&self, topic: &Topic, publisher: &PublicKey, chain: ChainId) -> String {
        format!(
            "{}.log.{}.{}.{}",
            self.subjects,
            Self::key(topic),
            hex::encode(publisher.as_bytes()),
            hex::encode(chain.as_bytes())
        )
    }

    /// The stream of every topic's policies.
    pub(super) fn policy_stream(&self) -> String {
        format!("{}_POLICIES", self.streams)
    }

    /// The subjects of the policy stream.
    pub(super) fn policy_subjects(&self) -> String {
        format!("{}.policy.>", self.subjects)
    }

    /// The subject of `topic`'s policy of `epoch`: zero-padded, so subjects sort as epochs do.
    pub(super) fn policy_subject(&self, topic: &Topic, epoch: u64) -> String {
        format!("{}.policy.{}.{epoch:020}", self.subjects, Self::key(topic))
    }

    /// The subjects of every policy of `topic`.
    pub(super) fn policy_filter(&self, topic: &Topic) -> String {
        format!("{}.policy.{}.*", self.subjects, Self::key(topic))
    }

    /// The epoch a policy subject names.
    pub(super) fn policy_epoch(subject: &str) -> Option<u64> {
        subject.rsplit('.').next()?.parse().ok()
    }

    /// The bucket of durable subscription offsets.
    pub(super) fn durables_bucket(&self) -> String {
        format!("{}_DURABLES", self.streams)
    }
}

/// The key of a durable subscription in the durables bucket: hex of its topic, principal and name, each
/// after its length (two bytes), so that it decodes back ([`durable_of_key`]) for listings.
pub(super) fn durable_key(topic: &Topic, principal: &Principal, name: &str) -> String {
    let mut raw = Vec::new();
    for part in [topic.as_str(), principal.as_str(), name] {
        let len = u16::try_from(part.len()).unwrap_or(u16::MAX);
        raw.extend_from_slice(&len.to_be_bytes());
        raw.extend_from_slice(&part.as_bytes()[..usize::from(len)]);
    }
    hex::encode(raw)
}

/// Inverse of [`durable_key`]; `None` for a key it did not make.
pub(super) fn durable_of_key(key: &str) -> Option<DurableKey> {
    let raw = hex::decode(key).ok()?;
    let mut parts = Vec::with_capacity(3);
    let mut rest = raw.as_slice();
    while !rest.is_empty() {
        let (len, tail) = rest.split_first_chunk::<2>()?;
        let len = usize::from(u16::from_be_bytes(*len));
        let part = tail.get(..len)?;
        parts.push(String::from_utf8(part.to_vec()).ok()?);
        rest = &tail[len..];
    }
    let [topic, principal, name]: [String; 3] = parts.try_into().ok()?;
    Some(DurableKey { topic: Topic::new(topic).ok()?, principal: Principal::new(principal).ok()?, name })
}

/// An offset as the durables bucket stores it.
pub(super) fn encode_offset(offset: Offset) -> Bytes {
    Bytes::copy_from_slice(&offset.0.to_be_bytes())
}

/// Inverse of [`encode_offset`].
pub(super) fn decode_offset(value: &[u8]) -> Result<Offset> {
    let bytes: [u8; 8] =
        value.try_into().map_err(|_| Error::Storage("corrupt durable offset in JetStream".into()))?;
    Ok(Offset(u64::from_be_bytes(bytes)))
}

/// The deduplication id of a batch: its chain (publisher, chain id), first sequence number and digest,
/// hashed. The same batch always gets the same id, from any broker.
pub(super) fn msg_id(publisher: &PublicKey, chain: ChainId, record: &PublisherRecord) -> String {
    let mut hasher = blake3::Hasher::new();
    hasher.update(publisher.as_bytes());
    hasher.update(chain.as_bytes());
    hasher.update(&record.first_seq.to_be_bytes());
    hasher.update(record.digest.as_bytes());
    hex::encode(&hasher.finalize().as_bytes()[..16])
}

/// The headers a batch is stored with.
pub(super) fn batch_headers(record: &PublisherRecord, msg_id: &str) -> HeaderMap {
    let mut headers = HeaderMap::new();
    headers.insert(MSG_ID, msg_id);
    headers.insert(OFFSET, record.offset.0.to_string().as_str());
    headers.insert(COUNT, record.count.to_string().as_str());
    headers.insert(FIRST_SEQ, record.first_seq.to_string().as_str());
    headers.insert(DIGEST, hex::encode(record.digest.as_bytes()).as_str());
    headers
}

/// One header of a stored batch, parsed.
fn header<T: std::str::FromStr>(headers: &HeaderMap, name: &str) -> Result<T> {
    headers
        .get(name)
        .and_then(|v| v.as_str().parse().ok())
        .ok_or_else(|| Error::Storage(format!("a message of the JetStream log lacks a valid {name} header")))
}

/// The record of a stored batch, from its headers.
pub(super) fn record_of(headers: &HeaderMap) -> Result<PublisherRecord> {
    let digest: String = header(headers, DIGEST)?;
    let digest = hex::decode(digest)
        .ok()
        .and_then(|d| <[u8; 32]>::try_from(d).ok())
        .ok_or_else(|| Error::Storage("a message of the JetStream log has a malformed digest".into()))?;
    Ok(PublisherRecord {
        first_seq: header(headers, FIRST_SEQ)?,
        count: header(headers, COUNT)?,
        offset: Offset(header(headers, OFFSET)?),
        digest: Digest(digest),
    })
}

/// The stored batch a message of a log stream holds.
pub(super) fn stored_of(headers: &HeaderMap, payload: Bytes) -> Result<StoredBatch> {
    let offset = Offset(header(headers, OFFSET)?);
    let count: u32 = header(headers, COUNT)?;
    if count == 0 {
        return Err(Error::Storage("a message of the JetStream log holds no messages".into()));
    }
    Ok(StoredBatch { offset, count, bytes: payload })
}

/// The deduplication id a message was stored with, if any.
pub(super) fn stored_msg_id(headers: &HeaderMap) -> Option<&str> {
    headers.get(MSG_ID).map(|v| v.as_str())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn topic(s: &str) -> Topic {
        Topic::new(s).unwrap()
    }

    #[test]
    fn names_are_valid_jetstream_names_whatever_the_topic() {
        let names = Names::new("Sealpost").unwrap();
        let t = topic("orders.eu-west.all");
        let stream = names.log_stream(&t);
        assert!(stream.starts_with("SEALPOST_LOG_"));
        assert!(stream.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_'));
        assert_ne!(stream, names.log_stream(&topic("orders.eu-west.al")));
        let publisher = sealpost_protocol::SigningKey::from_bytes(&[1; 32]).public_key();
        let subject = names.chain_subject(&t, &publisher, ChainId([2; 16]));
        assert!(subject.starts_with("sealpost.log."));
        assert_eq!(subject.split('.').count(), 5);
        assert!(!subject.contains('>') && !subject.contains('*'));
        assert_eq!(Names::policy_epoch(&names.policy_subject(&t, 42)), Some(42));
        for bad in ["", "a.b", "a b", "x>", &"p".repeat(33)] {
            assert!(Names::new(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn durable_keys_round_trip() {
        let principal = Principal::new("billing").unwrap();
        let key = durable_key(&topic("demo.chat"), &principal, "audit-1");
        assert!(key.bytes().all(|b| b.is_ascii_hexdigit()));
        let back = durable_of_key(&key).unwrap();
        assert_eq!(
            (back.topic.as_str(), back.principal.as_str(), back.name.as_str()),
            ("demo.chat", "billing", "audit-1")
        );
        assert_eq!(durable_of_key("zz"), None);
        assert_eq!(durable_of_key("0001"), None);
    }

    #[test]
    fn batch_headers_give_back_the_record_and_the_batch() {
        let record =
            PublisherRecord { first_seq: 7, count: 3, offset: Offset(1_000_000), digest: Digest([9; 32]) };
        let publisher = sealpost_protocol::SigningKey::from_bytes(&[1; 32]).public_key();
        let id = msg_id(&publisher, ChainId([2; 16]), &record);
        let headers = batch_headers(&record, &id);
        assert_eq!(record_of(&headers).unwrap(), record);
        assert_eq!(stored_msg_id(&headers), Some(id.as_str()));
        let stored = stored_of(&headers, Bytes::from_static(b"batch")).unwrap();
        assert_eq!((stored.offset, stored.count), (Offset(1_000_000), 3));
        let other = PublisherRecord { first_seq: 8, ..record };
        assert_ne!(msg_id(&publisher, ChainId([2; 16]), &other), id);
        assert!(record_of(&HeaderMap::new()).is_err());
    }
}
