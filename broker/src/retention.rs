//! Retention: which stored batches the broker may remove, decided without I/O.
//!
//! The operator sets rules per topic pattern in the `[retention]` table (the most specific pattern that
//! matches a topic wins, see [`Retention::rule`]): a maximum age, a maximum of bytes and a maximum of
//! messages, and a global budget of bytes for the whole log. An engine describes what it holds as
//! [`Unit`]s, the pieces it can give back to the file system whole (the disk engine's closed segment
//! files, oldest first; the memory engine's batches), and [`plan`] says, per topic, the offset below which
//! its batches are **retired**, and which units hold nothing that is kept any more.
//!
//! What retention guarantees:
//!
//! - it removes a **prefix** of each topic, never the middle: a topic's first offset only moves forward,
//!   and everything from it on is kept;
//! - it never removes a batch that is not acknowledged yet: engines describe only units that a sync
//!   covered (the disk engine's active segment and a segment rolled since the last sync are never units);
//! - it works a unit at a time (as Kafka's log segments): a rule is met once removing the topic's oldest
//!   unit would break it, so a topic may hold up to one unit more than its rule says, and its age is
//!   that of its unit's newest record.
//!
//! Subscribers asking for offsets below a topic's first offset are told, with an
//! [`ErrorCode::RETIRED`](sealpost_protocol::ErrorCode::RETIRED) loss of those offsets, and go on from the
//! first offset (see [`crate::store`]).

use std::collections::BTreeMap;
use std::time::Duration;

use sealpost_protocol::{Offset, Topic, TopicPattern};
use serde::Deserialize;

use crate::{Error, Result};

/// The `[retention]` table of the configuration.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Retention {
    /// Most bytes the whole log may hold (the segment files of the disk engine): past it, the oldest
    /// units go, whatever topic they hold. Default: none.
    #[serde(default)]
    pub max_total_bytes: Option<u64>,
    /// How often, in milliseconds, the rules are enforced (10 to 3600000). Default: 5000.
    #[serde(default = "Retention::default_interval_ms")]
    pub interval_ms: u64,
    /// The rules per topic pattern (`[[retention.topic]]`). A topic no pattern matches is kept whole
    /// (but still counts against `max_total_bytes`).
    #[serde(default, rename = "topic")]
    pub topics: Vec<Rule>,
}

/// One `[[retention.topic]]` entry: how much of the topics matching `pattern` to keep. Every limit is
/// optional; a batch goes once any one of them says so.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Rule {
    /// The topics it applies to (as in the ACL: `*` one segment, `>` the rest).
    pub pattern: TopicPattern,
    /// Keep batches for at most this many seconds.
    #[serde(default)]
    pub max_age_secs: Option<u64>,
    /// Keep at most this many bytes of sealed batches.
    #[serde(default)]
    pub max_bytes: Option<u64>,
    /// Keep at most this many messages.
    #[serde(default)]
    pub max_messages: Option<u64>,
}

impl Default for Retention {
    fn default() -> Self {
        Retention { max_total_bytes: None, interval_ms: Self::default_interval_ms(), topics: Vec::new() }
    }
}

impl Retention {
    fn default_interval_ms() -> u64 {
        5000
    }

    /// No rule and no budget: nothing is ever removed.
    pub fn is_empty(&self) -> bool {
        self.max_total_bytes.is_none() && self.topics.is_empty()
    }

    /// The enforcement interval.
    pub fn interval(&self) -> Duration {
        Duration::from_millis(self.interval_ms)
    }

    /// Checks the table: a usable interval, no pattern twice, no rule without a limit.
    pub fn validate(&self) -> Result<()> {
        let bad = |what: String| Err(Error::Config(format!("[retention] {what}")));
        if !(10..=3_600_000).contains(&self.interval_ms) {
            return bad("interval_ms must be between 10 and 3600000".into());
        }
        for (i, rule) in self.topics.iter().enumerate() {
            if rule.max_age_secs.is_none() && rule.max_bytes.is_none() && rule.max_messages.is_none() {
                return bad(format!("the rule for {} sets no limit", rule.pattern));
            }
            if self.topics[..i].iter().any(|r| r.pattern == rule.pattern) {
                return bad(format!("pattern {} is given twice", rule.pattern));
            }
        }
        Ok(())
    }

    /// The rule for `topic`: of the patterns that match it, the most specific (see [`specificity`]).
    pub fn rule(&self, topic: &Topic) -> Option<&Rule> {
        self.topics.iter().filter(|r| r.pattern.matches(topic)).max_by_key(|r| specificity(&r.pattern))
    }
}

/// How specific a pattern is, as a key that orders patterns: segment by segment from the first, a literal
/// beats `*`, which beats `>`; then the longer pattern wins. So `orders.eu.>` beats `orders.>`, and
/// `orders.*.paid` beats `*.eu.paid`.
pub fn specificity(pattern: &TopicPattern) -> Vec<u8> {
    pattern
        .as_str()
        .split('.')
        .map(|s| match s {
            ">" => 1,
            "*" => 2,
            _ => 3,
        })
        .collect()
}

