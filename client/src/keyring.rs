//! The keyring: where a publisher finds the content key to seal with, and where a subscriber finds the
//! content keys to open with and the publishers it trusts. Both come from the topic's **policies**, signed by
//! the topic authority that the identity pins, fetched from the broker, never from the broker's word.
//!
//! # How keys are found
//!
//! The [`KeySource`] of a [`Client`](crate::Client) fetches a topic's policies from the broker the first
//! time the topic is used (`GetPolicies` on a policy stream: the broker answers with at most the previous
//! and the current epoch's policy, oldest first). It verifies each against the pinned authority and admits
//! it into the topic's [`PolicyBook`], which it keeps for the life of the `Client`: every publisher and
//! subscription of that client on the topic shares it. It then unwraps, with the identity's HPKE secret,
//! the content key each admitted policy wraps for this identity's principal into an [`EpochKeys`]; a
//! principal that is not a member of an epoch simply has no key for it. Publishers and readers work on a
//! [`TopicKeys`] snapshot of both, and ask for a new one after a rotation (a batch of an epoch newer than
//! the snapshot's, or, for publishers, every `ClientOptions::policy_refresh`). A subscription that meets a
//! batch of an older epoch the book does not hold has the history walked back to it (`GetPolicyHistory`,
//! page by page, each link checked by [`PolicyBook::admit_history`]); the epochs walked stay in the book.
//!
//! # What it guarantees
//!
//! - Nothing the broker says about keys or members is trusted unless the authority signed it: a policy that
//!   is malformed, for another topic or not signed by the pinned authority is an [`Error::Policy`], and the
//!   book does not change.
//! - **No rollback within a client.** Once a policy of epoch N was admitted, the broker cannot make this
//!   client go back to an older one: serving an older epoch as the current one (or no policy at all) is an
//!   [`Error::Policy`] with [`PolicyRollback`](sealpost_protocol::Error::PolicyRollback), and a second,
//!   different policy for an epoch, or one that does not chain to the policy before it, is one as well.
//!
//! # What it does not do
//!
//! - **No rollback across processes**, with a state folder (`state.rs`): the newest policy admitted for a
//!   topic is persisted (crash-safely) before the fetch that brought it returns, and seeds the topic's
//!   book the first time a later `Client` of the identity uses the topic, so that a broker serving an
//!   older epoch after a restart is the same [`PolicyRollback`](sealpost_protocol::Error::PolicyRollback),
//!   and another policy of that epoch a [`PolicyFork`](sealpost_protocol::Error::PolicyFork). A persisted
//!   policy that is damaged, or does not verify against the pinned authority, is an
//!   [`Error::State`]: never ignored.
//!
//! It does not prove freshness: a broker can withhold a newer policy, and the client goes on with the
//! newest one it has (until a batch of a newer epoch shows a rotation happened). Without a state folder
//! ([`StateLocation::Off`](crate::StateLocation::Off)) the book lives in memory only: a new `Client` (or a
//! restarted process) trusts the first policies it is served, as long as the authority signed them. Only
//! the newest policy is persisted, not the whole book: older epochs are walked back to from it.

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use bytes::Bytes;
use sealpost_protocol::{
    ContentKey, Epoch, EpochKeys, HpkeSecretKey, Limits, PolicyBook, Principal, PublicKey, SignedPolicy,
    Topic, VerifiedPolicy,
};

use crate::error::{Error, Result};
use crate::state::{policy_record, StateFault, StateFolder};

/// What one principal knows about one topic's policies and keys, at one moment.
#[derive(Clone, Debug)]
pub(crate) struct TopicKeys {
    book: PolicyBook,
    keys: EpochKeys,
}

impl TopicKeys {
    /// A snapshot of `book` and the keys unwrapped from it.
    pub(crate) fn new(book: PolicyBook, keys: EpochKeys) -> Self {
        Self { book, keys }
    }

