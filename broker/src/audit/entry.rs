//! One audit entry: what was decided, about whom, and its place in the hash chain.
//!
//! An [`Entry`] is what a caller records: built with [`Entry::new`] and the builder methods, every string
//! cut to [`MAX_FIELD_BYTES`] (at a character boundary) as it is set, so a peer cannot make an entry
//! arbitrarily large. The writer turns it into a [`Record`] by giving it its `seq`, its time (the entry's
//! own if the caller set one, else the writer's clock) and the hash of the entry before it.
//!
//! The hash covers the canonical bytes of [`Record::canonical_hash`] (see [`super::digest`]), not the JSON
//! line. The line is the presentation: one JSON object, fields in a fixed order, absent fields omitted,
//! strings JSON-escaped (a control character, a quote or a backslash from a peer is escaped, so it can never
//! end the line or start another field). [`Record::parse`] accepts only the exact line [`Record::render`]
//! writes for the values it reads, so two different lines never verify as the same entry.

use std::borrow::Cow;
use std::fmt::Write as _;
use std::net::SocketAddr;

use serde::Deserialize;

use super::digest::{Canonical, Digest, ENTRY_CONTEXT};
use super::rfc3339;

/// The longest string field kept, in bytes; longer values are cut at a character boundary.
pub const MAX_FIELD_BYTES: usize = 256;

/// What was decided about.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Action {
    /// A connection was admitted or refused.
    Connect,
    /// A batch was stored or refused.
    Publish,
    /// A subscription was opened or refused.
    Subscribe,
    /// A topic policy was stored or refused.
    PutPolicy,
    /// A durable subscription was created or refused.
    DurableCreate,
    /// A configured limit was reached.
    Limit,
    /// The configuration was reloaded.
    Reload,
    /// The broker began shutting down.
    Shutdown,
    /// Written by the writer: the log was opened after a clean close, or for the first time.
    Start,
    /// Written by the writer: the log was opened after a run that did not close it (killed, or a crash);
    /// `count` is the length in bytes of the torn line that run left at the end of its last file.
    Restart,
    /// Written by the writer: `count` entries were dropped because the queue was full.
    Dropped,
    /// An admitted connection ended.
    Disconnect,
    /// A stream was refused (its first frame, or a limit: then the action is `limit`).
    Stream,
    /// Reading a topic's policies was refused.
    ReadPolicies,
    /// An administrative query (`sealpost admin`) was answered (`reason`: which) or refused.
    Admin,
}

impl Action {
    /// Every action.
    pub const ALL: [Action; 15] = [
        Action::Connect,
        Action::Publish,
        Action::Subscribe,
        Action::PutPolicy,
        Action::DurableCreate,
        Action::Limit,
        Action::Reload,
        Action::Shutdown,
        Action::Start,
        Action::Restart,
        Action::Dropped,
        Action::Disconnect,
        Action::Stream,
        Action::ReadPolicies,
        Action::Admin,
    ];

    /// The name written in the log.
    pub fn as_str(self) -> &'static str {
        match self {
            Action::Connect => "connect",
            Action::Publish => "publish",
            Action::Subscribe => "subscribe",
            Action::PutPolicy => "put_policy",
            Action::DurableCreate => "durable_create",
            Action::Limit => "limit",
            Action::Reload => "reload",
            Action::Shutdown => "shutdown",
            Action::Start => "start",
            Action::Restart => "restart",
            Action::Dropped => "dropped",
            Action::Disconnect => "disconnect",
            Action::Stream => "stream",
            Action::ReadPolicies => "read_policies",
            Action::Admin => "admin",
        }
    }

    /// The action named `s`.
    pub fn from_name(s: &str) -> Option<Action> {
        Action::ALL.into_iter().find(|a| a.as_str() == s)
    }
}

/// The outcome of a decision.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Decision {
    /// Allowed.
    Allow,
    /// Refused; the entry's `reason` says why.
    Refuse,
}

