//! Topic policies: who may publish on and read a topic in one epoch, and that epoch's content key, signed by
//! the topic authority.
//!
//! The **topic authority** is an ed25519 key that every client pins (see
//! [`IdentityFile::authority`](crate::identity::IdentityFile::authority)). It is not the broker's key and not
//! the TLS CA: a broker host that holds both still cannot make a client accept a member list or a content
//! key that the authority did not sign. The broker stores policies and serves them, but it cannot open the
//! content keys in them.
//!
//! # Encoding (version 1)
//!
//! All integers are big-endian. The encoding is canonical: [`SignedPolicy::decode`] accepts exactly the
//! bytes [`issue_policy`] produces, with no trailing bytes and no alternative forms, so a policy has one
//! encoding and one digest.
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
//! # Cryptography
//!
//! - `digest = BLAKE3-derive_key("sealpost 2026-11-23 policy v1", every byte before the signature)`.
//! - `signature = ed25519(authority, "sealpost/v1 policy signature\0" || digest)`. A reader checks first
//!   that `authority` **equals** the key it pins, then the signature with `verify_strict`.
//! - Each epoch has its own random content key, wrapped to **every** member (publishers need it to seal)
//!   with HPKE (RFC 9180) in base mode, suite DHKEM(X25519, HKDF-SHA256) / HKDF-SHA256 / ChaCha20-Poly1305
//!   (KEM 0x0020, KDF 0x0001, AEAD 0x0003), one fresh encapsulation per member:
//!   `info = "sealpost/v1 content key\0" || topic_len || topic || epoch`, `aad = principal`. A wrapped key
//!   therefore opens only for its own member, topic and epoch.
//! - `prev_digest` chains a topic's policies: a [`PolicyBook`] admits the policy of the next epoch only if
//!   it names the digest of the newest one admitted, refuses an older epoch ([`Error::PolicyRollback`]) and
//!   reports two policies for one epoch ([`Error::PolicyFork`]).
//!
//! # What a policy does not do
//!
//! It does not prove freshness: a broker can withhold a newer policy, and a client that never saw it keeps
//! trusting the newest one it has (a [`PolicyBook`] lives in memory; persist its policies to keep rollback
//! protection across restarts). It does not hide the member list, roles, public keys or timestamps from the
//! broker, only the content key. It does not decide who may connect: the broker's ACL does that.

use std::collections::{btree_map, BTreeMap};

use bytes::Bytes;
use hpke::{Deserializable, Serializable};
use rand_core::CryptoRngCore;
use zeroize::Zeroizing;

use crate::batch::{BatchHeader, SIGNATURE_LEN};
use crate::digest::context;
use crate::keys::{ContentKey, Epoch, HpkePublicKey, HpkeSecretKey, KeyLookup, PublicKey, SigningKey};
use crate::reader::Reader;
use crate::topic::Topic;
use crate::{Digest, Error, Limits, Result, Timestamp};

/// The policy format version this build writes and reads.
pub const POLICY_VERSION: u8 = 1;
/// Longest principal name, in bytes.
pub const MAX_PRINCIPAL_LEN: usize = 64;
/// Length of an HPKE encapsulated key (DHKEM(X25519, HKDF-SHA256)).
pub const ENC_LEN: usize = 32;
/// Length of a wrapped content key: 32 key bytes and a 16-byte tag.
pub const WRAPPED_LEN: usize = 48;

/// Prefix of the message an ed25519 policy signature covers. Distinct from every other signed message in
/// Sealpost, so a policy signature can never be passed off as anything else.
const SIGNATURE_DOMAIN: &[u8] = b"sealpost/v1 policy signature\0";
/// Prefix of the HPKE `info` under which content keys are wrapped.
const CONTENT_KEY_INFO: &[u8] = b"sealpost/v1 content key\0";

/// Bytes before the first member, besides the topic name.
const HEADER_FIXED_LEN: usize = 1 + 1 + 8 + 8 + 32 + 32 + 2;
/// Bytes of a member entry besides its principal name.
const MEMBER_FIXED_LEN: usize = 1 + 1 + 32 + 32 + ENC_LEN + WRAPPED_LEN;
/// Smallest member entry: a one-byte principal.
const MIN_MEMBER_LEN: usize = MEMBER_FIXED_LEN + 1;

