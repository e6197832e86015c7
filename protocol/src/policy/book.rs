//! The verified policies of one topic that a client has seen, and the rules for admitting new ones.
//!
//! Guarantees: a [`PolicyBook`] holds only policies of its topic signed by its authority; once it holds a
//! policy it never admits an older epoch it has not seen ([`Error::PolicyRollback`]), a second policy for an
//! epoch ([`Error::PolicyFork`]), or a next epoch that does not name the newest admitted policy's digest as
//! its `prev_digest` ([`Error::PolicyChainBroken`]). Older epochs enter only by walking the history back
//! ([`PolicyBook::admit_history`]): each one must be signed by the authority and be the policy the epoch
//! after it names ([`Error::PolicyLinkBroken`] otherwise). It also says which batches the policies allow:
//! the publishers of each epoch, until the epoch that revoked them, and the grace window after a rotation.

use std::collections::BTreeMap;

use bytes::Bytes;

use crate::batch::BatchHeader;
use crate::epoch::Epoch;
use crate::error::PolicyLinkFault;
use crate::keys::PublicKey;
use crate::topic::Topic;
use crate::{Error, Limits, Result, Timestamp};

use super::member::Member;
use super::signed::{SignedPolicy, VerifiedPolicy};

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

    /// Where a history walk that must reach `epoch` starts: the oldest admitted epoch above it (the walk
    /// asks the broker for the epochs below that one). `None` if `epoch` is admitted, or no epoch above it
    /// is (a newer epoch is fetched with the current policies, not from the history).
    pub fn history_start(&self, epoch: Epoch) -> Option<Epoch> {
        if self.policies.contains_key(&epoch) {
            return None;
        }
        self.policies.range(Epoch(epoch.0.saturating_add(1))..).next().map(|(e, _)| *e)
    }

    /// Admits one page of the topic's history, as a broker answers `GetPolicyHistory { before, .. }`:
    /// `page` newest first, walking back from the admitted policy of `before` down to epoch `until`.
    ///
    /// Each policy must be of the next epoch down (`before - 1`, then `before - 2`, ...), decode within
    /// `limits`, be signed by the book's authority, be for the book's topic, and have the digest the
    /// admitted policy of the epoch above names as its `prev_digest`; else [`Error::PolicyLinkBroken`]
    /// names the topic, that epoch and the fault. A policy already admitted must be that same policy
    /// ([`Error::PolicyFork`]), and one admitted for the epoch below must be the one it names
    /// ([`Error::PolicyChainBroken`]). Policies served below `until` are ignored.
    ///
    /// Returns `None` when every epoch from `before - 1` down to `until` is admitted, else `Some(e)`: the
    /// page stopped short (the broker's page limit), and the walk goes on with the next page below `e`, the
    /// oldest epoch admitted so far, strictly below `before`. A page that admits nothing (empty: the broker
    /// says there is no more) is [`PolicyLinkFault::Missing`], so every walk ends. The links admitted
    /// before an error stay admitted: each was checked.
    pub fn admit_history(
        &mut self,
        before: Epoch,
        until: Epoch,
        page: impl IntoIterator<Item = Bytes>,
        limits: &Limits,
    ) -> Result<Option<Epoch>> {
        if !self.policies.contains_key(&before) {
            return Err(Error::UnknownEpoch(before));
        }
        let until = Epoch(until.0.max(1));
        let mut above = before;
        let topic = self.topic.clone();
        let broken = |epoch, fault| Error::PolicyLinkBroken { topic: topic.clone(), epoch, fault };
        for bytes in page {
            let Some(expected) = above.0.checked_sub(1).filter(|&e| e >= until.0).map(Epoch) else {
                break;
            };
            let signed = SignedPolicy::decode(bytes, limits)
                .map_err(|_| broken(expected, PolicyLinkFault::Malformed))?;
            if signed.epoch() != expected {
                return Err(broken(expected, PolicyLinkFault::Missing { got: Some(signed.epoch()) }));
            }
            if signed.topic() != &topic {
                return Err(broken(expected, PolicyLinkFault::WrongTopic));
            }
            let policy = signed
                .verify(&self.authority)
                .map_err(|_| broken(expected, PolicyLinkFault::NotFromAuthority))?;
            let named = self.policies.get(&above).map(VerifiedPolicy::prev_digest);
            if named != Some(policy.digest()) {
                return Err(broken(expected, PolicyLinkFault::NotNamedByNext));
            }
            if let Some(known) = self.policies.get(&expected) {
                if known.digest() != policy.digest() {
                    return Err(Error::PolicyFork { epoch: expected });
                }
            } else {
                // An admitted policy below (admitted without a link, as a first policy) must be continued.
                let below = expected.0.checked_sub(1).and_then(|e| self.policies.get(&Epoch(e)));
                if below.is_some_and(|below| below.digest() != policy.prev_digest()) {
                    return Err(Error::PolicyChainBroken { epoch: expected });
                }
                self.policies.insert(expected, policy);
            }
            above = expected;
        }
        if above.0 <= until.0 {
            return Ok(None);
        }
        if above == before {
            let expected = Epoch(before.0 - 1);
            return Err(broken(expected, PolicyLinkFault::Missing { got: None }));
        }
        Ok(Some(above))
    }

    /// Whether `epoch` may be sealed under at `now`: it is the current one, or the one before it and `now`
    /// is less than `grace_ms` after the current policy's `created_at`. An epoch newer than the current one
    /// is not acceptable: fetch the topic's policies first. (A reader judges a batch by the policy that
    /// followed its own epoch, see [`authorize`](Self::authorize); for the previous epoch that is the same
    /// rule, with the batch's `created_at` as `now`.)
    pub fn accepts_epoch(&self, epoch: Epoch, now: Timestamp, grace_ms: u64) -> bool {
        let Some(current) = self.current() else {
            return false;
        };
        epoch == current.epoch()
            || (epoch.0 >= 1
                && current.epoch().0.checked_sub(1) == Some(epoch.0)
                && now.0 < current.created_at().0.saturating_add(grace_ms))
    }

    /// Checks the header of a **verified** batch against the policies, and returns the member that signed
    /// it:
    ///
    /// - the batch is for the book's topic ([`Error::WrongTopic`]) and a policy of its epoch `e` was
    ///   admitted ([`Error::UnknownEpoch`]`(e)`);
    /// - its signer is a publisher of policy `e` ([`Error::UntrustedPublisher`]);
    /// - if `e` is older than the current epoch, the batch was sealed while `e` was current: its
    ///   `created_at` is before the `created_at` of policy `e + 1` plus `grace_ms` ([`Error::StaleEpoch`]);
    ///   and its signer is still a publisher of the current policy, or else the batch's `created_at` is
    ///   before the `created_at` of the first policy after `e` that no longer lists it as a publisher (the
    ///   revocation; [`Error::UntrustedPublisher`] otherwise). A policy needed for this and not admitted is
    ///   [`Error::UnknownEpoch`] of that epoch: walk the history back to it
    ///   ([`admit_history`](Self::admit_history)) and ask again.
    ///
    /// So a revoked publisher's batches sealed before its revocation stay readable, and one it seals after
    /// is refused, even under an epoch whose key it still holds, and even inside the grace window.
    /// `created_at` is the publisher's claim: a revoked key that dates its batch before its revocation (and
    /// a broker that serves it) passes this check. That is a non-claim of the threat model.
    pub fn authorize(&self, header: &BatchHeader, grace_ms: u64) -> Result<&Member> {
        if header.topic != self.topic {
            return Err(Error::WrongTopic { expected: self.topic.clone(), got: header.topic.clone() });
        }
        let epoch = header.epoch;
        let policy = self.get(epoch).ok_or(Error::UnknownEpoch(epoch))?;
        let member = policy.publisher(&header.publisher).ok_or(Error::UntrustedPublisher)?;
        let Some(current) = self.current() else { return Err(Error::UnknownEpoch(epoch)) };
        if current.epoch() == epoch {
            return Ok(member);
        }
        let policy_of = |e: u64| self.get(Epoch(e)).ok_or(Error::UnknownEpoch(Epoch(e)));
        let next = policy_of(epoch.0.saturating_add(1))?;
        if header.created_at.0 >= next.created_at().0.saturating_add(grace_ms) {
            return Err(Error::StaleEpoch { epoch, current: current.epoch() });
        }
        if current.publisher(&header.publisher).is_some() {
            return Ok(member);
        }
        for e in epoch.0.saturating_add(1)..=current.epoch().0 {
            let later = policy_of(e)?;
            if later.publisher(&header.publisher).is_none() {
                return if header.created_at < later.created_at() {
                    Ok(member)
                } else {
                    Err(Error::UntrustedPublisher)
                };
            }
        }
        Err(Error::UntrustedPublisher)
    }
}
