//! The operator's access-control list: which principal may publish, subscribe or administer which topics.
//!
//! This module owns one pure decision, [`Acl::allows`], and the parsing of the operator's TOML file into
//! the rules it consults. It does no I/O beyond [`Acl::load`] reading that file, and it does not know how
//! a principal is derived from a certificate (the TLS layer does that).
//!
//! # File format
//!
//! ```toml
//! [[rule]]
//! principals = ["alice"]               # principal names, or "*" for every principal
//! topics = ["demo.>"]                  # topic patterns (NATS syntax: `*` one segment, `>` the rest)
//! actions = ["publish", "subscribe"]   # publish | subscribe | admin
//! effect = "allow"                     # allow | deny
//! ```
//!
//! # Guarantees
//!
//! - **Default deny**: a request that no rule matches is denied; an empty file denies everything.
//! - **Deny wins**: if any matching rule denies, the request is denied, whatever the order of the rules
//!   and however many allow rules also match.
//! - **Actions are separate**: allowing `subscribe` never implies `publish` or `admin`, and vice versa.
//! - **Strict parsing**: unknown keys, unknown actions or effects, invalid patterns and empty lists are
//!   rejected with an [`Error::Config`] that names the offending rule (`rule #1` is the first
//!   `[[rule]]`), so that a typo cannot silently widen or narrow access.
//!
//! The ACL cannot tell "denied" from "no such topic", and neither can a peer: the broker answers both with
//! `NOT_AUTHORIZED`.

use core::fmt;
use core::str::FromStr;
use std::path::Path;

use sealpost_protocol::{Principal, Topic, TopicPattern};
use serde::Deserialize;

use crate::{Error, Result};

/// What a principal asks to do on a topic.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Action {
    /// Publish sealed batches to the topic.
    Publish,
    /// Subscribe to the topic (read stored batches and receive new ones).
    Subscribe,
    /// Administer the topic.
    Admin,
}

impl Action {
    /// The name used in ACL files.
    pub fn as_str(self) -> &'static str {
        match self {
            Action::Publish => "publish",
            Action::Subscribe => "subscribe",
            Action::Admin => "admin",
        }
    }
}

impl fmt::Display for Action {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Action {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "publish" => Ok(Action::Publish),
            "subscribe" => Ok(Action::Subscribe),
            "admin" => Ok(Action::Admin),
            other => {
                Err(Error::Config(format!("unknown action {other:?} (expected publish, subscribe or admin)")))
            }
        }
    }
}

/// Whether a matching rule grants or refuses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Effect {
    /// The rule grants the request, unless another matching rule denies it.
    Allow,
    /// The rule refuses the request, whatever other rules say.
    Deny,
}

/// Who a rule is about.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Principals {
    /// Every principal (`"*"` in the file).
    Any,
    /// Exactly these principal names.
    Named(Vec<String>),
}

impl Principals {
    fn matches(&self, principal: &Principal) -> bool {
        match self {
            Principals::Any => true,
            Principals::Named(names) => names.iter().any(|n| principal == n.as_str()),
        }
    }
}

/// One validated `[[rule]]`.
#[derive(Clone, Debug)]
pub struct Rule {
    /// The principals the rule applies to.
    pub principals: Principals,
    /// The topic patterns the rule applies to.
    pub topics: Vec<TopicPattern>,
    /// The actions the rule applies to.
    pub actions: Vec<Action>,
    /// Whether it grants or refuses.
    pub effect: Effect,
}

impl Rule {
    fn matches(&self, principal: &Principal, topic: &Topic, action: Action) -> bool {
        self.actions.contains(&action)
            && self.principals.matches(principal)
            && self.topics.iter().any(|p| p.matches(topic))
    }
}

/// The operator's rules, in file order. The default value has no rule and denies everything.
#[derive(Clone, Debug, Default)]
pub struct Acl {
    rules: Vec<Rule>,
}

/// The file as written, before validation.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct AclFile {
    #[serde(default)]
    rule: Vec<toml::Value>,
}

/// One rule as written, before validation.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRule {
    principals: Vec<String>,
    topics: Vec<String>,
    actions: Vec<String>,
    effect: String,
}