const ROLE_PUBLISH: u8 = 0b01;
const ROLE_SUBSCRIBE: u8 = 0b10;

type Kem = hpke::kem::X25519HkdfSha256;
type Kdf = hpke::kdf::HkdfSha256;
type Aead = hpke::aead::ChaCha20Poly1305;

/// Whether `name` is a valid principal name: 1 to 64 bytes of ASCII letters, digits, `.`, `_` and `-`
/// (the names the broker reads from client certificates).
pub fn valid_principal(name: &str) -> bool {
    (1..=MAX_PRINCIPAL_LEN).contains(&name.len())
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

/// One member of a topic policy: a principal, what it may do, and its keys.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Member {
    /// The principal, as named by its certificate.
    pub principal: String,
    /// It may publish: subscribers accept batches signed by `signing_key`.
    pub publish: bool,
    /// It may subscribe.
    pub subscribe: bool,
    /// The ed25519 key its batches are signed with.
    pub signing_key: PublicKey,
    /// The X25519 key the epoch's content key is wrapped to.
    pub hpke_key: HpkePublicKey,
}

impl Member {
    fn roles(&self) -> u8 {
        (if self.publish { ROLE_PUBLISH } else { 0 }) | (if self.subscribe { ROLE_SUBSCRIBE } else { 0 })
    }

    fn check(&self) -> Result<()> {
        if !valid_principal(&self.principal) {
            return Err(Error::InvalidPolicy("principal name is not 1 to 64 of [A-Za-z0-9._-]"));
        }
        if self.roles() == 0 {
            return Err(Error::InvalidPolicy("member with neither the publish nor the subscribe role"));
        }
        Ok(())
    }
}

/// A content key wrapped to one member: the HPKE encapsulated key and the ciphertext with its tag.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Wrapped {
    enc: [u8; ENC_LEN],
    ct: [u8; WRAPPED_LEN],
}

/// The parsed content of a policy.
#[derive(Clone, Debug)]
struct Body {
    topic: Topic,
    epoch: Epoch,
    created_at: Timestamp,
    prev_digest: Digest,
    authority: PublicKey,
    /// Sorted by principal.
    members: Vec<Member>,
    /// `wrapped[i]` belongs to `members[i]`.
    wrapped: Vec<Wrapped>,
    /// Indexes into `members`, sorted by signing key.
    by_key: Vec<u32>,
}

impl Body {
    fn encoded_len(&self) -> usize {
        HEADER_FIXED_LEN
            + self.topic.as_str().len()
            + self.members.iter().map(|m| MEMBER_FIXED_LEN + m.principal.len()).sum::<usize>()
            + SIGNATURE_LEN
    }

    /// Appends everything before the signature.
    fn encode(&self, out: &mut Vec<u8>) {
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
            // valid_principal guarantees 1..=64 bytes.
            out.push(m.principal.len() as u8);
            out.extend_from_slice(m.principal.as_bytes());
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
                .map_err(|_| Error::InvalidPolicy("principal name is not 1 to 64 of [A-Za-z0-9._-]"))?;
            if let Some(last) = members.last().map(|m: &Member| m.principal.as_str()) {
                if last >= principal {
                    return Err(Error::InvalidPolicy("members not sorted by principal, or listed twice"));
                }
            }
            let roles = r.u8("member roles")?;
            if roles & !(ROLE_PUBLISH | ROLE_SUBSCRIBE) != 0 {
                return Err(Error::InvalidPolicy("unknown member role bits"));
            }
            let member = Member {
                principal: principal.to_owned(),
                publish: roles & ROLE_PUBLISH != 0,
                subscribe: roles & ROLE_SUBSCRIBE != 0,
                signing_key: PublicKey::from_bytes(&r.array("member signing key")?)?,
                hpke_key: HpkePublicKey(r.array("member hpke key")?),
            };
            member.check()?;
            members.push(member);
            wrapped.push(Wrapped { enc: r.array("encapsulated key")?, ct: r.array("wrapped key")? });
        }
        let by_key = index_by_key(&members)?;
        Ok(Self { topic, epoch, created_at, prev_digest, authority, members, wrapped, by_key })
    }

    fn member_index(&self, principal: &str) -> Option<usize> {
        self.members.binary_search_by(|m| m.principal.as_str().cmp(principal)).ok()
    }

    fn by_signing_key(&self, key: &PublicKey) -> Option<&Member> {
        let i = self
            .by_key
            .binary_search_by(|&i| self.members[i as usize].signing_key.as_bytes().cmp(key.as_bytes()))
            .ok()?;
        Some(&self.members[self.by_key[i] as usize])
    }
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

