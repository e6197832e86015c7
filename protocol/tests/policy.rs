//! Topic policies: round trips, authenticity, key unwrapping, the policy book's history rules, the grace
//! window and the limits.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use bytes::Bytes;
use common::*;
use proptest::prelude::*;
use sealpost_protocol::*;

fn decode_verify(bytes: Bytes) -> Result<VerifiedPolicy> {
    SignedPolicy::decode(bytes, &Limits::default())?.verify(&authority().public_key())
}

/// Offset of the member count: version, topic length, topic, epoch, created_at, prev_digest, authority.
fn count_at(topic: &str) -> usize {
    2 + topic.len() + 8 + 8 + 32 + 32
}

fn book() -> PolicyBook {
    PolicyBook::new(topic("demo.chat"), authority().public_key())
}

// ---- encoding and authenticity ----------------------------------------------------------------------------

fn members_strategy() -> impl Strategy<Value = Vec<Member>> {
    proptest::collection::btree_map("[A-Za-z0-9._-]{1,64}", (1u8..=3, any::<[u8; 32]>()), 0..6)
        .prop_map(|m| {
            m.into_iter()
                .map(|(principal, (roles, seed))| Member {
                    hpke_key: hpke_secret(&principal).public_key(),
                    principal: principal.parse().unwrap(),
                    publish: roles & 1 != 0,
                    subscribe: roles & 2 != 0,
                    signing_key: SigningKey::from_bytes(&seed).public_key(),
                })
                .collect()
        })
        // Signing keys drawn at random are distinct except with negligible probability.
        .prop_filter("distinct signing keys", |m: &Vec<Member>| {
            let keys: std::collections::HashSet<_> = m.iter().map(|m| m.signing_key).collect();
            keys.len() == m.len()
        })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]

    #[test]
    fn policy_round_trips_through_its_bytes(
        members in members_strategy(),
        prior_epochs in 0u64..3,
        created_at in any::<u64>(),
        seed in any::<u64>(),
        key in any::<[u8; 32]>(),
    ) {
        // A chain of `prior_epochs` policies without members, then the one under test.
        let mut prev: Option<VerifiedPolicy> = None;
        for _ in 0..prior_epochs {
            let params = PolicyParams {
                topic: topic("t.x"),
                epoch: Epoch(prev.as_ref().map_or(1, |p| p.epoch().0 + 1)),
                prev: prev.as_ref(),
                members: vec![],
                created_at: Timestamp(0),
            };
            prev = Some(
                issue_policy(&authority(), params, &epoch_key(0), &Limits::default(), &mut rng(seed)).unwrap(),
            );
        }
        let epoch = prior_epochs + 1;
        let issued = issue_policy(
            &authority(),
            PolicyParams {
                topic: topic("t.x"),
                epoch: Epoch(epoch),
                prev: prev.as_ref(),
                members: members.clone(),
                created_at: Timestamp(created_at),
            },
            &ContentKey::from_bytes(&key),
            &Limits::default(),
            &mut rng(seed),
        )
        .unwrap();
        let decoded = decode_verify(issued.as_bytes().clone()).unwrap();
        prop_assert_eq!(decoded.as_bytes(), issued.as_bytes());
        prop_assert_eq!(decoded.digest(), issued.digest());
        prop_assert_eq!(decoded.epoch(), Epoch(epoch));
        prop_assert_eq!(decoded.created_at(), Timestamp(created_at));
        prop_assert_eq!(decoded.prev_digest(), prev.as_ref().map_or(Digest::ZERO, |p| p.digest()));
        prop_assert_eq!(decoded.topic(), &topic("t.x"));
        let mut sorted = members;
        sorted.sort_by(|a, b| a.principal.cmp(&b.principal));
        prop_assert_eq!(decoded.members(), &sorted[..]);
        for m in &sorted {
            prop_assert_eq!(decoded.member(&m.principal), Some(m));
            prop_assert_eq!(decoded.publisher(&m.signing_key).is_some(), m.publish);
            let unwrapped = decoded.content_key(&m.principal, &hpke_secret(m.principal.as_str())).unwrap();
            prop_assert_eq!(unwrapped.as_bytes(), &key);
        }
    }

    #[test]
    fn policy_decode_never_panics(raw in proptest::collection::vec(any::<u8>(), 0..600)) {
        let _ = SignedPolicy::decode(raw.into(), &Limits::default());
    }

    #[test]
    fn policy_decode_never_panics_on_a_mutated_policy(at in any::<prop::sample::Index>(), byte in any::<u8>()) {
        let mut raw = policy(None, alice_and_bob(), 0).as_bytes().to_vec();
        let i = at.index(raw.len());
        raw[i] = byte;
        let _ = decode_verify(raw.into());
    }
}

