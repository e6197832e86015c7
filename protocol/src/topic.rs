//! Topic names and the wildcard patterns that access-control lists are written in.
//!
//! A topic name is 1 to 255 bytes of dot-separated segments, for example `demo.chat`. No segment is empty,
//! and no byte is a control character, whitespace, `*` or `>` (those two are reserved for patterns).
//!
//! A pattern has the same shape, but a segment may also be `*`, which matches exactly one segment, and the
//! last segment may be `>`, which matches one or more segments. So `demo.*` matches `demo.chat` but not
//! `demo.chat.eu`, and `demo.>` matches both but not `demo` itself. This is the NATS subject syntax.

use core::fmt;
use core::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::{Error, Result};

/// Longest topic name or pattern, in bytes. The canonical batch encoding stores the length in one byte.
pub const MAX_TOPIC_LEN: usize = 255;

/// A validated topic name.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Topic(String);

impl Topic {
    /// Validates `name` as a topic name.
    pub fn new(name: impl Into<String>) -> Result<Self> {
        let name = name.into();
        check_shape(&name).map_err(Error::InvalidTopic)?;
        if name.split('.').any(|s| s == "*" || s == ">" || s.contains(['*', '>'])) {
            return Err(Error::InvalidTopic("wildcards are only allowed in patterns"));
        }
        Ok(Self(name))
    }

    /// The name as a string.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The dot-separated segments.
    pub fn segments(&self) -> impl Iterator<Item = &str> {
        self.0.split('.')
    }
}

/// Rules shared by names and patterns: length, no empty segment, printable non-space bytes only.
fn check_shape(s: &str) -> core::result::Result<(), &'static str> {
    if s.is_empty() {
        return Err("empty");
    }
    if s.len() > MAX_TOPIC_LEN {
        return Err("longer than 255 bytes");
    }
    if s.chars().any(|c| c.is_control() || c.is_whitespace()) {
        return Err("contains whitespace or a control character");
    }
    if s.split('.').any(str::is_empty) {
        return Err("empty segment");
    }
    Ok(())
}

impl fmt::Display for Topic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for Topic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Topic({:?})", self.0)
    }
}

impl FromStr for Topic {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        Self::new(s)
    }
}

impl TryFrom<String> for Topic {
    type Error = Error;
    fn try_from(s: String) -> Result<Self> {
        Self::new(s)
    }
}

impl From<Topic> for String {
    fn from(t: Topic) -> String {
        t.0
    }
}

/// A validated topic pattern, as written in access-control rules.
#[derive(Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct TopicPattern(String);

impl TopicPattern {
    /// Validates `pattern`.
    pub fn new(pattern: impl Into<String>) -> Result<Self> {
        let pattern = pattern.into();
        check_shape(&pattern).map_err(Error::InvalidPattern)?;
        let count = pattern.split('.').count();
        for (i, seg) in pattern.split('.').enumerate() {
            match seg {
                "*" => {}
                ">" if i + 1 == count => {}
                ">" => return Err(Error::InvalidPattern("'>' must be the last segment")),
                s if s.contains(['*', '>']) => {
                    return Err(Error::InvalidPattern("a wildcard must be a whole segment"))
                }
                _ => {}
            }
        }
        Ok(Self(pattern))
    }

    /// Whether `topic` matches this pattern.
    pub fn matches(&self, topic: &Topic) -> bool {
        let mut names = topic.segments();
        for seg in self.0.split('.') {
            match (seg, names.next()) {
                (">", Some(_)) => return true,
                (_, None) => return false,
                ("*", Some(_)) => {}
                (lit, Some(name)) if lit == name => {}
                _ => return false,
            }
        }
        names.next().is_none()
    }

    /// The pattern as a string.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for TopicPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for TopicPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "TopicPattern({:?})", self.0)
    }
}

impl FromStr for TopicPattern {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        Self::new(s)
    }
}

impl TryFrom<String> for TopicPattern {
    type Error = Error;
    fn try_from(s: String) -> Result<Self> {
        Self::new(s)
    }
}

impl From<TopicPattern> for String {
    fn from(p: TopicPattern) -> String {
        p.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn t(s: &str) -> Topic {
        Topic::new(s).unwrap()
    }

    fn p(s: &str) -> TopicPattern {
        TopicPattern::new(s).unwrap()
    }

    #[test]
    fn topic_accepts_dotted_names() {
        for ok in ["a", "demo.chat", "orders.eu-west.v2", "x_1.Y-2", "ünïcode.ok"] {
            assert!(Topic::new(ok).is_ok(), "{ok}");
        }
    }

    #[test]
    fn topic_rejects_bad_names() {
        let long = "a".repeat(256);
        for bad in
            ["", ".", "a.", ".a", "a..b", "a b", "a\tb", "a\nb", "a\u{7f}", "a.*", "a.>", "a*", long.as_str()]
        {
            assert!(Topic::new(bad).is_err(), "{bad:?}");
        }
        assert!(Topic::new("a".repeat(255)).is_ok());
    }

    #[test]
    fn pattern_rejects_misplaced_wildcards() {
        for bad in ["", "a..b", ">.a", "a.>.b", "a*", "a.b>", "a b.>"] {
            assert!(TopicPattern::new(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn star_matches_exactly_one_segment() {
        assert!(p("demo.*").matches(&t("demo.chat")));
        assert!(!p("demo.*").matches(&t("demo")));
        assert!(!p("demo.*").matches(&t("demo.chat.eu")));
        assert!(p("*.chat").matches(&t("demo.chat")));
    }

    #[test]
    fn gt_matches_one_or_more_trailing_segments() {
        assert!(p("demo.>").matches(&t("demo.chat")));
        assert!(p("demo.>").matches(&t("demo.chat.eu")));
        assert!(!p("demo.>").matches(&t("demo")));
        assert!(!p("demo.>").matches(&t("other.chat")));
        assert!(p(">").matches(&t("anything.at.all")));
    }

    #[test]
    fn literal_pattern_matches_only_itself() {
        assert!(p("demo.chat").matches(&t("demo.chat")));
        assert!(!p("demo.chat").matches(&t("demo.chats")));
        assert!(!p("demo.chat").matches(&t("demo")));
    }

    #[test]
    fn topic_deserialization_validates() {
        let bytes = postcard::to_allocvec(&"a..b".to_string()).unwrap();
        assert!(postcard::from_bytes::<Topic>(&bytes).is_err());
    }

    proptest! {
        #[test]
        fn every_topic_matches_itself_as_a_pattern(segs in proptest::collection::vec("[a-z0-9_-]{1,8}", 1..6)) {
            let name = segs.join(".");
            let topic = Topic::new(name.clone()).unwrap();
            prop_assert!(TopicPattern::new(name).unwrap().matches(&topic));
            prop_assert!(p(">").matches(&topic));
        }
    }
}
