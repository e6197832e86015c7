//! A policy stream: `GetPolicies` and `PutPolicy` requests, answered one at a time.
//!
//! [`PolicyStream::on_frame`] decides what to do with each frame and returns a [`PolicyAction`]:
//!
//! - `GetPolicies` from a principal the ACL lets publish, subscribe or administer the topic is answered at
//!   once with the topic's stored policies, at most the current epoch's and the one before
//!   ([`POLICIES_SERVED`]), read from the store given;
//! - `GetPolicyHistory { before, max }` from the same principals is answered with a page of the topic's
//!   whole policy history, newest first: the stored policies of the highest epochs below `before`, at most
//!   `max` and [`HISTORY_PAGE`] of them, and no more than fit in one frame of `max_frame_len` (at least
//!   one, if any is stored below `before`: a policy is at most half a frame);
//! - `PutPolicy` from an administrator of the topic, signed by the configured topic authority, with the
//!   epoch after the current one ([`authorize_put_policy`]), becomes [`PolicyAction::Store`]: the driver
//!   has the writer store it durably and then calls [`PolicyStream::stored`], which makes it the topic's
//!   current policy for publish checks and says what to answer;
//! - any other frame refuses the stream ([`PolicyAction::Refuse`]).
//!
//! A refused request is answered with its error frame and the stream goes on.

use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use sealpost_protocol::{Frame, RequestId, SignedPolicy, Topic, VerifiedPolicy};
use tracing::info;

use super::authorize::{authorize_get_policies, authorize_put_policy};
use super::endpoint::Endpoint;
use super::reply::{error_frame, Refusal};
use crate::event::{Event, Who};
use crate::store::Store;
use crate::tls::Peer;
use crate::{Error, Result};

/// How many of a topic's newest policies a `GetPolicies` request gets: the current epoch's and the one
/// before (whose key still opens batches sealed just before a rotation).
pub const POLICIES_SERVED: usize = 2;

/// The most policies one `GetPolicyHistory` answer holds, whatever the client asks: a page is read whole
/// into memory, so this and the frame limit bound what one request makes the broker hold.
pub const HISTORY_PAGE: u32 = 256;

/// What to do with one frame of a policy stream.
// Moved once from the session to the driver and consumed: the size of `Frame` costs nothing worth a box.
#[allow(clippy::large_enum_variant)]
#[derive(Debug)]
pub enum PolicyAction {
    /// Send this frame.
    Send(Frame),
    /// Have the writer store `policy` durably (`Log::put_policy(topic, epoch, bytes)`), then send what
    /// [`stored`](PolicyStream::stored) returns.
    Store {
        /// The request.
        request_id: RequestId,
        /// The policy, verified and authorized (boxed: it is large next to the other actions).
        policy: Box<VerifiedPolicy>,
    },
    /// Refuse the stream.
    Refuse(Refusal),
}

/// The session of one policy stream. See the [module documentation](self).
#[derive(Clone)]
pub struct PolicyStream {
    endpoint: Arc<Endpoint>,
    peer: Arc<Peer>,
    remote: Option<SocketAddr>,
}

impl PolicyStream {
    /// A policy stream of `peer`.
    pub fn new(endpoint: Arc<Endpoint>, peer: Arc<Peer>) -> PolicyStream {
        PolicyStream { endpoint, peer, remote: None }
    }

    /// This stream, of a connection from `remote` (which its events name).
    pub fn from_remote(self, remote: Option<SocketAddr>) -> PolicyStream {
        PolicyStream { remote, ..self }
    }

