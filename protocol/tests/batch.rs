//! Sealed batches: round trips, and one test per failure that `open` reports.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use bytes::Bytes;
use common::*;
use proptest::prelude::*;
use sealpost_protocol::batch::{RECORD_OVERHEAD, SIGNATURE_LEN};
use sealpost_protocol::*;

#[test]
fn open_returns_the_sealed_messages_in_order() {
    let b = sealed(1, Digest::ZERO, &[b"hello", b"", b"world"], 1);
    let opened = open(bytes_of(&b), &topic("demo.chat"), &keys(), &Limits::default()).unwrap();
    assert_eq!(
        opened.messages,
        vec![Bytes::from_static(b"hello"), Bytes::new(), Bytes::from_static(b"world")]
    );
    assert_eq!(opened.header.first_seq, 1);
    assert_eq!(opened.header.count, 3);
    assert_eq!(opened.header.publisher, alice().public_key());
    assert_eq!(opened.digest, b.digest());
}

#[test]
fn ciphertext_does_not_contain_the_plaintext() {
    let marker = b"MARKER-4f1c2e-PLAINTEXT";
    let b = sealed(1, Digest::ZERO, &[marker], 2);
    assert!(!b.as_bytes().windows(marker.len()).any(|w| w == marker));
}

#[test]
fn open_rejects_bad_signature() {
    let b = sealed(1, Digest::ZERO, &[b"hi"], 3);
    let mut raw = bytes_of(&b).to_vec();
    let last = raw.len() - 1;
    raw[last] ^= 0x01;
    assert_eq!(
        open(raw.into(), &topic("demo.chat"), &keys(), &Limits::default()).unwrap_err(),
        Error::BadSignature
    );
}

#[test]
fn open_rejects_batch_signed_by_another_key_under_alices_name() {
    // Mallory seals, then writes alice's public key into the header: the signature no longer verifies.
    let mallory = SigningKey::from_bytes(&[0x66; 32]);
    let b = seal(&mallory, &content_key(), params(1, Digest::ZERO), &[b"x"], &Limits::default(), &mut rng(4))
        .unwrap();
    let mut raw = bytes_of(&b).to_vec();
    let at = 2 + "demo.chat".len() + 8;
    raw[at..at + 32].copy_from_slice(alice().public_key().as_bytes());
    assert_eq!(
        open(raw.into(), &topic("demo.chat"), &keys(), &Limits::default()).unwrap_err(),
        Error::BadSignature
    );
}

#[test]
fn open_rejects_tampered_record() {
    // A record that authenticates under the signature but not under the content key: what a publisher who
    // signs garbage, or a batch sealed under another key for the same epoch, looks like.
    let other_key = ContentKey::from_bytes(&[0x0E; 32]);
    let b =
        seal(&alice(), &other_key, params(1, Digest::ZERO), &[b"a", b"b"], &Limits::default(), &mut rng(5))
            .unwrap();
    assert_eq!(
        open(bytes_of(&b), &topic("demo.chat"), &keys(), &Limits::default()).unwrap_err(),
        Error::TamperedRecord { index: 0 }
    );
}

#[test]
fn open_rejects_wrong_topic() {
    let b = sealed(1, Digest::ZERO, &[b"hi"], 6);
    assert_eq!(
        open(bytes_of(&b), &topic("demo.events"), &keys(), &Limits::default()).unwrap_err(),
        Error::WrongTopic { expected: topic("demo.events"), got: topic("demo.chat") }
    );
}

#[test]
fn open_rejects_unknown_epoch() {
    let b = sealed(1, Digest::ZERO, &[b"hi"], 7);
    let other_epoch = (Epoch(8), content_key());
    assert_eq!(
        open(bytes_of(&b), &topic("demo.chat"), &other_epoch, &Limits::default()).unwrap_err(),
        Error::UnknownEpoch(Epoch(7))
    );
}

#[test]
fn open_rejects_unsupported_version() {
    let b = sealed(1, Digest::ZERO, &[b"hi"], 8);
    // Version 3 (records with headers) is read since headers exist; 4 is the first version not spoken.
    for version in [0, 4, 255] {
        let mut raw = bytes_of(&b).to_vec();
        raw[0] = version;
        assert_eq!(
            open(raw.into(), &topic("demo.chat"), &keys(), &Limits::default()).unwrap_err(),
            Error::UnsupportedVersion { what: "batch", version }
        );
    }
    // A version-1 batch with its version byte set to 2 reads its first publisher-key-less bytes as a
    // chain id and fails somewhere in its structure or its signature, never as a version-1 batch.
    let v1 = sealed_v1(1, Digest::ZERO, &[b"hi"], 8);
    let mut raw = bytes_of(&v1).to_vec();
    raw[0] = 2;
    assert!(open(raw.into(), &topic("demo.chat"), &keys(), &Limits::default()).is_err());
}