impl Acl {
    /// Parses and validates an ACL file's contents.
    pub fn from_toml(text: &str) -> Result<Acl> {
        let file: AclFile = toml::from_str(text).map_err(|e| Error::Config(format!("ACL: {e}")))?;
        let rules = file
            .rule
            .into_iter()
            .enumerate()
            .map(|(i, value)| {
                Self::rule(value).map_err(|msg| Error::Config(format!("ACL rule #{}: {msg}", i + 1)))
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Acl { rules })
    }

    /// Reads and parses the ACL file at `path`.
    pub fn load(path: &Path) -> Result<Acl> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| Error::Config(format!("cannot read ACL file {}: {e}", path.display())))?;
        Self::from_toml(&text).map_err(|e| match e {
            Error::Config(msg) => Error::Config(format!("{}: {msg}", path.display())),
            other => other,
        })
    }

    fn rule(value: toml::Value) -> core::result::Result<Rule, String> {
        let raw: RawRule = value.try_into().map_err(|e: toml::de::Error| e.message().to_string())?;
        if raw.principals.is_empty() {
            return Err("`principals` is empty".into());
        }
        if raw.topics.is_empty() {
            return Err("`topics` is empty".into());
        }
        if raw.actions.is_empty() {
            return Err("`actions` is empty".into());
        }
        let principals = if raw.principals.iter().any(|p| p == "*") {
            if raw.principals.len() != 1 {
                return Err("\"*\" must be the only entry of `principals`".into());
            }
            Principals::Any
        } else {
            if raw.principals.iter().any(|p| p.is_empty()) {
                return Err("empty principal name".into());
            }
            Principals::Named(raw.principals)
        };
        let topics = raw
            .topics
            .into_iter()
            .map(|t| TopicPattern::new(t.clone()).map_err(|e| format!("topic pattern {t:?}: {e}")))
            .collect::<core::result::Result<Vec<_>, _>>()?;
        let actions = raw
            .actions
            .iter()
            .map(|a| {
                a.parse::<Action>()
                    .map_err(|_| format!("unknown action {a:?} (expected publish, subscribe or admin)"))
            })
            .collect::<core::result::Result<Vec<_>, _>>()?;
        let effect = match raw.effect.as_str() {
            "allow" => Effect::Allow,
            "deny" => Effect::Deny,
            other => return Err(format!("unknown effect {other:?} (expected allow or deny)")),
        };
        Ok(Rule { principals, topics, actions, effect })
    }

    /// The validated rules, in file order.
    pub fn rules(&self) -> &[Rule] {
        &self.rules
    }

    /// Whether `principal` may perform `action` on `topic`: true only if at least one rule allows it and
    /// no rule denies it.
    pub fn allows(&self, principal: &Principal, topic: &Topic, action: Action) -> bool {
        let mut allowed = false;
        for rule in self.rules.iter().filter(|r| r.matches(principal, topic, action)) {
            match rule.effect {
                Effect::Deny => return false,
                Effect::Allow => allowed = true,
            }
        }
        allowed
    }
}

