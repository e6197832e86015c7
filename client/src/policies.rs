//! The policy stream: fetching a topic's policies from the broker and storing a new one.
//!
//! A client-opened stream whose first frame is `GetPolicies` or `PutPolicy` is a policy stream. Each
//! request here opens its own, sends one request, reads the answer and ends the stream. The broker answers
//! `GetPolicies` with the stored policies of the topic (at most the previous and the current epoch's, oldest
//! first, none if the topic has none) to any principal that may publish, subscribe or administer the topic,
//! and `PutPolicy` with `PolicyStored` once the policy is durable, to a principal with the ACL `admin`
//! action, if the policy is signed by the authority the broker is configured with and its epoch follows the
//! stored current one.
//!
//! What is fetched is only bytes here: the [`KeySource`](crate::keyring::KeySource) verifies and admits it.

use std::sync::Arc;

use bytes::Bytes;
use sealpost_protocol::{Frame, Topic};

use crate::connection::Shared;
use crate::error::{Action, Error, Result};
use crate::stream::{unexpected, Link};

/// Asks the broker for the stored policies of `topic`. A refusal is reported as a refusal of `action`, what
/// the caller was about to do. One attempt.
pub(crate) async fn get(shared: &Arc<Shared>, topic: &Topic, action: Action) -> Result<Vec<Bytes>> {
    let mut link = Link::open(shared).await?;
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

/// Asks the broker to store `policy` (canonical bytes) as the new policy of `topic`. One attempt: a retry
/// after a lost answer could be refused as stale although the first attempt was stored.
pub(crate) async fn put(shared: &Arc<Shared>, topic: &Topic, policy: Bytes) -> Result<()> {
    let mut link = Link::open(shared).await?;
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