#[test]
fn open_rejects_too_large_batch_before_parsing() {
    let b = sealed(1, Digest::ZERO, &[&[0u8; 1000]], 9);
    let limits = Limits { max_batch_len: 512, ..Limits::default() };
    let len = b.as_bytes().len() as u64;
    assert_eq!(
        open(bytes_of(&b), &topic("demo.chat"), &keys(), &limits).unwrap_err(),
        Error::TooLarge { what: "batch", len, max: 512 }
    );
}

#[test]
fn open_rejects_too_many_messages() {
    let b = sealed(1, Digest::ZERO, &[b"1", b"2", b"3"], 10);
    let limits = Limits { max_batch_messages: 2, ..Limits::default() };
    assert_eq!(
        open(bytes_of(&b), &topic("demo.chat"), &keys(), &limits).unwrap_err(),
        Error::TooLarge { what: "batch message count", len: 3, max: 2 }
    );
}

#[test]
fn seal_refuses_what_open_would_refuse() {
    let l = Limits { max_batch_len: 256, ..Limits::default() };
    let too_big =
        seal(&alice(), &content_key(), params(1, Digest::ZERO), &[&[0u8; 300][..]], &l, &mut rng(1));
    assert!(matches!(too_big, Err(Error::TooLarge { what: "batch", .. })));
    let empty: [&[u8]; 0] = [];
    let none =
        seal(&alice(), &content_key(), params(1, Digest::ZERO), &empty, &Limits::default(), &mut rng(1));
    assert_eq!(none.unwrap_err(), Error::Malformed("empty batch"));
    let zero =
        seal(&alice(), &content_key(), params(0, Digest::ZERO), &[b"x"], &Limits::default(), &mut rng(1));
    assert_eq!(zero.unwrap_err(), Error::Malformed("sequence numbers start at 1"));
    let overflow = seal(
        &alice(),
        &content_key(),
        params(u64::MAX, Digest::ZERO),
        &[b"x"],
        &Limits::default(),
        &mut rng(1),
    );
    assert_eq!(overflow.unwrap_err(), Error::Malformed("sequence range overflows"));
}

#[test]
fn decode_rejects_truncation_at_every_length() {
    let b = sealed(1, Digest::ZERO, &[b"abc", b"defg"], 11);
    let raw = bytes_of(&b);
    for cut in 0..raw.len() {
        let err = SealedBatch::decode(raw.slice(..cut), &Limits::default()).unwrap_err();
        assert!(matches!(err, Error::Truncated(_)), "cut at {cut}: {err:?}");
    }
}

#[test]
fn decode_rejects_trailing_bytes() {
    let b = sealed(1, Digest::ZERO, &[b"abc"], 12);
    let mut raw = bytes_of(&b).to_vec();
    raw.push(0);
    assert_eq!(
        SealedBatch::decode(raw.into(), &Limits::default()).unwrap_err(),
        Error::Malformed("trailing bytes after signature")
    );
}

#[test]
fn decode_rejects_oversized_record_length_without_allocating() {
    let b = sealed(1, Digest::ZERO, &[b"abc"], 13);
    let mut raw = bytes_of(&b).to_vec();
    let header_len = raw.len() - SIGNATURE_LEN - RECORD_OVERHEAD - 3;
    let len_at = header_len + 24;
    raw[len_at..len_at + 4].copy_from_slice(&u32::MAX.to_be_bytes());
    assert_eq!(
        SealedBatch::decode(raw.into(), &Limits::default()).unwrap_err(),
        Error::Truncated("record ciphertext")
    );
}

/// Every single-bit change anywhere in a sealed batch makes `open` fail: exhaustive over a small batch.
#[test]
fn flipping_any_single_bit_makes_open_fail() {
    let b = sealed(1, Digest::ZERO, &[b"abc", b"", b"xyz!"], 14);
    let raw = bytes_of(&b).to_vec();
    for byte in 0..raw.len() {
        for bit in 0..8 {
            let mut m = raw.clone();
            m[byte] ^= 1 << bit;
            let r = open(m.into(), &topic("demo.chat"), &keys(), &Limits::default());
            assert!(r.is_err(), "flip of bit {bit} in byte {byte} was accepted");
        }
    }
}

