//! A chain's **head** as the broker holds it, and what the client makes of it: asked with `Head` (the
//! legacy chain) or `HeadOfChain`, answered with `HeadIs`. A broker head behind (or beside) one this
//! client had acknowledged (its publisher) or verified (its subscriber) means the broker dropped (or
//! replaced) batches it had acknowledged or delivered: [`judge`] says so as [`Error::RolledBack`].

use sealpost_protocol::{ChainHead, ChainId, Frame, PublicKey, Topic};

use crate::error::{Action, Error, Result};
use crate::link::{unexpected, Link};

/// Asks on `link` (a fresh stream) where `publisher`'s `chain` of `topic` stands (`None`: the legacy
/// chain, with `Head`, which brokers older than chain ids answer too). A refusal is reported as one of
/// `action`'s.
pub(crate) async fn ask(
    link: &mut Link,
    request_id: u64,
    topic: &Topic,
    publisher: PublicKey,
    chain: Option<ChainId>,
    action: Action,
) -> Result<ChainHead> {
    let topic_ = topic.clone();
    let ask = match chain {
        Some(chain) => Frame::HeadOfChain { request_id, topic: topic_, publisher, chain },
        None => Frame::Head { request_id, topic: topic_, publisher },
    };
    link.send(&ask).await?;
    match link.read().await? {
        Some(Frame::HeadIs { request_id: answered, head }) if answered == request_id => Ok(head),
        Some(Frame::Error { code, message, .. }) => Err(Error::refused(action, topic, code, &message)),
        Some(other) => Err(unexpected(&other, "a Head request")),
        None => Err(Error::ConnectionLost { reason: "the broker ended the stream before answering".into() }),
    }
}

/// Whether the broker's `broker` head of `chain` keeps what this client `held` (acknowledged or
/// verified): the head to continue from (the broker's: it may hold batches stored since), or
/// [`Error::RolledBack`] if it is behind, or at the same place with another digest.
pub(crate) fn judge(topic: &Topic, chain: ChainId, held: ChainHead, broker: ChainHead) -> Result<ChainHead> {
    let behind = broker.next_seq < held.next_seq;
    let replaced = broker.next_seq == held.next_seq && broker.prev_digest != held.prev_digest;
    if behind || replaced {
        return Err(Error::RolledBack {
            topic: topic.clone(),
            chain,
            acknowledged: held.next_seq.saturating_sub(1),
            broker: broker.next_seq.saturating_sub(1),
        });
    }
    Ok(broker)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use sealpost_protocol::Digest;

    use super::*;

    fn head(next_seq: u64, d: u8) -> ChainHead {
        ChainHead { next_seq, prev_digest: Digest([d; 32]) }
    }

    #[test]
    fn a_broker_head_behind_or_beside_the_held_one_is_a_rollback() {
        let topic = Topic::new("demo.chat").unwrap();
        let chain = ChainId([5; 16]);
        let held = head(4, 3);
        // The same head, or further (batches stored since): continue from the broker's.
        assert_eq!(judge(&topic, chain, held, held).unwrap(), held);
        assert_eq!(judge(&topic, chain, held, head(6, 9)).unwrap(), head(6, 9));
        for broker in [head(3, 2), ChainHead::GENESIS, head(4, 7)] {
            match judge(&topic, chain, held, broker) {
                Err(Error::RolledBack { chain: c, acknowledged: 3, broker: b, .. }) => {
                    assert_eq!((c, b), (chain, broker.next_seq - 1));
                }
                other => panic!("{other:?}"),
            }
        }
    }
}