#[test]
fn every_member_unwraps_the_content_key_and_only_its_own() {
    let p = policy(None, alice_and_bob(), 0);
    for name in ["alice", "bob"] {
        let key = p.content_key(name, &hpke_secret(name)).unwrap();
        assert_eq!(key.as_bytes(), epoch_key(1).as_bytes());
    }
    // bob's secret does not open alice's entry (and the associated data binds the principal).
    assert_eq!(p.content_key("alice", &hpke_secret("bob")).unwrap_err(), Error::KeyUnwrap);
}

#[test]
fn non_member_gets_not_a_member() {
    let p = policy(None, alice_and_bob(), 0);
    assert_eq!(p.content_key("mallory", &hpke_secret("mallory")).unwrap_err(), Error::NotAMember);
}

#[test]
fn member_with_the_wrong_hpke_secret_gets_key_unwrap() {
    let p = policy(None, alice_and_bob(), 0);
    assert_eq!(p.content_key("bob", &HpkeSecretKey::from_bytes(&[0x77; 32])).unwrap_err(), Error::KeyUnwrap);
}

#[test]
fn removed_member_cannot_unwrap_the_next_epochs_key() {
    let (first, second) = policy_chain();
    assert!(first.content_key("bob", &hpke_secret("bob")).is_ok());
    assert_eq!(second.content_key("bob", &hpke_secret("bob")).unwrap_err(), Error::NotAMember);
    assert_eq!(
        second.content_key("carol", &hpke_secret("carol")).unwrap().as_bytes(),
        epoch_key(2).as_bytes()
    );
}

#[test]
fn flipping_any_single_bit_makes_verify_fail() {
    let p = policy(None, vec![member("al", &alice(), true, false)], 0);
    let raw = p.as_bytes().to_vec();
    assert!(decode_verify(raw.clone().into()).is_ok());
    for i in 0..raw.len() * 8 {
        let mut bad = raw.clone();
        bad[i / 8] ^= 1 << (i % 8);
        assert!(decode_verify(bad.into()).is_err(), "flipping bit {i} went unnoticed");
    }
}

#[test]
fn policy_signed_by_another_key_is_not_from_the_authority() {
    let mallory = SigningKey::from_bytes(&[0x66; 32]);
    let params = PolicyParams {
        topic: topic("demo.chat"),
        epoch: Epoch(1),
        prev: None,
        members: vec![member("mallory", &mallory, true, true)],
        created_at: Timestamp(POLICY_TIME),
    };
    let forged = issue_policy(&mallory, params, &epoch_key(1), &Limits::default(), &mut rng(1)).unwrap();
    assert_eq!(decode_verify(forged.as_bytes().clone()).unwrap_err(), Error::PolicyNotFromAuthority);

    // Writing the authority's key into the signer field does not help: the signature no longer verifies.
    let mut raw = forged.as_bytes().to_vec();
    let at = count_at("demo.chat") - 32;
    raw[at..at + 32].copy_from_slice(authority().public_key().as_bytes());
    assert_eq!(decode_verify(raw.into()).unwrap_err(), Error::PolicyNotFromAuthority);
}

#[test]
fn verify_rejects_a_bad_signature() {
    let mut raw = policy(None, alice_and_bob(), 0).as_bytes().to_vec();
    let last = raw.len() - 1;
    raw[last] ^= 0x01;
    assert_eq!(decode_verify(raw.into()).unwrap_err(), Error::PolicyNotFromAuthority);
}

#[test]
fn decode_rejects_truncation_at_every_length_and_trailing_bytes() {
    let raw = policy(None, alice_and_bob(), 0).as_bytes().to_vec();
    for cut in 0..raw.len() {
        assert!(
            SignedPolicy::decode(Bytes::copy_from_slice(&raw[..cut]), &Limits::default()).is_err(),
            "{cut}"
        );
    }
    let mut long = raw;
    long.push(0);
    assert_eq!(
        SignedPolicy::decode(long.into(), &Limits::default()).unwrap_err(),
        Error::Malformed("trailing bytes after signature")
    );
}

