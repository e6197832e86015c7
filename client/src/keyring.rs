//! The keyring: where a publisher finds the content key to seal with, and where a subscriber finds the
//! content keys to open with and the publisher keys it trusts.
//!
//! Publishers and subscriptions never read the identity file for keys: they ask a [`KeySource`] for a
//! [`TopicKeys`] snapshot of one topic. Today the only source is the identity file ([`IdentityKeys`]:
//! `[[content_key]]` and `[[publisher]]` entries). Topic policies (signed by a topic authority, fetched from
//! the broker, with HPKE-wrapped content keys) will be a second source behind the same two types, so that
//! their arrival changes nothing in the public API.

use std::collections::BTreeMap;
use std::sync::Arc;

use sealpost_protocol::{ContentKey, Epoch, KeyLookup, PublicKey, Topic};

use crate::error::Result;
use crate::identity::Inner;

/// What one principal knows about one topic's keys.
#[derive(Clone, Default)]
pub(crate) struct TopicKeys {
    content: BTreeMap<Epoch, ContentKey>,
    /// Trusted publisher keys with their principals.
    trusted: Vec<(PublicKey, String)>,
}

impl TopicKeys {
    /// Builds a snapshot from its parts.
    pub(crate) fn new(content: BTreeMap<Epoch, ContentKey>, trusted: Vec<(PublicKey, String)>) -> Self {
        Self { content, trusted }
    }

    /// The key to seal new batches with: the one of the highest epoch held.
    pub(crate) fn sealing_key(&self) -> Option<(Epoch, &ContentKey)> {
        self.content.iter().next_back().map(|(e, k)| (*e, k))
    }

    /// Whether any content key is held.
    pub(crate) fn has_content_key(&self) -> bool {
        !self.content.is_empty()
    }

    /// The principal of `key` if it is trusted to publish on the topic.
    pub(crate) fn trusted_publisher(&self, key: &PublicKey) -> Option<&str> {
        self.trusted.iter().find(|(k, _)| k == key).map(|(_, p)| p.as_str())
    }
}

impl KeyLookup for TopicKeys {
    fn content_key(&self, epoch: Epoch) -> Option<&ContentKey> {
        self.content.get(&epoch)
    }
}

/// A source of [`TopicKeys`].
pub(crate) trait KeySource: Send + Sync {
    /// The keys of `topic` as this source knows them now.
    fn topic_keys(&self, topic: &Topic) -> Result<TopicKeys>;
}

/// Keys held directly in the identity file.
pub(crate) struct IdentityKeys(pub(crate) Arc<Inner>);

impl KeySource for IdentityKeys {
    fn topic_keys(&self, topic: &Topic) -> Result<TopicKeys> {
        let file = &self.0.file;
        let content = file
            .content_keys(topic)
            .map_err(|e| crate::Error::Identity { path: self.0.path.clone(), message: e.to_string() })?;
        let trusted = file
            .publishers
            .iter()
            .filter(|p| p.topics.matches(topic))
            .map(|p| (p.key, p.principal.clone()))
            .collect();
        Ok(TopicKeys::new(content, trusted))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sealpost_protocol::SigningKey;

    #[test]
    fn sealing_key_is_the_highest_epoch() {
        let mut content = BTreeMap::new();
        content.insert(Epoch(3), ContentKey::from_bytes(&[3; 32]));
        content.insert(Epoch(9), ContentKey::from_bytes(&[9; 32]));
        content.insert(Epoch(1), ContentKey::from_bytes(&[1; 32]));
        let keys = TopicKeys::new(content, vec![]);
        let (epoch, key) = keys.sealing_key().unwrap();
        assert_eq!(epoch, Epoch(9));
        assert_eq!(key.as_bytes(), &[9; 32]);
        assert!(keys.content_key(Epoch(1)).is_some());
        assert!(keys.content_key(Epoch(2)).is_none());
        assert!(TopicKeys::default().sealing_key().is_none());
    }

    #[test]
    fn identity_keys_filter_by_topic_pattern() {
        let dir = tempfile::tempdir().unwrap();
        let alice = SigningKey::from_bytes(&[0xA1; 32]).public_key();
        let extra = format!(
            "[[content_key]]\ntopics = \"demo.>\"\nepoch = 2\nkey = \"{}\"\n\
             [[content_key]]\ntopics = \"other.>\"\nepoch = 5\nkey = \"{}\"\n\
             [[publisher]]\nprincipal = \"alice\"\nkey = \"{alice}\"\ntopics = \"demo.*\"\n",
            "aa".repeat(32),
            "bb".repeat(32)
        );
        let path = crate::identity::tests::write_identity(dir.path(), "bob", &extra);
        let id = crate::Identity::load(path).unwrap();
        let source = IdentityKeys(id.inner().clone());
        let keys = source.topic_keys(&Topic::new("demo.x").unwrap()).unwrap();
        assert_eq!(keys.sealing_key().unwrap().0, Epoch(2));
        assert_eq!(keys.trusted_publisher(&alice), Some("alice"));
        let deep = source.topic_keys(&Topic::new("demo.x.y").unwrap()).unwrap();
        assert_eq!(deep.trusted_publisher(&alice), None);
        let none = source.topic_keys(&Topic::new("nope").unwrap()).unwrap();
        assert!(!none.has_content_key());
    }
}
