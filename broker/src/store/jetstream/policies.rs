//! The policy stream: every topic's signed policies, a subject per (topic, epoch), each written once.
//!
//! A policy is published with `Nats-Expected-Last-Subject-Sequence: 0`, so JetStream stores an epoch's
//! policy only if its subject holds none yet: the first broker to store it wins (compare-and-set), the
//! same bytes again are accepted, and different bytes for a stored epoch are refused. Epochs are listed
//! from the stream's subjects (zero-padded, so they sort as numbers do). The broker verifies what it
//! stores and serves nothing it reads here without the client checking it against the topic authority.

use bytes::Bytes;
use sealpost_protocol::Topic;

use super::names::Names;
use super::{log, JetStreamStore};
use crate::store::history_page;
use crate::{Error, Result};

impl JetStreamStore {
    /// The policy of `topic` of `epoch`, if stored.
    fn policy(&self, topic: &Topic, epoch: u64) -> Result<Option<Bytes>> {
        let (policies, subject) = (self.policies.clone(), self.names.policy_subject(topic, epoch));
        let found = self.block(async move { log::get(&policies, log::At::Last(subject)).await })??;
        Ok(found.map(|m| m.payload))
    }

    /// The epochs of `topic`'s stored policies, in ascending order.
    fn epochs(&self, topic: &Topic) -> Result<Vec<u64>> {
        use futures_util::TryStreamExt;
        let (policies, filter) = (self.policies.clone(), self.names.policy_filter(topic));
        let subjects: Vec<(String, usize)> = self
            .block(async move {
                let subjects = policies.info_with_subjects(filter).await?;
                subjects.try_collect().await
            })?
            .map_err(|e| log::unavailable("listing policies", e))?;
        let mut epochs: Vec<u64> = subjects.iter().filter_map(|(s, _)| Names::policy_epoch(s)).collect();
        epochs.sort_unstable();
        Ok(epochs)
    }

    /// Stores `policy` as `topic`'s of `epoch`, durably, unless another is stored for that epoch.
    pub(super) fn store_policy(&self, topic: &Topic, epoch: u64, policy: &Bytes) -> Result<()> {
        let (js, subject, bytes) = (self.js.clone(), self.names.policy_subject(topic, epoch), policy.clone());
        let stored = self.block(async move {
            let message = async_nats::jetstream::message::PublishMessage::build()
                .payload(bytes)
                .expected_last_subject_sequence(0);
            js.send_publish(subject, message).await?.await
        })?;
        match stored {
            Ok(_) => Ok(()),
            Err(e) if e.kind() == async_nats::jetstream::context::PublishErrorKind::WrongLastSequence => {
                match self.policy(topic, epoch)? {
                    Some(existing) if existing == *policy => Ok(()),
                    _ => Err(Error::Storage(format!(
                        "another policy of {topic} for epoch {epoch} is stored already"
                    ))),
                }
            }
            Err(e) => Err(log::unavailable("storing a policy", e)),
        }
    }

    /// `topic`'s policies of the `max` highest epochs, oldest first.
    pub(super) fn newest_policies(&self, topic: &Topic, max: usize) -> Result<Vec<Bytes>> {
        let epochs = self.epochs(topic)?;
        let newest = &epochs[epochs.len().saturating_sub(max)..];
        newest.iter().filter_map(|&e| self.policy(topic, e).transpose()).collect()
    }

    /// A page of `topic`'s policies below epoch `before`, newest first (see
    /// [`Store::policy_history`](crate::store::Store::policy_history)).
    pub(super) fn policy_page(
        &self,
        topic: &Topic,
        before: Option<u64>,
        max: usize,
        max_bytes: usize,
    ) -> Result<Vec<Bytes>> {
        let epochs = self.epochs(topic)?;
        let newest_first = epochs
            .iter()
            .rev()
            .filter(|&&e| before.is_none_or(|b| e < b))
            .filter_map(|&e| self.policy(topic, e).transpose());
        history_page(newest_first, max, max_bytes)
    }
}