#[test]
fn decode_rejects_unknown_version() {
    let mut raw = policy(None, alice_and_bob(), 0).as_bytes().to_vec();
    raw[0] = 2;
    assert_eq!(
        SignedPolicy::decode(raw.into(), &Limits::default()).unwrap_err(),
        Error::UnsupportedVersion { what: "policy", version: 2 }
    );
}

#[test]
fn decode_rejects_members_out_of_order() {
    // Two principals of the same length: swap their entries.
    let raw = policy(None, vec![member("al", &alice(), true, true), member("bo", &bob(), false, true)], 0)
        .as_bytes()
        .to_vec();
    let first = count_at("demo.chat") + 2;
    let len = 1 + 2 + 1 + 32 + 32 + 32 + 48;
    let mut swapped = raw.clone();
    swapped[first..first + len].copy_from_slice(&raw[first + len..first + 2 * len]);
    swapped[first + len..first + 2 * len].copy_from_slice(&raw[first..first + len]);
    assert_eq!(
        SignedPolicy::decode(swapped.into(), &Limits::default()).unwrap_err(),
        Error::InvalidPolicy("members not sorted by principal, or listed twice")
    );
}

#[test]
fn decode_rejects_unknown_role_bits_and_members_without_a_role() {
    let raw = policy(None, vec![member("al", &alice(), true, true)], 0).as_bytes().to_vec();
    let roles = count_at("demo.chat") + 2 + 1 + 2;
    for (byte, err) in [
        (0b100, Error::InvalidPolicy("unknown member role bits")),
        (0, Error::InvalidPolicy("member with neither the publish nor the subscribe role")),
    ] {
        let mut bad = raw.clone();
        bad[roles] = byte;
        assert_eq!(SignedPolicy::decode(bad.into(), &Limits::default()).unwrap_err(), err);
    }
}

#[test]
fn decode_rejects_a_member_count_beyond_the_bytes_present_before_allocating() {
    let mut raw = policy(None, alice_and_bob(), 0).as_bytes().to_vec();
    let at = count_at("demo.chat");
    raw[at..at + 2].copy_from_slice(&4096u16.to_be_bytes());
    assert_eq!(
        SignedPolicy::decode(raw.into(), &Limits::default()).unwrap_err(),
        Error::Truncated("policy members")
    );
}

#[test]
fn member_count_limit_holds_on_issue_and_on_decode() {
    let limits = Limits { max_policy_members: 1, ..Limits::default() };
    let params = PolicyParams {
        topic: topic("demo.chat"),
        epoch: Epoch(1),
        prev: None,
        members: alice_and_bob(),
        created_at: Timestamp(POLICY_TIME),
    };
    let too_many = Error::TooLarge { what: "policy member count", len: 2, max: 1 };
    assert_eq!(
        issue_policy(&authority(), params, &epoch_key(1), &limits, &mut rng(1)).unwrap_err(),
        too_many
    );
    let p = policy(None, alice_and_bob(), 0);
    assert_eq!(SignedPolicy::decode(p.into_bytes(), &limits).unwrap_err(), too_many);
}

#[test]
fn default_member_limit_is_4096_and_a_full_policy_fits() {
    assert_eq!(Limits::default().max_policy_members, 4096);
    let members: Vec<Member> = (0..4096u32)
        .map(|i| Member {
            principal: format!("{i:0>64}").parse().unwrap(),
            publish: true,
            subscribe: true,
            signing_key: {
                let mut seed = [0u8; 32];
                seed[..4].copy_from_slice(&i.to_be_bytes());
                SigningKey::from_bytes(&seed).public_key()
            },
            hpke_key: hpke_secret("m").public_key(),
        })
        .collect();
    let p = policy(None, members, 0);
    assert!(p.as_bytes().len() <= Limits::default().max_policy_len() as usize);
    let back = decode_verify(p.as_bytes().clone()).unwrap();
    assert_eq!(back.members().len(), 4096);
    let mut one_more = back.members().to_vec();
    one_more.push(member("zz", &carol(), true, false));
    let params = PolicyParams {
        topic: topic("demo.chat"),
        epoch: Epoch(1),
        prev: None,
        members: one_more,
        created_at: Timestamp(POLICY_TIME),
    };
    assert_eq!(
        issue_policy(&authority(), params, &epoch_key(1), &Limits::default(), &mut rng(1)).unwrap_err(),
        Error::TooLarge { what: "policy member count", len: 4097, max: 4096 }
    );
}