    fn who(&self) -> Who<'_> {
        Who::of(&self.peer, self.remote)
    }

    /// What to do with `frame`; `store` gives the stored policies and answers a lookup the cache cannot.
    pub fn on_frame(&self, frame: Frame, store: &dyn Store) -> PolicyAction {
        match frame {
            Frame::GetPolicies { request_id, topic } => {
                let found =
                    self.authorize_read(&topic).and_then(|()| store.policies(&topic, POLICIES_SERVED));
                PolicyAction::Send(match found {
                    Ok(policies) => Frame::Policies { request_id, policies },
                    Err(e) => error_frame(Some(request_id), &e),
                })
            }
            Frame::GetPolicyHistory { request_id, topic, before, max } => {
                let found = self
                    .authorize_read(&topic)
                    .and_then(|()| self.history_page(&topic, before.map(|e| e.0), max, store));
                PolicyAction::Send(match found {
                    Ok(policies) => Frame::Policies { request_id, policies },
                    Err(e) => error_frame(Some(request_id), &e),
                })
            }
            Frame::PutPolicy { request_id, policy } => {
                let signed = match SignedPolicy::decode(policy, self.endpoint.protocol_limits()) {
                    Ok(signed) => signed,
                    Err(e) => return PolicyAction::Send(self.refused(request_id, None, &e.into())),
                };
                let (topic, epoch) = (signed.topic().clone(), signed.epoch().0);
                match self.check_put(signed, store) {
                    Ok(policy) => PolicyAction::Store { request_id, policy: Box::new(policy) },
                    Err(e) => PolicyAction::Send(self.refused(request_id, Some((&topic, epoch)), &e)),
                }
            }
            _ => PolicyAction::Refuse(Refusal::new(
                None,
                Error::Protocol(sealpost_protocol::Error::Malformed("unexpected frame on a policy stream")),
            )),
        }
    }

    /// Whether the peer may read `topic`'s policies; a refusal is told to the observer.
    fn authorize_read(&self, topic: &Topic) -> Result<()> {
        authorize_get_policies(&self.peer, &self.endpoint.acl(), topic).inspect_err(|e| {
            self.endpoint.emit(&Event::PolicyReadRefused { who: self.who(), topic, code: e.code() });
        })
    }

    /// A page of `topic`'s history below `before`, newest first, that fits one `Policies` frame.
    fn history_page(
        &self,
        topic: &Topic,
        before: Option<u64>,
        max: u32,
        store: &dyn Store,
    ) -> Result<Vec<Bytes>> {
        let max = max.min(HISTORY_PAGE) as usize;
        let max_frame_len = self.endpoint.protocol_limits().max_frame_len as usize;
        // The frame around the policies: version, variant, request id and count (at most 1 + 1 + 10 +
        // 10 bytes), and a length of at most 5 bytes before each policy.
        let budget = max_frame_len.saturating_sub(32 + 5 * max);
        let mut page = store.policy_history(topic, before, max, budget)?;
        // Defensive: the page must fit one frame whatever the store did; the newest policy alone always
        // fits (a policy is at most (max_frame_len - 64) / 2 bytes).
        while page.len() > 1 && policies_len(&page) > max_frame_len {
            page.pop();
        }
        Ok(page)
    }

    /// Decodes a policy and checks it against the topic's current one.
    fn check_put(&self, signed: SignedPolicy, store: &dyn Store) -> Result<VerifiedPolicy> {
        let policies = self.endpoint.policies();
        let current = policies.current(signed.topic(), store)?;
        authorize_put_policy(
            &self.peer,
            &self.endpoint.acl(),
            policies.authority(),
            current.as_deref(),
            signed,
        )
    }

    /// The answer to a refused `PutPolicy`, whose topic and epoch are known if it decoded.
    fn refused(&self, request_id: RequestId, policy: Option<(&Topic, u64)>, err: &Error) -> Frame {
        info!(principal = %self.peer.principal, error = %err, "policy refused");
        let (topic, epoch) = (policy.map(|(topic, _)| topic), policy.map(|(_, epoch)| epoch));
        self.endpoint.emit(&Event::PolicyRefused { who: self.who(), topic, epoch, code: err.code() });
        error_frame(Some(request_id), err)
    }

    /// The answer to the `PutPolicy` request `request_id`, given what the writer answered for `policy`; once
    /// it is durable, `policy` is its topic's current policy.
    pub fn stored(&self, request_id: RequestId, policy: VerifiedPolicy, written: Result<()>) -> Frame {
        match written {
            Ok(()) => {
                info!(principal = %self.peer.principal, topic = %policy.topic(), epoch = %policy.epoch(), "policy stored");
                let (topic, epoch) = (policy.topic(), policy.epoch().0);
                self.endpoint.emit(&Event::PolicyStored { who: self.who(), topic, epoch });
                self.endpoint.policies().stored(policy);
                Frame::PolicyStored { request_id }
            }
            Err(e) => self.refused(request_id, Some((policy.topic(), policy.epoch().0)), &e),
        }
    }

    /// The refusal of a stream whose framing broke (`err`).
    pub fn broken(err: Error) -> Refusal {
        Refusal::new(None, err)
    }
}

/// The length of a `Policies` frame holding `policies` (after its length prefix), at most.
fn policies_len(policies: &[Bytes]) -> usize {
    policies.iter().fold(32, |n, p| n.saturating_add(5).saturating_add(p.len()))
}

#[cfg(test)]
mod tests {
    use std::time::Instant;

    use sealpost_protocol::{ErrorCode, Offset, VerifiedPolicy};

    use super::*;
    use crate::limits::ServerLimits;
    use crate::session::publish::{PublishAction, PublishStream};
    use crate::session::testing::{batch_bytes, endpoint, key, peer, policy, topic};
    use crate::store::MemoryStore;