fn check_member_count(count: usize, limits: &Limits) -> Result<()> {
    let max = limits.max_policy_members.min(u16::MAX.into());
    if count > max as usize {
        return Err(Error::TooLarge { what: "policy member count", len: count as u64, max: max.into() });
    }
    Ok(())
}

/// The indexes of `members` sorted by signing key; fails if two members share a key.
fn index_by_key(members: &[Member]) -> Result<Vec<u32>> {
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

fn policy_digest(bytes: &[u8]) -> Digest {
    blake3::Hasher::new_derive_key(context::POLICY).update(bytes).finalize().into()
}

fn signed_message(digest: &Digest) -> [u8; SIGNATURE_DOMAIN.len() + 32] {
    let mut msg = [0u8; SIGNATURE_DOMAIN.len() + 32];
    msg[..SIGNATURE_DOMAIN.len()].copy_from_slice(SIGNATURE_DOMAIN);
    msg[SIGNATURE_DOMAIN.len()..].copy_from_slice(digest.as_bytes());
    msg
}

/// `"sealpost/v1 content key\0" || topic_len || topic || epoch`.
fn content_key_info(topic: &Topic, epoch: Epoch) -> Vec<u8> {
    let topic = topic.as_str().as_bytes();
    let mut info = Vec::with_capacity(CONTENT_KEY_INFO.len() + 1 + topic.len() + 8);
    info.extend_from_slice(CONTENT_KEY_INFO);
    // Topic::new guarantees 1..=255 bytes.
    info.push(topic.len() as u8);
    info.extend_from_slice(topic);
    info.extend_from_slice(&epoch.0.to_be_bytes());
    info
}

/// A structurally valid topic policy whose signature has **not** been checked yet.
///
/// Holds the canonical bytes (cheap to clone, to store and to forward) and the parsed content. Call
/// [`verify`](Self::verify) with the pinned authority key before trusting anything in it.
#[derive(Clone, Debug)]
pub struct SignedPolicy {
    bytes: Bytes,
    body: Body,
}

impl SignedPolicy {
    /// Parses `bytes` as a topic policy: checks the size against [`Limits::max_policy_len`] first, then the
    /// version, then every field, and the member count against `max_policy_members` and the bytes present
    /// before allocating for the members. Does no cryptography.
    pub fn decode(bytes: Bytes, limits: &Limits) -> Result<Self> {
        let max = limits.max_policy_len();
        if bytes.len() > max as usize {
            return Err(Error::TooLarge { what: "policy", len: bytes.len() as u64, max: max.into() });
        }
        let mut r = Reader::new(&bytes);
        let body = Body::decode(&mut r, limits)?;
        r.take(SIGNATURE_LEN, "signature")?;
        if r.remaining() != 0 {
            return Err(Error::Malformed("trailing bytes after signature"));
        }
        Ok(Self { bytes, body })
    }

    /// The topic it claims to be for (not verified yet).
    pub fn topic(&self) -> &Topic {
        &self.body.topic
    }

    /// The epoch it claims (not verified yet).
    pub fn epoch(&self) -> Epoch {
        self.body.epoch
    }

    /// The key it claims to be signed by (not verified yet).
    pub fn authority(&self) -> &PublicKey {
        &self.body.authority
    }

    /// The canonical encoding.
    pub fn as_bytes(&self) -> &Bytes {
        &self.bytes
    }

    /// The canonical encoding, by value.
    pub fn into_bytes(self) -> Bytes {
        self.bytes
    }

    /// Checks that the policy is signed by `authority`, the pinned topic-authority key: the signer named
    /// in the policy must equal it, and the signature must verify under it with `verify_strict`. Fails
    /// with [`Error::PolicyNotFromAuthority`] otherwise.
    pub fn verify(self, authority: &PublicKey) -> Result<VerifiedPolicy> {
        if self.body.authority != *authority {
            return Err(Error::PolicyNotFromAuthority);
        }
        let signed_len = self.bytes.len() - SIGNATURE_LEN;
        let digest = policy_digest(&self.bytes[..signed_len]);
        let mut sig = [0u8; SIGNATURE_LEN];
        sig.copy_from_slice(&self.bytes[signed_len..]);
        authority.verify_strict(&signed_message(&digest), &sig).map_err(|_| Error::PolicyNotFromAuthority)?;
        Ok(VerifiedPolicy { policy: self, digest })
    }
}

/// A topic policy signed by the authority key it was verified against (or just issued with it).
#[derive(Clone, Debug)]
pub struct VerifiedPolicy {
    policy: SignedPolicy,
    digest: Digest,
}

impl VerifiedPolicy {
    /// The topic it governs.
    pub fn topic(&self) -> &Topic {
        &self.policy.body.topic
    }

    /// Its epoch, at least 1.
    pub fn epoch(&self) -> Epoch {
        self.policy.body.epoch
    }

    /// When the authority issued it.
    pub fn created_at(&self) -> Timestamp {
        self.policy.body.created_at
    }

    /// The digest the signature covers; the policy of the next epoch names it as its previous digest.
    pub fn digest(&self) -> Digest {
        self.digest
    }

    /// The digest of the policy of the previous epoch, or [`Digest::ZERO`] for epoch 1.
    pub fn prev_digest(&self) -> Digest {
        self.policy.body.prev_digest
    }

    /// The authority key that signed it.
    pub fn authority(&self) -> &PublicKey {
        &self.policy.body.authority
    }

    /// The members, sorted by principal.
    pub fn members(&self) -> &[Member] {
        &self.policy.body.members
    }

    /// The member named `principal`, if any.
    pub fn member(&self, principal: &str) -> Option<&Member> {
        self.policy.body.member_index(principal).map(|i| &self.policy.body.members[i])
    }

    /// The member that signs with `key`, if it has the publish role.
    pub fn publisher(&self, key: &PublicKey) -> Option<&Member> {
        self.policy.body.by_signing_key(key).filter(|m| m.publish)
    }

    /// Unwraps the epoch's content key for the member `principal` with its HPKE secret key.
    ///
    /// Fails with [`Error::NotAMember`] if `principal` is not a member, and with [`Error::KeyUnwrap`] if
    /// `secret` does not open the key wrapped for it.
    pub fn content_key(&self, principal: &str, secret: &HpkeSecretKey) -> Result<ContentKey> {
        let body = &self.policy.body;
        let i = body.member_index(principal).ok_or(Error::NotAMember)?;
        let wrapped = &body.wrapped[i];
        let sk =
            <Kem as hpke::Kem>::PrivateKey::from_bytes(secret.as_bytes()).map_err(|_| Error::KeyUnwrap)?;
        let enc = <Kem as hpke::Kem>::EncappedKey::from_bytes(&wrapped.enc).map_err(|_| Error::KeyUnwrap)?;
        let tag = hpke::aead::AeadTag::<Aead>::from_bytes(&wrapped.ct[32..]).map_err(|_| Error::KeyUnwrap)?;
        let mut key = Zeroizing::new([0u8; 32]);
        key.copy_from_slice(&wrapped.ct[..32]);
        hpke::single_shot_open_in_place_detached::<Aead, Kdf, Kem>(
            &hpke::OpModeR::Base,
            &sk,
            &enc,
            &content_key_info(&body.topic, body.epoch),
            &mut key[..],
            principal.as_bytes(),
            &tag,
        )
        .map_err(|_| Error::KeyUnwrap)?;
        Ok(ContentKey::from_bytes(&key))
    }

    /// The canonical encoding.
    pub fn as_bytes(&self) -> &Bytes {
        &self.policy.bytes
    }

    /// The canonical encoding, by value.
    pub fn into_bytes(self) -> Bytes {
        self.policy.bytes
    }
}

/// What a new policy says, and where it continues the topic's history.
#[derive(Clone, Debug)]
pub struct PolicyParams<'a> {
    /// The topic it governs.
    pub topic: Topic,
    /// Its epoch: 1 for a topic's first policy, otherwise the previous policy's plus one.
    pub epoch: Epoch,
    /// The topic's policy of the previous epoch, or `None` for its first.
    pub prev: Option<&'a VerifiedPolicy>,
    /// The members, in any order.
    pub members: Vec<Member>,
    /// The authority's current time.
    pub created_at: Timestamp,
}

