//! The topic authority's policy changes, as a library: [`Authority::create`], [`Authority::grant`],
//! [`Authority::revoke`] and [`Authority::rotate`] each make a topic's next policy from its current one;
//! [`Client::store_policy`](crate::Client::store_policy) stores it. The `sealpost topic` commands are a thin
//! layer over these; a service that manages topics calls them the same way:
//!
//! ```no_run
//! use sealpost_client::authority::{Authority, Role};
//! use sealpost_client::{Client, Identity, Topic};
//!
//! # async fn example(now: sealpost_client::Timestamp) -> Result<(), sealpost_client::Error> {
//! let admin = Identity::load("admin.toml")?;
//! let authority = Authority::of(&admin)?; // Error::NoAuthorityKey without `authority_key`
//! let client = Client::connect(&admin).await?;
//! let topic: Topic = "demo.chat".parse()?;
//! let current = client.policies(&topic).await?.pop();
//! let bob = "bob".parse()?;
//! // bob is a member already: he keeps the keys the policy lists for him.
//! let next = authority.grant(&topic, current.as_ref(), &bob, Role::Publish, None, now)?;
//! client.store_policy(&next).await?; // Error::StalePolicy if someone changed the topic meanwhile
//! # Ok(())
//! # }
//! ```
//!
//! # What it guarantees
//!
//! Every change makes the **next epoch** (the current one's plus one; epoch 1 for `create`), chained to the
//! current policy, created at the time given (or at the current policy's, if the clock is behind it), with a
//! **fresh random content key** wrapped to every member, signed with the authority's key. A revoked member
//! cannot unwrap the new key; a member whose roles change keeps the keys the policy lists for it. The broker
//! stores a policy only as the epoch right after its current one, so of two administrators changing one
//! topic at once the second is told ([`Error::StalePolicy`]) to fetch the policies again and redo the
//! change. Changes that make no sense are refused before anything is signed: a second create
//! ([`Error::PolicyExists`]), a change to a topic without policy ([`Error::NoPolicy`]), granting a role a
//! member has ([`Error::RoleHeld`]), adding a member without its public keys ([`Error::UnknownMember`]),
//! revoking a principal that is not a member ([`Error::NotAMember`]).
//!
//! # What it does not do
//!
//! It does not find members' public keys (the CLI reads them from files), does not fetch or store policies
//! (the [`Client`](crate::Client) does), and reads no clock: the time comes in as an argument.

use sealpost_protocol::{
    issue_policy, ContentKey, Epoch, HpkePublicKey, Limits, Member, PolicyParams, Principal, PublicKey,
    SigningKey, Timestamp, Topic, VerifiedPolicy,
};

use crate::error::{Error, Result};
use crate::identity::Identity;
pub use crate::role::Role;

/// The public keys a policy lists for a member: what the authority needs to add one.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MemberKeys {
    /// The key that signs the member's batches.
    pub signing_key: PublicKey,
    /// The key the topic's content keys are wrapped to for the member.
    pub hpke_key: HpkePublicKey,
}

/// The topic authority: makes topics' next policies, signed with its key. See the
/// [module documentation](self).
#[derive(Debug)]
pub struct Authority<'a> {
    key: &'a SigningKey,
}

impl<'a> Authority<'a> {
    /// The authority that signs with `key`.
    pub fn new(key: &'a SigningKey) -> Self {
        Self { key }
    }

    /// The authority of an identity that holds the topic authority's key (`authority_key`, the
    /// administrator's identity); [`Error::NoAuthorityKey`] for any other identity.
    pub fn of(identity: &'a Identity) -> Result<Self> {
        identity.authority_key().map(Self::new).ok_or(Error::NoAuthorityKey)
    }

    /// The public key policies signed by this authority verify against.
    pub fn public_key(&self) -> PublicKey {
        self.key.public_key()
    }

    /// `topic`'s first policy (epoch 1), with `members`. [`Error::PolicyExists`] if the topic has a
    /// policy (`current`).
    pub fn create(
        &self,
        topic: &Topic,
        current: Option<&VerifiedPolicy>,
        members: Vec<Member>,
        now: Timestamp,
    ) -> Result<VerifiedPolicy> {
        if let Some(current) = current {
            return Err(Error::PolicyExists { topic: topic.clone(), epoch: current.epoch().0 });
        }
        self.issue(topic, None, members, now)
    }