impl Decision {
    /// The name written in the log.
    pub fn as_str(self) -> &'static str {
        match self {
            Decision::Allow => "allow",
            Decision::Refuse => "refuse",
        }
    }

    fn from_name(s: &str) -> Option<Decision> {
        match s {
            "allow" => Some(Decision::Allow),
            "refuse" => Some(Decision::Refuse),
            _ => None,
        }
    }
}

/// A decision to record, before the writer gives it a place in the chain. Every field but the action is
/// optional.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    time: Option<u64>,
    principal: Option<String>,
    fingerprint: Option<String>,
    remote: Option<String>,
    action: Action,
    topic: Option<String>,
    decision: Option<Decision>,
    reason: Option<Cow<'static, str>>,
    count: Option<u64>,
}

/// Cuts `s` to [`MAX_FIELD_BYTES`] at a character boundary, in place.
fn bounded(mut s: String) -> String {
    if s.len() > MAX_FIELD_BYTES {
        let mut cut = MAX_FIELD_BYTES;
        while !s.is_char_boundary(cut) {
            cut -= 1;
        }
        s.truncate(cut);
    }
    s
}

impl Entry {
    /// An entry about `action`, with no other field set.
    pub fn new(action: Action) -> Entry {
        Entry {
            time: None,
            principal: None,
            fingerprint: None,
            remote: None,
            action,
            topic: None,
            decision: None,
            reason: None,
            count: None,
        }
    }

    /// The time of the decision, in milliseconds since the Unix epoch. Without it the writer stamps the
    /// entry with its clock when it writes it.
    pub fn at(mut self, millis: u64) -> Entry {
        self.time = Some(millis);
        self
    }

    /// The principal the decision is about (cut to [`MAX_FIELD_BYTES`]).
    pub fn principal(mut self, principal: impl Into<String>) -> Entry {
        self.principal = Some(bounded(principal.into()));
        self
    }

    /// The SHA-256 of the peer's certificate, hex (cut to [`MAX_FIELD_BYTES`]).
    pub fn fingerprint(mut self, hex: impl Into<String>) -> Entry {
        self.fingerprint = Some(bounded(hex.into()));
        self
    }

    /// The peer's address.
    pub fn remote(mut self, addr: SocketAddr) -> Entry {
        self.remote = Some(addr.to_string());
        self
    }

    /// The topic or pattern the decision is about (cut to [`MAX_FIELD_BYTES`]).
    pub fn topic(mut self, topic: impl Into<String>) -> Entry {
        self.topic = Some(bounded(topic.into()));
        self
    }

    /// Marks the entry allowed.
    pub fn allow(mut self) -> Entry {
        self.decision = Some(Decision::Allow);
        self
    }

    /// Marks the entry refused, for `reason`: a stable error-code name such as `NOT_AUTHORIZED`.
    pub fn refuse(mut self, reason: &'static str) -> Entry {
        self.decision = Some(Decision::Refuse);
        self.reason = Some(Cow::Borrowed(reason));
        self
    }

    /// Sets the reason without a decision (a `limit` or `shutdown` entry, say); cut to [`MAX_FIELD_BYTES`].
    pub fn reason(mut self, reason: impl Into<Cow<'static, str>>) -> Entry {
        self.reason = Some(match reason.into() {
            Cow::Owned(s) => Cow::Owned(bounded(s)),
            Cow::Borrowed(s) if s.len() > MAX_FIELD_BYTES => Cow::Owned(bounded(s.to_owned())),
            b => b,
        });
        self
    }

    /// A count: entries dropped (`dropped`), torn bytes (`restart`), or whatever a limit counts.
    pub fn count(mut self, n: u64) -> Entry {
        self.count = Some(n);
        self
    }

    /// The action.
    pub fn action(&self) -> Action {
        self.action
    }

    /// The time the caller set, if any.
    pub fn time(&self) -> Option<u64> {
        self.time
    }

    /// The principal, if set.
    pub fn principal_name(&self) -> Option<&str> {
        self.principal.as_deref()
    }

    /// The topic, if set.
    pub fn topic_name(&self) -> Option<&str> {
        self.topic.as_deref()
    }

    /// The decision, if set.
    pub fn decision(&self) -> Option<Decision> {
        self.decision
    }

