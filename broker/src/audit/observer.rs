//! The audit log as an [`Observer`] of the broker's [`Event`]s: which events become entries, and with what.
//!
//! # What is recorded
//!
//! Every decision about a peer, allowed or refused: connections (accepted, refused with the reason, closed),
//! streams refused, publishes refused or failed, subscriptions (and the creation of a durable one), policy
//! reads refused, policies stored or refused, administrative queries, limits hit (a refusal for
//! `RATE_LIMITED` or `LIMIT_EXCEEDED` is a `limit` entry), shutdown, configuration reloads (a `reload` entry, allowed with what changed or refused
//! with why), and what a reload took away: a connection whose certificate no longer verifies (`connect`,
//! refused, `certificate_revoked`) and a stream the ACL no longer allows (`subscribe` or `publish`,
//! refused, `NOT_AUTHORIZED`).
//!
//! # What is not, and why
//!
//! The data path itself: an entry per batch published or delivered would make the audit log as large as the
//! message log. A publish **allowed** is recorded once per connection and topic (the first batch that
//! connection publishes on the topic); deliveries are not recorded (the subscription's start is). Refusals
//! are all recorded, so a peer that keeps being refused fills the queue and then the drop count (`dropped`
//! entries), never the broker's memory.
//!
//! # Cost
//!
//! An entry is built (a few short strings) and handed to [`AuditLog::record`], a `try_send`. The
//! once-per-connection-and-topic set is one short mutex (a hash lookup) per accepted batch, bounded by
//! [`MAX_REMEMBERED`] keys: past it, it is emptied, and the next batches are recorded again.

use std::collections::{HashMap, HashSet};
use std::hash::{BuildHasher, Hash, Hasher, RandomState};
use std::sync::{Mutex, PoisonError};

use sealpost_protocol::{ErrorCode, Topic};

use super::entry::{Action, Entry};
use super::AuditLog;
use crate::event::{code_name, Event, Observer, Who};
use crate::Result;

/// Most (connection, topic) pairs remembered as having had a publish recorded.
pub const MAX_REMEMBERED: usize = 65_536;

/// See the [module documentation](self).
#[derive(Debug)]
pub struct AuditObserver {
    log: AuditLog,
    /// The topics each connection (by a hash of principal and remote address) has had a publish recorded
    /// on, by a hash of the topic.
    published: Mutex<Remembered>,
    hasher: RandomState,
}

impl AuditObserver {
    /// Records the events it is told in `log`.
    pub fn new(log: AuditLog) -> AuditObserver {
        AuditObserver { log, published: Mutex::default(), hasher: RandomState::new() }
    }

    /// Writes what is queued and the final checkpoint, and stops the writer (blocks: call it off the async
    /// workers).
    pub fn close(&self) -> Result<()> {
        self.log.close()
    }

    /// Entries dropped so far because the queue was full.
    pub fn dropped(&self) -> u64 {
        self.log.dropped()
    }

    fn connection_key(&self, who: &Who<'_>) -> u64 {
        let mut h = self.hasher.build_hasher();
        who.principal.hash(&mut h);
        who.remote.hash(&mut h);
        h.finish()
    }

    /// Whether this is the first publish of this connection on `topic` since it was remembered.
    fn first_publish(&self, who: &Who<'_>, topic: &Topic) -> bool {
        let connection = self.connection_key(who);
        let topic = self.hasher.hash_one(topic);
        let mut published = self.published.lock().unwrap_or_else(PoisonError::into_inner);
        if published.pairs >= MAX_REMEMBERED {
            *published = Remembered::default();
        }
        let first = published.by_connection.entry(connection).or_default().insert(topic);
        published.pairs += usize::from(first);
        first
    }

    fn forget(&self, who: &Who<'_>) {
        let connection = self.connection_key(who);
        let mut published = self.published.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(topics) = published.by_connection.remove(&connection) {
            published.pairs -= topics.len();
        }
    }
}

/// The (connection, topic) pairs that had a publish recorded, and how many there are.
#[derive(Debug, Default)]
struct Remembered {
    by_connection: HashMap<u64, HashSet<u64>>,
    pairs: usize,
}