#[test]
fn length_limit_holds_on_issue_and_on_decode_before_parsing() {
    let p = policy(None, alice_and_bob(), 0);
    let limits = Limits { max_frame_len: 512, ..Limits::default() };
    assert_eq!(limits.max_policy_len(), 224);
    let len = p.as_bytes().len() as u64;
    let too_large = Error::TooLarge { what: "policy", len, max: 224 };
    assert_eq!(SignedPolicy::decode(p.as_bytes().clone(), &limits).unwrap_err(), too_large);
    // Checked before the version: nothing is parsed.
    let mut garbage = vec![0xFF; 225];
    garbage[0] = 9;
    assert!(matches!(
        SignedPolicy::decode(garbage.into(), &limits),
        Err(Error::TooLarge { what: "policy", .. })
    ));
    let params = PolicyParams {
        topic: topic("demo.chat"),
        epoch: Epoch(1),
        prev: None,
        members: alice_and_bob(),
        created_at: Timestamp(POLICY_TIME),
    };
    assert_eq!(
        issue_policy(&authority(), params, &epoch_key(1), &limits, &mut rng(1)).unwrap_err(),
        too_large
    );
}

#[test]
fn issue_checks_the_epoch_topic_and_authority_against_the_previous_policy() {
    let first = policy(None, alice_and_bob(), 0);
    let issue = |signer: &SigningKey, topic_name: &str, epoch: u64, at: u64| {
        let params = PolicyParams {
            topic: topic(topic_name),
            epoch: Epoch(epoch),
            prev: Some(&first),
            members: alice_and_bob(),
            created_at: Timestamp(at),
        };
        issue_policy(signer, params, &epoch_key(epoch), &Limits::default(), &mut rng(1))
    };
    assert!(issue(&authority(), "demo.chat", 2, POLICY_TIME).is_ok());
    for (signer, t, epoch, at, why) in [
        (authority(), "demo.chat", 3, POLICY_TIME, "epoch is not the previous policy's plus one"),
        (authority(), "demo.chat", 1, POLICY_TIME, "epoch is not the previous policy's plus one"),
        (authority(), "demo.other", 2, POLICY_TIME, "previous policy is for another topic"),
        (carol(), "demo.chat", 2, POLICY_TIME, "previous policy is signed by another authority"),
        (authority(), "demo.chat", 2, POLICY_TIME - 1, "created before the previous policy"),
    ] {
        assert_eq!(issue(&signer, t, epoch, at).unwrap_err(), Error::InvalidPolicy(why));
    }
}

// ---- the policy book ----------------------------------------------------------------------------------------

#[test]
fn rotation_chain_is_admitted() {
    let (first, second) = policy_chain();
    assert_eq!(second.prev_digest(), first.digest());
    let mut b = book();
    assert!(b.current().is_none());
    b.admit(first.clone()).unwrap();
    b.admit(second.clone()).unwrap();
    assert_eq!(b.current().unwrap().digest(), second.digest());
    assert_eq!(b.get(Epoch(1)).unwrap().digest(), first.digest());
    assert_eq!(b.policies().map(|p| p.epoch().0).collect::<Vec<_>>(), vec![1, 2]);
    // The broker answers GetPolicies with the previous and the current policy: admitting them again
    // changes nothing.
    b.admit(first).unwrap();
    b.admit_bytes(second.into_bytes(), &Limits::default()).unwrap();
    assert_eq!(b.current().unwrap().epoch(), Epoch(2));
}

#[test]
fn rollback_to_an_older_epoch_is_refused() {
    let (first, second) = policy_chain();
    let third = policy(Some(&second), alice_and_bob(), 7_200_000);
    // A client that first saw epoch 2 is offered epoch 1, which it never admitted.
    let mut b = book();
    b.admit(second).unwrap();
    b.admit(third).unwrap();
    assert_eq!(b.admit(first).unwrap_err(), Error::PolicyRollback { current: Epoch(3), got: Epoch(1) });
    assert_eq!(b.current().unwrap().epoch(), Epoch(3));
}

#[test]
fn two_policies_for_one_epoch_are_a_fork() {
    let (first, second) = policy_chain();
    // The authority signs a second epoch-2 policy with other members.
    let other = policy(Some(&first), alice_and_bob(), 3_600_000);
    assert_ne!(other.digest(), second.digest());
    let mut b = book();
    b.admit(first).unwrap();
    b.admit(second.clone()).unwrap();
    assert_eq!(b.admit(other).unwrap_err(), Error::PolicyFork { epoch: Epoch(2) });
    assert_eq!(b.current().unwrap().digest(), second.digest());
}

