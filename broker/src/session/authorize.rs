//! Authorization: may this peer publish this batch, store this policy, read these policies, ask for this
//! chain head, subscribe here; and where does a subscription start.
//!
//! Pure functions of the peer (its principal and the keys its certificate binds), the operator's ACL and
//! the topic's current policy: they hold no state and read nothing, so the stream types of the session
//! ([`PublishStream`](super::PublishStream), [`PolicyStream`](super::PolicyStream),
//! [`Subscribing`](super::Subscribing)) call them with what they looked up. A refusal that concerns a
//! topic the peer may not use reads the same as one for a topic that does not exist
//! ([`Error::NotAuthorized`]).

use sealpost_protocol::principal::valid_principal;
use sealpost_protocol::{
    Offset, PublicKey, SealedBatch, SignedPolicy, StartAt, Topic, VerifiedBatch, VerifiedPolicy,
};

use crate::acl::{Acl, Action};
use crate::tls::Peer;
use crate::{Error, Result};

/// Checks a published batch (already decoded within the frame limits): ACL, signer bound to the principal
/// by its certificate, signer a publisher of the topic's current `policy` under this principal, then the
/// signature (the costly check runs last). A topic without a policy takes no publish. The sequence chain is
/// checked by the log's writer, which sees every batch in order.
pub fn authorize_publish(
    peer: &Peer,
    acl: &Acl,
    policy: Option<&VerifiedPolicy>,
    sealed: SealedBatch,
) -> Result<(Topic, VerifiedBatch)> {
    authorize_publisher(peer, acl, policy, sealed.header())?;
    let topic = sealed.header().topic.clone();
    Ok((topic, sealed.verify()?))
}

/// The checks of [`authorize_publish`] that come before the signature: ACL, signer binding, policy
/// membership, on the batch's header.
pub fn authorize_publisher(
    peer: &Peer,
    acl: &Acl,
    policy: Option<&VerifiedPolicy>,
    header: &sealpost_protocol::BatchHeader,
) -> Result<()> {
    if !acl.allows(&peer.principal, &header.topic, Action::Publish) {
        return Err(Error::NotAuthorized);
    }
    if !peer.signing_keys.contains(&header.publisher) {
        return Err(Error::SignerNotBound(header.publisher.key_id()));
    }
    let Some(policy) = policy else {
        return Err(Error::NotAuthorized);
    };
    match policy.publisher(&header.publisher) {
        Some(member) if member.principal == peer.principal => Ok(()),
        _ => Err(Error::SignerNotBound(header.publisher.key_id())),
    }
}

/// Checks a policy an administrator stores: ACL `admin` on its topic, signed by the configured topic
/// `authority`, and its epoch follows `current` (1 for the first policy of a topic).
pub fn authorize_put_policy(
    peer: &Peer,
    acl: &Acl,
    authority: Option<&PublicKey>,
    current: Option<&VerifiedPolicy>,
    policy: SignedPolicy,
) -> Result<VerifiedPolicy> {
    if !acl.allows(&peer.principal, policy.topic(), Action::Admin) {
        return Err(Error::NotAuthorized);
    }
    let Some(authority) = authority else {
        return Err(Error::PolicyRejected("this broker has no topic authority configured".into()));
    };
    let policy = policy
        .verify(authority)
        .map_err(|_| Error::PolicyRejected("not signed by the configured topic authority".into()))?;
    let expected = current.map_or(1, |c| c.epoch().0 + 1);
    if policy.epoch().0 != expected {
        return Err(Error::PolicyRejected(format!(
            "stale epoch: the next policy of {} must have epoch {expected}, got {}",
            policy.topic(),
            policy.epoch()
        )));
    }
    Ok(policy)
}

/// Checks a request for a topic's policies: any principal that may publish, subscribe or administer it.
pub fn authorize_get_policies(peer: &Peer, acl: &Acl, topic: &Topic) -> Result<()> {
    let allowed = [Action::Publish, Action::Subscribe, Action::Admin]
        .into_iter()
        .any(|action| acl.allows(&peer.principal, topic, action));
    if allowed {
        Ok(())
    } else {
        Err(Error::NotAuthorized)
    }
}

