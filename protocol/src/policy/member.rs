//! One member of a topic policy: a principal, what it may do (publish, subscribe), and its public keys.
//!
//! Guarantees: a member's principal is a valid name (it is a [`Principal`]); a [`Member`] that passed
//! [`Member::check`] has at least one role; the role bits it encodes are the only ones a version-1 policy
//! knows.

use crate::keys::{HpkePublicKey, PublicKey};
use crate::principal::Principal;
use crate::{Error, Result};

/// The role bit of a member that may publish.
pub(super) const ROLE_PUBLISH: u8 = 0b01;
/// The role bit of a member that may subscribe.
pub(super) const ROLE_SUBSCRIBE: u8 = 0b10;

/// One member of a topic policy: a principal, what it may do, and its keys.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Member {
    /// The principal, as named by its certificate.
    pub principal: Principal,
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
    /// Its roles as the policy encodes them.
    pub(super) fn roles(&self) -> u8 {
        (if self.publish { ROLE_PUBLISH } else { 0 }) | (if self.subscribe { ROLE_SUBSCRIBE } else { 0 })
    }

    /// Fails if it has no role.
    pub(super) fn check(&self) -> Result<()> {
        if self.roles() == 0 {
            return Err(Error::InvalidPolicy("member with neither the publish nor the subscribe role"));
        }
        Ok(())
    }
}