    /// The admitted policies.
    pub(crate) fn book(&self) -> &PolicyBook {
        &self.book
    }

    /// The content keys this principal holds, by epoch.
    pub(crate) fn keys(&self) -> &EpochKeys {
        &self.keys
    }

    /// The epoch of the newest admitted policy.
    pub(crate) fn current_epoch(&self) -> Option<Epoch> {
        self.book.current().map(VerifiedPolicy::epoch)
    }

    /// Whether a policy of `epoch` was admitted.
    pub(crate) fn knows(&self, epoch: Epoch) -> bool {
        self.book.get(epoch).is_some()
    }

    /// Whether any content key is held.
    pub(crate) fn has_content_key(&self) -> bool {
        self.keys.epochs().next().is_some()
    }

    /// Checks that this principal can read the topic: a policy exists and a content key was unwrapped.
    pub(crate) fn check_readable(&self) -> Result<()> {
        if self.book.current().is_none() {
            return Err(Error::NoPolicy { topic: self.book.topic().clone() });
        }
        if !self.has_content_key() {
            return Err(Error::NoContentKey { topic: self.book.topic().clone() });
        }
        Ok(())
    }

    /// Whether `principal` may read the topic as its current policy says: a policy, the subscribe role in
    /// it, and a content key.
    pub(crate) fn check_subscriber(&self, principal: &Principal) -> Result<()> {
        let topic = self.book.topic();
        let Some(current) = self.book.current() else {
            return Err(Error::NoPolicy { topic: topic.clone() });
        };
        if !current.member(principal).is_some_and(|m| m.subscribe) {
            return Err(Error::NotASubscriber {
                topic: topic.clone(),
                principal: principal.clone(),
                epoch: current.epoch().0,
            });
        }
        self.check_readable()
    }

    /// The key to seal new batches with: the one of the current epoch, if `principal` is a publisher of the
    /// current policy with `signer` as its signing key.
    pub(crate) fn sealing_key(
        &self,
        principal: &Principal,
        signer: &PublicKey,
    ) -> Result<(Epoch, &ContentKey)> {
        let topic = self.book.topic();
        let Some(current) = self.book.current() else {
            return Err(Error::NoPolicy { topic: topic.clone() });
        };
        let epoch = current.epoch();
        match current.member(principal) {
            Some(m) if m.publish && m.signing_key == *signer => {}
            _ => {
                return Err(Error::NotAPublisher {
                    topic: topic.clone(),
                    principal: principal.clone(),
                    epoch: epoch.0,
                })
            }
        }
        let key = self.keys.get(epoch).ok_or_else(|| Error::NoContentKey { topic: topic.clone() })?;
        Ok((epoch, key))
    }
}

/// How recent a snapshot must be for `policies::topic_keys`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Freshness {
    /// Fetched from the broker at most this long ago.
    Within(Duration),
    /// Knows the policy of this epoch (a batch of it arrived), else fetched now.
    Epoch(Epoch),
    /// Fetched now.
    Now,
}

/// The policies and keys of every topic a client has used, kept for the life of the client.
pub(crate) struct KeySource {
    principal: Principal,
    hpke: HpkeSecretKey,
    authority: PublicKey,
    limits: Limits,
    /// Where the newest policy of each topic is persisted; `None`: in memory only.
    state: Option<StateFolder>,
    topics: Mutex<HashMap<Topic, Arc<Slot>>>,
}

/// One topic's entry.
pub(crate) struct Slot {
    /// Held while fetching, so that fetches of one topic are admitted in the order they were answered.
    pub(crate) fetching: tokio::sync::Mutex<()>,
    state: Mutex<SlotState>,
}

struct SlotState {
    book: PolicyBook,
    keys: EpochKeys,
    /// Epochs whose key was looked for already (held or not).
    tried: BTreeSet<Epoch>,
    snapshot: Arc<TopicKeys>,
    fetched_at: Option<Instant>,
    /// Whether the book was seeded from the state folder (or there is none).
    seeded: bool,
}