/// An entry about `action` by `who`.
fn by(action: Action, who: &Who<'_>) -> Entry {
    let entry = Entry::new(action).principal(who.principal.as_str()).fingerprint(who.fingerprint.to_string());
    match who.remote {
        Some(remote) => entry.remote(remote),
        None => entry,
    }
}

/// The action a refusal for `code` of an `action` request is recorded as: a limit hit, or the action.
fn refused_as(action: Action, code: ErrorCode) -> Action {
    match code {
        ErrorCode::RATE_LIMITED | ErrorCode::LIMIT_EXCEEDED => Action::Limit,
        _ => action,
    }
}

impl Observer for AuditObserver {
    fn event(&self, event: &Event<'_>) {
        let entry = match *event {
            Event::ConnectionAccepted { ref who } => by(Action::Connect, who).allow(),
            Event::ConnectionRefused { remote, principal, fingerprint, reason } => {
                let mut entry = Entry::new(Action::Connect);
                if let Some(principal) = principal {
                    entry = entry.principal(principal.as_str());
                }
                if let Some(fingerprint) = fingerprint {
                    entry = entry.fingerprint(fingerprint.to_string());
                }
                if let Some(remote) = remote {
                    entry = entry.remote(remote);
                }
                entry.refuse(reason.name())
            }
            Event::ConnectionClosed { ref who } => {
                self.forget(who);
                by(Action::Disconnect, who)
            }
            Event::StreamRefused { ref who, code } => {
                by(refused_as(Action::Stream, code), who).refuse(code_name(code))
            }
            Event::PublishAccepted { ref who, topic, .. } => {
                if !self.first_publish(who, topic) {
                    return;
                }
                by(Action::Publish, who).topic(topic.as_str()).allow()
            }
            Event::PublishRefused { ref who, topic, code } => {
                let entry = by(refused_as(Action::Publish, code), who);
                let entry = match topic {
                    Some(topic) => entry.topic(topic.as_str()),
                    None => entry,
                };
                entry.refuse(code_name(code))
            }
            Event::PublishFailed { ref who, code } => by(Action::Publish, who).refuse(code_name(code)),
            Event::Delivered { .. }
            | Event::AckReceived { .. }
            | Event::OffsetCommitted { .. }
            | Event::SharedJoined { .. }
            | Event::SharedLeft { .. }
            | Event::SharedRewind { .. } => return,
            Event::SubscribeAccepted { ref who, topic, durable, created } => {
                if let (Some(name), true) = (durable, created) {
                    let created = by(Action::DurableCreate, who).topic(topic.as_str()).allow();
                    self.log.record(created.reason(name.to_owned()));
                }
                by(Action::Subscribe, who).topic(topic.as_str()).allow()
            }
            Event::SubscribeRefused { ref who, topic, code, .. } => {
                by(refused_as(Action::Subscribe, code), who).topic(topic.as_str()).refuse(code_name(code))
            }
            Event::PolicyReadRefused { ref who, topic, code } => {
                by(Action::ReadPolicies, who).topic(topic.as_str()).refuse(code_name(code))
            }
            Event::PolicyStored { ref who, topic, epoch } => {
                by(Action::PutPolicy, who).topic(topic.as_str()).count(epoch).allow()
            }
            Event::PolicyRefused { ref who, topic, epoch, code } => {
                let mut entry = by(Action::PutPolicy, who);
                if let Some(topic) = topic {
                    entry = entry.topic(topic.as_str());
                }
                if let Some(epoch) = epoch {
                    entry = entry.count(epoch);
                }
                entry.refuse(code_name(code))
            }
            Event::AdminAnswered { ref who, query } => by(Action::Admin, who).allow().reason(query),
            Event::AdminRefused { ref who, code } => by(Action::Admin, who).refuse(code_name(code)),
            Event::Shutdown => Entry::new(Action::Shutdown),
            Event::ConfigReloaded { file, changes } => {
                Entry::new(Action::Reload).allow().reason(format!("{}: {changes}", file.display()))
            }
            Event::ConfigReloadRefused { file, reason } => {
                Entry::new(Action::Reload).refuse("").reason(format!("{}: {reason}", file.display()))
            }
            Event::ConnectionRevoked { ref who } => by(Action::Connect, who).refuse("certificate_revoked"),
            Event::StreamRevoked { ref who, topic, action } => {
                let action = match action {
                    crate::event::Action::Publish => Action::Publish,
                    _ => Action::Subscribe,
                };
                by(action, who).topic(topic.as_str()).refuse(code_name(ErrorCode::NOT_AUTHORIZED))
            }
            // A member's stream ended for its overdue acknowledgements: a decision about the peer.
            Event::SharedAckOverdue { ref who, topic } => {
                by(Action::Subscribe, who).topic(topic.as_str()).refuse(code_name(ErrorCode::UNAVAILABLE))
            }
        };
        self.log.record(entry);
    }
}

