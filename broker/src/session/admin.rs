//! An **admin stream** (`Admin` first): an operator's queries of the broker about itself
//! (`sealpost_protocol::admin`), one answer per query, in order.
//!
//! Who may ask: a principal the ACL lets administer the whole broker ([`Acl::administers_broker`]: `admin`
//! on `>` and denied it nowhere), since the answers span every topic and connection. Anyone else is
//! refused with `NOT_AUTHORIZED`, and the stream ends.
//!
//! The answers are made from the store (topics, offsets, durable subscriptions: blocking reads, which the
//! driver makes off the async workers by calling [`AdminStream::answer`] there), the policy cache (each
//! topic's epoch) and the admission state (connections). A page holds at most [`ADMIN_PAGE`] rows. They are
//! read-only and show no payload, key or policy content. `stats` walks every topic (one index read each),
//! so it costs in proportion to the number of topics.
//!
//! [`Acl::administers_broker`]: crate::acl::Acl::administers_broker

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use sealpost_protocol::{
    AdminAnswer, AdminQuery, BrokerStats, DurableStats, Frame, Offset, RequestId, TopicStats, ADMIN_PAGE,
};

use super::endpoint::Endpoint;
use super::reply::{error_frame, Refusal};
use crate::event::{Event, Who};
use crate::store::Store;
use crate::tls::Peer;
use crate::{Error, Result};

/// Topics read per store call while `stats` walks them all.
const STATS_PAGE: usize = 4096;

/// What the driver does with a frame of an admin stream.
#[derive(Debug)]
pub enum AdminAction {
    /// Make the answer with [`AdminStream::answer`] (off the async workers) and send it.
    Answer {
        /// The query's.
        request_id: RequestId,
        /// What is asked.
        query: AdminQuery,
    },
    /// Refuse the stream.
    Refuse(Refusal),
}

/// The session of one admin stream.
pub struct AdminStream {
    endpoint: Arc<Endpoint>,
    peer: Arc<Peer>,
    remote: Option<SocketAddr>,
}

impl AdminStream {
    pub(super) fn new(endpoint: Arc<Endpoint>, peer: Arc<Peer>, remote: Option<SocketAddr>) -> AdminStream {
        AdminStream { endpoint, peer, remote }
    }

    fn who(&self) -> Who<'_> {
        Who::of(&self.peer, self.remote)
    }

    /// What to do with `frame`: answer an `Admin` query of a principal that administers the broker,
    /// refuse anything else.
    pub fn on_frame(&self, frame: Frame) -> AdminAction {
        let Frame::Admin { request_id, query } = frame else {
            let err =
                Error::Protocol(sealpost_protocol::Error::Malformed("not an Admin frame on an admin stream"));
            return AdminAction::Refuse(Refusal::new(None, err));
        };
        if !self.endpoint.acl().administers_broker(&self.peer.principal) {
            let refusal = Refusal::new(Some(request_id), Error::NotAuthorized);
            self.endpoint.emit(&Event::AdminRefused { who: self.who(), code: refusal.code() });
            return AdminAction::Refuse(refusal);
        }
        self.endpoint.emit(&Event::AdminAnswered { who: self.who(), query: query_name(&query) });
        AdminAction::Answer { request_id, query }
    }

    /// The answer to `query` as of `now`: an `AdminAnswer`, or an error frame if the store fails.
    pub fn answer(&self, request_id: RequestId, query: AdminQuery, store: &dyn Store, now: Instant) -> Frame {
        match self.make(query, store, now) {
            Ok(answer) => Frame::AdminAnswer { request_id, answer },
            Err(e) => error_frame(Some(request_id), &e),
        }
    }

    fn make(&self, query: AdminQuery, store: &dyn Store, now: Instant) -> Result<AdminAnswer> {
        let admission = self.endpoint.admission();
        Ok(match query {
            AdminQuery::Stats => {
                let (connections, principals) = admission.totals();
                let (mut topics, mut stored_messages, mut after) = (0, 0, None);
                loop {
                    let page = store.topics(after.as_ref(), STATS_PAGE)?;
                    for topic in &page {
                        let (first, next) = (store.first_offset(topic)?, store.next_offset(topic)?);
                        stored_messages += next.0.saturating_sub(first.0);
                    }
                    topics += page.len() as u64;
                    if page.len() < STATS_PAGE {
                        break;
                    }
                    after = page.last().cloned();
                }
                AdminAnswer::Stats(BrokerStats {
                    version: env!("CARGO_PKG_VERSION").to_owned(),
                    uptime_ms: u64::try_from(admission.uptime(now).as_millis()).unwrap_or(u64::MAX),
                    connections,
                    principals,
                    topics,
                    stored_messages,
                    syncs: store.syncs(),
                })
            }
            AdminQuery::Topics { after } => {
                let (page, more) = page(store.topics(after.as_ref(), ADMIN_PAGE + 1)?);
                let mut rows = Vec::with_capacity(page.len());
                for topic in page {
                    let epoch = self.endpoint.policies().current(&topic, store)?.map(|p| p.epoch());
                    let (first_offset, next_offset) =
                        (store.first_offset(&topic)?, store.next_offset(&topic)?);
                    rows.push(TopicStats { topic, first_offset, next_offset, epoch });
                }
                AdminAnswer::Topics { rows, more }
            }
            AdminQuery::Subscriptions { after } => {
                let (page, more) = page(store.durables(after.as_ref(), ADMIN_PAGE + 1)?);
                let mut rows = Vec::with_capacity(page.len());
                for (key, committed) in page {
                    let next: Offset = store.next_offset(&key.topic)?;
                    rows.push(DurableStats { lag: next.0.saturating_sub(committed.0), key, committed });
                }
                AdminAnswer::Subscriptions { rows, more }
            }
            AdminQuery::Connections { after } => {
                let (rows, more) = page(admission.connections(after, ADMIN_PAGE + 1, now));
                AdminAnswer::Connections { rows, more }
            }
        })
    }
}