/// Issues a topic policy: wraps `content_key` to every member's `hpke_key` with HPKE, drawing randomness
/// from `rng`, and signs the whole with `authority`.
///
/// Fails with [`Error::InvalidPolicy`] if the epoch does not follow `params.prev` (or is not 1 without
/// one), if `params.prev` is for another topic, by another authority or created later than `created_at`,
/// if a principal name is invalid or listed twice, if a signing key is listed for two members or a member
/// has no role; with [`Error::TooLarge`] if the members or the encoding exceed `limits`; and with
/// [`Error::InvalidKey`] if a member's `hpke_key` is of small order.
pub fn issue_policy(
    authority: &SigningKey,
    params: PolicyParams<'_>,
    content_key: &ContentKey,
    limits: &Limits,
    rng: &mut impl CryptoRngCore,
) -> Result<VerifiedPolicy> {
    let authority_key = authority.public_key();
    let prev_digest = match params.prev {
        None if params.epoch == Epoch(1) => Digest::ZERO,
        None => return Err(Error::InvalidPolicy("a topic's first policy has epoch 1")),
        Some(prev) => {
            if prev.topic() != &params.topic {
                return Err(Error::InvalidPolicy("previous policy is for another topic"));
            }
            if prev.authority() != &authority_key {
                return Err(Error::InvalidPolicy("previous policy is signed by another authority"));
            }
            if prev.epoch().0.checked_add(1) != Some(params.epoch.0) {
                return Err(Error::InvalidPolicy("epoch is not the previous policy's plus one"));
            }
            if prev.created_at() > params.created_at {
                return Err(Error::InvalidPolicy("created before the previous policy"));
            }
            prev.digest()
        }
    };
    check_member_count(params.members.len(), limits)?;
    let mut members = params.members;
    for m in &members {
        m.check()?;
    }
    members.sort_unstable_by(|a, b| a.principal.cmp(&b.principal));
    if members.windows(2).any(|w| w[0].principal == w[1].principal) {
        return Err(Error::InvalidPolicy("principal listed twice"));
    }
    let by_key = index_by_key(&members)?;
    let mut body = Body {
        topic: params.topic,
        epoch: params.epoch,
        created_at: params.created_at,
        prev_digest,
        authority: authority_key,
        members,
        wrapped: Vec::new(),
        by_key,
    };
    let total = body.encoded_len();
    let max = limits.max_policy_len();
    if total > max as usize {
        return Err(Error::TooLarge { what: "policy", len: total as u64, max: max.into() });
    }
    // In member order, so that a seeded RNG gives the same bytes whatever order the members came in.
    let info = content_key_info(&body.topic, body.epoch);
    body.wrapped = body.members.iter().map(|m| wrap(content_key, m, &info, rng)).collect::<Result<_>>()?;
    let mut out = Vec::with_capacity(total);
    body.encode(&mut out);
    let digest = policy_digest(&out);
    out.extend_from_slice(&authority.sign(&signed_message(&digest)));
    debug_assert_eq!(out.len(), total);
    Ok(VerifiedPolicy { policy: SignedPolicy { bytes: out.into(), body }, digest })
}