#[test]
fn next_epoch_that_names_another_predecessor_breaks_the_chain() {
    let (first, _) = policy_chain();
    // Another history: an epoch-1 policy the book never saw, and its successor.
    let other_first = policy(None, vec![member("alice", &alice(), true, true)], 5);
    let other_second = policy(Some(&other_first), alice_and_bob(), 10);
    let mut b = book();
    b.admit(first).unwrap();
    assert_eq!(b.admit(other_second).unwrap_err(), Error::PolicyChainBroken { epoch: Epoch(2) });
    assert_eq!(b.current().unwrap().epoch(), Epoch(1));
}

#[test]
fn a_later_epoch_after_a_gap_is_admitted() {
    let (first, second) = policy_chain();
    let third = policy(Some(&second), alice_and_bob(), 7_200_000);
    let mut b = book();
    b.admit(first).unwrap();
    b.admit(third).unwrap();
    assert_eq!(b.current().unwrap().epoch(), Epoch(3));
    assert_eq!(b.admit(second).unwrap_err(), Error::PolicyRollback { current: Epoch(3), got: Epoch(2) });
}

#[test]
fn book_refuses_other_topics_and_other_authorities() {
    let p = policy(None, alice_and_bob(), 0);
    let mut other_topic = PolicyBook::new(topic("demo.other"), authority().public_key());
    assert_eq!(
        other_topic.admit(p.clone()).unwrap_err(),
        Error::WrongTopic { expected: topic("demo.other"), got: topic("demo.chat") }
    );
    let mut other_authority = PolicyBook::new(topic("demo.chat"), carol().public_key());
    assert_eq!(other_authority.admit(p.clone()).unwrap_err(), Error::PolicyNotFromAuthority);
    assert_eq!(
        other_authority.admit_bytes(p.into_bytes(), &Limits::default()).unwrap_err(),
        Error::PolicyNotFromAuthority
    );
}

#[test]
fn grace_window_accepts_the_previous_epoch_until_its_boundary() {
    let (first, second) = policy_chain();
    let mut b = book();
    assert!(!b.accepts_epoch(Epoch(1), Timestamp(POLICY_TIME), 1000));
    b.admit(first).unwrap();
    b.admit(second.clone()).unwrap();
    let rotated = second.created_at().0;
    let grace = 60_000;
    assert!(b.accepts_epoch(Epoch(2), Timestamp(u64::MAX), grace));
    assert!(b.accepts_epoch(Epoch(1), Timestamp(rotated), grace));
    assert!(b.accepts_epoch(Epoch(1), Timestamp(rotated + grace - 1), grace));
    assert!(!b.accepts_epoch(Epoch(1), Timestamp(rotated + grace), grace));
    assert!(!b.accepts_epoch(Epoch(1), Timestamp(rotated), 0));
    // Never an epoch two back, a newer one, or epoch 0.
    let third = policy(Some(&second), alice_and_bob(), 7_200_000);
    b.admit(third).unwrap();
    assert!(!b.accepts_epoch(Epoch(1), Timestamp(0), u64::MAX));
    assert!(!b.accepts_epoch(Epoch(4), Timestamp(0), u64::MAX));
    assert!(!b.accepts_epoch(Epoch(u64::MAX), Timestamp(u64::MAX), u64::MAX));
    let mut fresh = book();
    fresh.admit(policy(None, alice_and_bob(), 0)).unwrap();
    assert!(!fresh.accepts_epoch(Epoch(0), Timestamp(0), u64::MAX));
}

fn sealed_by(signer: &SigningKey, epoch: u64) -> VerifiedBatch {
    sealed_at(signer, epoch, POLICY_TIME)
}

/// A batch of demo.chat under `epoch`, signed by `signer`, claiming to be created at `created_at`.
fn sealed_at(signer: &SigningKey, epoch: u64, created_at: u64) -> VerifiedBatch {
    let params = SealParams {
        topic: topic("demo.chat"),
        epoch: Epoch(epoch),
        chain: CHAIN,
        first_seq: 1,
        prev_digest: Digest::ZERO,
        created_at: Timestamp(created_at),
    };
    seal(signer, &epoch_key(epoch), params, &[b"hi"], &Limits::default(), &mut rng(9)).unwrap()
}