impl Acl {
    /// Whether `principal` administers the whole broker: a rule allows it `admin` on every topic (the
    /// pattern `>`) and no rule denies it `admin` on any. The broker-wide administrative queries
    /// (`sealpost admin`) need it: what they show spans every topic.
    pub fn administers_broker(&self, principal: &Principal) -> bool {
        let mut allowed = false;
        let rules = self
            .rules
            .iter()
            .filter(|r| r.principals.matches(principal) && r.actions.contains(&Action::Admin));
        for rule in rules {
            match rule.effect {
                Effect::Deny => return false,
                Effect::Allow => allowed |= rule.topics.iter().any(|t| t.as_str() == ">"),
            }
        }
        allowed
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_broker_is_administered_by_whoever_has_admin_on_every_topic_and_no_denial() {
        let rules = r#"
[[rule]]
principals = ["root", "ops"]
topics = [">"]
actions = ["admin"]
effect = "allow"

[[rule]]
principals = ["team"]
topics = ["team.>"]
actions = ["admin", "publish"]
effect = "allow"

[[rule]]
principals = ["ops"]
topics = ["secret.>"]
actions = ["admin"]
effect = "deny"

[[rule]]
principals = ["reader"]
topics = [">"]
actions = ["subscribe"]
effect = "allow"
"#;
        let acl = acl(rules);
        assert!(acl.administers_broker(&p("root")));
        // Admin on some topics only, denied admin somewhere, or every topic but not admin: no.
        for who in ["team", "ops", "reader", "nobody"] {
            assert!(!acl.administers_broker(&p(who)), "{who}");
        }
    }

    fn t(s: &str) -> Topic {
        Topic::new(s).unwrap()
    }

    fn p(s: &str) -> Principal {
        Principal::new(s).unwrap()
    }

    fn acl(text: &str) -> Acl {
        Acl::from_toml(text).unwrap()
    }

    fn config_error(text: &str) -> String {
        match Acl::from_toml(text) {
            Err(Error::Config(msg)) => msg,
            other => panic!("expected a config error, got {other:?}"),
        }
    }

    const ALICE_PUBLISHES_DEMO: &str = r#"
        [[rule]]
        principals = ["alice"]
        topics = ["demo.chat"]
        actions = ["publish"]
        effect = "allow"
    "#;

    #[test]
    fn empty_acl_denies_everything() {
        let acl = acl("");
        for action in [Action::Publish, Action::Subscribe, Action::Admin] {
            assert!(!acl.allows(&p("alice"), &t("demo.chat"), action));
        }
        assert!(!Acl::default().allows(&p("alice"), &t("demo.chat"), Action::Publish));
    }

    #[test]
    fn acl_denies_unlisted_principal_and_topic() {
        let acl = acl(ALICE_PUBLISHES_DEMO);
        assert!(!acl.allows(&p("bob"), &t("demo.chat"), Action::Publish));
        assert!(!acl.allows(&p("alice"), &t("demo.other"), Action::Publish));
    }

    #[test]
    fn acl_allows_listed_publish() {
        assert!(acl(ALICE_PUBLISHES_DEMO).allows(&p("alice"), &t("demo.chat"), Action::Publish));
    }

    #[test]
    fn actions_are_separate() {
        let acl = acl(ALICE_PUBLISHES_DEMO);
        assert!(!acl.allows(&p("alice"), &t("demo.chat"), Action::Subscribe));
        assert!(!acl.allows(&p("alice"), &t("demo.chat"), Action::Admin));
        let sub = acl_from_rules(&[("alice", "demo.chat", "subscribe", "allow")]);
        assert!(sub.allows(&p("alice"), &t("demo.chat"), Action::Subscribe));
        assert!(!sub.allows(&p("alice"), &t("demo.chat"), Action::Publish));
    }

    fn acl_from_rules(rules: &[(&str, &str, &str, &str)]) -> Acl {
        let text: String = rules
            .iter()
            .map(|(p, t, a, e)| {
                format!(
                    "[[rule]]\nprincipals = [\"{p}\"]\ntopics = [\"{t}\"]\nactions = [\"{a}\"]\neffect = \"{e}\"\n"
                )
            })
            .collect();
        acl(&text)
    }

    #[test]
    fn deny_wins_regardless_of_order() {
        let allow = ("alice", "demo.>", "publish", "allow");
        let deny = ("alice", "demo.secret", "publish", "deny");
        for rules in [[allow, deny], [deny, allow]] {
            let acl = acl_from_rules(&rules);
            assert!(!acl.allows(&p("alice"), &t("demo.secret"), Action::Publish), "{rules:?}");
            assert!(acl.allows(&p("alice"), &t("demo.chat"), Action::Publish), "{rules:?}");
        }
    }

    #[test]
    fn deny_for_everyone_overrides_a_named_allow() {
        let acl =
            acl_from_rules(&[("alice", "demo.chat", "publish", "allow"), ("*", "demo.*", "publish", "deny")]);
        assert!(!acl.allows(&p("alice"), &t("demo.chat"), Action::Publish));
    }

    #[test]
    fn star_principal_matches_every_principal() {
        let acl = acl_from_rules(&[("*", "public.news", "subscribe", "allow")]);
        for who in ["alice", "bob", "svc-42"] {
            assert!(acl.allows(&p(who), &t("public.news"), Action::Subscribe), "{who}");
        }
        assert!(!acl.allows(&p("alice"), &t("public.news"), Action::Publish));
    }

    #[test]
    fn wildcard_patterns_follow_topic_rules() {
        let acl = acl_from_rules(&[
            ("alice", "demo.*", "subscribe", "allow"),
            ("alice", "orders.>", "publish", "allow"),
        ]);
        assert!(acl.allows(&p("alice"), &t("demo.chat"), Action::Subscribe));
        assert!(!acl.allows(&p("alice"), &t("demo.chat.eu"), Action::Subscribe));
        assert!(!acl.allows(&p("alice"), &t("demo"), Action::Subscribe));
        assert!(acl.allows(&p("alice"), &t("orders.eu"), Action::Publish));
        assert!(acl.allows(&p("alice"), &t("orders.eu.west"), Action::Publish));
        assert!(!acl.allows(&p("alice"), &t("orders"), Action::Publish));
    }

    #[test]
    fn a_rule_lists_several_principals_topics_and_actions() {
        let acl = acl(r#"
            [[rule]]
            principals = ["alice", "bob"]
            topics = ["a.x", "b.>"]
            actions = ["publish", "subscribe"]
            effect = "allow"
            "#);
        for who in ["alice", "bob"] {
            for topic in ["a.x", "b.y.z"] {
                for action in [Action::Publish, Action::Subscribe] {
                    assert!(acl.allows(&p(who), &t(topic), action), "{who} {topic} {action}");
                }
                assert!(!acl.allows(&p(who), &t(topic), Action::Admin));
            }
        }
        assert!(!acl.allows(&p("carol"), &t("a.x"), Action::Publish));
    }

    #[test]
    fn unknown_rule_field_is_rejected_naming_the_rule() {
        let msg = config_error(&format!("{ALICE_PUBLISHES_DEMO}\n[[rule]]\nprincipals=[\"a\"]\ntopics=[\"t\"]\nactions=[\"publish\"]\neffect=\"allow\"\nprincipal=[\"x\"]\n"));
        assert!(msg.contains("rule #2"), "{msg}");
        assert!(msg.contains("principal"), "{msg}");
    }

    #[test]
    fn unknown_top_level_key_is_rejected() {
        let msg = config_error("[[rules]]\nprincipals=[\"a\"]\n");
        assert!(msg.contains("rules"), "{msg}");
    }

    #[test]
    fn bad_values_are_rejected_naming_the_rule() {
        let cases = [
            (("alice", "demo.chat", "write", "allow"), "write"),
            (("alice", "demo.chat", "publish", "permit"), "permit"),
            (("alice", "demo..chat", "publish", "allow"), "demo..chat"),
            (("alice", "demo.>.x", "publish", "allow"), "demo.>.x"),
            (("", "demo.chat", "publish", "allow"), "empty principal"),
        ];
        for ((p, topic, a, e), needle) in cases {
            let text = format!(
                "{ALICE_PUBLISHES_DEMO}\n[[rule]]\nprincipals = [\"{p}\"]\ntopics = [\"{topic}\"]\nactions = [\"{a}\"]\neffect = \"{e}\"\n"
            );
            let msg = config_error(&text);
            assert!(msg.contains("rule #2") && msg.contains(needle), "{msg}");
        }
    }

    #[test]
    fn empty_lists_and_missing_fields_are_rejected() {
        let msg = config_error(
            "[[rule]]\nprincipals = []\ntopics = [\"a\"]\nactions = [\"publish\"]\neffect = \"allow\"\n",
        );
        assert!(msg.contains("rule #1") && msg.contains("principals"), "{msg}");
        let msg = config_error("[[rule]]\nprincipals = [\"a\"]\ntopics = [\"a\"]\nactions = [\"publish\"]\n");
        assert!(msg.contains("rule #1") && msg.contains("effect"), "{msg}");
    }

    #[test]
    fn star_mixed_with_names_is_rejected() {
        let msg = config_error(
            "[[rule]]\nprincipals = [\"*\", \"bob\"]\ntopics = [\"a\"]\nactions = [\"publish\"]\neffect = \"deny\"\n",
        );
        assert!(msg.contains("rule #1") && msg.contains('*'), "{msg}");
    }
}
