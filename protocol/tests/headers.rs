//! User headers in sealed batches (format version 3): round trips, what a message without headers costs,
//! limits, and that a header byte cannot be altered, added or dropped unseen. The rules of the header
//! section itself (names, values, order, limits) are unit-tested in `protocol/src/headers.rs`, and records
//! whose authentic plaintext breaks them in `protocol/src/batch.rs`.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use bytes::Bytes;
use common::*;
use proptest::prelude::*;
use sealpost_protocol::batch::{RECORD_OVERHEAD, SIGNATURE_LEN};
use sealpost_protocol::headers::{MAX_HEADERS, MAX_HEADER_VALUE_LEN};
use sealpost_protocol::*;

fn h(pairs: &[(&str, &str)]) -> Headers {
    let mut headers = Headers::new();
    for (name, value) in pairs {
        headers.insert(name, *value).unwrap();
    }
    headers
}

/// Seals `msgs` as alice on demo.chat with `headers`, as [`sealed`] does.
fn sealed_with(msgs: &[&[u8]], headers: &[Headers], seed: u64) -> VerifiedBatch {
    let params = params(1, Digest::ZERO);
    seal_with_headers(&alice(), &content_key(), params, msgs, headers, &Limits::default(), &mut rng(seed))
        .unwrap()
}

fn open_chat(raw: Bytes) -> Result<OpenedBatch> {
    open(raw, &topic("demo.chat"), &keys(), &Limits::default())
}

#[test]
fn open_returns_each_messages_headers_with_its_payload() {
    let headers =
        [h(&[("content-type", "text/plain"), ("trace-id", "abc")]), Headers::new(), h(&[("x", "")])];
    let b = sealed_with(&[b"one", b"two", b""], &headers, 1);
    assert_eq!(b.as_bytes()[0], 3);
    assert!(b.header().with_headers);
    let opened = open_chat(bytes_of(&b)).unwrap();
    assert_eq!(opened.messages, [Bytes::from_static(b"one"), Bytes::from_static(b"two"), Bytes::new()]);
    assert_eq!(opened.headers, headers);
    assert_eq!(opened.headers[0].get("trace-id"), Some("abc"));
    assert_eq!(opened.header, *b.header());
    assert_eq!(opened.digest, b.digest());
}

#[test]
fn a_batch_without_headers_is_sealed_exactly_as_before() {
    // Same keys, parameters and RNG: seal_with_headers without headers writes the bytes `seal` writes.
    let msgs: [&[u8]; 2] = [b"a", b"bc"];
    let without = sealed_with(&msgs, &[Headers::new(), Headers::new()], 2);
    let plain = sealed(1, Digest::ZERO, &msgs, 2);
    assert_eq!(without.as_bytes(), plain.as_bytes());
    assert_eq!(without.as_bytes()[0], 2);
    let opened = open_chat(bytes_of(&without)).unwrap();
    assert_eq!(opened.headers, [Headers::new(), Headers::new()]);
}

/// The measurement quoted in docs/architecture.md: a message without headers costs 0 bytes in a batch
/// without headers, and 1 byte in a batch where another message has headers.
#[test]
fn a_message_without_headers_costs_one_byte_in_a_batch_with_headers_and_none_otherwise() {
    let msgs: [&[u8]; 3] = [b"first", b"second", b"third"];
    let none = sealed_with(&msgs, &[Headers::new(), Headers::new(), Headers::new()], 3);
    let one = h(&[("k", "v")]);
    let some = sealed_with(&msgs, &[one.clone(), Headers::new(), Headers::new()], 3);
    // The header `k=v` is 1 (count) + 1 + 1 + 2 + 1 bytes; each other message adds its count byte.
    assert_eq!(one.encoded_len(), 6);
    assert_eq!(some.as_bytes().len(), none.as_bytes().len() + 6 + 2);
    let payloads: usize = msgs.iter().map(|m| m.len()).sum();
    let fixed = 2 + "demo.chat".len() + 8 + 32 + 16 + 8 + 4 + 32 + 8 + SIGNATURE_LEN;
    assert_eq!(none.as_bytes().len(), fixed + 3 * RECORD_OVERHEAD + payloads);
}