    fn put(request_id: u64, p: &VerifiedPolicy) -> Frame {
        Frame::PutPolicy { request_id, policy: p.as_bytes().clone() }
    }

    fn error_code(frame: Frame) -> ErrorCode {
        match frame {
            Frame::Error { code, .. } => code,
            other => panic!("expected an error frame, got {other:?}"),
        }
    }

    /// Executes a `Store` action as the writer would, and returns the answer.
    fn store_it(stream: &PolicyStream, store: &MemoryStore, action: PolicyAction) -> Frame {
        match action {
            PolicyAction::Store { request_id, policy } => {
                let written = store.put_policy(policy.topic(), policy.epoch().0, policy.as_bytes());
                stream.stored(request_id, *policy, written)
            }
            PolicyAction::Send(frame) => frame,
            PolicyAction::Refuse(r) => panic!("refused: {r:?}"),
        }
    }

    #[test]
    fn members_read_the_two_newest_policies_and_others_are_refused() {
        let (endpoint, store) = endpoint(ServerLimits::default(), Instant::now());
        let first = policy("demo.chat", 1, None);
        let second = policy("demo.chat", 2, Some(&first));
        let third = policy("demo.chat", 3, Some(&second));
        for p in [&second, &third] {
            store.put_policy(p.topic(), p.epoch().0, p.as_bytes()).unwrap();
        }
        let get = || Frame::GetPolicies { request_id: 3, topic: topic("demo.chat") };
        let bob = PolicyStream::new(endpoint.clone(), Arc::new(peer("bob")));
        let PolicyAction::Send(Frame::Policies { request_id: 3, policies }) =
            bob.on_frame(get(), store.as_ref())
        else {
            panic!("no policies");
        };
        assert_eq!(policies, vec![second.as_bytes().clone(), third.as_bytes().clone()]);
        let mallory = PolicyStream::new(endpoint, Arc::new(peer("mallory")));
        let PolicyAction::Send(refused) = mallory.on_frame(get(), store.as_ref()) else { panic!() };
        assert_eq!(error_code(refused), ErrorCode::NOT_AUTHORIZED);
    }

    /// The epochs of the policies in a `Policies` answer of `stream` to `frame`.
    fn epochs_served(stream: &PolicyStream, frame: Frame, store: &dyn Store) -> Vec<u64> {
        let PolicyAction::Send(Frame::Policies { policies, .. }) = stream.on_frame(frame, store) else {
            panic!("no policies");
        };
        let limits = sealpost_protocol::Limits::default();
        policies.into_iter().map(|p| SignedPolicy::decode(p, &limits).unwrap().epoch().0).collect()
    }

    #[test]
    fn history_is_served_newest_first_in_pages_to_members_only() {
        let (endpoint, store) = endpoint(ServerLimits::default(), Instant::now());
        let mut chain = vec![policy("demo.chat", 1, None)];
        for e in 2..=5 {
            let next = policy("demo.chat", e, chain.last());
            chain.push(next);
        }
        for p in &chain {
            store.put_policy(p.topic(), p.epoch().0, p.as_bytes()).unwrap();
        }
        let history = |before: Option<u64>, max| Frame::GetPolicyHistory {
            request_id: 9,
            topic: topic("demo.chat"),
            before: before.map(sealpost_protocol::Epoch),
            max,
        };
        let bob = PolicyStream::new(endpoint.clone(), Arc::new(peer("bob")));
        assert_eq!(epochs_served(&bob, history(None, 2), store.as_ref()), [5, 4]);
        assert_eq!(epochs_served(&bob, history(Some(4), 100), store.as_ref()), [3, 2, 1]);
        assert_eq!(epochs_served(&bob, history(Some(1), 100), store.as_ref()), Vec::<u64>::new());
        let mallory = PolicyStream::new(endpoint, Arc::new(peer("mallory")));
        let PolicyAction::Send(refused) = mallory.on_frame(history(None, 10), store.as_ref()) else {
            panic!()
        };
        assert_eq!(error_code(refused), ErrorCode::NOT_AUTHORIZED);
    }

