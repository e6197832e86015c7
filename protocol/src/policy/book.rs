//! The verified policies of one topic that a client has seen, and the rules for admitting new ones.
//!
//! Guarantees: a [`PolicyBook`] holds only policies of its topic signed by its authority; once it holds a
//! policy it never admits an older epoch it has not seen ([`Error::PolicyRollback`]), a second policy for an
//! epoch ([`Error::PolicyFork`]), or a next epoch that does not name the newest admitted policy's digest as
//! its `prev_digest` ([`Error::PolicyChainBroken`]). It also says which batches the policies allow: the
//! epochs accepted at a time (the grace window) and the publishers of each.

use std::collections::BTreeMap;

use bytes::Bytes;

use crate::batch::BatchHeader;
use crate::epoch::Epoch;
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