fn wrap(key: &ContentKey, member: &Member, info: &[u8], rng: &mut impl CryptoRngCore) -> Result<Wrapped> {
    let pk = <Kem as hpke::Kem>::PublicKey::from_bytes(&member.hpke_key.0)
        .map_err(|_| Error::InvalidKey("X25519 key"))?;
    let mut ct = Zeroizing::new([0u8; 32]);
    ct.copy_from_slice(key.as_bytes());
    let (enc, tag) = hpke::single_shot_seal_in_place_detached::<Aead, Kdf, Kem, _>(
        &hpke::OpModeS::Base,
        &pk,
        info,
        &mut ct[..],
        member.principal.as_bytes(),
        rng,
    )
    // The only failure for this suite: the Diffie-Hellman result is all zeros.
    .map_err(|_| Error::InvalidKey("X25519 key of small order"))?;
    let mut wrapped = Wrapped { enc: [0; ENC_LEN], ct: [0; WRAPPED_LEN] };
    wrapped.enc.copy_from_slice(&enc.to_bytes());
    wrapped.ct[..32].copy_from_slice(&ct[..]);
    wrapped.ct[32..].copy_from_slice(&tag.to_bytes());
    Ok(wrapped)
}

/// The verified policies of one topic that a client has seen, and the rules for admitting new ones.
///
/// The book trusts only policies signed by the authority it was made with, for its topic. The first
/// policy admitted may be of any epoch (a client that arrives late has not seen the earlier ones); after
/// that, see [`admit`](Self::admit). It keeps every admitted policy, in memory.
#[derive(Clone, Debug)]
pub struct PolicyBook {
    topic: Topic,
    authority: PublicKey,
    policies: BTreeMap<Epoch, VerifiedPolicy>,
}