    /// `topic`'s next policy, in which `principal` holds `role`: a role added to a member, who keeps the
    /// keys the current policy lists for it, or a new member with only that role and `keys` (needed then,
    /// else [`Error::UnknownMember`]). [`Error::RoleHeld`] if the member has the role already.
    pub fn grant(
        &self,
        topic: &Topic,
        current: Option<&VerifiedPolicy>,
        principal: &Principal,
        role: Role,
        keys: Option<MemberKeys>,
        now: Timestamp,
    ) -> Result<VerifiedPolicy> {
        let current = current_of(topic, current)?;
        let mut members = current.members().to_vec();
        match members.iter_mut().find(|m| m.principal == *principal) {
            Some(member) => {
                let held = match role {
                    Role::Publish => std::mem::replace(&mut member.publish, true),
                    Role::Subscribe => std::mem::replace(&mut member.subscribe, true),
                };
                if held {
                    return Err(Error::RoleHeld {
                        topic: topic.clone(),
                        principal: principal.clone(),
                        role,
                        epoch: current.epoch().0,
                    });
                }
            }
            None => {
                let Some(keys) = keys else {
                    return Err(Error::UnknownMember { topic: topic.clone(), principal: principal.clone() });
                };
                members.push(Member {
                    principal: principal.clone(),
                    publish: role == Role::Publish,
                    subscribe: role == Role::Subscribe,
                    signing_key: keys.signing_key,
                    hpke_key: keys.hpke_key,
                });
            }
        }
        self.issue(topic, Some(current), members, now)
    }

    /// `topic`'s next policy without `principal`, whose every role ends: it cannot unwrap the new content
    /// key. [`Error::NotAMember`] if it is not a member.
    pub fn revoke(
        &self,
        topic: &Topic,
        current: Option<&VerifiedPolicy>,
        principal: &Principal,
        now: Timestamp,
    ) -> Result<VerifiedPolicy> {
        let current = current_of(topic, current)?;
        let mut members = current.members().to_vec();
        let before = members.len();
        members.retain(|m| m.principal != *principal);
        if members.len() == before {
            return Err(Error::NotAMember {
                topic: topic.clone(),
                principal: principal.clone(),
                epoch: current.epoch().0,
            });
        }
        self.issue(topic, Some(current), members, now)
    }

    /// `topic`'s next policy with the same members and a fresh content key.
    pub fn rotate(
        &self,
        topic: &Topic,
        current: Option<&VerifiedPolicy>,
        now: Timestamp,
    ) -> Result<VerifiedPolicy> {
        let current = current_of(topic, current)?;
        self.issue(topic, Some(current), current.members().to_vec(), now)
    }

    /// The policy after `current` with `members`, created at `now` (or at the current policy's time, if the
    /// clock is behind it), with a fresh random content key.
    fn issue(
        &self,
        topic: &Topic,
        current: Option<&VerifiedPolicy>,
        members: Vec<Member>,
        now: Timestamp,
    ) -> Result<VerifiedPolicy> {
        let epoch =
            match current {
                None => Epoch(1),
                Some(p) => Epoch(p.epoch().0.checked_add(1).ok_or(
                    sealpost_protocol::Error::InvalidPolicy("the topic's epoch cannot grow any more"),
                )?),
            };
        let created_at = current.map_or(now, |p| now.max(p.created_at()));
        let params = PolicyParams { topic: topic.clone(), epoch, prev: current, members, created_at };
        let key = ContentKey::generate(&mut rand::rngs::OsRng);
        Ok(issue_policy(self.key, params, &key, &Limits::default(), &mut rand::rngs::OsRng)?)
    }
}

/// The current policy a change starts from: [`Error::NoPolicy`] if there is none.
fn current_of<'p>(topic: &Topic, current: Option<&'p VerifiedPolicy>) -> Result<&'p VerifiedPolicy> {
    current.ok_or_else(|| Error::NoPolicy { topic: topic.clone() })
}

