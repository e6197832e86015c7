//! The durables bucket: the committed offset of each durable subscription, in a key-value bucket with
//! the deployment's replicas. A put is durable when it returns (JetStream acknowledges it once a quorum
//! stored it). Keys are hex of (topic, principal, name) ([`names::durable_key`]), so they decode back for
//! `sealpost admin subscriptions`.

use sealpost_protocol::{DurableKey, Offset, Principal, Topic};

use super::{log, names, JetStreamStore};
use crate::Result;

impl JetStreamStore {
    /// The committed offset of durable subscription `name` of `principal` on `topic`.
    pub(super) fn durable(&self, topic: &Topic, principal: &Principal, name: &str) -> Result<Option<Offset>> {
        let (durables, key) = (self.durables.clone(), names::durable_key(topic, principal, name));
        let value = self
            .block(async move { durables.get(key).await })?
            .map_err(|e| log::unavailable("reading a durable offset", e))?;
        value.map(|v| names::decode_offset(v.as_ref())).transpose()
    }

    /// Commits `next_offset` for durable subscription `name` of `principal` on `topic`, durably.
    pub(super) fn commit_durable(
        &self,
        topic: &Topic,
        principal: &Principal,
        name: &str,
        next_offset: Offset,
    ) -> Result<()> {
        let (durables, key) = (self.durables.clone(), names::durable_key(topic, principal, name));
        self.block(async move { durables.put(key, names::encode_offset(next_offset)).await })?
            .map_err(|e| log::unavailable("committing a durable offset", e))?;
        Ok(())
    }

    /// Up to `max` durable subscriptions after `after`, ordered by topic, principal and name.
    pub(super) fn durable_page(
        &self,
        after: Option<&DurableKey>,
        max: usize,
    ) -> Result<Vec<(DurableKey, Offset)>> {
        use futures_util::TryStreamExt;
        let durables = self.durables.clone();
        let keys: Vec<String> = self
            .block(async move {
                match durables.keys().await {
                    Ok(keys) => keys.try_collect().await.map_err(|e| e.to_string()),
                    Err(e) => Err(e.to_string()),
                }
            })?
            .map_err(|e| log::unavailable("listing durable offsets", e))?;
        let order = |k: &DurableKey| (k.topic.clone(), k.principal.to_string(), k.name.clone());
        let mut keys: Vec<DurableKey> = keys.iter().filter_map(|k| names::durable_of_key(k)).collect();
        keys.retain(|k| after.is_none_or(|a| order(k) > order(a)));
        keys.sort_by_key(order);
        keys.truncate(max);
        let mut page = Vec::with_capacity(keys.len());
        for key in keys {
            if let Some(offset) = self.durable(&key.topic, &key.principal, &key.name)? {
                page.push((key, offset));
            }
        }
        Ok(page)
    }
}