impl PolicyBook {
    /// An empty book for `topic`, trusting policies signed by `authority`.
    pub fn new(topic: Topic, authority: PublicKey) -> Self {
        Self { topic, authority, policies: BTreeMap::new() }
    }

    /// The topic.
    pub fn topic(&self) -> &Topic {
        &self.topic
    }

    /// The pinned authority key.
    pub fn authority(&self) -> &PublicKey {
        &self.authority
    }

    /// Admits a verified policy:
    ///
    /// - one already admitted (same epoch, same digest): `Ok`, nothing changes, whatever its epoch;
    /// - another policy for an admitted epoch: [`Error::PolicyFork`];
    /// - an epoch older than the newest admitted: [`Error::PolicyRollback`];
    /// - the epoch right after the newest admitted: admitted only if it names that policy's digest as its
    ///   previous digest, else [`Error::PolicyChainBroken`];
    /// - a later epoch (the epochs between were not seen): admitted; there is nothing to chain it to.
    ///
    /// A policy for another topic fails with [`Error::WrongTopic`], one signed by another key than the
    /// book's authority with [`Error::PolicyNotFromAuthority`]. On any error the book does not change.
    pub fn admit(&mut self, policy: VerifiedPolicy) -> Result<()> {
        if policy.topic() != &self.topic {
            return Err(Error::WrongTopic { expected: self.topic.clone(), got: policy.topic().clone() });
        }
        if policy.authority() != &self.authority {
            return Err(Error::PolicyNotFromAuthority);
        }
        let epoch = policy.epoch();
        if let Some(known) = self.policies.get(&epoch) {
            return if known.digest() == policy.digest() { Ok(()) } else { Err(Error::PolicyFork { epoch }) };
        }
        if let Some(current) = self.current() {
            if epoch < current.epoch() {
                return Err(Error::PolicyRollback { current: current.epoch(), got: epoch });
            }
            if current.epoch().0.checked_add(1) == Some(epoch.0) && policy.prev_digest() != current.digest() {
                return Err(Error::PolicyChainBroken { epoch });
            }
        }
        self.policies.insert(epoch, policy);
        Ok(())
    }

    /// Decodes `bytes` within `limits`, verifies it against the book's authority and
    /// [`admit`](Self::admit)s it.
    pub fn admit_bytes(&mut self, bytes: Bytes, limits: &Limits) -> Result<()> {
        self.admit(SignedPolicy::decode(bytes, limits)?.verify(&self.authority)?)
    }

    /// The policy of the newest admitted epoch.
    pub fn current(&self) -> Option<&VerifiedPolicy> {
        self.policies.values().next_back()
    }

    /// The admitted policy of `epoch`.
    pub fn get(&self, epoch: Epoch) -> Option<&VerifiedPolicy> {
        self.policies.get(&epoch)
    }

    /// Every admitted policy, oldest epoch first (to persist them, or to unwrap their keys).
    pub fn policies(&self) -> impl Iterator<Item = &VerifiedPolicy> {
        self.policies.values()
    }

    /// Whether a batch sealed under `epoch` is acceptable at `now`: `epoch` is the current one, or the one
    /// before it and `now` is less than `grace_ms` after the current policy's `created_at`. An epoch newer
    /// than the current one is not acceptable: fetch the topic's policies first.
    pub fn accepts_epoch(&self, epoch: Epoch, now: Timestamp, grace_ms: u64) -> bool {
        let Some(current) = self.current() else {
            return false;
        };
        epoch == current.epoch()
            || (epoch.0 >= 1
                && current.epoch().0.checked_sub(1) == Some(epoch.0)
                && now.0 < current.created_at().0.saturating_add(grace_ms))
    }

