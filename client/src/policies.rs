//! Topic policies from the broker: fetching them into the client's [`KeySource`](crate::keyring::KeySource)
//! (the keys a publisher seals with and a subscription opens with), reading them for the application, and
//! storing a new one.
//!
//! A client-opened stream whose first frame is `GetPolicies` or `PutPolicy` is a policy stream. Each
//! request here opens its own, sends one request, reads the answer and ends the stream. The broker answers
//! `GetPolicies` with the stored policies of the topic (at most the previous and the current epoch's, oldest
//! first, none if the topic has none) to any principal that may publish, subscribe or administer the topic,
//! `GetPolicyHistory` with a page of the older ones (newest first), and `PutPolicy` with `PolicyStored` once the policy is durable, to a principal with the ACL `admin`
//! action, if the policy is signed by the authority the broker is configured with and its epoch follows the
//! stored current one.
//!
//! What is fetched is only bytes until the key source verifies and admits it: nothing the broker serves is
//! trusted here. Fetches of one topic are serialised, so that they are admitted in the order they were
//! answered.

use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use sealpost_protocol::{Epoch, Frame, Topic, VerifiedPolicy};

use crate::error::{Action, Error, Result};
use crate::keyring::{Freshness, TopicKeys};
use crate::link::unexpected;
use crate::reconnect::Reconnector;
use crate::shared::Shared;

/// Asks the broker for the stored policies of `topic`. A refusal is reported as a refusal of `action`, what
/// the caller was about to do. One attempt.
async fn get(shared: &Shared, topic: &Topic, action: Action) -> Result<Vec<Bytes>> {
    let mut link = shared.open_link().await?;
    let request_id = shared.request_id();
    link.send(&Frame::GetPolicies { request_id, topic: topic.clone() }).await?;
    let answer = link.read().await;
    link.finish();
    match answer? {
        Some(Frame::Policies { request_id: answered, policies }) if answered == request_id => Ok(policies),
        Some(Frame::Error { code, message, .. }) => Err(Error::refused(action, topic, code, &message)),
        Some(other) => Err(unexpected(&other, "a GetPolicies request")),
        None => Err(Error::ConnectionLost { reason: "the broker ended the stream before answering".into() }),
    }
}

/// Asks the broker for a page of the policy history of `topic`: at most `max` policies of the epochs below
/// `before`, newest first. A refusal is reported as a refusal to subscribe. One attempt.
async fn get_history(shared: &Shared, topic: &Topic, before: Epoch, max: u32) -> Result<Vec<Bytes>> {
    let mut link = shared.open_link().await?;
    let request_id = shared.request_id();
    link.send(&Frame::GetPolicyHistory { request_id, topic: topic.clone(), before: Some(before), max })
        .await?;
    let answer = link.read().await;
    link.finish();
    match answer? {
        Some(Frame::Policies { request_id: answered, policies }) if answered == request_id => Ok(policies),
        Some(Frame::Error { code, message, .. }) => {
            Err(Error::refused(Action::Subscribe, topic, code, &message))
        }
        Some(other) => Err(unexpected(&other, "a GetPolicyHistory request")),
        None => Err(Error::ConnectionLost { reason: "the broker ended the stream before answering".into() }),
    }
}

/// The policies and keys of `topic` once its history is walked back to `epoch`, older than the newest
/// policy held: page after page from the oldest held epoch above `epoch`, each link checked
/// ([`KeySource::admit_history`](crate::keyring::KeySource::admit_history)). Nothing is fetched if the
/// policy of `epoch` is held or no policy above it is. A broken or missing link is an [`Error::Policy`]
/// naming the topic and the epoch. Transient losses are retried like any outage, one page at a time; every
/// page must take the walk at least one epoch further, so the walk ends.
pub(crate) async fn history_keys(shared: &Shared, topic: &Topic, epoch: Epoch) -> Result<Arc<TopicKeys>> {
    let slot = shared.keys.slot(topic);
    let _fetching = slot.fetching.lock().await;
    let mut reconnect = Reconnector::new(shared.options.reconnect.clone());
    let mut snapshot = slot.snapshot();
    let mut before = snapshot.book().history_start(epoch);
    while let Some(start) = before {
        let max = u32::try_from(start.0.saturating_sub(epoch.0)).unwrap_or(u32::MAX);
        let page = reconnect.run(|| get_history(shared, topic, start, max)).await?;
        let (keys, next) = shared.keys.admit_history(&slot, topic, start, epoch, page)?;
        snapshot = keys;
        before = next;
    }
    Ok(snapshot)
}