    /// The reason, if set.
    pub fn reason_name(&self) -> Option<&str> {
        self.reason.as_deref()
    }

    /// The count, if set.
    pub fn count_value(&self) -> Option<u64> {
        self.count
    }
}

/// An entry with its place in the chain: a line of the log.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Record {
    /// Its number: 1 for the first entry of the log, then consecutive across files and runs.
    pub seq: u64,
    /// When, in milliseconds since the Unix epoch.
    pub time: u64,
    /// What was decided.
    pub entry: Entry,
    /// The hash of the entry before it; [`Digest::ZERO`] for the first.
    pub prev: Digest,
    /// Its own hash, [`Record::canonical_hash`].
    pub hash: Digest,
}

impl Record {
    /// Places `entry` in the chain at `seq` after the entry whose hash is `prev`. `now` is used when the
    /// entry carries no time of its own.
    pub fn seal(entry: Entry, seq: u64, now: u64, prev: Digest) -> Record {
        let time = entry.time.unwrap_or(now);
        let mut record = Record { seq, time, entry, prev, hash: Digest::ZERO };
        record.hash = record.canonical_hash();
        record
    }

    /// BLAKE3 (derive-key, [`ENTRY_CONTEXT`]) of the fields in this order: `seq`, `time` (ms), `principal`,
    /// `fingerprint`, `remote`, `action`, `topic`, `decision`, `reason`, `count`, `prev`.
    pub fn canonical_hash(&self) -> Digest {
        let e = &self.entry;
        let mut h = blake3::Hasher::new_derive_key(ENTRY_CONTEXT);
        h.u64(self.seq);
        h.u64(self.time);
        h.opt_str(e.principal.as_deref());
        h.opt_str(e.fingerprint.as_deref());
        h.opt_str(e.remote.as_deref());
        h.opt_str(Some(e.action.as_str()));
        h.opt_str(e.topic.as_deref());
        h.opt_str(e.decision.map(Decision::as_str));
        h.opt_str(e.reason.as_deref());
        h.opt_u64(e.count);
        h.digest(&self.prev);
        Digest(*h.finalize().as_bytes())
    }

    /// Appends the JSON line, newline included.
    pub fn render(&self, out: &mut String) {
        let e = &self.entry;
        let _ = write!(out, "{{\"seq\":{},\"time\":\"", self.seq);
        rfc3339::format(self.time, out);
        out.push('"');
        push_field(out, "principal", e.principal.as_deref());
        push_field(out, "fingerprint", e.fingerprint.as_deref());
        push_field(out, "remote", e.remote.as_deref());
        push_field(out, "action", Some(e.action.as_str()));
        push_field(out, "topic", e.topic.as_deref());
        push_field(out, "decision", e.decision.map(Decision::as_str));
        push_field(out, "reason", e.reason.as_deref());
        if let Some(n) = e.count {
            let _ = write!(out, ",\"count\":{n}");
        }
        let _ = writeln!(out, ",\"prev\":\"{}\",\"hash\":\"{}\"}}", self.prev, self.hash);
    }