    /// Checks the header of a **verified** batch against the policies: the batch is for the book's topic
    /// ([`Error::WrongTopic`]), a policy of its epoch was admitted ([`Error::UnknownEpoch`]), that epoch is
    /// accepted at `now` ([`Error::StaleEpoch`], see [`accepts_epoch`](Self::accepts_epoch)), and its
    /// signer is a publisher of that policy ([`Error::UntrustedPublisher`]). Returns that member.
    ///
    /// A batch of the previous epoch (inside the grace window) must also be signed by a publisher of the
    /// **current** policy: a publisher removed by the current epoch still holds the previous epoch's key
    /// and could otherwise keep publishing under it until the grace window closes. The cost: its batches
    /// published before the revocation and read after it are refused too (as `UntrustedPublisher`).
    pub fn authorize(&self, header: &BatchHeader, now: Timestamp, grace_ms: u64) -> Result<&Member> {
        if header.topic != self.topic {
            return Err(Error::WrongTopic { expected: self.topic.clone(), got: header.topic.clone() });
        }
        let policy = self.get(header.epoch).ok_or(Error::UnknownEpoch(header.epoch))?;
        if !self.accepts_epoch(header.epoch, now, grace_ms) {
            let current = self.current().map_or(header.epoch, VerifiedPolicy::epoch);
            return Err(Error::StaleEpoch { epoch: header.epoch, current });
        }
        let member = policy.publisher(&header.publisher).ok_or(Error::UntrustedPublisher)?;
        match self.current() {
            Some(current)
                if current.epoch() != header.epoch && current.publisher(&header.publisher).is_none() =>
            {
                Err(Error::UntrustedPublisher)
            }
            _ => Ok(member),
        }
    }
}

/// The content keys one member unwrapped from the policies of one topic, by epoch. Pass it to
/// [`open`](crate::open) as the [`KeyLookup`].
#[derive(Clone, Debug)]
pub struct EpochKeys {
    topic: Topic,
    keys: BTreeMap<Epoch, ContentKey>,
}

impl EpochKeys {
    /// No keys yet, for `topic`.
    pub fn new(topic: Topic) -> Self {
        Self { topic, keys: BTreeMap::new() }
    }

    /// The topic.
    pub fn topic(&self) -> &Topic {
        &self.topic
    }

    /// Unwraps and keeps the content key of `policy`'s epoch for `principal` (see
    /// [`VerifiedPolicy::content_key`]). Does nothing if that epoch's key is already held; fails with
    /// [`Error::WrongTopic`] for a policy of another topic.
    pub fn unlock(&mut self, policy: &VerifiedPolicy, principal: &str, secret: &HpkeSecretKey) -> Result<()> {
        if policy.topic() != &self.topic {
            return Err(Error::WrongTopic { expected: self.topic.clone(), got: policy.topic().clone() });
        }
        if let btree_map::Entry::Vacant(slot) = self.keys.entry(policy.epoch()) {
            slot.insert(policy.content_key(principal, secret)?);
        }
        Ok(())
    }

    /// The key of `epoch`, if held.
    pub fn get(&self, epoch: Epoch) -> Option<&ContentKey> {
        self.keys.get(&epoch)
    }

    /// The epochs whose keys are held, oldest first.
    pub fn epochs(&self) -> impl Iterator<Item = Epoch> + '_ {
        self.keys.keys().copied()
    }
}

impl KeyLookup for EpochKeys {
    fn content_key(&self, epoch: Epoch) -> Option<&ContentKey> {
        self.get(epoch)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand_chacha::rand_core::SeedableRng;

    fn rng() -> rand_chacha::ChaCha20Rng {
        rand_chacha::ChaCha20Rng::seed_from_u64(7)
    }

    fn member(name: &str, seed: u8, publish: bool, subscribe: bool) -> Member {
        Member {
            principal: name.into(),
            publish,
            subscribe,
            signing_key: SigningKey::from_bytes(&[seed; 32]).public_key(),
            hpke_key: HpkeSecretKey::from_bytes(&[seed ^ 0x55; 32]).public_key(),
        }
    }

    fn params(members: Vec<Member>) -> PolicyParams<'static> {
        PolicyParams {
            topic: Topic::new("demo.chat").unwrap(),
            epoch: Epoch(1),
            prev: None,
            members,
            created_at: Timestamp(1000),
        }
    }

