//! Members and policies shared by the unit tests of the policy module.

use rand_chacha::rand_core::SeedableRng;

use crate::epoch::Epoch;
use crate::keys::{ContentKey, HpkeSecretKey, SigningKey};
use crate::topic::Topic;
use crate::{Limits, Result, Timestamp};

use super::{issue_policy, Member, PolicyParams, VerifiedPolicy};

pub(super) fn rng() -> rand_chacha::ChaCha20Rng {
    rand_chacha::ChaCha20Rng::seed_from_u64(7)
}

pub(super) fn member(name: &str, seed: u8, publish: bool, subscribe: bool) -> Member {
    Member {
        principal: name.parse().unwrap(),
        publish,
        subscribe,
        signing_key: SigningKey::from_bytes(&[seed; 32]).public_key(),
        hpke_key: HpkeSecretKey::from_bytes(&[seed ^ 0x55; 32]).public_key(),
    }
}

pub(super) fn params(members: Vec<Member>) -> PolicyParams<'static> {
    PolicyParams {
        topic: Topic::new("demo.chat").unwrap(),
        epoch: Epoch(1),
        prev: None,
        members,
        created_at: Timestamp(1000),
    }
}

/// Issues a first policy of demo.chat with `members`, by a fixed authority, content key and RNG.
pub(super) fn issue(members: Vec<Member>) -> Result<VerifiedPolicy> {
    let authority = SigningKey::from_bytes(&[0xAA; 32]);
    issue_policy(
        &authority,
        params(members),
        &ContentKey::from_bytes(&[1; 32]),
        &Limits::default(),
        &mut rng(),
    )
}
