//! Fixtures of the session's unit tests: keys, policies, batches, peers, the dev ACL, an endpoint over a
//! memory store, and a [`FlowControl`] that records what it is told. Deterministic: fixed keys and seeds.

use std::sync::{Arc, Mutex};
use std::time::Instant;

use bytes::Bytes;
use rand::SeedableRng;
use sealpost_protocol::{
    issue_policy, seal, ChainId, ContentKey, Digest, Epoch, HpkeSecretKey, Limits, Member, PolicyParams,
    SealParams, SealedBatch, SigningKey, Timestamp, Topic, VerifiedPolicy,
};

use super::admission::FlowControl;
use super::endpoint::Endpoint;
use crate::acl::Acl;
use crate::limits::ServerLimits;
use crate::store::{MemoryStore, Store};
use crate::tls::Peer;

/// The dev ACL (as `crate::dev::ACL`, which needs the `dev` feature): alice publishes and subscribes on
/// `demo.>`, bob subscribes there, admin administers everything, mallory has nothing.
pub const ACL: &str = r#"
[[rule]]
principals = ["alice"]
topics = ["demo.>"]
actions = ["publish", "subscribe"]
effect = "allow"

[[rule]]
principals = ["bob"]
topics = ["demo.>"]
actions = ["subscribe"]
effect = "allow"

[[rule]]
principals = ["admin"]
topics = [">"]
actions = ["admin"]
effect = "allow"
"#;

pub fn acl_from(text: &str) -> Acl {
    Acl::from_toml(text).unwrap()
}

fn rng() -> rand::rngs::StdRng {
    rand::rngs::StdRng::seed_from_u64(1)
}

/// The signing key of `who` (one per first letter).
pub fn key(who: &str) -> SigningKey {
    SigningKey::from_bytes(&[who.as_bytes()[0]; 32])
}

/// The topic authority's key.
pub fn authority() -> SigningKey {
    SigningKey::from_bytes(&[0xAA; 32])
}

pub fn topic(name: &str) -> Topic {
    Topic::new(name).unwrap()
}

fn member(who: &str, publish: bool) -> Member {
    Member {
        principal: who.parse().unwrap(),
        publish,
        subscribe: true,
        signing_key: key(who).public_key(),
        hpke_key: HpkeSecretKey::from_bytes(&[9; 32]).public_key(),
    }
}

/// Epoch `epoch` of `topic`'s policy, signed by [`authority`]: alice publishes, bob only reads.
pub fn policy(topic: &str, epoch: u64, prev: Option<&VerifiedPolicy>) -> VerifiedPolicy {
    let params = PolicyParams {
        topic: Topic::new(topic).unwrap(),
        epoch: Epoch(epoch),
        prev,
        members: vec![member("alice", true), member("bob", false)],
        created_at: Timestamp(epoch),
    };
    issue_policy(&authority(), params, &ContentKey::from_bytes(&[1; 32]), &Limits::default(), &mut rng())
        .unwrap()
}

/// The canonical bytes of a one-message batch on `topic` signed by `signer`, starting its chain.
pub fn batch_bytes(signer: &SigningKey, topic: &str) -> Bytes {
    let params = SealParams {
        topic: Topic::new(topic).unwrap(),
        epoch: Epoch(1),
        chain: ChainId([0x5C; 16]),
        first_seq: 1,
        prev_digest: Digest::ZERO,
        created_at: Timestamp(0),
    };
    seal(signer, &ContentKey::from_bytes(&[1; 32]), params, &[b"x"], &Limits::default(), &mut rng())
        .unwrap()
        .into_bytes()
}

/// [`batch_bytes`], decoded.
pub fn batch(signer: &SigningKey, topic: &str) -> SealedBatch {
    SealedBatch::decode(batch_bytes(signer, topic), &Limits::default()).unwrap()
}

/// A peer whose certificate binds `name`'s [`key`].
pub fn peer(name: &str) -> Peer {
    Peer {
        principal: name.parse().unwrap(),
        signing_keys: vec![key(name).public_key()],
        fingerprint: crate::tls::Fingerprint([name.as_bytes()[0]; 32]),
    }
}

/// A broker's session state with the dev ACL and [`authority`], as of `now`, and a memory store holding
/// epoch 1 of `demo.chat`'s policy.
pub fn endpoint(limits: ServerLimits, now: Instant) -> (Arc<Endpoint>, Arc<MemoryStore>) {
    let endpoint = Endpoint::new(acl_from(ACL), Some(authority().public_key()), limits, now);
    let store = Arc::new(MemoryStore::new());
    let first = policy("demo.chat", 1, None);
    store.put_policy(first.topic(), 1, first.as_bytes()).unwrap();
    (Arc::new(endpoint), store)
}

/// [`endpoint`], telling its events to `observer`.
pub fn observed_endpoint(
    limits: ServerLimits,
    now: Instant,
    observer: Arc<dyn crate::event::Observer>,
) -> (Arc<Endpoint>, Arc<MemoryStore>) {
    let (endpoint, store) = endpoint(limits, now);
    let endpoint = Arc::into_inner(endpoint).unwrap().with_observer(observer);
    (Arc::new(endpoint), store)
}

/// Records the names of the events it is told, with their principal where they have one.
#[derive(Debug, Default)]
pub struct Recorder(pub Mutex<Vec<String>>);

impl crate::event::Observer for Recorder {
    fn event(&self, event: &crate::event::Event<'_>) {
        use crate::event::Event;
        let who = match event {
            Event::ConnectionAccepted { who }
            | Event::ConnectionClosed { who }
            | Event::StreamRefused { who, .. }
            | Event::PublishAccepted { who, .. }
            | Event::PublishRefused { who, .. }
            | Event::PublishFailed { who, .. }
            | Event::Delivered { who, .. }
            | Event::AckReceived { who, .. }
            | Event::OffsetCommitted { who, .. }
            | Event::SubscribeAccepted { who, .. }
            | Event::SubscribeRefused { who, .. }
            | Event::PolicyReadRefused { who, .. }
            | Event::PolicyStored { who, .. }
            | Event::PolicyRefused { who, .. } => format!(" {} {}", who.principal, who.fingerprint),
            _ => String::new(),
        };
        self.0.lock().unwrap().push(format!("{}{who}", event.name()));
    }
}

/// Records the windows the session sets on a connection.
#[derive(Debug, Default)]
pub struct Windows(Mutex<Vec<(u64, u64)>>);

impl Windows {
    /// The last windows set, if any.
    pub fn last(&self) -> Option<(u64, u64)> {
        self.0.lock().unwrap().last().copied()
    }
}

impl FlowControl for Windows {
    fn set_windows(&self, receive: u64, send: u64) {
        self.0.lock().unwrap().push((receive, send));
    }
}
