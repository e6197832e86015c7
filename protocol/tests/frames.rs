//! Frame codec round trips.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use bytes::Bytes;
use proptest::prelude::*;
use sealpost_protocol::*;

fn topic_strategy() -> impl Strategy<Value = Topic> {
    proptest::collection::vec("[a-z0-9_-]{1,8}", 1..5).prop_map(|s| Topic::new(s.join(".")).unwrap())
}

fn start_strategy() -> impl Strategy<Value = StartAt> {
    prop_oneof![
        Just(StartAt::Earliest),
        Just(StartAt::Latest),
        any::<u64>().prop_map(|n| StartAt::Offset(Offset(n)))
    ]
}

fn frame_strategy() -> impl Strategy<Value = Frame> {
    let bytes = proptest::collection::vec(any::<u8>(), 0..512).prop_map(Bytes::from);
    prop_oneof![
        (any::<u64>(), bytes.clone()).prop_map(|(request_id, batch)| Frame::Publish { request_id, batch }),
        (any::<u64>(), any::<u64>(), any::<u32>()).prop_map(|(request_id, first_offset, count)| {
            Frame::Published { request_id, first_offset: Offset(first_offset), count }
        }),
        (any::<u64>(), topic_strategy(), start_strategy(), proptest::option::of("[a-z]{0,12}")).prop_map(
            |(request_id, topic, from, durable)| Frame::Subscribe { request_id, topic, from, durable }
        ),
        (any::<u64>(), any::<u64>(), any::<u64>()).prop_map(|(request_id, subscription, start_offset)| {
            Frame::Subscribed { request_id, subscription, start_offset: Offset(start_offset) }
        }),
        (any::<u64>(), any::<u64>(), bytes.clone()).prop_map(|(subscription, offset, batch)| {
            Frame::Deliver { subscription, offset: Offset(offset), batch }
        }),
        (any::<u64>(), any::<u64>()).prop_map(|(subscription, next_offset)| Frame::Ack {
            subscription,
            next_offset: Offset(next_offset)
        }),
        any::<u64>().prop_map(|subscription| Frame::Unsubscribe { subscription }),
        (proptest::option::of(any::<u64>()), any::<u16>(), ".{0,40}").prop_map(
            |(request_id, code, message)| Frame::Error { request_id, code: ErrorCode(code), message }
        ),
        (any::<u64>(), topic_strategy(), any::<[u8; 32]>()).prop_map(|(request_id, topic, seed)| {
            Frame::Head { request_id, topic, publisher: SigningKey::from_bytes(&seed).public_key() }
        }),
        (any::<u64>(), any::<u64>(), any::<[u8; 32]>()).prop_map(|(request_id, next_seq, d)| Frame::HeadIs {
            request_id,
            head: ChainHead { next_seq, prev_digest: Digest(d) }
        }),
        (any::<u64>(), bytes.clone())
            .prop_map(|(request_id, policy)| Frame::PutPolicy { request_id, policy }),
        any::<u64>().prop_map(|request_id| Frame::PolicyStored { request_id }),
        (any::<u64>(), topic_strategy())
            .prop_map(|(request_id, topic)| Frame::GetPolicies { request_id, topic }),
        (any::<u64>(), proptest::collection::vec(bytes, 0..3))
            .prop_map(|(request_id, policies)| Frame::Policies { request_id, policies }),
        (
            (any::<u64>(), any::<u64>(), any::<u64>(), any::<u16>()),
            proptest::option::of((any::<[u8; 32]>(), any::<[u8; 16]>(), any::<u64>(), any::<[u8; 32]>())),
        )
            .prop_map(|((subscription, offset, count, reason), batch)| Frame::Lost {
                subscription,
                offset: Offset(offset),
                count,
                batch: batch.map(|(seed, chain, first_seq, d)| LostBatch {
                    publisher: SigningKey::from_bytes(&seed).public_key(),
                    chain: ChainId(chain),
                    first_seq,
                    digest: Digest(d),
                }),
                reason: ErrorCode(reason),
            }),
        (any::<u64>(), topic_strategy(), any::<[u8; 32]>(), any::<[u8; 16]>()).prop_map(
            |(request_id, topic, seed, chain)| Frame::HeadOfChain {
                request_id,
                topic,
                publisher: SigningKey::from_bytes(&seed).public_key(),
                chain: ChainId(chain),
            }
        ),
        (any::<u64>(), proptest::option::of(topic_strategy()), proptest::option::of(any::<u64>())).prop_map(
            |(request_id, topic, id)| Frame::Admin {
                request_id,
                query: match (topic, id) {
                    (Some(t), _) => AdminQuery::Topics { after: Some(t) },
                    (None, Some(id)) => AdminQuery::Connections { after: Some(id) },
                    (None, None) => AdminQuery::Stats,
                },
            }
        ),
        (
            any::<u64>(),
            proptest::collection::vec((topic_strategy(), any::<u64>(), any::<u64>()), 0..4),
            any::<bool>()
        )
            .prop_map(|(request_id, rows, more)| Frame::AdminAnswer {
                request_id,
                answer: AdminAnswer::Topics {
                    rows: rows
                        .into_iter()
                        .map(|(topic, first, next)| TopicStats {
                            topic,
                            first_offset: Offset(first),
                            next_offset: Offset(next),
                            epoch: None,
                        })
                        .collect(),
                    more,
                },
            }),
    ]
}

proptest! {
    #[test]
    fn frame_round_trip(frames in proptest::collection::vec(frame_strategy(), 1..8)) {
        // Several frames back to back in one buffer, as on a stream.
        let mut buf = Vec::new();
        for f in &frames {
            f.encode(&mut buf).unwrap();
        }
        let mut rest = &buf[..];
        for f in &frames {
            let n = Frame::check(rest, Limits::DEFAULT_MAX_FRAME_LEN).unwrap().unwrap();
            prop_assert_eq!(&Frame::decode(&rest[..n]).unwrap(), f);
            prop_assert_eq!(&Frame::decode_bytes(Bytes::copy_from_slice(&rest[..n])).unwrap(), f);
            rest = &rest[n..];
        }
        prop_assert!(rest.is_empty());
    }

    #[test]
    fn encode_split_is_encode_in_two_parts(frame in frame_strategy()) {
        let (head, tail) = frame.encode_split().unwrap();
        prop_assert_eq!([&head[..], &tail[..]].concat(), frame.to_vec().unwrap());
    }

    #[test]
    fn frame_decode_never_panics(raw in proptest::collection::vec(any::<u8>(), 0..300)) {
        if let Ok(Some(n)) = Frame::check(&raw, 1024) {
            let _ = Frame::decode(&raw[..n]);
        }
        let _ = Frame::decode_body(&raw);
        // The slicing decoder accepts and refuses exactly what the copying one does.
        prop_assert_eq!(Frame::decode_body_bytes(Bytes::from(raw.clone())), Frame::decode_body(&raw));
        let mut framed = (raw.len() as u32).to_be_bytes().to_vec();
        framed.extend_from_slice(&raw);
        prop_assert_eq!(Frame::decode_bytes(Bytes::from(framed.clone())), Frame::decode(&framed));
    }

    #[test]
    fn decode_bytes_agrees_with_decode_on_frames_with_a_damaged_byte(
        frame in frame_strategy(),
        at in any::<prop::sample::Index>(),
        xor in 1u8..,
    ) {
        let mut raw = frame.to_vec().unwrap();
        let i = 4 + at.index(raw.len() - 4);
        raw[i] ^= xor;
        prop_assert_eq!(Frame::decode_bytes(Bytes::from(raw.clone())), Frame::decode(&raw));
    }
}