    #[test]
    fn a_history_page_fits_one_frame() {
        // A frame limit whose page budget holds the two newest policies of demo.chat but not three.
        let p1 = policy("demo.chat", 1, None);
        let len = p1.as_bytes().len() as u32;
        let limits =
            ServerLimits { max_frame_len: 2 * len + 10 + 32 + 5 * HISTORY_PAGE, ..ServerLimits::default() };
        let (endpoint, store) = endpoint(limits, Instant::now());
        let mut chain = vec![p1];
        for e in 2..=4 {
            let next = policy("demo.chat", e, chain.last());
            chain.push(next);
        }
        for p in &chain {
            store.put_policy(p.topic(), p.epoch().0, p.as_bytes()).unwrap();
        }
        let bob = PolicyStream::new(endpoint, Arc::new(peer("bob")));
        let history =
            Frame::GetPolicyHistory { request_id: 1, topic: topic("demo.chat"), before: None, max: u32::MAX };
        let PolicyAction::Send(answer) = bob.on_frame(history, store.as_ref()) else { panic!() };
        let Frame::Policies { policies, .. } = &answer else { panic!("{answer:?}") };
        assert_eq!(policies, &[chain[3].as_bytes().clone(), chain[2].as_bytes().clone()]);
        let max_frame_len = bob.endpoint.protocol_limits().max_frame_len as usize;
        assert!(answer.to_vec().unwrap().len() - 4 <= max_frame_len);
    }

    #[test]
    fn a_stored_policy_is_current_for_the_next_publish_check() {
        let now = Instant::now();
        let (endpoint, store) = endpoint(ServerLimits::default(), now);
        let alice = PublishStream::new(endpoint.clone(), Arc::new(peer("alice")));
        let publish =
            |id| Frame::Publish { request_id: id, batch: batch_bytes(&key("alice"), "demo.events") };
        // demo.events has no policy: alice may not publish there yet.
        let PublishAction::Send(refused) = alice.on_frame(publish(1), store.as_ref(), now) else { panic!() };
        assert_eq!(error_code(refused), ErrorCode::NOT_AUTHORIZED);
        let admin = PolicyStream::new(endpoint, Arc::new(peer("admin")));
        let events = policy("demo.events", 1, None);
        let action = admin.on_frame(put(2, &events), store.as_ref());
        assert_eq!(store_it(&admin, &store, action), Frame::PolicyStored { request_id: 2 });
        assert!(matches!(alice.on_frame(publish(3), store.as_ref(), now), PublishAction::Submit { .. }));
        // The next put must follow the policy just stored.
        let again = admin.on_frame(put(4, &events), store.as_ref());
        assert_eq!(error_code(store_it(&admin, &store, again)), ErrorCode::POLICY_REJECTED);
    }

    #[test]
    fn a_policy_the_writer_fails_to_store_is_not_current() {
        let (endpoint, store) = endpoint(ServerLimits::default(), Instant::now());
        let admin = PolicyStream::new(endpoint.clone(), Arc::new(peer("admin")));
        let first = policy("demo.chat", 1, None);
        let second = policy("demo.chat", 2, Some(&first));
        let PolicyAction::Store { request_id, policy } = admin.on_frame(put(1, &second), store.as_ref())
        else {
            panic!()
        };
        let answer = admin.stored(request_id, *policy, Err(Error::StorageFull));
        assert_eq!(error_code(answer), ErrorCode::STORAGE_FULL);
        let current = endpoint.policies().current(&topic("demo.chat"), store.as_ref()).unwrap();
        assert_eq!(current.map(|p| p.epoch().0), Some(1));
    }

    #[test]
    fn puts_are_refused_from_non_admins_and_for_wrong_epochs() {
        let (endpoint, store) = endpoint(ServerLimits::default(), Instant::now());
        let first = policy("demo.chat", 1, None);
        let alice = PolicyStream::new(endpoint.clone(), Arc::new(peer("alice")));
        let PolicyAction::Send(refused) =
            alice.on_frame(put(1, &policy("demo.chat", 2, Some(&first))), store.as_ref())
        else {
            panic!()
        };
        assert_eq!(error_code(refused), ErrorCode::NOT_AUTHORIZED);
        let admin = PolicyStream::new(endpoint, Arc::new(peer("admin")));
        // demo.chat is at epoch 1 already.
        let PolicyAction::Send(stale) = admin.on_frame(put(2, &first), store.as_ref()) else { panic!() };
        assert_eq!(error_code(stale), ErrorCode::POLICY_REJECTED);
        let junk = Frame::PutPolicy { request_id: 3, policy: first.as_bytes().slice(..20) };
        let PolicyAction::Send(junk) = admin.on_frame(junk, store.as_ref()) else { panic!() };
        assert_eq!(error_code(junk), ErrorCode::MALFORMED);
    }

    #[test]
    fn an_unexpected_frame_refuses_the_stream() {
        let (endpoint, store) = endpoint(ServerLimits::default(), Instant::now());
        let admin = PolicyStream::new(endpoint, Arc::new(peer("admin")));
        let PolicyAction::Refuse(refusal) =
            admin.on_frame(Frame::Ack { subscription: 1, next_offset: Offset(0) }, store.as_ref())
        else {
            panic!()
        };
        assert_eq!((refusal.request_id, refusal.code()), (None, ErrorCode::MALFORMED));
    }
}
