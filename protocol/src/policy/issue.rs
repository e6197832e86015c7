//! Issuing a topic policy: what the topic authority runs to make a topic's next policy.
//!
//! Guarantees: an issued policy continues the policy it names as previous (same topic, same authority,
//! the next epoch, not created earlier), lists each principal and each signing key once, fits the limits,
//! and is encoded canonically: the same inputs and RNG give the same bytes whatever order the members came
//! in.

use rand_core::CryptoRngCore;

use crate::epoch::Epoch;
use crate::keys::{ContentKey, SigningKey};
use crate::topic::Topic;
use crate::{Digest, Error, Limits, Result, Timestamp};

use super::codec::{check_member_count, index_by_key, policy_digest, signed_message, Body};
use super::member::Member;
use super::signed::VerifiedPolicy;
use super::wrap::{content_key_info, WrappedKey};

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
/// if a principal is listed twice, if a signing key is listed for two members or a member
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
    body.wrapped = body
        .members
        .iter()
        .map(|m| WrappedKey::seal(content_key, &m.hpke_key, m.principal.as_str(), &info, rng))
        .collect::<Result<_>>()?;
    let mut out = Vec::with_capacity(total);
    body.encode(&mut out);
    let digest = policy_digest(&out);
    out.extend_from_slice(&authority.sign(&signed_message(&digest)));
    debug_assert_eq!(out.len(), total);
    Ok(VerifiedPolicy::issued(out.into(), body, digest))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keys::HpkePublicKey;
    use crate::policy::fixtures::{issue, member, params, rng};
    use crate::principal::Principal;

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
        // An invalid principal name cannot reach issuing: a member's principal is a `Principal`.
        assert!(Principal::new("bob smith").is_err());
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
}
