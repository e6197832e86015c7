//! The canonical encoding of a topic policy (version 1), and the digest and signature message over it.
//!
//! Guarantees: [`decode`] accepts exactly the bytes [`Body::encode`] and a signature produce, with no
//! trailing bytes and no alternative forms, so a policy has one encoding and one digest; it bounds the
//! member count by the limits and by the bytes present before allocating for the members. It does no
//! cryptography.
//!
//! # Encoding (version 1)
//!
//! All integers are big-endian.
//!
//! ```text
//! version        u8          = 1
//! topic_len      u8          1..=255
//! topic          [topic_len] a valid Topic
//! epoch          u64         >= 1
//! created_at     u64         milliseconds since the Unix epoch, as stated by the authority
//! prev_digest    [32]        digest of this topic's policy of epoch - 1; 32 zero bytes if and only if epoch = 1
//! authority      [32]        ed25519 public key of the signer (not of small order)
//! member_count   u16         0..=max_policy_members
//! members, member_count times, sorted by principal (bytewise), each principal once:
//!   principal_len u8         1..=64
//!   principal     [principal_len]  ASCII letters, digits, '.', '_', '-' (the broker's principal names)
//!   roles         u8         bit 0 publish, bit 1 subscribe; at least one set, the other bits 0
//!   signing_key   [32]       ed25519 public key (not of small order), listed for one member only
//!   hpke_key      [32]       X25519 public key
//!   enc           [32]       HPKE encapsulated key
//!   wrapped       [48]       HPKE ciphertext of the epoch's 32-byte content key, 16-byte tag last
//! signature      [64]        ed25519
//! ```
//!
//! A policy with no member closes the topic: from its epoch on, nobody can publish or read.
//!
//! # Digest and signature
//!
//! - `digest = BLAKE3-derive_key("sealpost 2026-11-23 policy v1", every byte before the signature)`.
//! - `signature = ed25519(authority, "sealpost/v1 policy signature\0" || digest)`. A reader checks first
//!   that `authority` **equals** the key it pins, then the signature with `verify_strict` (see
//!   [`SignedPolicy::verify`](super::SignedPolicy::verify)).

use crate::batch::SIGNATURE_LEN;
use crate::digest::context;
use crate::epoch::Epoch;
use crate::keys::{HpkePublicKey, PublicKey};
use crate::principal::Principal;
use crate::reader::Reader;
use crate::topic::Topic;
use crate::{Digest, Error, Limits, Result, Timestamp};

use super::member::{Member, ROLE_PUBLISH, ROLE_SUBSCRIBE};
use super::wrap::{WrappedKey, ENC_LEN, WRAPPED_LEN};

/// The policy format version this build writes and reads.
pub const POLICY_VERSION: u8 = 1;

/// Prefix of the message an ed25519 policy signature covers. Distinct from every other signed message in
/// Sealpost, so a policy signature can never be passed off as anything else.
const SIGNATURE_DOMAIN: &[u8] = b"sealpost/v1 policy signature\0";

/// Bytes before the first member, besides the topic name.
const HEADER_FIXED_LEN: usize = 1 + 1 + 8 + 8 + 32 + 32 + 2;
/// Bytes of a member entry besides its principal name.
const MEMBER_FIXED_LEN: usize = 1 + 1 + 32 + 32 + ENC_LEN + WRAPPED_LEN;
/// Smallest member entry: a one-byte principal.
const MIN_MEMBER_LEN: usize = MEMBER_FIXED_LEN + 1;

/// The parsed content of a policy: everything before the signature.
#[derive(Clone, Debug)]
pub(super) struct Body {
    pub(super) topic: Topic,
    pub(super) epoch: Epoch,
    pub(super) created_at: Timestamp,
    pub(super) prev_digest: Digest,
    pub(super) authority: PublicKey,
    /// Sorted by principal.
    pub(super) members: Vec<Member>,
    /// `wrapped[i]` belongs to `members[i]`.
    pub(super) wrapped: Vec<WrappedKey>,
    /// Indexes into `members`, sorted by signing key.
    pub(super) by_key: Vec<u32>,
}

impl Body {
    /// Length of the whole policy, signature included.
    pub(super) fn encoded_len(&self) -> usize {
        HEADER_FIXED_LEN
            + self.topic.as_str().len()
            + self.members.iter().map(|m| MEMBER_FIXED_LEN + m.principal.as_str().len()).sum::<usize>()
            + SIGNATURE_LEN
    }