#[test]
fn authorize_accepts_publishers_of_an_accepted_epoch_only() {
    let (first, second) = policy_chain();
    let mut b = book();
    b.admit(first).unwrap();
    b.admit(second.clone()).unwrap();
    let grace = 60_000;
    // alice publishes in both epochs; carol in epoch 2.
    assert_eq!(b.authorize(sealed_by(&alice(), 2).header(), grace).unwrap().principal, "alice");
    assert_eq!(b.authorize(sealed_by(&carol(), 2).header(), grace).unwrap().principal, "carol");
    assert_eq!(b.authorize(sealed_by(&alice(), 1).header(), grace).unwrap().principal, "alice");
    // bob only reads; mallory is nobody; carol was no publisher in epoch 1.
    let mallory = SigningKey::from_bytes(&[0x66; 32]);
    for (signer, epoch) in [(bob(), 1), (mallory, 2), (carol(), 1)] {
        assert_eq!(b.authorize(sealed_by(&signer, epoch).header(), grace), Err(Error::UntrustedPublisher));
    }
    // Epoch 1 sealed inside the grace window after the rotation to epoch 2, and at its end (stale).
    let rotated = second.created_at().0;
    let inside = sealed_at(&alice(), 1, rotated + grace - 1);
    assert_eq!(b.authorize(inside.header(), grace).unwrap().principal, "alice");
    let late = sealed_at(&alice(), 1, rotated + grace);
    assert_eq!(
        b.authorize(late.header(), grace),
        Err(Error::StaleEpoch { epoch: Epoch(1), current: Epoch(2) })
    );
    // An epoch without a policy.
    assert_eq!(b.authorize(sealed_by(&alice(), 3).header(), grace), Err(Error::UnknownEpoch(Epoch(3))));
}

#[test]
fn authorize_accepts_a_batch_of_an_old_epoch_sealed_while_it_was_current() {
    // Epochs 1..=5, alice publishing in each, an hour apart: her epoch-1 batch is readable after epoch 5.
    let mut chain = vec![policy(None, alice_and_bob(), 0)];
    for e in 1..5 {
        chain.push(policy(chain.last(), alice_and_bob(), e * 3_600_000));
    }
    let mut b = book();
    b.admit(chain[4].clone()).unwrap();
    let old = sealed_at(&alice(), 1, POLICY_TIME + 10);
    assert_eq!(b.authorize(old.header(), 0), Err(Error::UnknownEpoch(Epoch(1))));
    let page: Vec<Bytes> = chain[..4].iter().rev().map(|p| p.as_bytes().clone()).collect();
    assert_eq!(b.admit_history(Epoch(5), Epoch(1), page, &Limits::default()), Ok(None));
    assert_eq!(b.authorize(old.header(), 0).unwrap().principal, "alice");
    // Sealed under epoch 1 after epoch 2 began: stale, however late it is read.
    let after = sealed_at(&alice(), 1, chain[1].created_at().0);
    assert_eq!(b.authorize(after.header(), 0), Err(Error::StaleEpoch { epoch: Epoch(1), current: Epoch(5) }));
}

#[test]
fn epoch_keys_open_batches_of_the_epochs_unlocked() {
    let (first, second) = policy_chain();
    let mut keys = EpochKeys::new(topic("demo.chat"));
    keys.unlock(&first, "alice", &hpke_secret("alice")).unwrap();
    keys.unlock(&second, "alice", &hpke_secret("alice")).unwrap();
    keys.unlock(&second, "alice", &hpke_secret("alice")).unwrap();
    assert_eq!(keys.epochs().collect::<Vec<_>>(), vec![Epoch(1), Epoch(2)]);
    for epoch in [1, 2] {
        let b = sealed_by(&alice(), epoch);
        let opened = open(b.into_bytes(), &topic("demo.chat"), &keys, &Limits::default()).unwrap();
        assert_eq!(opened.messages, vec![Bytes::from_static(b"hi")]);
    }
    // bob was removed in epoch 2: he holds epoch 1's key only.
    let mut bobs = EpochKeys::new(topic("demo.chat"));
    bobs.unlock(&first, "bob", &hpke_secret("bob")).unwrap();
    assert_eq!(bobs.unlock(&second, "bob", &hpke_secret("bob")), Err(Error::NotAMember));
    assert_eq!(
        open(sealed_by(&alice(), 2).into_bytes(), &topic("demo.chat"), &bobs, &Limits::default())
            .unwrap_err(),
        Error::UnknownEpoch(Epoch(2))
    );
    let mut elsewhere = EpochKeys::new(topic("demo.other"));
    assert!(matches!(
        elsewhere.unlock(&first, "alice", &hpke_secret("alice")),
        Err(Error::WrongTopic { .. })
    ));
}