impl Slot {
    fn state(&self) -> std::sync::MutexGuard<'_, SlotState> {
        // The state is replaced whole under the lock, so a panic elsewhere cannot leave it half-written.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The current snapshot, if it satisfies `fresh` at `now`.
    pub(crate) fn fresh(&self, fresh: Freshness, now: Instant) -> Option<Arc<TopicKeys>> {
        let state = self.state();
        let ok = match fresh {
            Freshness::Within(age) => {
                state.fetched_at.is_some_and(|at| now.saturating_duration_since(at) <= age)
            }
            Freshness::Epoch(epoch) => state.snapshot.knows(epoch),
            Freshness::Now => false,
        };
        ok.then(|| state.snapshot.clone())
    }

    /// The current snapshot, however old.
    pub(crate) fn snapshot(&self) -> Arc<TopicKeys> {
        self.state().snapshot.clone()
    }

    /// Makes the next [`fresh`](Self::fresh) check with [`Freshness::Within`] fail: fetch again.
    pub(crate) fn expire(&self) {
        self.state().fetched_at = None;
    }
}

impl KeySource {
    /// A source for `principal`, unwrapping with `hpke` the keys of policies signed by `authority`.
    pub(crate) fn new(
        principal: Principal,
        hpke: HpkeSecretKey,
        authority: PublicKey,
        limits: Limits,
        state: Option<StateFolder>,
    ) -> Self {
        Self { principal, hpke, authority, limits, state, topics: Mutex::new(HashMap::new()) }
    }

    /// The entry of `topic`, made empty if it is new.
    pub(crate) fn slot(&self, topic: &Topic) -> Arc<Slot> {
        let mut topics = self.topics.lock().unwrap_or_else(PoisonError::into_inner);
        topics
            .entry(topic.clone())
            .or_insert_with(|| {
                let book = PolicyBook::new(topic.clone(), self.authority);
                let keys = EpochKeys::new(topic.clone());
                Arc::new(Slot {
                    fetching: tokio::sync::Mutex::new(()),
                    state: Mutex::new(SlotState {
                        snapshot: Arc::new(TopicKeys::new(book.clone(), keys.clone())),
                        book,
                        keys,
                        tried: BTreeSet::new(),
                        fetched_at: None,
                        seeded: false,
                    }),
                })
            })
            .clone()
    }

    /// Admits the policies the broker `served` for `topic` (at `now`) into its book, unwraps the keys of
    /// new epochs, and returns the new snapshot with the served policies, verified, oldest first.
    ///
    /// Each policy must decode within the limits, be signed by the pinned authority and be for `topic`;
    /// together they must not roll the book back (the newest served epoch is at least the newest admitted
    /// one, and an empty answer is refused once a policy was admitted), fork it or break its chain. On any
    /// error ([`Error::Policy`]) the book does not change.
    pub(crate) fn admit(
        &self,
        slot: &Slot,
        topic: &Topic,
        served: Vec<Bytes>,
        now: Instant,
    ) -> Result<(Arc<TopicKeys>, Vec<VerifiedPolicy>)> {
        let fail = |check| Error::Policy { topic: topic.clone(), check };
        let mut verified = served
            .into_iter()
            .map(|bytes| SignedPolicy::decode(bytes, &self.limits)?.verify(&self.authority))
            .collect::<sealpost_protocol::Result<Vec<_>>>()
            .map_err(fail)?;
        verified.sort_by_key(VerifiedPolicy::epoch);
        let mut state = slot.state();
        self.seed(&mut state, topic)?;
        let mut book = state.book.clone();
        let before = book.current().map(VerifiedPolicy::digest);
        if let Some(current) = book.current().map(VerifiedPolicy::epoch) {
            let newest = verified.last().map_or(Epoch(0), VerifiedPolicy::epoch);
            if newest < current {
                return Err(fail(sealpost_protocol::Error::PolicyRollback { current, got: newest }));
            }
        }
        let held_newest = book.current().map(VerifiedPolicy::epoch);
        let below_held = |book: &PolicyBook, p: &VerifiedPolicy| {
            held_newest.is_some_and(|current| p.epoch() < current) && book.get(p.epoch()).is_none()
        };
        for policy in &verified {
            if !below_held(&book, policy) {
                book.admit(policy.clone()).map_err(fail)?;
            }
        }
        // An epoch older than the newest held and not held itself (a book seeded with the newest policy
        // only, from the state folder): admitted only as a checked link below the epoch above it.
        for policy in verified.iter().rev() {
            let above = Epoch(policy.epoch().0.saturating_add(1));
            if below_held(&book, policy) && book.get(above).is_some() {
                let page = [policy.as_bytes().clone()];
                book.admit_history(above, policy.epoch(), page, &self.limits).map_err(fail)?;
            }
        }
        let newest = book.current().filter(|p| Some(p.digest()) != before).cloned();
        let snapshot = self.install(&mut state, topic, book, Some(now));
        drop(state);
        if let Some(newest) = newest {
            self.persist(topic, &newest)?;
        }
        Ok((snapshot, verified))
    }