    /// Appends everything before the signature.
    pub(super) fn encode(&self, out: &mut Vec<u8>) {
        let topic = self.topic.as_str().as_bytes();
        out.push(POLICY_VERSION);
        // Topic::new guarantees 1..=255 bytes.
        out.push(topic.len() as u8);
        out.extend_from_slice(topic);
        out.extend_from_slice(&self.epoch.0.to_be_bytes());
        out.extend_from_slice(&self.created_at.0.to_be_bytes());
        out.extend_from_slice(self.prev_digest.as_bytes());
        out.extend_from_slice(self.authority.as_bytes());
        // issue_policy checks that the count fits a u16.
        out.extend_from_slice(&(self.members.len() as u16).to_be_bytes());
        for (m, w) in self.members.iter().zip(&self.wrapped) {
            // Principal guarantees 1..=64 bytes.
            let principal = m.principal.as_str().as_bytes();
            out.push(principal.len() as u8);
            out.extend_from_slice(principal);
            out.push(m.roles());
            out.extend_from_slice(m.signing_key.as_bytes());
            out.extend_from_slice(&m.hpke_key.0);
            out.extend_from_slice(&w.enc);
            out.extend_from_slice(&w.ct);
        }
    }

    fn decode(r: &mut Reader<'_>, limits: &Limits) -> Result<Self> {
        let version = r.u8("policy version")?;
        if version != POLICY_VERSION {
            return Err(Error::UnsupportedVersion { what: "policy", version });
        }
        let topic_len = r.u8("topic length")?;
        let topic = core::str::from_utf8(r.take(topic_len.into(), "topic")?)
            .map_err(|_| Error::Malformed("topic is not UTF-8"))?;
        let topic = Topic::new(topic)?;
        let epoch = Epoch(r.u64("epoch")?);
        let created_at = Timestamp(r.u64("timestamp")?);
        let prev_digest = Digest(r.array("previous digest")?);
        check_epoch(epoch, &prev_digest)?;
        let authority = PublicKey::from_bytes(&r.array("authority key")?)?;
        let count = u16::from_be_bytes(r.array("member count")?);
        check_member_count(count.into(), limits)?;
        // Bound the allocation by the bytes actually present, not only by the limit.
        if usize::from(count) * MIN_MEMBER_LEN > r.remaining() {
            return Err(Error::Truncated("policy members"));
        }
        let mut members = Vec::with_capacity(count.into());
        let mut wrapped = Vec::with_capacity(count.into());
        for _ in 0..count {
            let len = r.u8("principal length")?;
            let principal = core::str::from_utf8(r.take(len.into(), "principal")?)
                .ok()
                .and_then(|name| Principal::new(name).ok())
                .ok_or(Error::InvalidPolicy("principal name is not 1 to 64 of [A-Za-z0-9._-]"))?;
            if let Some(last) = members.last().map(|m: &Member| &m.principal) {
                if *last >= principal {
                    return Err(Error::InvalidPolicy("members not sorted by principal, or listed twice"));
                }
            }
            let roles = r.u8("member roles")?;
            if roles & !(ROLE_PUBLISH | ROLE_SUBSCRIBE) != 0 {
                return Err(Error::InvalidPolicy("unknown member role bits"));
            }
            let member = Member {
                principal,
                publish: roles & ROLE_PUBLISH != 0,
                subscribe: roles & ROLE_SUBSCRIBE != 0,
                signing_key: PublicKey::from_bytes(&r.array("member signing key")?)?,
                hpke_key: HpkePublicKey(r.array("member hpke key")?),
            };
            member.check()?;
            members.push(member);
            wrapped.push(WrappedKey { enc: r.array("encapsulated key")?, ct: r.array("wrapped key")? });
        }
        let by_key = index_by_key(&members)?;
        Ok(Self { topic, epoch, created_at, prev_digest, authority, members, wrapped, by_key })
    }

    /// The index of the member named `principal` (a name that is not a valid principal is no member).
    pub(super) fn member_index(&self, principal: &str) -> Option<usize> {
        self.members.binary_search_by(|m| m.principal.as_str().cmp(principal)).ok()
    }

    /// The member that signs with `key`, whatever its roles.
    pub(super) fn by_signing_key(&self, key: &PublicKey) -> Option<&Member> {
        let i = self
            .by_key
            .binary_search_by(|&i| self.members[i as usize].signing_key.as_bytes().cmp(key.as_bytes()))
            .ok()?;
        Some(&self.members[self.by_key[i] as usize])
    }
}

/// Parses a whole policy: checks the size against [`Limits::max_policy_len`] first, then the version, then
/// every field, and the member count against `max_policy_members` and the bytes present before allocating
/// for the members; then that exactly a signature follows.
pub(super) fn decode(bytes: &[u8], limits: &Limits) -> Result<Body> {
    let max = limits.max_policy_len();
    if bytes.len() > max as usize {
        return Err(Error::TooLarge { what: "policy", len: bytes.len() as u64, max: max.into() });
    }
    let mut r = Reader::new(bytes);
    let body = Body::decode(&mut r, limits)?;
    r.take(SIGNATURE_LEN, "signature")?;
    if r.remaining() != 0 {
        return Err(Error::Malformed("trailing bytes after signature"));
    }
    Ok(body)
}