/// The name of the kind of `query`, as events and the CLI call it.
fn query_name(query: &AdminQuery) -> &'static str {
    match query {
        AdminQuery::Stats => "stats",
        AdminQuery::Topics { .. } => "topics",
        AdminQuery::Subscriptions { .. } => "subscriptions",
        AdminQuery::Connections { .. } => "connections",
    }
}

/// A page of at most [`ADMIN_PAGE`] rows out of `rows` (read one over), and whether more follow.
fn page<T>(mut rows: Vec<T>) -> (Vec<T>, bool) {
    let more = rows.len() > ADMIN_PAGE;
    rows.truncate(ADMIN_PAGE);
    (rows, more)
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::{Duration, Instant};

    use sealpost_protocol::{AdminAnswer, AdminQuery, ErrorCode, Frame, Offset};

    use super::*;
    use crate::limits::ServerLimits;
    use crate::session::testing::{batch_bytes, endpoint, key, peer, topic, Windows};
    use crate::session::{Connection, PublishAction};
    use crate::writer::Log;

    #[tokio::test]
    async fn an_administrator_sees_topics_subscriptions_connections_and_totals_and_others_are_refused() {
        let now = Instant::now();
        let (endpoint, store) = endpoint(ServerLimits::default(), now);
        // The test ACL lets `admin` administer every topic.
        assert!(endpoint.acl().administers_broker(&"admin".parse().unwrap()));
        let log = Log::with_tail(store.clone(), 0).unwrap();
        let open =
            |who| Connection::open(&endpoint, Ok(peer(who)), Arc::new(Windows::default()), now).unwrap();
        let (alice, admin) = (open("alice"), open("admin"));
        let publish = Frame::Publish { request_id: 1, batch: batch_bytes(&key("alice"), "demo.chat") };
        let PublishAction::Submit { topic: t, batch, .. } =
            alice.publish_stream().on_frame(publish, store.as_ref(), now)
        else {
            panic!("not submitted");
        };
        log.submit(t, *batch).await.unwrap();
        let bob = "bob".parse().unwrap();
        store.set_durable_offset(&topic("demo.chat"), &bob, "audit", Offset(0)).unwrap();

        let stream = admin.admin_stream();
        let ask = |query| match stream.on_frame(Frame::Admin { request_id: 7, query }) {
            AdminAction::Answer { request_id, query } => {
                match stream.answer(request_id, query, store.as_ref(), now + Duration::from_millis(1500)) {
                    Frame::AdminAnswer { request_id: 7, answer } => answer,
                    other => panic!("{other:?}"),
                }
            }
            AdminAction::Refuse(r) => panic!("{:?}", r.error),
        };
        match ask(AdminQuery::Stats) {
            AdminAnswer::Stats(s) => {
                assert_eq!((s.connections, s.principals, s.topics, s.stored_messages), (2, 2, 1, 1));
                assert_eq!(s.uptime_ms, 1500);
            }
            other => panic!("{other:?}"),
        }
        match ask(AdminQuery::Topics { after: None }) {
            AdminAnswer::Topics { rows, more: false } => {
                assert_eq!(rows.len(), 1);
                assert_eq!((rows[0].first_offset, rows[0].next_offset), (Offset(0), Offset(1)));
                assert_eq!(rows[0].epoch, Some(sealpost_protocol::Epoch(1)));
            }
            other => panic!("{other:?}"),
        }
        match ask(AdminQuery::Subscriptions { after: None }) {
            AdminAnswer::Subscriptions { rows, more: false } => {
                assert_eq!(rows.len(), 1);
                assert_eq!(
                    (rows[0].key.name.as_str(), rows[0].committed, rows[0].lag),
                    ("audit", Offset(0), 1)
                );
            }
            other => panic!("{other:?}"),
        }
        match ask(AdminQuery::Connections { after: None }) {
            AdminAnswer::Connections { rows, more: false } => {
                let who: Vec<String> = rows.iter().map(|r| r.principal.to_string()).collect();
                assert_eq!(who, ["alice", "admin"]);
                assert!(rows[0].id < rows[1].id);
            }
            other => panic!("{other:?}"),
        }
        match ask(AdminQuery::Connections { after: Some(u64::MAX) }) {
            AdminAnswer::Connections { rows, more: false } => assert!(rows.is_empty()),
            other => panic!("{other:?}"),
        }

        // Alice publishes and reads, bob reads: neither administers the broker.
        for who in [alice, open("bob")] {
            match who.admin_stream().on_frame(Frame::Admin { request_id: 3, query: AdminQuery::Stats }) {
                AdminAction::Refuse(r) => {
                    assert_eq!((r.request_id, r.error.code()), (Some(3), ErrorCode::NOT_AUTHORIZED));
                }
                other => panic!("{other:?}"),
            }
        }
        log.close().await.unwrap();
    }

    #[test]
    fn pages_hold_at_most_a_page_and_say_whether_more_follow() {
        assert_eq!(page((0..3).collect()), (vec![0, 1, 2], false));
        let (rows, more) = page((0..=ADMIN_PAGE).collect());
        assert_eq!((rows.len(), more), (ADMIN_PAGE, true));
    }
}