    fn issue(members: Vec<Member>) -> Result<VerifiedPolicy> {
        let authority = SigningKey::from_bytes(&[0xAA; 32]);
        issue_policy(
            &authority,
            params(members),
            &ContentKey::from_bytes(&[1; 32]),
            &Limits::default(),
            &mut rng(),
        )
    }

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
    fn principal_names_follow_the_broker_rule() {
        for ok in ["a", "alice", "svc.orders-eu_1", &"x".repeat(64)] {
            assert!(valid_principal(ok), "{ok}");
        }
        for bad in ["", "a b", "ä", "a/b", "a@b", &"x".repeat(65)] {
            assert!(!valid_principal(bad), "{bad}");
        }
    }

    #[test]
    fn issue_sorts_members_and_the_bytes_do_not_depend_on_their_order() {
        let a = member("alice", 1, true, true);
        let b = member("bob", 2, false, true);
        let one = issue(vec![b.clone(), a.clone()]).unwrap();
        let two = issue(vec![a, b]).unwrap();
        assert_eq!(one.as_bytes(), two.as_bytes());
        assert_eq!(one.members()[0].principal, "alice");
    }

    #[test]
    fn issue_rejects_invalid_members() {
        let a = member("alice", 1, true, true);
        assert_eq!(
            issue(vec![a.clone(), member("alice", 2, false, true)]).unwrap_err(),
            Error::InvalidPolicy("principal listed twice")
        );
        assert_eq!(
            issue(vec![a.clone(), member("bob", 1, false, true)]).unwrap_err(),
            Error::InvalidPolicy("one signing key listed for two members")
        );
        assert_eq!(
            issue(vec![member("bob", 2, false, false)]).unwrap_err(),
            Error::InvalidPolicy("member with neither the publish nor the subscribe role")
        );
        assert_eq!(
            issue(vec![member("bob smith", 2, true, false)]).unwrap_err(),
            Error::InvalidPolicy("principal name is not 1 to 64 of [A-Za-z0-9._-]")
        );
        let mut weak = member("bob", 2, true, false);
        weak.hpke_key = HpkePublicKey([0; 32]);
        assert_eq!(issue(vec![weak]).unwrap_err(), Error::InvalidKey("X25519 key of small order"));
    }

    #[test]
    fn first_policy_must_have_epoch_one_and_a_zero_previous_digest() {
        let authority = SigningKey::from_bytes(&[0xAA; 32]);
        let key = ContentKey::from_bytes(&[1; 32]);
        let p = PolicyParams { epoch: Epoch(2), ..params(vec![]) };
        assert_eq!(
            issue_policy(&authority, p, &key, &Limits::default(), &mut rng()).unwrap_err(),
            Error::InvalidPolicy("a topic's first policy has epoch 1")
        );
        let first = issue(vec![]).unwrap();
        assert_eq!(first.prev_digest(), Digest::ZERO);
        assert!(first.members().is_empty());
    }

    #[test]
    fn epoch_and_previous_digest_rules() {
        assert_eq!(check_epoch(Epoch(0), &Digest::ZERO), Err(Error::InvalidPolicy("epoch 0")));
        assert_eq!(check_epoch(Epoch(1), &Digest::ZERO), Ok(()));
        assert!(check_epoch(Epoch(1), &Digest([1; 32])).is_err());
        assert!(check_epoch(Epoch(2), &Digest::ZERO).is_err());
        assert_eq!(check_epoch(Epoch(2), &Digest([1; 32])), Ok(()));
    }

    #[test]
    fn publisher_lookup_needs_the_publish_role() {
        let p = issue(vec![member("alice", 1, true, false), member("bob", 2, false, true)]).unwrap();
        let alice = SigningKey::from_bytes(&[1; 32]).public_key();
        let bob = SigningKey::from_bytes(&[2; 32]).public_key();
        assert_eq!(p.publisher(&alice).map(|m| m.principal.as_str()), Some("alice"));
        assert_eq!(p.publisher(&bob), None);
        assert_eq!(p.member("bob").map(|m| m.subscribe), Some(true));
        assert_eq!(p.member("carol"), None);
    }
}