/// Epoch 1 and only epoch 1 names no previous policy. An epoch of 0 does not exist.
fn check_epoch(epoch: Epoch, prev_digest: &Digest) -> Result<()> {
    match (epoch.0, *prev_digest == Digest::ZERO) {
        (0, _) => Err(Error::InvalidPolicy("epoch 0")),
        (1, true) => Ok(()),
        (1, false) => Err(Error::InvalidPolicy("epoch 1 names a previous policy")),
        (_, true) => Err(Error::InvalidPolicy("epoch after 1 names no previous policy")),
        (_, false) => Ok(()),
    }
}

/// Fails if `count` members exceed the limit, or a u16.
pub(super) fn check_member_count(count: usize, limits: &Limits) -> Result<()> {
    let max = limits.max_policy_members.min(u16::MAX.into());
    if count > max as usize {
        return Err(Error::TooLarge { what: "policy member count", len: count as u64, max: max.into() });
    }
    Ok(())
}

/// The indexes of `members` sorted by signing key; fails if two members share a key.
pub(super) fn index_by_key(members: &[Member]) -> Result<Vec<u32>> {
    // The member count fits a u16.
    let mut by_key: Vec<u32> = (0..members.len() as u32).collect();
    by_key.sort_unstable_by(|&a, &b| {
        members[a as usize].signing_key.as_bytes().cmp(members[b as usize].signing_key.as_bytes())
    });
    if by_key.windows(2).any(|w| members[w[0] as usize].signing_key == members[w[1] as usize].signing_key) {
        return Err(Error::InvalidPolicy("one signing key listed for two members"));
    }
    Ok(by_key)
}

/// The digest of the bytes before the signature.
pub(super) fn policy_digest(bytes: &[u8]) -> Digest {
    blake3::Hasher::new_derive_key(context::POLICY).update(bytes).finalize().into()
}

/// The message the authority signs: the domain prefix, then `digest`.
pub(super) fn signed_message(digest: &Digest) -> [u8; SIGNATURE_DOMAIN.len() + 32] {
    let mut msg = [0u8; SIGNATURE_DOMAIN.len() + 32];
    msg[..SIGNATURE_DOMAIN.len()].copy_from_slice(SIGNATURE_DOMAIN);
    msg[SIGNATURE_DOMAIN.len()..].copy_from_slice(digest.as_bytes());
    msg
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::codec;
    use crate::policy::fixtures::{issue, member};

    #[test]
    fn fixed_lengths_match_the_documented_layout() {
        // version, topic_len, epoch, created_at, prev_digest, authority, member_count
        assert_eq!(HEADER_FIXED_LEN, 1 + 1 + 8 + 8 + 32 + 32 + 2);
        // principal_len, roles, signing_key, hpke_key, enc, wrapped
        assert_eq!(MEMBER_FIXED_LEN, 1 + 1 + 32 + 32 + 32 + 48);
        let p = issue(vec![member("alice", 1, true, true)]).unwrap();
        assert_eq!(p.as_bytes().len(), HEADER_FIXED_LEN + 9 + MEMBER_FIXED_LEN + 5 + SIGNATURE_LEN);
    }

    #[test]
    fn decode_refuses_a_member_whose_principal_name_is_invalid() {
        let raw = issue(vec![member("bob-smith", 2, true, false)]).unwrap().as_bytes().to_vec();
        let at = raw.windows(9).position(|w| w == b"bob-smith").unwrap();
        for bad in [b' ', b'/', 0xC3] {
            let mut patched = raw.clone();
            patched[at + 3] = bad;
            assert_eq!(
                codec::decode(&patched, &Limits::default()).unwrap_err(),
                Error::InvalidPolicy("principal name is not 1 to 64 of [A-Za-z0-9._-]")
            );
        }
    }

    #[test]
    fn epoch_and_previous_digest_rules() {
        assert_eq!(check_epoch(Epoch(0), &Digest::ZERO), Err(Error::InvalidPolicy("epoch 0")));
        assert_eq!(check_epoch(Epoch(1), &Digest::ZERO), Ok(()));
        assert!(check_epoch(Epoch(1), &Digest([1; 32])).is_err());
        assert!(check_epoch(Epoch(2), &Digest::ZERO).is_err());
        assert_eq!(check_epoch(Epoch(2), &Digest([1; 32])), Ok(()));
    }
}