#[test]
fn a_tampered_header_byte_fails_to_open() {
    let b = sealed_with(&[b"payload"], &[h(&[("role", "admin")])], 4);
    let raw = bytes_of(&b).to_vec();
    // The record's ciphertext starts after the header, its nonce and its length; the header section is
    // its first 1 + 1 + 4 + 2 + 5 bytes (encrypted: the broker does not know that, but the test does).
    let ct_start = raw.len() - SIGNATURE_LEN - (TAG + 13 + 7);
    for i in 0..13 {
        let mut m = raw.clone();
        m[ct_start + i] ^= 0x20;
        assert_eq!(open_chat(m.into()).unwrap_err(), Error::BadSignature, "header byte {i}");
    }
}

const TAG: usize = 16;

#[test]
fn relabelling_a_batch_with_headers_as_version_2_breaks_the_signature() {
    // A broker that hopes a subscriber reads the header section as payload: the version is signed.
    let b = sealed_with(&[b"p"], &[h(&[("k", "v")])], 5);
    let mut raw = bytes_of(&b).to_vec();
    raw[0] = 2;
    assert_eq!(open_chat(raw.into()).unwrap_err(), Error::BadSignature);
    // And the other way round: a batch without headers relabelled as version 3.
    let mut raw = bytes_of(&sealed(1, Digest::ZERO, &[b"plain"], 5)).to_vec();
    raw[0] = 3;
    assert_eq!(open_chat(raw.into()).unwrap_err(), Error::BadSignature);
}

/// Every single-bit change anywhere in a sealed batch with headers makes `open` fail: exhaustive over a
/// small batch.
#[test]
fn flipping_any_single_bit_of_a_batch_with_headers_makes_open_fail() {
    let b = sealed_with(&[b"ab", b""], &[h(&[("k", "v")]), Headers::new()], 6);
    let raw = bytes_of(&b).to_vec();
    for byte in 0..raw.len() {
        for bit in 0..8 {
            let mut m = raw.clone();
            m[byte] ^= 1 << bit;
            assert!(open_chat(m.into()).is_err(), "flip of bit {bit} in byte {byte} was accepted");
        }
    }
}

#[test]
fn records_with_headers_cannot_be_swapped() {
    // Two records of equal length, headers and all, swapped in place.
    let b = sealed_with(&[b"p1", b"p2"], &[h(&[("n", "1")]), h(&[("n", "2")])], 7);
    let raw = bytes_of(&b).to_vec();
    let rec = RECORD_OVERHEAD + h(&[("n", "1")]).encoded_len() + 2;
    let start = raw.len() - SIGNATURE_LEN - 2 * rec;
    let mut m = raw.clone();
    m[start..start + rec].copy_from_slice(&raw[start + rec..start + 2 * rec]);
    m[start + rec..start + 2 * rec].copy_from_slice(&raw[start..start + rec]);
    assert_eq!(open_chat(m.into()).unwrap_err(), Error::BadSignature);
}

#[test]
fn batches_of_versions_1_and_2_open_with_no_headers() {
    for b in [sealed_v1(1, Digest::ZERO, &[b"x", b"y"], 8), sealed(1, Digest::ZERO, &[b"x", b"y"], 8)] {
        let opened = open_chat(bytes_of(&b)).unwrap();
        assert!(!opened.header.with_headers);
        assert_eq!(opened.headers, [Headers::new(), Headers::new()]);
    }
}

#[test]
fn headers_on_the_legacy_chain_are_refused() {
    let p = SealParams { chain: ChainId::LEGACY, ..params(1, Digest::ZERO) };
    let r = seal_with_headers(
        &alice(),
        &content_key(),
        p,
        &[b"x"],
        &[h(&[("k", "v")])],
        &Limits::default(),
        &mut rng(9),
    );
    assert_eq!(r.unwrap_err(), Error::InvalidHeader("headers on the legacy chain"));
    // Without headers, the legacy chain seals version 1 as before.
    let p = SealParams { chain: ChainId::LEGACY, ..params(1, Digest::ZERO) };
    let b = seal_with_headers(
        &alice(),
        &content_key(),
        p,
        &[b"x"],
        &[Headers::new()],
        &Limits::default(),
        &mut rng(9),
    )
    .unwrap();
    assert_eq!(b.as_bytes()[0], 1);
}

#[test]
fn seal_with_headers_wants_one_set_of_headers_per_message() {
    let r = seal_with_headers(
        &alice(),
        &content_key(),
        params(1, Digest::ZERO),
        &[b"x", b"y"],
        &[Headers::new()],
        &Limits::default(),
        &mut rng(10),
    );
    assert_eq!(r.unwrap_err(), Error::Malformed("not one set of headers per message"));
}