#[test]
fn records_cannot_be_swapped_within_a_batch() {
    // Two records of equal length swapped in place: the AAD binds each record to its index and the
    // signature covers the order, so the result does not open.
    let b = sealed(1, Digest::ZERO, &[b"first", b"secnd"], 15);
    let raw = bytes_of(&b).to_vec();
    let rec = RECORD_OVERHEAD + 5;
    let start = raw.len() - SIGNATURE_LEN - 2 * rec;
    let mut m = raw.clone();
    m[start..start + rec].copy_from_slice(&raw[start + rec..start + 2 * rec]);
    m[start + rec..start + 2 * rec].copy_from_slice(&raw[start..start + rec]);
    assert_eq!(
        open(m.into(), &topic("demo.chat"), &keys(), &Limits::default()).unwrap_err(),
        Error::BadSignature
    );
}

#[test]
fn nonces_are_fresh_per_record() {
    let b = sealed(1, Digest::ZERO, &[b"same", b"same"], 16);
    let raw = bytes_of(&b);
    let rec = RECORD_OVERHEAD + 4;
    let start = raw.len() - SIGNATURE_LEN - 2 * rec;
    assert_ne!(raw[start..start + 24], raw[start + rec..start + rec + 24]);
    assert_ne!(raw[start..start + rec], raw[start + rec..start + 2 * rec]);
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn seal_open_round_trip(
        msgs in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..300), 1..20),
        first_seq in 1u64..u64::MAX / 2,
        prev in any::<[u8; 32]>(),
        seed in any::<u64>(),
        at in any::<u64>(),
    ) {
        let p = SealParams { prev_digest: Digest(prev), created_at: Timestamp(at), ..params(first_seq, Digest::ZERO) };
        let b = seal(&alice(), &content_key(), p, &msgs, &Limits::default(), &mut rng(seed)).unwrap();
        let decoded = SealedBatch::decode(bytes_of(&b), &Limits::default()).unwrap();
        prop_assert_eq!(decoded.header(), b.header());
        let opened = open(bytes_of(&b), &topic("demo.chat"), &keys(), &Limits::default()).unwrap();
        prop_assert_eq!(opened.messages.iter().map(|m| m.to_vec()).collect::<Vec<_>>(), msgs);
        prop_assert_eq!(opened.header.first_seq, first_seq);
        prop_assert_eq!(opened.header.prev_digest, Digest(prev));
        prop_assert_eq!(opened.header.created_at, Timestamp(at));
    }

    #[test]
    fn decode_never_panics_on_arbitrary_bytes(raw in proptest::collection::vec(any::<u8>(), 0..400)) {
        let _ = open(raw.into(), &topic("demo.chat"), &keys(), &Limits::default());
    }
}

#[test]
fn version_2_header_carries_the_chain_and_version_1_the_legacy_one() {
    let v2 = sealed(1, Digest::ZERO, &[b"hi"], 20);
    let v1 = sealed_v1(1, Digest::ZERO, &[b"hi"], 20);
    assert_eq!((v2.as_bytes()[0], v2.header().chain), (2, CHAIN));
    assert_eq!((v1.as_bytes()[0], v1.header().chain), (1, ChainId::LEGACY));
    assert_eq!(v2.as_bytes().len(), v1.as_bytes().len() + 16);
    for b in [&v1, &v2] {
        let opened = open(bytes_of(b), &topic("demo.chat"), &keys(), &Limits::default()).unwrap();
        assert_eq!(opened.header, *b.header());
    }
}

#[test]
fn a_changed_chain_id_breaks_the_signature() {
    let b = sealed(1, Digest::ZERO, &[b"hi"], 21);
    let mut raw = bytes_of(&b).to_vec();
    // version, topic_len, "demo.chat", epoch, publisher: the chain starts there.
    let at = 2 + "demo.chat".len() + 8 + 32;
    assert_eq!(&raw[at..at + 16], CHAIN.as_bytes());
    raw[at] ^= 1;
    assert_eq!(
        open(raw.into(), &topic("demo.chat"), &keys(), &Limits::default()).unwrap_err(),
        Error::BadSignature
    );
}

#[test]
fn a_version_2_batch_naming_the_legacy_chain_is_malformed() {
    let b = sealed(1, Digest::ZERO, &[b"hi"], 22);
    let mut raw = bytes_of(&b).to_vec();
    let at = 2 + "demo.chat".len() + 8 + 32;
    raw[at..at + 16].fill(0);
    assert!(matches!(
        SealedBatch::decode(raw.into(), &Limits::default()),
        Err(Error::Malformed("a version-2 batch names the legacy chain"))
    ));
}
