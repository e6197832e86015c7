//! Golden vectors: the exact bytes of a sealed batch, of a topic policy and of each frame kind, made from
//! fixed keys, RNG seed and time. A failure here means the wire or envelope format changed. If that is deliberate, bump the
//! version it concerns, document the change in docs/architecture.md, and regenerate with
//! `SEALPOST_BLESS=1 cargo test -p sealpost-protocol --test vectors`.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::PathBuf;

use bytes::Bytes;
use common::*;
use sealpost_protocol::*;

fn check_vector(name: &str, bytes: &[u8]) {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/vectors").join(format!("{name}.hex"));
    let hex = hex::encode(bytes);
    if std::env::var_os("SEALPOST_BLESS").is_some() {
        std::fs::write(&path, format!("{hex}\n")).unwrap();
        return;
    }
    let want = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    assert_eq!(hex, want.trim(), "{name} differs from its golden vector {}", path.display());
}

/// A batch of format version 1 (the legacy chain): the frames' vectors carry it.
fn golden_batch() -> VerifiedBatch {
    let first = sealed_v1(1, Digest::ZERO, &[b"golden-1", b"golden-2"], 42);
    sealed_v1(3, first.digest(), &[b"hello, sealpost"], 43)
}

/// The same messages in format version 2, on chain [`CHAIN`].
fn golden_batch_v2() -> VerifiedBatch {
    let first = sealed(1, Digest::ZERO, &[b"golden-1", b"golden-2"], 42);
    sealed(3, first.digest(), &[b"hello, sealpost"], 43)
}

/// The same chain in format version 3: the second batch's message carries two headers.
fn golden_batch_v3() -> VerifiedBatch {
    let first = sealed(1, Digest::ZERO, &[b"golden-1", b"golden-2"], 42);
    let headers = golden_headers();
    let params = SealParams { first_seq: 3, prev_digest: first.digest(), ..params(3, first.digest()) };
    let msgs: [&[u8]; 1] = [b"hello, sealpost"];
    seal_with_headers(&alice(), &content_key(), params, &msgs, &[headers], &Limits::default(), &mut rng(43))
        .unwrap()
}

fn golden_headers() -> Headers {
    Headers::new().with("content-type", "text/plain").unwrap().with("trace-id", "4bf92f35").unwrap()
}

#[test]
fn sealed_batch_v3_matches_golden_vector() {
    let b = golden_batch_v3();
    assert_eq!(b.as_bytes()[0], 3);
    check_vector("batch-v3", b.as_bytes());
    check_vector("batch-v3-digest", b.digest().as_bytes());
    // The version-2 batch of the same message, keys and RNG, plus exactly the header section
    // (1 + 1 + 12 + 2 + 10 + 1 + 8 + 2 + 8 = 45 bytes).
    assert_eq!(golden_headers().encoded_len(), 45);
    assert_eq!(b.as_bytes().len(), golden_batch_v2().as_bytes().len() + 45);
}

#[test]
fn checked_in_batch_v3_opens_with_its_headers() {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/vectors/batch-v3.hex");
    let raw = hex::decode(std::fs::read_to_string(path).unwrap().trim()).unwrap();
    let opened = open(raw.into(), &topic("demo.chat"), &keys(), &Limits::default()).unwrap();
    assert_eq!((opened.header.first_seq, opened.header.chain), (3, CHAIN));
    assert_eq!(opened.messages, vec![Bytes::from_static(b"hello, sealpost")]);
    assert_eq!(opened.headers, vec![golden_headers()]);
}

#[test]
fn sealed_batch_matches_golden_vector() {
    let b = golden_batch();
    check_vector("batch", b.as_bytes());
    check_vector("batch-digest", b.digest().as_bytes());
    // And the golden bytes still open to the same plaintext.
    let opened = open(b.as_bytes().clone(), &topic("demo.chat"), &keys(), &Limits::default()).unwrap();
    assert_eq!(opened.messages, vec![Bytes::from_static(b"hello, sealpost")]);
}

#[test]
fn sealed_batch_v2_matches_golden_vector() {
    let b = golden_batch_v2();
    assert_eq!(b.as_bytes()[0], 2);
    assert_eq!(b.header().chain, CHAIN);
    check_vector("batch-v2", b.as_bytes());
    check_vector("batch-v2-digest", b.digest().as_bytes());
    let opened = open(b.as_bytes().clone(), &topic("demo.chat"), &keys(), &Limits::default()).unwrap();
    assert_eq!(opened.messages, vec![Bytes::from_static(b"hello, sealpost")]);
    // The same messages, keys, sequence numbers and RNG as the version-1 vector, another digest.
    assert_ne!(b.digest(), golden_batch().digest());
}

#[test]
fn checked_in_batch_v2_opens_on_its_chain() {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/vectors/batch-v2.hex");
    let raw = hex::decode(std::fs::read_to_string(path).unwrap().trim()).unwrap();
    let opened = open(raw.into(), &topic("demo.chat"), &keys(), &Limits::default()).unwrap();
    assert_eq!((opened.header.first_seq, opened.header.chain), (3, CHAIN));
    assert_eq!(opened.messages, vec![Bytes::from_static(b"hello, sealpost")]);
}

#[test]
fn checked_in_batch_opens() {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/vectors/batch.hex");
    let raw = hex::decode(std::fs::read_to_string(path).unwrap().trim()).unwrap();
    let opened = open(raw.into(), &topic("demo.chat"), &keys(), &Limits::default()).unwrap();
    assert_eq!(opened.header.first_seq, 3);
    assert_eq!(opened.header.chain, ChainId::LEGACY);
    assert_eq!(opened.messages, vec![Bytes::from_static(b"hello, sealpost")]);
}

