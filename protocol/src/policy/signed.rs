//! A topic policy before and after its signature is checked: [`SignedPolicy`] (parsed, not trusted) and
//! [`VerifiedPolicy`] (signed by the authority key it was checked against).
//!
//! Guarantees: only [`SignedPolicy::verify`] (or [`issue_policy`](super::issue_policy), which signs what it
//! makes) can build a [`VerifiedPolicy`], and `verify` accepts only the pinned authority's key, checked with
//! `verify_strict`. Both hold the canonical bytes, so what is stored and forwarded is what was signed.

use bytes::Bytes;

use crate::batch::SIGNATURE_LEN;
use crate::epoch::Epoch;
use crate::keys::{ContentKey, HpkeSecretKey, PublicKey};
use crate::topic::Topic;
use crate::{Digest, Error, Limits, Result, Timestamp};

use super::codec::{self, policy_digest, signed_message, Body};
use super::member::Member;
use super::wrap::content_key_info;

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
        let body = codec::decode(&bytes, limits)?;
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
    /// A policy [`issue_policy`](super::issue_policy) just encoded and signed: `bytes` are `body`'s encoding
    /// and the signature over `digest`.
    pub(super) fn issued(bytes: Bytes, body: Body, digest: Digest) -> Self {
        Self { policy: SignedPolicy { bytes, body }, digest }
    }

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

    /// The member named `principal`, if any (a [`Principal`](crate::Principal) or any string: a name that is
    /// not a valid principal is no member).
    pub fn member(&self, principal: impl AsRef<str>) -> Option<&Member> {
        self.policy.body.member_index(principal.as_ref()).map(|i| &self.policy.body.members[i])
    }

    /// The member that signs with `key`, if it has the publish role.
    pub fn publisher(&self, key: &PublicKey) -> Option<&Member> {
        self.policy.body.by_signing_key(key).filter(|m| m.publish)
    }

    /// Unwraps the epoch's content key for the member `principal` with its HPKE secret key.
    ///
    /// Fails with [`Error::NotAMember`] if `principal` is not a member, and with [`Error::KeyUnwrap`] if
    /// `secret` does not open the key wrapped for it.
    pub fn content_key(&self, principal: impl AsRef<str>, secret: &HpkeSecretKey) -> Result<ContentKey> {
        let principal = principal.as_ref();
        let body = &self.policy.body;
        let i = body.member_index(principal).ok_or(Error::NotAMember)?;
        body.wrapped[i].open(secret, principal, &content_key_info(&body.topic, body.epoch))
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

#[cfg(test)]
mod tests {
    use crate::keys::SigningKey;
    use crate::policy::fixtures::{issue, member};

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
