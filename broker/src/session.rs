//! The broker's synchronous decisions about one client request, separate from the async shell so that
//! each is unit-tested: may this principal publish this batch, ask for this chain head, subscribe here,
//! and where does a subscription start.

use bytes::Bytes;
use sealpost_protocol::{Limits, PublicKey, SealedBatch, StartAt, Topic, VerifiedBatch};

use crate::acl::{Acl, Action};
use crate::tls::{valid_principal, Peer};
use crate::{Error, Result};

/// Checks a published batch: size and structure, ACL, signer bound to the principal, then the signature
/// (the costly check runs last). The sequence chain is checked by the log's writer, which sees every batch
/// in order.
pub fn authorize_publish(
    peer: &Peer,
    acl: &Acl,
    limits: &Limits,
    batch: Bytes,
) -> Result<(Topic, VerifiedBatch)> {
    let sealed = SealedBatch::decode(batch, limits)?;
    let header = sealed.header();
    if !acl.allows(&peer.principal, &header.topic, Action::Publish) {
        return Err(Error::NotAuthorized);
    }
    if !peer.signing_keys.contains(&header.publisher) {
        return Err(Error::SignerNotBound(header.publisher.key_id()));
    }
    let topic = header.topic.clone();
    Ok((topic, sealed.verify()?))
}

/// Checks a chain-head request: the principal may publish on the topic and the key is bound to it.
pub fn authorize_head(peer: &Peer, acl: &Acl, topic: &Topic, publisher: &PublicKey) -> Result<()> {
    if !acl.allows(&peer.principal, topic, Action::Publish) {
        return Err(Error::NotAuthorized);
    }
    if !peer.signing_keys.contains(publisher) {
        return Err(Error::SignerNotBound(publisher.key_id()));
    }
    Ok(())
}

/// Checks a subscribe request, including the durable subscription's name (same rules as principals).
pub fn authorize_subscribe(peer: &Peer, acl: &Acl, topic: &Topic, durable: Option<&str>) -> Result<()> {
    if !acl.allows(&peer.principal, topic, Action::Subscribe) {
        return Err(Error::NotAuthorized);
    }
    if durable.is_some_and(|name| !valid_principal(name)) {
        return Err(Error::Protocol(sealpost_protocol::Error::Malformed("durable subscription name")));
    }
    Ok(())
}

/// Where a subscription starts: a durable subscription's committed offset if it has one, else `from`
/// resolved against the topic's first stored offset and durable end.
pub fn start_offset(from: StartAt, committed: Option<u64>, first: u64, end: u64) -> u64 {
    match (committed, from) {
        (Some(offset), _) => offset,
        (None, StartAt::Earliest) => first,
        (None, StartAt::Latest) => end,
        (None, StartAt::Offset(n)) => n.max(first),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;
    use sealpost_protocol::{seal, ContentKey, Digest, Epoch, SealParams, SigningKey, Timestamp};

    const ACL: &str = r#"
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
"#;

    fn batch(signer: &SigningKey, topic: &str) -> Bytes {
        let params = SealParams {
            topic: Topic::new(topic).unwrap(),
            epoch: Epoch(1),
            first_seq: 1,
            prev_digest: Digest::ZERO,
            created_at: Timestamp(0),
        };
        let mut rng = rand::rngs::StdRng::seed_from_u64(1);
        seal(signer, &ContentKey::from_bytes(&[1; 32]), params, &[b"x"], &Limits::default(), &mut rng)
            .unwrap()
            .into_bytes()
    }

    fn peer(name: &str, key: &SigningKey) -> Peer {
        Peer { principal: name.into(), signing_keys: vec![key.public_key()] }
    }

    #[test]
    fn publish_by_allowed_principal_with_bound_key_is_accepted() {
        let acl = Acl::from_toml(ACL).unwrap();
        let alice = SigningKey::from_bytes(&[1; 32]);
        let (topic, _) =
            authorize_publish(&peer("alice", &alice), &acl, &Limits::default(), batch(&alice, "demo.chat"))
                .unwrap();
        assert_eq!(topic.as_str(), "demo.chat");
    }

    #[test]
    fn publish_denied_by_acl_is_not_authorized() {
        let acl = Acl::from_toml(ACL).unwrap();
        let bob = SigningKey::from_bytes(&[2; 32]);
        let err = authorize_publish(&peer("bob", &bob), &acl, &Limits::default(), batch(&bob, "demo.chat"));
        assert!(matches!(err, Err(Error::NotAuthorized)));
        // A topic nobody may use answers the same.
        let alice = SigningKey::from_bytes(&[1; 32]);
        let err =
            authorize_publish(&peer("alice", &alice), &acl, &Limits::default(), batch(&alice, "other.x"));
        assert!(matches!(err, Err(Error::NotAuthorized)));
    }

    #[test]
    fn publish_signed_by_unbound_key_is_refused() {
        let acl = Acl::from_toml(ACL).unwrap();
        let alice = SigningKey::from_bytes(&[1; 32]);
        let mallory = SigningKey::from_bytes(&[6; 32]);
        let err =
            authorize_publish(&peer("alice", &alice), &acl, &Limits::default(), batch(&mallory, "demo.chat"));
        assert!(matches!(err, Err(Error::SignerNotBound(_))));
    }

    #[test]
    fn publish_with_bad_signature_is_refused() {
        let acl = Acl::from_toml(ACL).unwrap();
        let alice = SigningKey::from_bytes(&[1; 32]);
        let mut raw = batch(&alice, "demo.chat").to_vec();
        let last = raw.len() - 1;
        raw[last] ^= 1;
        let err = authorize_publish(&peer("alice", &alice), &acl, &Limits::default(), raw.into());
        assert!(matches!(err, Err(Error::Protocol(sealpost_protocol::Error::BadSignature))));
    }

    #[test]
    fn subscribe_follows_the_acl_and_checks_durable_names() {
        let acl = Acl::from_toml(ACL).unwrap();
        let k = SigningKey::from_bytes(&[2; 32]);
        let chat = Topic::new("demo.chat").unwrap();
        assert!(authorize_subscribe(&peer("bob", &k), &acl, &chat, Some("audit")).is_ok());
        assert!(matches!(
            authorize_subscribe(&peer("mallory", &k), &acl, &chat, None),
            Err(Error::NotAuthorized)
        ));
        assert!(authorize_subscribe(&peer("bob", &k), &acl, &chat, Some("a/b")).is_err());
    }

    #[test]
    fn start_offset_prefers_the_committed_offset() {
        assert_eq!(start_offset(StartAt::Earliest, Some(42), 0, 100), 42);
        assert_eq!(start_offset(StartAt::Earliest, None, 5, 100), 5);
        assert_eq!(start_offset(StartAt::Latest, None, 5, 100), 100);
        assert_eq!(start_offset(StartAt::Offset(50), None, 5, 100), 50);
        assert_eq!(start_offset(StartAt::Offset(1), None, 5, 100), 5);
    }
}