/// Checks a chain-head request. For one of the peer's own keys it is a publisher asking where its chain
/// stands: the principal must be allowed to publish on the topic (so a publisher that may not is refused
/// before it seals anything). For another key it is a subscriber checking that the broker still holds a
/// head it verified: the principal must be allowed to subscribe (the heads are in the batches it reads).
pub fn authorize_head(peer: &Peer, acl: &Acl, topic: &Topic, publisher: &PublicKey) -> Result<()> {
    let may = |action| acl.allows(&peer.principal, topic, action);
    if peer.signing_keys.contains(publisher) {
        return if may(Action::Publish) { Ok(()) } else { Err(Error::NotAuthorized) };
    }
    if may(Action::Subscribe) {
        Ok(())
    } else if may(Action::Publish) {
        Err(Error::SignerNotBound(publisher.key_id()))
    } else {
        Err(Error::NotAuthorized)
    }
}

/// Checks a subscribe request, including the durable subscription's name: it follows the principal-name
/// rule ([`valid_principal`]) but is no principal, so it stays a string (see the protocol's `principal`
/// module).
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
/// resolved against the topic's durable end. Never moved up to the topic's first offset: a subscription
/// that starts below it is told which offsets retention removed, by the first item its reads yield (see
/// [`Store::first_offset`](crate::store::Store::first_offset)).
pub fn start_offset(from: StartAt, committed: Option<Offset>, end: Offset) -> Offset {
    match (committed, from) {
        (Some(offset), _) => offset,
        (None, StartAt::Earliest) => Offset::ZERO,
        (None, StartAt::Latest) => end,
        (None, StartAt::Offset(n)) => n,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use sealpost_protocol::{Limits, SigningKey};

    use crate::session::testing::{acl_from, authority, batch, key, peer, policy, ACL};

    #[test]
    fn publish_by_policy_publisher_with_bound_key_is_accepted() {
        let acl = acl_from(ACL);
        let p = policy("demo.chat", 1, None);
        let (topic, _) =
            authorize_publish(&peer("alice"), &acl, Some(&p), batch(&key("alice"), "demo.chat")).unwrap();
        assert_eq!(topic.as_str(), "demo.chat");
    }

    #[test]
    fn publish_denied_by_acl_is_not_authorized() {
        let acl = acl_from(ACL);
        let p = policy("demo.chat", 1, None);
        let err = authorize_publish(&peer("bob"), &acl, Some(&p), batch(&key("bob"), "demo.chat"));
        assert!(matches!(err, Err(Error::NotAuthorized)));
        // A topic nobody may use answers the same.
        let err = authorize_publish(&peer("alice"), &acl, None, batch(&key("alice"), "other.x"));
        assert!(matches!(err, Err(Error::NotAuthorized)));
    }

    #[test]
    fn publish_on_a_topic_without_policy_is_not_authorized() {
        let acl = acl_from(ACL);
        let err = authorize_publish(&peer("alice"), &acl, None, batch(&key("alice"), "demo.chat"));
        assert!(matches!(err, Err(Error::NotAuthorized)));
    }

    #[test]
    fn publish_signed_by_key_not_bound_by_certificate_is_refused() {
        let acl = acl_from(ACL);
        let p = policy("demo.chat", 1, None);
        let err = authorize_publish(&peer("alice"), &acl, Some(&p), batch(&key("mallory"), "demo.chat"));
        assert!(matches!(err, Err(Error::SignerNotBound(_))));
    }

    #[test]
    fn publish_by_signer_not_a_policy_publisher_is_refused() {
        // Bob's certificate binds his key and the ACL would let him publish, but the policy makes him a
        // subscriber only.
        let acl = acl_from(&ACL.replace("actions = [\"subscribe\"]", "actions = [\"publish\"]"));
        let p = policy("demo.chat", 1, None);
        let err = authorize_publish(&peer("bob"), &acl, Some(&p), batch(&key("bob"), "demo.chat"));
        assert!(matches!(err, Err(Error::SignerNotBound(_))), "{err:?}");
    }

    #[test]
    fn a_head_is_read_by_a_publisher_for_its_own_keys_and_by_a_subscriber_for_others() {
        let acl = acl_from(ACL);
        let topic = Topic::new("demo.chat").unwrap();
        // Alice publishes: her own chains. Bob subscribes: the chains he read, whoever signed them, but
        // not his own key's (that is a publisher's question, and he may not publish).
        assert!(authorize_head(&peer("alice"), &acl, &topic, &key("alice").public_key()).is_ok());
        assert!(authorize_head(&peer("bob"), &acl, &topic, &key("alice").public_key()).is_ok());
        assert!(matches!(
            authorize_head(&peer("bob"), &acl, &topic, &key("bob").public_key()),
            Err(Error::NotAuthorized)
        ));
        assert!(matches!(
            authorize_head(&peer("mallory"), &acl, &topic, &key("alice").public_key()),
            Err(Error::NotAuthorized)
        ));
        // A principal that only publishes asks only for the keys its certificate binds.
        let publish_only = acl_from(&ACL.replace("actions = [\"subscribe\"]", "actions = [\"publish\"]"));
        assert!(authorize_head(&peer("bob"), &publish_only, &topic, &key("bob").public_key()).is_ok());
        assert!(matches!(
            authorize_head(&peer("bob"), &publish_only, &topic, &key("alice").public_key()),
            Err(Error::SignerNotBound(_))
        ));
    }

    #[test]
    fn publish_with_bad_signature_is_refused() {
        let acl = acl_from(ACL);
        let p = policy("demo.chat", 1, None);
        let mut raw = batch(&key("alice"), "demo.chat").into_bytes().to_vec();
        let last = raw.len() - 1;
        raw[last] ^= 1;
        let sealed = SealedBatch::decode(Bytes::from(raw), &Limits::default()).unwrap();
        let err = authorize_publish(&peer("alice"), &acl, Some(&p), sealed);
        assert!(matches!(err, Err(Error::Protocol(sealpost_protocol::Error::BadSignature))));
    }

    fn signed(p: &VerifiedPolicy) -> SignedPolicy {
        SignedPolicy::decode(p.as_bytes().clone(), &Limits::default()).unwrap()
    }

    #[test]
    fn put_policy_needs_admin_the_authority_and_the_next_epoch() {
        let acl = acl_from(ACL);
        let auth = authority().public_key();
        let first = policy("demo.chat", 1, None);
        let second = policy("demo.chat", 2, Some(&first));
        assert!(authorize_put_policy(&peer("admin"), &acl, Some(&auth), None, signed(&first)).is_ok());
        assert!(
            authorize_put_policy(&peer("admin"), &acl, Some(&auth), Some(&first), signed(&second)).is_ok()
        );
        // Not an admin.
        let err = authorize_put_policy(&peer("alice"), &acl, Some(&auth), None, signed(&first));
        assert!(matches!(err, Err(Error::NotAuthorized)));
        // Stale: the stored policy is already epoch 2.
        let err = authorize_put_policy(&peer("admin"), &acl, Some(&auth), Some(&second), signed(&first));
        assert!(matches!(err, Err(Error::PolicyRejected(_))));
        // Skipping an epoch.
        let err = authorize_put_policy(&peer("admin"), &acl, Some(&auth), None, signed(&second));
        assert!(matches!(err, Err(Error::PolicyRejected(_))));
        // Signed by another key than the configured authority, or no authority configured.
        let other = SigningKey::from_bytes(&[0xBB; 32]).public_key();
        let err = authorize_put_policy(&peer("admin"), &acl, Some(&other), None, signed(&first));
        assert!(matches!(err, Err(Error::PolicyRejected(_))));
        let err = authorize_put_policy(&peer("admin"), &acl, None, None, signed(&first));
        assert!(matches!(err, Err(Error::PolicyRejected(_))));
    }

    #[test]
    fn policies_are_readable_by_members_of_the_acl_only() {
        let acl = acl_from(ACL);
        let chat = Topic::new("demo.chat").unwrap();
        for who in ["alice", "bob", "admin"] {
            assert!(authorize_get_policies(&peer(who), &acl, &chat).is_ok(), "{who}");
        }
        assert!(matches!(authorize_get_policies(&peer("mallory"), &acl, &chat), Err(Error::NotAuthorized)));
    }

    #[test]
    fn subscribe_follows_the_acl_and_checks_durable_names() {
        let acl = acl_from(ACL);
        let chat = Topic::new("demo.chat").unwrap();
        assert!(authorize_subscribe(&peer("bob"), &acl, &chat, Some("audit")).is_ok());
        assert!(matches!(
            authorize_subscribe(&peer("mallory"), &acl, &chat, None),
            Err(Error::NotAuthorized)
        ));
        assert!(authorize_subscribe(&peer("bob"), &acl, &chat, Some("a/b")).is_err());
    }

    #[test]
    fn start_offset_prefers_the_committed_offset() {
        let end = Offset(100);
        assert_eq!(start_offset(StartAt::Earliest, Some(Offset(42)), end), Offset(42));
        assert_eq!(start_offset(StartAt::Earliest, None, end), Offset::ZERO);
        assert_eq!(start_offset(StartAt::Latest, None, end), end);
        assert_eq!(start_offset(StartAt::Offset(Offset(50)), None, end), Offset(50));
    }
}