#[cfg(test)]
mod tests {
    use std::net::SocketAddr;

    use sealpost_protocol::{ErrorCode, Principal, Topic};

    use super::*;
    use crate::audit::{AuditKey, SystemClock};
    use crate::config::AuditConfig;
    use crate::tls::Fingerprint;

    /// The `(action, decision, reason)` of every entry the events make, in order.
    fn recorded(events: impl FnOnce(&AuditObserver)) -> Vec<(String, String, String)> {
        let dir = tempfile::tempdir().unwrap();
        let config = AuditConfig::new(dir.path().join("audit"), dir.path().join("unused.key"));
        let observer =
            AuditObserver::new(AuditLog::open_with(&config, AuditKey::generate(), SystemClock).unwrap());
        events(&observer);
        observer.close().unwrap();
        let files = crate::audit::list_files(&dir.path().join("audit")).unwrap();
        let text = std::fs::read_to_string(&files[0].1).unwrap();
        text.lines()
            .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
            .filter(|v| v.get("checkpoint").is_none() && v["action"] != "start")
            .map(|v| {
                let field = |k: &str| v.get(k).and_then(|x| x.as_str()).unwrap_or("").to_owned();
                (field("action"), field("decision"), field("reason"))
            })
            .collect()
    }

    fn row(action: &str, decision: &str, reason: &str) -> (String, String, String) {
        (action.into(), decision.into(), reason.into())
    }

    #[test]
    fn a_connections_publishes_on_a_topic_are_one_entry_and_refusals_and_limits_each_one() {
        let principal: Principal = "alice".parse().unwrap();
        let fingerprint = Fingerprint::of(b"alice's certificate");
        let (chat, news) = (Topic::new("demo.chat").unwrap(), Topic::new("demo.news").unwrap());
        let remote: SocketAddr = "127.0.0.1:4000".parse().unwrap();
        let who = Who { principal: &principal, fingerprint: &fingerprint, remote: Some(remote) };
        let rows = recorded(|o| {
            o.event(&Event::ConnectionAccepted { who });
            for topic in [&chat, &chat, &news, &chat] {
                o.event(&Event::PublishAccepted { who, topic, messages: 1, bytes: 10 });
            }
            o.event(&Event::Delivered { who, topic: &chat, messages: 1, bytes: 10 });
            let refused = |code| Event::PublishRefused { who, topic: Some(&chat), code };
            o.event(&refused(ErrorCode::NOT_AUTHORIZED));
            o.event(&refused(ErrorCode::RATE_LIMITED));
            o.event(&Event::ConnectionClosed { who });
            // A new connection from the same place: its first publish on the topic is recorded again.
            o.event(&Event::PublishAccepted { who, topic: &chat, messages: 1, bytes: 10 });
            o.event(&Event::Shutdown);
        });
        assert_eq!(
            rows,
            [
                row("connect", "allow", ""),
                row("publish", "allow", ""),
                row("publish", "allow", ""),
                row("publish", "refuse", "NOT_AUTHORIZED"),
                row("limit", "refuse", "RATE_LIMITED"),
                row("disconnect", "", ""),
                row("publish", "allow", ""),
                row("shutdown", "", ""),
            ]
        );
    }
}