/// Asks the broker to store `policy` (canonical bytes) as the new policy of `topic`. One attempt: a retry
/// after a lost answer could be refused as stale although the first attempt was stored.
async fn put(shared: &Shared, topic: &Topic, policy: Bytes) -> Result<()> {
    let mut link = shared.open_link().await?;
    let request_id = shared.request_id();
    link.send(&Frame::PutPolicy { request_id, policy }).await?;
    let answer = link.read().await;
    link.finish();
    match answer? {
        Some(Frame::PolicyStored { request_id: answered }) if answered == request_id => Ok(()),
        Some(Frame::Error { code, message, .. }) => {
            Err(Error::refused(Action::Administer, topic, code, &message))
        }
        Some(other) => Err(unexpected(&other, "a PutPolicy request")),
        None => Err(Error::ConnectionLost { reason: "the broker ended the stream before answering".into() }),
    }
}

/// The policies and keys of `topic`, fetched from the broker unless the client's snapshot is as `fresh` as
/// asked. A refusal to fetch them is reported as a refusal of `action`. One attempt.
pub(crate) async fn topic_keys(
    shared: &Shared,
    topic: &Topic,
    action: Action,
    fresh: Freshness,
) -> Result<Arc<TopicKeys>> {
    let slot = shared.keys.slot(topic);
    let asked = Instant::now();
    if let Some(keys) = slot.fresh(fresh, asked) {
        return Ok(keys);
    }
    let _fetching = slot.fetching.lock().await;
    // Another task may have fetched while this one waited.
    let after_wait = match fresh {
        Freshness::Now => Freshness::Within(asked.elapsed()),
        fresh => fresh,
    };
    if let Some(keys) = slot.fresh(after_wait, Instant::now()) {
        return Ok(keys);
    }
    let served = get(shared, topic, action).await?;
    let (keys, _) = shared.keys.admit(&slot, topic, served, Instant::now())?;
    Ok(keys)
}

/// [`topic_keys`], retrying transient losses with backoff like any outage.
pub(crate) async fn topic_keys_retrying(
    shared: &Shared,
    topic: &Topic,
    action: Action,
    fresh: Freshness,
) -> Result<Arc<TopicKeys>> {
    let mut reconnect = Reconnector::new(shared.options.reconnect.clone());
    reconnect.run(|| topic_keys(shared, topic, action, fresh)).await
}

/// The policies of `topic` as the broker stores them, verified and admitted into the client's book, oldest
/// first. Transient losses are retried like any outage.
pub(crate) async fn read(shared: &Shared, topic: &Topic) -> Result<Vec<VerifiedPolicy>> {
    let slot = shared.keys.slot(topic);
    let _fetching = slot.fetching.lock().await;
    let mut reconnect = Reconnector::new(shared.options.reconnect.clone());
    let served = reconnect.run(|| get(shared, topic, Action::ReadPolicies)).await?;
    let (_, verified) = shared.keys.admit(&slot, topic, served, Instant::now())?;
    Ok(verified)
}

/// Stores `policy` as the new policy of its topic, if the pinned authority signed it (else nothing is
/// sent), and makes the next use of the topic fetch its policies again. One attempt.
pub(crate) async fn store(shared: &Shared, policy: &VerifiedPolicy) -> Result<()> {
    let topic = policy.topic();
    if policy.authority() != shared.keys.authority() {
        return Err(Error::Policy {
            topic: topic.clone(),
            check: sealpost_protocol::Error::PolicyNotFromAuthority,
        });
    }
    put(shared, topic, policy.as_bytes().clone()).await?;
    shared.keys.slot(topic).expire();
    Ok(())
}