/// Why the broker refused `next` with `POLICY_REJECTED`, given the epoch of the topic's current policy as
/// fetched after the refusal (`None` if there is none or it could not be fetched): if the topic still stands
/// where `next` was made from, the broker does not trust this authority; else someone changed the policy
/// meanwhile.
pub(crate) fn rejection(next: &VerifiedPolicy, current_now: Option<Epoch>) -> Error {
    let made_from = next.epoch().0.checked_sub(1).filter(|&e| e > 0).map(Epoch);
    let topic = next.topic().clone();
    if current_now == made_from {
        Error::AuthorityRejected { topic, authority: Box::new(*next.authority()) }
    } else {
        Error::StalePolicy { topic, epoch: next.epoch().0 }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keyring::tests::{authority, hpke, member, signer, topic};

    fn keys_of(name: &str) -> MemberKeys {
        MemberKeys { signing_key: signer(name).public_key(), hpke_key: hpke(name).public_key() }
    }

    fn name(name: &str) -> Principal {
        name.parse().unwrap()
    }

    fn roles(policy: &VerifiedPolicy) -> Vec<(String, bool, bool)> {
        policy.members().iter().map(|m| (m.principal.to_string(), m.publish, m.subscribe)).collect()
    }

    /// Epoch 1 of `topic()`: alice publishes, bob subscribes.
    fn first(a: &Authority<'_>) -> VerifiedPolicy {
        let members = vec![member("alice", true, false), member("bob", false, true)];
        a.create(&topic(), None, members, Timestamp(1000)).unwrap()
    }

    #[test]
    fn create_makes_epoch_one_and_a_second_create_is_refused() {
        let key = authority();
        let a = Authority::new(&key);
        let p1 = first(&a);
        assert_eq!(
            (p1.epoch(), p1.created_at(), p1.prev_digest()),
            (Epoch(1), Timestamp(1000), sealpost_protocol::Digest::ZERO)
        );
        assert_eq!(p1.authority(), &a.public_key());
        assert_eq!(roles(&p1), [("alice".into(), true, false), ("bob".into(), false, true)]);
        p1.content_key("bob", &hpke("bob")).unwrap();
        let e =
            a.create(&topic(), Some(&p1), vec![member("carol", true, true)], Timestamp(2000)).unwrap_err();
        assert!(matches!(&e, Error::PolicyExists { epoch: 1, .. }), "{e}");
        assert_eq!(
            e.to_string(),
            "demo.x already has a policy (epoch 1): change it with sealpost topic grant, revoke or rotate"
        );
    }

    #[test]
    fn grant_revoke_and_rotate_make_the_next_epoch_with_a_fresh_key() {
        let key = authority();
        let a = Authority::new(&key);
        let p1 = first(&a);
        let p2 = a.grant(
            &topic(),
            Some(&p1),
            &name("carol"),
            Role::Subscribe,
            Some(keys_of("carol")),
            Timestamp(2000),
        );
        let p2 = p2.unwrap();
        assert_eq!((p2.epoch(), p2.prev_digest()), (Epoch(2), p1.digest()));
        assert_eq!(
            roles(&p2),
            [("alice".into(), true, false), ("bob".into(), false, true), ("carol".into(), false, true)]
        );
        let k1 = p1.content_key("bob", &hpke("bob")).unwrap();
        let k2 = p2.content_key("bob", &hpke("bob")).unwrap();
        assert_ne!(k1.as_bytes(), k2.as_bytes(), "every epoch has a fresh key");

        // A role for a member: no keys needed, the member keeps the ones the policy lists.
        let p3 = a.grant(&topic(), Some(&p2), &name("bob"), Role::Publish, None, Timestamp(3000)).unwrap();
        assert_eq!(roles(&p3)[1], ("bob".into(), true, true));
        let other_keys = Some(keys_of("zed"));
        let p3b =
            a.grant(&topic(), Some(&p2), &name("bob"), Role::Publish, other_keys, Timestamp(3000)).unwrap();
        assert_eq!(p3b.member("bob").unwrap().signing_key, signer("bob").public_key());

        let p4 = a.revoke(&topic(), Some(&p3), &name("carol"), Timestamp(4000)).unwrap();
        assert_eq!(p4.epoch(), Epoch(4));
        assert!(p4.member("carol").is_none());
        assert!(p4.content_key("carol", &hpke("carol")).is_err(), "carol cannot unwrap the new key");

        // The clock behind the current policy: created at its time, so that it still chains.
        let p5 = a.rotate(&topic(), Some(&p4), Timestamp(10)).unwrap();
        assert_eq!((p5.epoch(), p5.created_at()), (Epoch(5), Timestamp(4000)));
        assert_eq!(roles(&p5), roles(&p4));
        let mut book = sealpost_protocol::PolicyBook::new(topic(), a.public_key());
        for p in [&p1, &p2, &p3, &p4, &p5] {
            book.admit(p.clone()).unwrap();
        }
    }

    #[test]
    fn changes_that_make_no_sense_are_refused_with_a_clear_error() {
        let key = authority();
        let a = Authority::new(&key);
        let p1 = first(&a);
        let now = Timestamp(2000);

        let e = a.grant(&topic(), Some(&p1), &name("alice"), Role::Publish, None, now).unwrap_err();
        assert!(matches!(&e, Error::RoleHeld { role: Role::Publish, epoch: 1, .. }), "{e}");
        assert_eq!(e.to_string(), "alice already has the publish role on demo.x (epoch 1)");

        let e = a.grant(&topic(), Some(&p1), &name("dave"), Role::Subscribe, None, now).unwrap_err();
        assert!(matches!(&e, Error::UnknownMember { .. }), "{e}");
        assert!(e.to_string().starts_with("dave is not a member of the policy of demo.x: "), "{e}");

        let e = a.revoke(&topic(), Some(&p1), &name("carol"), now).unwrap_err();
        assert!(matches!(&e, Error::NotAMember { epoch: 1, .. }), "{e}");
        assert_eq!(e.to_string(), "carol is not a member of the policy of demo.x (epoch 1)");

        for e in [
            a.rotate(&topic(), None, now).unwrap_err(),
            a.revoke(&topic(), None, &name("bob"), now).unwrap_err(),
            a.grant(&topic(), None, &name("bob"), Role::Publish, Some(keys_of("bob")), now).unwrap_err(),
        ] {
            assert!(matches!(&e, Error::NoPolicy { .. }), "{e}");
        }
    }

    #[test]
    fn only_an_identity_with_the_authority_key_is_an_authority() {
        let dir = tempfile::tempdir().unwrap();
        let path = crate::identity::tests::write_identity(dir.path(), "alice", "");
        let alice = Identity::load(path).unwrap();
        let e = Authority::of(&alice).unwrap_err();
        assert!(matches!(e, Error::NoAuthorityKey), "{e}");
        assert_eq!(
            e.to_string(),
            "this identity holds no authority_key: only the topic authority can change policies"
        );
        let dir = tempfile::tempdir().unwrap();
        let seed = hex::encode(*crate::identity::tests::authority().to_bytes());
        let extra = format!("authority_key = \"{seed}\"\n");
        let admin =
            Identity::load(crate::identity::tests::write_identity(dir.path(), "admin", &extra)).unwrap();
        assert_eq!(Authority::of(&admin).unwrap().public_key(), admin.authority());
    }

    #[test]
    fn a_refused_policy_is_stale_if_the_topic_moved_on_else_the_broker_trusts_another_authority() {
        let key = authority();
        let a = Authority::new(&key);
        let p1 = first(&a);
        let p2 = a.rotate(&topic(), Some(&p1), Timestamp(2000)).unwrap();
        // p2 was made from epoch 1.
        let e = rejection(&p2, Some(Epoch(2)));
        assert!(matches!(&e, Error::StalePolicy { epoch: 2, .. }), "{e}");
        let e = rejection(&p2, None);
        assert!(matches!(&e, Error::StalePolicy { .. }), "{e}");
        let e = rejection(&p2, Some(Epoch(1)));
        assert!(matches!(&e, Error::AuthorityRejected { .. }), "{e}");
        assert!(
            e.to_string().starts_with(
                "the broker rejected the policy of demo.x: it is not configured with this topic authority ("
            ),
            "{e}"
        );
        // A first policy is stale once the topic has one.
        assert!(matches!(rejection(&p1, None), Error::AuthorityRejected { .. }));
        assert!(matches!(rejection(&p1, Some(Epoch(1))), Error::StalePolicy { .. }));
    }
}