    /// Admits one page of `topic`'s history, as the broker answered `GetPolicyHistory { before, .. }`
    /// (newest first), walking back from the admitted policy of `before` to epoch `until`
    /// ([`PolicyBook::admit_history`]: every link checked), and unwraps the keys of the epochs admitted.
    /// Returns the new snapshot and where the walk stands: `None` once `until` is reached, else the epoch
    /// to ask below next. On an error ([`Error::Policy`] with
    /// [`PolicyLinkBroken`](sealpost_protocol::Error::PolicyLinkBroken)) the links checked before it stay.
    pub(crate) fn admit_history(
        &self,
        slot: &Slot,
        topic: &Topic,
        before: Epoch,
        until: Epoch,
        page: Vec<Bytes>,
    ) -> Result<(Arc<TopicKeys>, Option<Epoch>)> {
        let mut state = slot.state();
        self.seed(&mut state, topic)?;
        let mut book = state.book.clone();
        let walked = book.admit_history(before, until, page, &self.limits);
        let fetched_at = state.fetched_at;
        let snapshot = self.install(&mut state, topic, book, fetched_at);
        let next = walked.map_err(|check| Error::Policy { topic: topic.clone(), check })?;
        Ok((snapshot, next))
    }

    /// Seeds the book of `topic` with the policy persisted in the state folder, once per slot. The policy
    /// must decode, be signed by the pinned authority and be for `topic` (else [`Error::State`], the file
    /// corrupt); it is the first policy of an empty book, so it is admitted as is.
    fn seed(&self, state: &mut SlotState, topic: &Topic) -> Result<()> {
        if state.seeded {
            return Ok(());
        }
        let Some(folder) = &self.state else {
            state.seeded = true;
            return Ok(());
        };
        let name = policy_record(topic);
        if let Some(body) = folder.read(&name)? {
            let corrupt = || Error::State { path: folder.path().join(&name), fault: StateFault::Corrupt };
            let policy = SignedPolicy::decode(Bytes::from(body), &self.limits)
                .and_then(|signed| signed.verify(&self.authority))
                .map_err(|_| corrupt())?;
            let mut book = state.book.clone();
            book.admit(policy).map_err(|_| corrupt())?;
            let fetched_at = state.fetched_at;
            self.install(state, topic, book, fetched_at);
        }
        state.seeded = true;
        Ok(())
    }

