//! The content keys one member unwrapped from the policies of one topic, by epoch.
//!
//! Guarantees: it holds keys of its own topic only, one per epoch, each unwrapped from a verified policy
//! for the member named; it is what [`open`](crate::open) looks keys up in.

use std::collections::{btree_map, BTreeMap};

use crate::epoch::Epoch;
use crate::keys::{ContentKey, HpkeSecretKey, KeyLookup};
use crate::topic::Topic;
use crate::{Error, Result};

use super::signed::VerifiedPolicy;

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
    pub fn unlock(
        &mut self,
        policy: &VerifiedPolicy,
        principal: impl AsRef<str>,
        secret: &HpkeSecretKey,
    ) -> Result<()> {
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