#[test]
fn frames_match_golden_vectors() {
    let batch = golden_batch().into_bytes();
    let (first, second) = policy_chain();
    let frames = [
        ("frame-publish", Frame::Publish { request_id: 1, batch: batch.clone() }),
        ("frame-published", Frame::Published { request_id: 1, first_offset: Offset(1000), count: 1 }),
        (
            "frame-subscribe",
            Frame::Subscribe {
                request_id: 2,
                topic: topic("demo.chat"),
                from: StartAt::Offset(Offset(1000)),
                durable: Some("audit".into()),
            },
        ),
        (
            "frame-subscribed",
            Frame::Subscribed { request_id: 2, subscription: 5, start_offset: Offset(1000) },
        ),
        ("frame-deliver", Frame::Deliver { subscription: 5, offset: Offset(1000), batch }),
        ("frame-ack", Frame::Ack { subscription: 5, next_offset: Offset(1001) }),
        ("frame-unsubscribe", Frame::Unsubscribe { subscription: 5 }),
        (
            "frame-error",
            Frame::Error {
                request_id: Some(3),
                code: ErrorCode::NOT_AUTHORIZED,
                message: "not authorized".into(),
            },
        ),
        (
            "frame-head",
            Frame::Head { request_id: 4, topic: topic("demo.chat"), publisher: alice().public_key() },
        ),
        ("frame-head-is", Frame::HeadIs { request_id: 4, head: ChainHead::after(&golden_batch()) }),
        ("frame-put-policy", Frame::PutPolicy { request_id: 6, policy: first.as_bytes().clone() }),
        ("frame-policy-stored", Frame::PolicyStored { request_id: 6 }),
        ("frame-get-policies", Frame::GetPolicies { request_id: 7, topic: topic("demo.chat") }),
        (
            "frame-policies",
            Frame::Policies { request_id: 7, policies: vec![first.into_bytes(), second.into_bytes()] },
        ),
        (
            "frame-lost",
            Frame::Lost {
                subscription: 5,
                offset: Offset(1000),
                count: 1,
                batch: Some(LostBatch {
                    publisher: alice().public_key(),
                    chain: CHAIN,
                    first_seq: 3,
                    digest: golden_batch().digest(),
                }),
                reason: ErrorCode::DATA_LOST,
            },
        ),
        (
            "frame-get-policy-history",
            Frame::GetPolicyHistory {
                request_id: 8,
                topic: topic("demo.chat"),
                before: Some(Epoch(5)),
                max: 64,
            },
        ),
        (
            "frame-head-of-chain",
            Frame::HeadOfChain {
                request_id: 9,
                topic: topic("demo.chat"),
                publisher: alice().public_key(),
                chain: CHAIN,
            },
        ),
        (
            "frame-admin",
            Frame::Admin {
                request_id: 10,
                query: AdminQuery::Subscriptions {
                    after: Some(DurableKey {
                        topic: topic("demo.chat"),
                        principal: "bob".parse().unwrap(),
                        name: "audit".into(),
                    }),
                },
            },
        ),
        (
            "frame-admin-answer",
            Frame::AdminAnswer {
                request_id: 10,
                answer: AdminAnswer::Topics {
                    rows: vec![TopicStats {
                        topic: topic("demo.chat"),
                        first_offset: Offset(0),
                        next_offset: Offset(42),
                        epoch: Some(Epoch(3)),
                    }],
                    more: false,
                },
            },
        ),
        (
            "frame-subscribe-shared",
            Frame::SubscribeShared {
                request_id: 11,
                topic: topic("demo.chat"),
                from: StartAt::Earliest,
                group: "workers".into(),
            },
        ),
        ("frame-rewind", Frame::Rewind { subscription: 7, offset: Offset(900) }),
        ("frame-rewound", Frame::Rewound { subscription: 7 }),
    ];
    for (name, frame) in frames {
        let bytes = frame.to_vec().unwrap();
        check_vector(name, &bytes);
        assert_eq!(Frame::decode(&bytes).unwrap(), frame);
        // The zero-copy paths write and read the same bytes.
        let (head, tail) = frame.encode_split().unwrap();
        assert_eq!([&head[..], &tail[..]].concat(), bytes, "{name}: encode_split");
        assert_eq!(Frame::decode_bytes(bytes.into()).unwrap(), frame, "{name}: decode_bytes");
    }
}

#[test]
fn topic_policy_matches_golden_vector() {
    // Epoch 1 of demo.chat: alice publishes and reads, bob reads.
    let (first, second) = policy_chain();
    check_vector("policy", first.as_bytes());
    check_vector("policy-digest", first.digest().as_bytes());
    assert_eq!(second.prev_digest(), first.digest());
}

#[test]
fn checked_in_policy_decodes_verifies_and_unwraps() {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/vectors/policy.hex");
    let raw = hex::decode(std::fs::read_to_string(path).unwrap().trim()).unwrap();
    let policy = SignedPolicy::decode(raw.into(), &Limits::default())
        .unwrap()
        .verify(&authority().public_key())
        .unwrap();
    assert_eq!(policy.topic(), &topic("demo.chat"));
    assert_eq!(policy.epoch(), Epoch(1));
    assert_eq!(policy.created_at(), Timestamp(POLICY_TIME));
    assert_eq!(policy.prev_digest(), Digest::ZERO);
    let names: Vec<_> = policy.members().iter().map(|m| m.principal.as_str()).collect();
    assert_eq!(names, ["alice", "bob"]);
    assert_eq!(policy.publisher(&alice().public_key()).unwrap().principal, "alice");
    assert!(policy.publisher(&bob().public_key()).is_none());
    for name in ["alice", "bob"] {
        assert_eq!(policy.content_key(name, &hpke_secret(name)).unwrap().as_bytes(), epoch_key(1).as_bytes());
    }
}