    /// Persists `newest`, the newest admitted policy of `topic`, unless the state folder holds a newer one
    /// (another client of this identity saw it). The same epoch with another digest there is a
    /// [`PolicyFork`](sealpost_protocol::Error::PolicyFork). Under the record's lock, so concurrent clients
    /// keep the newest of what they saw.
    fn persist(&self, topic: &Topic, newest: &VerifiedPolicy) -> Result<()> {
        let Some(folder) = &self.state else {
            return Ok(());
        };
        let name = policy_record(topic);
        let _lock = folder.lock(&name)?;
        if let Some(body) = folder.read(&name)? {
            let corrupt = || Error::State { path: folder.path().join(&name), fault: StateFault::Corrupt };
            let held = SignedPolicy::decode(Bytes::from(body), &self.limits)
                .and_then(|signed| signed.verify(&self.authority))
                .map_err(|_| corrupt())?;
            if held.epoch() > newest.epoch() {
                return Ok(());
            }
            if held.epoch() == newest.epoch() {
                if held.digest() != newest.digest() {
                    let check = sealpost_protocol::Error::PolicyFork { epoch: newest.epoch() };
                    return Err(Error::Policy { topic: topic.clone(), check });
                }
                return Ok(());
            }
        }
        folder.write(&name, newest.as_bytes())
    }

    /// The state of a slot with `book`: the keys of its epochs not tried yet unwrapped, a new snapshot.
    fn install(
        &self,
        state: &mut SlotState,
        topic: &Topic,
        book: PolicyBook,
        fetched_at: Option<Instant>,
    ) -> Arc<TopicKeys> {
        let mut keys = state.keys.clone();
        let mut tried = state.tried.clone();
        for policy in book.policies() {
            if !tried.insert(policy.epoch()) {
                continue;
            }
            match keys.unlock(policy, &self.principal, &self.hpke) {
                Ok(()) => {}
                Err(sealpost_protocol::Error::NotAMember) => {
                    tracing::debug!(%topic, epoch = %policy.epoch(), "not a member of this epoch");
                }
                Err(e) => {
                    tracing::warn!(
                        %topic,
                        epoch = %policy.epoch(),
                        error = %e,
                        "the policy lists this principal, but its content key does not unwrap with this \
                         identity's hpke_key"
                    );
                }
            }
        }
        let snapshot = Arc::new(TopicKeys::new(book.clone(), keys.clone()));
        let seeded = state.seeded;
        *state = SlotState { book, keys, tried, snapshot: snapshot.clone(), fetched_at, seeded };
        snapshot
    }

    /// The state folder, if the client has one.
    pub(crate) fn state(&self) -> Option<&StateFolder> {
        self.state.as_ref()
    }