#[test]
fn revoked_publisher_is_refused_in_the_previous_epoch_during_the_grace_window() {
    // Epoch 1: alice and dave publish. Epoch 2 revokes dave. Dave still holds epoch 1's key and signs a
    // batch of epoch 1 after the revocation, inside the grace window: refused, because he is no publisher
    // of the current epoch and the batch is dated after the policy that removed him.
    let dave = SigningKey::from_bytes(&[0xDA; 32]);
    let first =
        policy(None, vec![member("alice", &alice(), true, true), member("dave", &dave, true, true)], 0);
    let second = policy(Some(&first), vec![member("alice", &alice(), true, true)], 1_000);
    let mut b = book();
    b.admit(first).unwrap();
    b.admit(second.clone()).unwrap();
    let grace = 60_000;
    let revoked_at = second.created_at().0;
    for at in [revoked_at, revoked_at + 1] {
        let after = sealed_at(&dave, 1, at);
        assert_eq!(b.authorize(after.header(), grace), Err(Error::UntrustedPublisher), "sealed at {at}");
    }
    // His batch sealed before the revocation stays readable.
    let before = sealed_at(&dave, 1, revoked_at - 1);
    assert_eq!(b.authorize(before.header(), grace).unwrap().principal, "dave");
    // alice, still a publisher, is accepted in the previous epoch during the window.
    let alices = sealed_at(&alice(), 1, revoked_at + 1);
    assert_eq!(b.authorize(alices.header(), grace).unwrap().principal, "alice");
}

#[test]
fn revoked_publisher_is_judged_by_the_first_policy_that_removed_it() {
    // dave publishes in epochs 1 and 2, epoch 3 revokes him, epoch 4 rotates again.
    let dave = SigningKey::from_bytes(&[0xDA; 32]);
    let both = || vec![member("alice", &alice(), true, true), member("dave", &dave, true, true)];
    let p1 = policy(None, both(), 0);
    let p2 = policy(Some(&p1), both(), 1_000);
    let p3 = policy(Some(&p2), vec![member("alice", &alice(), true, true)], 2_000);
    let p4 = policy(Some(&p3), vec![member("alice", &alice(), true, true)], 3_000);
    let mut b = book();
    b.admit(p4).unwrap();
    let page = [&p3, &p2, &p1].map(|p| p.as_bytes().clone());
    assert_eq!(b.admit_history(Epoch(4), Epoch(1), page, &Limits::default()), Ok(None));
    let revoked_at = p3.created_at().0;
    for (epoch, at) in [(1, POLICY_TIME), (2, POLICY_TIME + 1_000), (2, revoked_at - 1)] {
        let batch = sealed_at(&dave, epoch, at);
        assert_eq!(b.authorize(batch.header(), 0).unwrap().principal, "dave", "epoch {epoch} at {at}");
    }
    let after = sealed_at(&dave, 2, revoked_at);
    assert_eq!(b.authorize(after.header(), u64::MAX), Err(Error::UntrustedPublisher));
    // A batch under the revoking epoch itself: he is no publisher of it.
    assert_eq!(b.authorize(sealed_at(&dave, 3, POLICY_TIME).header(), 0), Err(Error::UntrustedPublisher));
}

// ---- the history walk ---------------------------------------------------------------------------------------

/// Epochs 1..=5 of demo.chat, chained.
fn five_epochs() -> Vec<VerifiedPolicy> {
    let mut chain = vec![policy(None, alice_and_bob(), 0)];
    for e in 1..5 {
        chain.push(policy(chain.last(), alice_and_bob(), e * 1_000));
    }
    chain
}

/// A book that holds epoch 5 only.
fn book_at_five(chain: &[VerifiedPolicy]) -> PolicyBook {
    let mut b = book();
    b.admit(chain[4].clone()).unwrap();
    b
}

fn bytes(policies: &[&VerifiedPolicy]) -> Vec<Bytes> {
    policies.iter().map(|p| p.as_bytes().clone()).collect()
}

fn broken(epoch: u64, fault: PolicyLinkFault) -> Error {
    Error::PolicyLinkBroken { topic: topic("demo.chat"), epoch: Epoch(epoch), fault }
}

