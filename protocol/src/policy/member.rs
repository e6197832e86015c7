//! One member of a topic policy: a principal, what it may do (publish, subscribe), and its public keys.
//!
//! Guarantees: a [`Member`] that passed [`Member::check`] has a valid principal name and at least one role;
//! the role bits it encodes are the only ones a version-1 policy knows.

use crate::keys::{HpkePublicKey, PublicKey};
use crate::{Error, Result};

/// Longest principal name, in bytes.
pub const MAX_PRINCIPAL_LEN: usize = 64;

/// The role bit of a member that may publish.
pub(super) const ROLE_PUBLISH: u8 = 0b01;
/// The role bit of a member that may subscribe.
pub(super) const ROLE_SUBSCRIBE: u8 = 0b10;

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
    /// Its roles as the policy encodes them.
    pub(super) fn roles(&self) -> u8 {
        (if self.publish { ROLE_PUBLISH } else { 0 }) | (if self.subscribe { ROLE_SUBSCRIBE } else { 0 })
    }

    /// Fails if its principal name is invalid or it has no role.
    pub(super) fn check(&self) -> Result<()> {
        if !valid_principal(&self.principal) {
            return Err(Error::InvalidPolicy("principal name is not 1 to 64 of [A-Za-z0-9._-]"));
        }
        if self.roles() == 0 {
            return Err(Error::InvalidPolicy("member with neither the publish nor the subscribe role"));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn principal_names_follow_the_broker_rule() {
        for ok in ["a", "alice", "svc.orders-eu_1", &"x".repeat(64)] {
            assert!(valid_principal(ok), "{ok}");
        }
        for bad in ["", "a b", "ä", "a/b", "a@b", &"x".repeat(65)] {
            assert!(!valid_principal(bad), "{bad}");
        }
    }
}