/// One piece of the log an engine can give back whole, as the engine describes it to [`plan`].
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Unit {
    /// How long ago its newest record was written, if the engine knows.
    pub age: Option<Duration>,
    /// Bytes it takes (its file's size).
    pub bytes: u64,
    /// The batches it holds, per topic.
    pub parts: BTreeMap<Topic, Part>,
}

/// The batches of one topic in one [`Unit`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Part {
    /// The offset after its last message.
    pub end: Offset,
    /// Bytes of sealed batches.
    pub bytes: u64,
    /// Messages.
    pub messages: u64,
}

/// What the log holds beyond the units (the part a sync has not covered, or the active segment): counted
/// against the limits, never removed.
pub type Totals = BTreeMap<Topic, Part>;

/// What [`plan`] decided.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Plan {
    /// Per topic, the offset below which every batch is retired (only topics that move).
    pub retire: BTreeMap<Topic, Offset>,
    /// The units (indices into the slice given) that hold nothing kept: give them back.
    pub remove: Vec<usize>,
}

/// Decides what to retire: `units` oldest first, `rest` what is held beyond them (never retired).
pub fn plan(rules: &Retention, units: &[Unit], rest: &Totals) -> Plan {
    // What each topic holds in all, and the whole log's bytes.
    let mut held: BTreeMap<&Topic, (u64, u64)> = BTreeMap::new();
    for part in units.iter().flat_map(|u| u.parts.iter()).chain(rest.iter()) {
        let (bytes, messages) = held.entry(part.0).or_default();
        *bytes = bytes.saturating_add(part.1.bytes);
        *messages = messages.saturating_add(part.1.messages);
    }
    let mut total: u64 = units.iter().map(|u| u.bytes).sum::<u64>();
    let mut retire: BTreeMap<Topic, Offset> = BTreeMap::new();
    // The budget first: whole units, oldest first, whatever they hold.
    let mut from = 0;
    if let Some(budget) = rules.max_total_bytes {
        let rest_bytes: u64 = rest.values().map(|p| p.bytes).sum();
        while from < units.len() && total.saturating_add(rest_bytes) > budget {
            for (topic, part) in &units[from].parts {
                retire.insert(topic.clone(), part.end);
                if let Some((bytes, messages)) = held.get_mut(topic) {
                    *bytes = bytes.saturating_sub(part.bytes);
                    *messages = messages.saturating_sub(part.messages);
                }
            }
            total = total.saturating_sub(units[from].bytes);
            from += 1;
        }
    }
    // Then each topic's rule, on its parts in the units left, oldest first, until one must stay.
    let mut stopped: BTreeMap<&Topic, ()> = BTreeMap::new();
    for unit in &units[from..] {
        for (topic, part) in &unit.parts {
            if stopped.contains_key(topic) {
                continue;
            }
            let Some(rule) = rules.rule(topic) else {
                stopped.insert(topic, ());
                continue;
            };
            let Some((bytes, messages)) = held.get_mut(topic) else { continue };
            let too_old = match (rule.max_age_secs, unit.age) {
                (Some(max), Some(age)) => age > Duration::from_secs(max),
                _ => false,
            };
            let too_big = rule.max_bytes.is_some_and(|max| *bytes > max);
            let too_many = rule.max_messages.is_some_and(|max| *messages > max);
            if !(too_old || too_big || too_many) {
                stopped.insert(topic, ());
                continue;
            }
            retire.insert(topic.clone(), part.end);
            *bytes = bytes.saturating_sub(part.bytes);
            *messages = messages.saturating_sub(part.messages);
        }
    }
    let remove = units
        .iter()
        .enumerate()
        .filter(|(_, u)| u.parts.iter().all(|(t, p)| retire.get(t).is_some_and(|&cut| cut >= p.end)))
        .map(|(i, _)| i)
        .collect();
    Plan { retire, remove }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn topic(s: &str) -> Topic {
        Topic::new(s).unwrap()
    }

    fn rule(pattern: &str, age: Option<u64>, bytes: Option<u64>, messages: Option<u64>) -> Rule {
        Rule {
            pattern: TopicPattern::new(pattern).unwrap(),
            max_age_secs: age,
            max_bytes: bytes,
            max_messages: messages,
        }
    }

    fn rules(topics: Vec<Rule>, budget: Option<u64>) -> Retention {
        Retention { max_total_bytes: budget, interval_ms: 1000, topics }
    }

    /// A unit of `age` seconds holding, per topic, (end offset, bytes, messages).
    fn unit(age: u64, parts: &[(&str, u64, u64, u64)]) -> Unit {
        Unit {
            age: Some(Duration::from_secs(age)),
            bytes: parts.iter().map(|p| p.2).sum(),
            parts: parts
                .iter()
                .map(|&(t, end, bytes, messages)| (topic(t), Part { end: Offset(end), bytes, messages }))
                .collect(),
        }
    }

    fn retired(plan: &Plan) -> Vec<(String, u64)> {
        plan.retire.iter().map(|(t, o)| (t.to_string(), o.0)).collect()
    }

    #[test]
    fn the_most_specific_pattern_wins() {
        let r = rules(
            vec![
                rule(">", None, Some(1), None),
                rule("orders.>", None, Some(2), None),
                rule("orders.eu.>", None, Some(3), None),
                rule("*.eu.paid", None, Some(4), None),
                rule("orders.*.paid", None, Some(5), None),
            ],
            None,
        );
        let max = |t: &str| r.rule(&topic(t)).and_then(|r| r.max_bytes);
        assert_eq!(max("logs"), Some(1));
        assert_eq!(max("orders.us"), Some(2));
        assert_eq!(max("orders.eu.new"), Some(3));
        assert_eq!(max("orders.us.paid"), Some(5));
        assert_eq!(max("orders.eu.paid"), Some(3));
        assert_eq!(max("refunds.eu.paid"), Some(4));
        assert_eq!(rules(vec![rule("a.>", None, Some(1), None)], None).rule(&topic("b")), None);
    }

    #[test]
    fn validation_refuses_a_rule_without_limit_a_pattern_twice_and_a_bad_interval() {
        assert!(rules(vec![rule("a.>", None, None, None)], None).validate().is_err());
        assert!(rules(vec![rule("a", None, Some(1), None), rule("a", Some(1), None, None)], None)
            .validate()
            .is_err());
        let mut r = rules(vec![rule("a", None, Some(1), None)], None);
        r.validate().unwrap();
        r.interval_ms = 5;
        assert!(r.validate().is_err());
    }

    #[test]
    fn a_byte_limit_retires_the_oldest_units_while_the_rest_still_exceeds_it() {
        let r = rules(vec![rule("logs", None, Some(25), None)], None);
        let units = [
            unit(9, &[("logs", 10, 10, 1)]),
            unit(8, &[("logs", 20, 10, 1)]),
            unit(7, &[("logs", 30, 10, 1)]),
        ];
        let rest = Totals::from([(topic("logs"), Part { end: Offset(40), bytes: 10, messages: 1 })]);
        // 40 held: the first unit goes (30 left), then the second (20 <= 25), not the third.
        let p = plan(&r, &units, &rest);
        assert_eq!(retired(&p), [("logs".to_string(), 20)]);
        assert_eq!(p.remove, [0, 1]);
    }

    #[test]
    fn age_and_message_limits_and_unmatched_topics() {
        let r = rules(vec![rule("old", Some(60), None, None), rule("many", None, None, Some(5))], None);
        let units = [
            unit(120, &[("old", 1, 1, 1), ("many", 4, 1, 4), ("kept", 7, 1, 1)]),
            unit(30, &[("old", 2, 1, 1), ("many", 8, 1, 4)]),
        ];
        let p = plan(&r, &units, &Totals::new());
        // `old`: only its unit older than a minute; `many`: 8 messages, 4 left after the first unit.
        assert_eq!(retired(&p), [("many".to_string(), 4), ("old".to_string(), 1)]);
        // The first unit still holds `kept`, a topic no rule matches: it stays.
        assert!(p.remove.is_empty());
    }

    #[test]
    fn the_budget_removes_whole_units_oldest_first_whatever_they_hold() {
        let r = rules(vec![], Some(25));
        let units = [unit(3, &[("a", 5, 10, 5), ("b", 2, 5, 2)]), unit(2, &[("a", 9, 10, 4)])];
        let rest = Totals::from([(topic("a"), Part { end: Offset(12), bytes: 10, messages: 3 })]);
        let p = plan(&r, &units, &rest);
        assert_eq!(retired(&p), [("a".to_string(), 5), ("b".to_string(), 2)]);
        assert_eq!(p.remove, [0]);
    }

    #[test]
    fn nothing_is_retired_without_rules_and_what_is_held_beyond_the_units_never_is() {
        let units = [unit(1000, &[("a", 5, 10, 5)])];
        assert_eq!(plan(&Retention::default(), &units, &Totals::new()), Plan::default());
        // However far past its limit the topic is, its batches beyond the units stay.
        let r = rules(vec![rule("a", Some(1), Some(0), Some(0))], Some(0));
        let rest = Totals::from([(topic("a"), Part { end: Offset(9), bytes: 10, messages: 4 })]);
        let p = plan(&r, &units, &rest);
        assert_eq!(retired(&p), [("a".to_string(), 5)]);
        assert_eq!(p.remove, [0]);
    }
}