#[test]
fn headers_count_towards_the_batch_size_limit() {
    let big = h(&[("v", &"x".repeat(MAX_HEADER_VALUE_LEN))]);
    let without = sealed_with(&[b"p"], &[Headers::new()], 11).as_bytes().len();
    // A limit that the payload fits in, and the payload with its headers does not.
    let limits = Limits { max_batch_len: (without + big.encoded_len()) as u32, ..Limits::default() };
    let fits = seal_with_headers(
        &alice(),
        &content_key(),
        params(1, Digest::ZERO),
        &[b"p"],
        std::slice::from_ref(&big),
        &limits,
        &mut rng(11),
    )
    .unwrap();
    assert_eq!(fits.as_bytes().len(), limits.max_batch_len as usize);
    let limits = Limits { max_batch_len: limits.max_batch_len - 1, ..limits };
    let refused = seal_with_headers(
        &alice(),
        &content_key(),
        params(1, Digest::ZERO),
        &[b"p"],
        &[big],
        &limits,
        &mut rng(11),
    );
    assert!(matches!(refused, Err(Error::TooLarge { what: "batch", .. })), "{refused:?}");
}

#[test]
fn the_largest_headers_seal_and_open() {
    let mut full = Headers::new();
    for i in 0..MAX_HEADERS {
        full.insert(&format!("{i:0>64}"), "v".repeat(MAX_HEADER_VALUE_LEN)).unwrap();
    }
    let b = sealed_with(&[b"p"], std::slice::from_ref(&full), 12);
    assert_eq!(open_chat(bytes_of(&b)).unwrap().headers, [full]);
}

#[test]
fn decode_rejects_a_version_3_record_too_short_for_its_header_count() {
    // A version-3 record of exactly a tag: structurally impossible, refused before any cryptography.
    let b = sealed_with(&[b""], &[h(&[("k", "")])], 13);
    let mut raw = bytes_of(&b).to_vec();
    let rec = RECORD_OVERHEAD + h(&[("k", "")]).encoded_len();
    let len_at = raw.len() - SIGNATURE_LEN - rec + 24;
    raw[len_at..len_at + 4].copy_from_slice(&16u32.to_be_bytes());
    // Drop the record's section bytes so that the lengths add up.
    let ct_end = raw.len() - SIGNATURE_LEN;
    raw.drain(ct_end - 16 - h(&[("k", "")]).encoded_len()..ct_end - 16);
    assert_eq!(
        SealedBatch::decode(raw.into(), &Limits::default()).unwrap_err(),
        Error::Malformed("record shorter than its tag and header count")
    );
}

#[test]
fn decode_rejects_truncation_of_a_batch_with_headers_at_every_length() {
    let b = sealed_with(&[b"abc", b"d"], &[h(&[("k", "v")]), Headers::new()], 14);
    let raw = bytes_of(&b);
    for cut in 0..raw.len() {
        let err = SealedBatch::decode(raw.slice(..cut), &Limits::default()).unwrap_err();
        assert!(matches!(err, Error::Truncated(_)), "cut at {cut}: {err:?}");
    }
}

fn arb_headers() -> impl Strategy<Value = Headers> {
    let name = "[A-Za-z0-9._-]{1,64}";
    let value = any::<String>().prop_map(|v| v.chars().take(40).collect::<String>());
    proptest::collection::btree_map(name, value, 0..5).prop_map(|pairs| {
        let mut headers = Headers::new();
        for (name, value) in pairs {
            headers.insert(&name, value).unwrap();
        }
        headers
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn seal_open_round_trip_with_headers(
        msgs in proptest::collection::vec(
            (arb_headers(), proptest::collection::vec(any::<u8>(), 0..100)), 1..10),
        seed in any::<u64>(),
    ) {
        let (headers, payloads): (Vec<Headers>, Vec<Vec<u8>>) = msgs.into_iter().unzip();
        let b = seal_with_headers(&alice(), &content_key(), params(1, Digest::ZERO), &payloads, &headers,
            &Limits::default(), &mut rng(seed)).unwrap();
        let any_headers = headers.iter().any(|h| !h.is_empty());
        prop_assert_eq!(b.as_bytes()[0], if any_headers { 3 } else { 2 });
        let opened = open_chat(bytes_of(&b)).unwrap();
        prop_assert_eq!(opened.messages.iter().map(|m| m.to_vec()).collect::<Vec<_>>(), payloads);
        prop_assert_eq!(opened.headers, headers);
    }
}