    /// Reads a line written by [`render`](Self::render) (without its newline). It does not check the hash.
    pub fn parse(line: &str) -> Result<Record, String> {
        let raw: RawEntry = serde_json::from_str(line).map_err(|e| format!("not an audit entry: {e}"))?;
        let field = |name: &str, v: Option<String>| -> Result<Option<String>, String> {
            match v {
                Some(s) if s.len() > MAX_FIELD_BYTES => {
                    Err(format!("{name} longer than {MAX_FIELD_BYTES} bytes"))
                }
                v => Ok(v),
            }
        };
        let entry = Entry {
            time: None,
            principal: field("principal", raw.principal)?,
            fingerprint: field("fingerprint", raw.fingerprint)?,
            remote: field("remote", raw.remote)?,
            action: Action::from_name(&raw.action)
                .ok_or_else(|| format!("unknown action {:?}", raw.action))?,
            topic: field("topic", raw.topic)?,
            decision: match raw.decision {
                None => None,
                Some(d) => Some(Decision::from_name(&d).ok_or_else(|| format!("unknown decision {d:?}"))?),
            },
            reason: field("reason", raw.reason)?.map(Cow::Owned),
            count: raw.count,
        };
        let record = Record {
            seq: raw.seq,
            time: rfc3339::parse(&raw.time)
                .ok_or_else(|| format!("time {:?} is not RFC 3339 UTC", raw.time))?,
            entry,
            prev: Digest::from_hex(&raw.prev).ok_or("prev is not a 64-digit hex hash")?,
            hash: Digest::from_hex(&raw.hash).ok_or("hash is not a 64-digit hex hash")?,
        };
        let mut again = String::with_capacity(line.len() + 1);
        record.render(&mut again);
        if again.trim_end_matches('\n') != line {
            return Err("not in the form the writer writes (fields reordered, added or reformatted)".into());
        }
        Ok(record)
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawEntry {
    seq: u64,
    time: String,
    principal: Option<String>,
    fingerprint: Option<String>,
    remote: Option<String>,
    action: String,
    topic: Option<String>,
    decision: Option<String>,
    reason: Option<String>,
    count: Option<u64>,
    prev: String,
    hash: String,
}

/// Appends `,"name":"value"` when `value` is set.
pub(crate) fn push_field(out: &mut String, name: &str, value: Option<&str>) {
    if let Some(v) = value {
        let _ = write!(out, ",\"{name}\":");
        push_json_str(out, v);
    }
}

/// Appends `s` as a JSON string. Quotes, backslashes, every control character (C0, DEL, C1) and the
/// Unicode line and paragraph separators are escaped, so the result never contains a line break.
pub(crate) fn push_json_str(out: &mut String, s: &str) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if c.is_control() || c == '\u{2028}' || c == '\u{2029}' => {
                let _ = write!(out, "\\u{:04x}", u32::from(c));
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

#[cfg(test)]
mod tests {
    use super::*;

    fn full() -> Entry {
        Entry::new(Action::Publish)
            .principal("alice")
            .fingerprint("ab".repeat(32))
            .remote("127.0.0.1:4000".parse().unwrap())
            .topic("demo.chat")
            .refuse("NOT_AUTHORIZED")
            .count(3)
    }

    #[test]
    fn a_record_renders_and_parses_back() {
        let r = Record::seal(full(), 7, 1_796_431_397_123, Digest([1; 32]));
        let mut line = String::new();
        r.render(&mut line);
        assert!(line.ends_with("}\n") && line.matches('\n').count() == 1, "{line}");
        assert!(line.starts_with("{\"seq\":7,\"time\":\"2026-12-05T00:43:17.123Z\",\"principal\":\"alice\""));
        let back = Record::parse(line.trim_end()).unwrap();
        assert_eq!(back.hash, r.hash);
        assert_eq!(back.canonical_hash(), r.hash);
        let minimal = Record::seal(Entry::new(Action::Start), 1, 0, Digest::ZERO);
        let mut line = String::new();
        minimal.render(&mut line);
        assert_eq!(Record::parse(line.trim_end()).unwrap().canonical_hash(), minimal.hash);
    }

    /// The format's golden vector: a change to the hashed bytes or to the line is a visible, deliberate one.
    #[test]
    fn golden_entry_line() {
        let r = Record::seal(full(), 7, 1_796_431_397_123, Digest([1; 32]));
        let mut line = String::new();
        r.render(&mut line);
        assert_eq!(line, GOLDEN_ENTRY);
    }

    const GOLDEN_ENTRY: &str = concat!(
        r#"{"seq":7,"time":"2026-12-05T00:43:17.123Z","principal":"alice","#,
        r#""fingerprint":"abababababababababababababababababababababababababababababababab","#,
        r#""remote":"127.0.0.1:4000","action":"publish","topic":"demo.chat","decision":"refuse","#,
        r#""reason":"NOT_AUTHORIZED","count":3,"#,
        r#""prev":"0101010101010101010101010101010101010101010101010101010101010101","#,
        r#""hash":"df7487211657bd17105187a6b9f6fa00d8566f8bfaa01ce839f2092136fe9028"}"#,
        "\n"
    );

    /// The hashed bytes as docs/operations.md describes them, written out by hand.
    #[test]
    fn the_hash_covers_the_documented_bytes() {
        let r = Record::seal(full(), 7, 1_796_431_397_123, Digest([1; 32]));
        let mut b = Vec::new();
        b.extend_from_slice(&7u64.to_be_bytes());
        b.extend_from_slice(&1_796_431_397_123u64.to_be_bytes());
        for s in
            ["alice", &"ab".repeat(32), "127.0.0.1:4000", "publish", "demo.chat", "refuse", "NOT_AUTHORIZED"]
        {
            b.push(1);
            b.extend_from_slice(&(s.len() as u32).to_be_bytes());
            b.extend_from_slice(s.as_bytes());
        }
        b.push(1);
        b.extend_from_slice(&3u64.to_be_bytes());
        b.extend_from_slice(&[1; 32]);
        assert_eq!(r.hash, Digest(blake3::derive_key("sealpost 2026-12 audit log entry v1", &b)));
    }

    #[test]
    fn every_field_changes_the_hash() {
        let base = Record::seal(full(), 7, 1000, Digest([1; 32]));
        let variants = [
            Record::seal(full(), 8, 1000, Digest([1; 32])),
            Record::seal(full(), 7, 1001, Digest([1; 32])),
            Record::seal(full(), 7, 1000, Digest([2; 32])),
            Record::seal(full().principal("bob"), 7, 1000, Digest([1; 32])),
            Record::seal(full().fingerprint("cd"), 7, 1000, Digest([1; 32])),
            Record::seal(full().remote("127.0.0.1:4001".parse().unwrap()), 7, 1000, Digest([1; 32])),
            Record::seal(full().topic("demo.x"), 7, 1000, Digest([1; 32])),
            Record::seal(full().allow(), 7, 1000, Digest([1; 32])),
            Record::seal(full().reason("LIMIT_EXCEEDED"), 7, 1000, Digest([1; 32])),
            Record::seal(full().count(4), 7, 1000, Digest([1; 32])),
            Record::seal(Entry { action: Action::Subscribe, ..full() }, 7, 1000, Digest([1; 32])),
        ];
        for v in variants {
            assert_ne!(v.hash, base.hash, "{v:?}");
        }
    }

    #[test]
    fn peer_strings_cannot_break_the_line_and_are_bounded() {
        let evil = "x\n{\"seq\":1}\r\"\\\u{7}\u{85}\u{2028}end";
        let r = Record::seal(
            Entry::new(Action::Connect).principal(evil).topic("é".repeat(300)),
            1,
            0,
            Digest::ZERO,
        );
        let mut line = String::new();
        r.render(&mut line);
        assert_eq!(line.matches('\n').count(), 1, "{line}");
        assert!(!line.contains('\r') && !line.contains('\u{2028}') && !line.contains('\u{85}'));
        let back = Record::parse(line.trim_end()).unwrap();
        assert_eq!(back.entry.principal_name(), Some(evil));
        let topic = back.entry.topic_name().unwrap();
        assert!(topic.len() <= MAX_FIELD_BYTES && topic.chars().all(|c| c == 'é'), "{topic}");
    }

    #[test]
    fn lines_not_in_the_written_form_are_rejected() {
        let r = Record::seal(full(), 7, 1000, Digest([1; 32]));
        let mut line = String::new();
        r.render(&mut line);
        let line = line.trim_end();
        for bad in [
            line.replace("\"seq\":7,", "\"seq\": 7,"),
            line.replace("}", ",\"extra\":1}"),
            line.replace("\"principal\":\"alice\"", "\"principal\":\"alice\",\"principal\":\"bob\""),
            line.replace("publish", "teleport"),
            line.replace("\"principal\":\"alice\"", "\"principal\":null"),
            line.replace("alice", "\\u0061lice"),
            line.replace(".000Z", "Z"),
        ] {
            assert!(Record::parse(&bad).is_err(), "{bad}");
        }
    }
}