#[test]
fn history_walk_admits_each_link_back_from_the_newest_in_pages() {
    let chain = five_epochs();
    let mut b = book_at_five(&chain);
    assert_eq!(b.history_start(Epoch(1)), Some(Epoch(5)));
    assert_eq!(b.history_start(Epoch(5)), None);
    let limits = Limits::default();
    assert_eq!(
        b.admit_history(Epoch(5), Epoch(1), bytes(&[&chain[3], &chain[2]]), &limits),
        Ok(Some(Epoch(3)))
    );
    assert_eq!(b.history_start(Epoch(1)), Some(Epoch(3)));
    assert_eq!(b.admit_history(Epoch(3), Epoch(1), bytes(&[&chain[1], &chain[0]]), &limits), Ok(None));
    assert_eq!(b.policies().map(|p| p.epoch().0).collect::<Vec<_>>(), vec![1, 2, 3, 4, 5]);
    // Walking again over admitted links changes nothing; policies below `until` are ignored.
    let all = bytes(&[&chain[3], &chain[2], &chain[1], &chain[0]]);
    assert_eq!(b.admit_history(Epoch(5), Epoch(3), all, &limits), Ok(None));
}

#[test]
fn history_walk_refuses_a_forged_middle_policy() {
    let chain = five_epochs();
    // Epoch 3 signed by the authority, but not the one epoch 4 names (another member list).
    let forged = policy(Some(&chain[1]), vec![member("alice", &alice(), true, true)], 2_000);
    let mut b = book_at_five(&chain);
    let page = bytes(&[&chain[3], &forged, &chain[1], &chain[0]]);
    assert_eq!(
        b.admit_history(Epoch(5), Epoch(1), page, &Limits::default()),
        Err(broken(3, PolicyLinkFault::NotNamedByNext))
    );
    // The checked link (epoch 4) is kept; nothing below the break is.
    assert_eq!(b.policies().map(|p| p.epoch().0).collect::<Vec<_>>(), vec![4, 5]);
}

#[test]
fn history_walk_refuses_a_gap_and_an_early_end() {
    let chain = five_epochs();
    let limits = Limits::default();
    let mut b = book_at_five(&chain);
    assert_eq!(
        b.admit_history(Epoch(5), Epoch(1), bytes(&[&chain[3], &chain[1]]), &limits),
        Err(broken(3, PolicyLinkFault::Missing { got: Some(Epoch(2)) }))
    );
    assert_eq!(
        b.admit_history(Epoch(4), Epoch(1), Vec::new(), &limits),
        Err(broken(3, PolicyLinkFault::Missing { got: None }))
    );
    // Asked to walk from an epoch the book does not hold.
    assert_eq!(b.admit_history(Epoch(2), Epoch(1), Vec::new(), &limits), Err(Error::UnknownEpoch(Epoch(2))));
}

#[test]
fn history_walk_refuses_a_policy_not_signed_by_the_authority_or_junk() {
    let chain = five_epochs();
    let limits = Limits::default();
    // An epoch 4 signed by carol's key (issued in a history of her own).
    let mut by_carol: Option<VerifiedPolicy> = None;
    for e in 1..=4 {
        let params = PolicyParams {
            topic: topic("demo.chat"),
            epoch: Epoch(e),
            prev: by_carol.as_ref(),
            members: alice_and_bob(),
            created_at: Timestamp(POLICY_TIME),
        };
        by_carol = Some(issue_policy(&carol(), params, &epoch_key(e), &limits, &mut rng(e)).unwrap());
    }
    let by_carol = by_carol.unwrap();
    let mut b = book_at_five(&chain);
    assert_eq!(
        b.admit_history(Epoch(5), Epoch(1), bytes(&[&by_carol]), &limits),
        Err(broken(4, PolicyLinkFault::NotFromAuthority))
    );
    assert_eq!(
        b.admit_history(Epoch(5), Epoch(1), vec![Bytes::from_static(b"junk")], &limits),
        Err(broken(4, PolicyLinkFault::Malformed))
    );
    assert_eq!(b.policies().count(), 1);
}

#[test]
fn history_walk_checks_the_link_to_an_admitted_policy_below() {
    // The book admitted epoch 2 and epoch 5 as firsts (a gap); walking 5 -> 3 must end on epoch 2's digest.
    let chain = five_epochs();
    let other_two = policy(Some(&chain[0]), vec![member("alice", &alice(), true, true)], 1_000);
    let mut b = book();
    b.admit(other_two).unwrap();
    b.admit(chain[4].clone()).unwrap();
    assert_eq!(
        b.admit_history(Epoch(5), Epoch(3), bytes(&[&chain[3], &chain[2]]), &Limits::default()),
        Err(Error::PolicyChainBroken { epoch: Epoch(3) })
    );
}