    /// The pinned authority.
    pub(crate) fn authority(&self) -> &PublicKey {
        &self.authority
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use sealpost_protocol::{issue_policy, Member, PolicyParams, SigningKey, Timestamp};

    use super::*;

    pub(crate) fn authority() -> SigningKey {
        SigningKey::from_bytes(&[0xAA; 32])
    }

    pub(crate) fn topic() -> Topic {
        Topic::new("demo.x").unwrap()
    }

    /// A principal of the tests: its signing key and hpke secret are derived from its name.
    pub(crate) fn signer(name: &str) -> SigningKey {
        SigningKey::from_bytes(&[name.as_bytes()[0]; 32])
    }

    pub(crate) fn hpke(name: &str) -> HpkeSecretKey {
        HpkeSecretKey::from_bytes(&[name.as_bytes()[0] ^ 0x55; 32])
    }

    pub(crate) fn member(name: &str, publish: bool, subscribe: bool) -> Member {
        Member {
            principal: name.parse().unwrap(),
            publish,
            subscribe,
            signing_key: signer(name).public_key(),
            hpke_key: hpke(name).public_key(),
        }
    }

    /// The content key of `epoch` in the tests.
    pub(crate) fn content_key(epoch: u64) -> ContentKey {
        ContentKey::from_bytes(&[0xC0 ^ epoch as u8; 32])
    }

    /// A policy of `epoch` for [`topic`], created at `created_at` ms, chained to `prev`.
    pub(crate) fn policy(
        epoch: u64,
        prev: Option<&VerifiedPolicy>,
        members: Vec<Member>,
        created_at: u64,
    ) -> VerifiedPolicy {
        let params = PolicyParams {
            topic: topic(),
            epoch: Epoch(epoch),
            prev,
            members,
            created_at: Timestamp(created_at),
        };
        issue_policy(&authority(), params, &content_key(epoch), &Limits::default(), &mut rand::rngs::OsRng)
            .unwrap()
    }

    fn source(name: &str) -> KeySource {
        KeySource::new(name.parse().unwrap(), hpke(name), authority().public_key(), Limits::default(), None)
    }

    /// A source of `name` keeping its state in `dir`: another process of the same identity.
    fn persisted(name: &str, dir: &std::path::Path) -> KeySource {
        let state = StateFolder::open(dir).unwrap();
        KeySource::new(
            name.parse().unwrap(),
            hpke(name),
            authority().public_key(),
            Limits::default(),
            Some(state),
        )
    }

    fn admit(source: &KeySource, served: &[&VerifiedPolicy]) -> Result<Arc<TopicKeys>> {
        let slot = source.slot(&topic());
        let served = served.iter().map(|p| p.as_bytes().clone()).collect();
        source.admit(&slot, &topic(), served, Instant::now()).map(|(s, _)| s)
    }

    #[test]
    fn keys_are_unwrapped_for_the_epochs_this_principal_is_a_member_of() {
        let p1 = policy(1, None, vec![member("alice", true, true)], 1000);
        let p2 = policy(2, Some(&p1), vec![member("alice", true, true), member("bob", false, true)], 2000);
        let bob = source("bob");
        let keys = admit(&bob, &[&p1, &p2]).unwrap();
        assert_eq!(keys.current_epoch(), Some(Epoch(2)));
        assert_eq!(keys.keys().epochs().collect::<Vec<_>>(), [Epoch(2)]);
        assert_eq!(keys.keys().get(Epoch(2)).unwrap().as_bytes(), content_key(2).as_bytes());
        keys.check_readable().unwrap();
        // bob is no publisher.
        let e = keys.sealing_key(&"bob".parse().unwrap(), &signer("bob").public_key()).unwrap_err();
        assert!(matches!(e, Error::NotAPublisher { epoch: 2, .. }), "{e}");
        let alice = source("alice");
        let keys = admit(&alice, &[&p1, &p2]).unwrap();
        let (epoch, key) =
            keys.sealing_key(&"alice".parse().unwrap(), &signer("alice").public_key()).unwrap();
        assert_eq!((epoch, key.as_bytes()), (Epoch(2), content_key(2).as_bytes()));
        // The same principal with another signing key is not the publisher the policy names.
        assert!(matches!(
            keys.sealing_key(&"alice".parse().unwrap(), &signer("zed").public_key()),
            Err(Error::NotAPublisher { .. })
        ));
    }

    #[test]
    fn a_topic_without_policy_or_key_is_not_readable() {
        let carol = source("carol");
        let keys = admit(&carol, &[]).unwrap();
        assert!(matches!(keys.check_readable(), Err(Error::NoPolicy { .. })));
        assert!(matches!(
            keys.sealing_key(&"carol".parse().unwrap(), &signer("carol").public_key()),
            Err(Error::NoPolicy { .. })
        ));
        let p1 = policy(1, None, vec![member("alice", true, true)], 1000);
        let keys = admit(&carol, &[&p1]).unwrap();
        assert!(matches!(keys.check_readable(), Err(Error::NoContentKey { .. })));
    }

    #[test]
    fn an_older_current_epoch_or_no_policy_after_one_was_seen_is_a_rollback() {
        let p1 = policy(1, None, vec![member("alice", true, true)], 1000);
        let p2 = policy(2, Some(&p1), vec![member("alice", true, true)], 2000);
        let p3 = policy(3, Some(&p2), vec![member("alice", true, true)], 3000);
        let alice = source("alice");
        admit(&alice, &[&p2, &p3]).unwrap();
        let rollback = |current, got| sealpost_protocol::Error::PolicyRollback {
            current: Epoch(current),
            got: Epoch(got),
        };
        for served in [vec![&p1, &p2], vec![&p2], vec![]] {
            let newest = served.last().map_or(0, |p| p.epoch().0);
            match admit(&alice, &served) {
                Err(Error::Policy { check, .. }) => assert_eq!(check, rollback(3, newest)),
                other => panic!("{other:?}"),
            }
        }
        // The book did not change: the honest answer is still fine, and so is the next epoch.
        assert_eq!(admit(&alice, &[&p2, &p3]).unwrap().current_epoch(), Some(Epoch(3)));
        let p4 = policy(4, Some(&p3), vec![member("alice", true, true)], 4000);
        assert_eq!(admit(&alice, &[&p3, &p4]).unwrap().current_epoch(), Some(Epoch(4)));
    }

    #[test]
    fn a_policy_not_from_the_pinned_authority_or_a_fork_is_refused() {
        let p1 = policy(1, None, vec![member("alice", true, true)], 1000);
        let params = PolicyParams {
            topic: topic(),
            epoch: Epoch(1),
            prev: None,
            members: vec![member("mallory", true, true)],
            created_at: Timestamp(1000),
        };
        let forged = issue_policy(
            &signer("mallory"),
            params.clone(),
            &content_key(1),
            &Limits::default(),
            &mut rand::rngs::OsRng,
        )
        .unwrap();
        let alice = source("alice");
        match admit(&alice, &[&forged]) {
            Err(Error::Policy { check: sealpost_protocol::Error::PolicyNotFromAuthority, .. }) => {}
            other => panic!("{other:?}"),
        }
        admit(&alice, &[&p1]).unwrap();
        let fork =
            issue_policy(&authority(), params, &content_key(1), &Limits::default(), &mut rand::rngs::OsRng)
                .unwrap();
        match admit(&alice, &[&fork]) {
            Err(Error::Policy {
                check: sealpost_protocol::Error::PolicyFork { epoch: Epoch(1) }, ..
            }) => {}
            other => panic!("{other:?}"),
        }
        let garbage = Bytes::from_static(b"\x01\x02");
        let slot = alice.slot(&topic());
        assert!(matches!(
            alice.admit(&slot, &topic(), vec![garbage], Instant::now()),
            Err(Error::Policy { .. })
        ));
    }

    #[test]
    fn the_newest_policy_seen_by_one_process_makes_an_older_one_a_rollback_in_the_next() {
        let dir = tempfile::tempdir().unwrap();
        let p1 = policy(1, None, vec![member("alice", true, true)], 1000);
        let p2 = policy(2, Some(&p1), vec![member("alice", true, true)], 2000);
        let p3 = policy(3, Some(&p2), vec![member("alice", true, true)], 3000);
        admit(&persisted("alice", dir.path()), &[&p2, &p3]).unwrap();
        // The next process is served epochs 1 and 2 only: a rollback, as within one process.
        let next = persisted("alice", dir.path());
        match admit(&next, &[&p1, &p2]) {
            Err(Error::Policy {
                check: sealpost_protocol::Error::PolicyRollback { current, got }, ..
            }) => {
                assert_eq!((current, got), (Epoch(3), Epoch(2)));
            }
            other => panic!("{other:?}"),
        }
        // The honest answer: epoch 2 is linked below the persisted epoch 3, and its key unwrapped.
        let keys = admit(&next, &[&p2, &p3]).unwrap();
        assert_eq!(keys.current_epoch(), Some(Epoch(3)));
        assert!(keys.knows(Epoch(2)) && keys.keys().get(Epoch(2)).is_some());
        // A later epoch is persisted in its turn; an older one never overwrites it.
        let p4 = policy(4, Some(&p3), vec![member("alice", true, true)], 4000);
        admit(&next, &[&p3, &p4]).unwrap();
        admit(&persisted("alice", dir.path()), &[&p3]).unwrap_err();
        let last = persisted("alice", dir.path());
        assert_eq!(admit(&last, &[&p3, &p4]).unwrap().current_epoch(), Some(Epoch(4)));
    }

    #[test]
    fn another_policy_of_the_persisted_epoch_is_a_fork_and_a_damaged_file_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let p1 = policy(1, None, vec![member("alice", true, true)], 1000);
        admit(&persisted("alice", dir.path()), &[&p1]).unwrap();
        // `policy` draws a fresh content-key wrapping: another policy of epoch 1, also signed.
        let other = policy(1, None, vec![member("alice", true, true)], 1000);
        match admit(&persisted("alice", dir.path()), &[&other]) {
            Err(Error::Policy {
                check: sealpost_protocol::Error::PolicyFork { epoch: Epoch(1) }, ..
            }) => {}
            other => panic!("{other:?}"),
        }
        // The persisted policy's file, one byte changed: reported, not ignored (nor replaced).
        let file = dir.path().join(policy_record(&topic()));
        let mut bytes = std::fs::read(&file).unwrap();
        let middle = bytes.len() / 2;
        bytes[middle] ^= 0x01;
        std::fs::write(&file, &bytes).unwrap();
        match admit(&persisted("alice", dir.path()), &[&p1]) {
            Err(Error::State { path, fault: StateFault::Corrupt }) => assert_eq!(path, file),
            other => panic!("{other:?}"),
        }
        assert_eq!(std::fs::read(&file).unwrap(), bytes);
        // A policy signed by another key than the pinned authority, though intact as a file, is corrupt.
        let mut params_rng = rand::rngs::OsRng;
        let params = PolicyParams {
            topic: topic(),
            epoch: Epoch(1),
            prev: None,
            members: vec![member("alice", true, true)],
            created_at: Timestamp(1000),
        };
        let forged =
            issue_policy(&signer("mallory"), params, &content_key(1), &Limits::default(), &mut params_rng)
                .unwrap();
        StateFolder::open(dir.path()).unwrap().write(&policy_record(&topic()), forged.as_bytes()).unwrap();
        match admit(&persisted("alice", dir.path()), &[&p1]) {
            Err(Error::State { fault: StateFault::Corrupt, .. }) => {}
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn freshness_follows_the_last_fetch() {
        let p1 = policy(1, None, vec![member("alice", true, true)], 1000);
        let alice = source("alice");
        let slot = alice.slot(&topic());
        let t0 = Instant::now();
        assert!(slot.fresh(Freshness::Within(Duration::from_secs(30)), t0).is_none());
        alice.admit(&slot, &topic(), vec![p1.as_bytes().clone()], t0).unwrap();
        assert!(slot
            .fresh(Freshness::Within(Duration::from_secs(30)), t0 + Duration::from_secs(30))
            .is_some());
        assert!(slot
            .fresh(Freshness::Within(Duration::from_secs(30)), t0 + Duration::from_secs(31))
            .is_none());
        assert!(slot.fresh(Freshness::Epoch(Epoch(1)), t0).is_some());
        assert!(slot.fresh(Freshness::Epoch(Epoch(2)), t0).is_none());
        assert!(slot.fresh(Freshness::Now, t0).is_none());
        slot.expire();
        assert!(slot.fresh(Freshness::Within(Duration::from_secs(30)), t0).is_none());
        // The same slot for the same topic, for the life of the source.
        assert!(Arc::ptr_eq(&slot, &alice.slot(&topic())));
    }
}
