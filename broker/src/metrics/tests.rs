//! The metrics, fed by a session driven without sockets (as the shell drives it) and by the real writer.

use std::sync::Arc;
use std::time::Instant;

use sealpost_protocol::{ErrorCode, Frame, StartAt};

use super::*;
use crate::limits::ServerLimits;
use crate::session::testing::{batch_bytes, key, observed_endpoint, peer, topic, Recorder, Windows};
use crate::session::{Connection, PublishAction, Started};
use crate::writer::Log;

/// The value of the sample `series` (name and labels exactly as written) in `text`; panics if it is
/// missing or appears twice.
fn sample(text: &str, series: &str) -> f64 {
    let values: Vec<f64> =
        text.lines().filter_map(|line| line.strip_prefix(series)?.strip_prefix(' ')?.parse().ok()).collect();
    match values.as_slice() {
        [value] => *value,
        _ => panic!("{series}: {values:?} in\n{text}"),
    }
}

#[tokio::test]
async fn a_session_moves_the_counters_by_what_it_decided() {
    let now = Instant::now();
    let metrics = Arc::new(Metrics::new(MetricsSettings::default()).with_zero_series());
    let recorder = Arc::new(Recorder::default());
    let observers = crate::event::Observers::new().with(metrics.clone()).with(recorder.clone());
    let (endpoint, store) = observed_endpoint(ServerLimits::default(), now, Arc::new(observers));
    let log = Log::with_metrics(store.clone(), 0, Some(metrics.clone())).unwrap();
    let open = |who| Connection::open(&endpoint, Ok(peer(who)), Arc::new(Windows::default()), now).unwrap();
    let (alice, bob, mallory) = (open("alice"), open("bob"), open("mallory"));

    let alice_stream = alice.publish_stream();
    let publish = Frame::Publish { request_id: 1, batch: batch_bytes(&key("alice"), "demo.chat") };
    let PublishAction::Submit { request_id, topic: t, batch } =
        alice_stream.on_frame(publish, store.as_ref(), now)
    else {
        panic!("not submitted");
    };
    let answer = alice_stream.published(request_id, log.submit(t, *batch).await);
    assert!(matches!(answer, Frame::Published { .. }), "{answer:?}");
    let refused = Frame::Publish { request_id: 2, batch: batch_bytes(&key("mallory"), "demo.chat") };
    let action = mallory.publish_stream().on_frame(refused, store.as_ref(), now);
    assert!(matches!(action, PublishAction::Send(Frame::Error { code: ErrorCode::NOT_AUTHORIZED, .. })));

    let subscribe =
        Frame::Subscribe { request_id: 3, topic: topic("demo.chat"), from: StartAt::Earliest, durable: None };
    let subscribing = bob.subscribe(subscribe).unwrap();
    let end = *log.durable_end(subscribing.topic()).unwrap().borrow();
    let Started { mut cursor, .. } = subscribing.start(store.as_ref(), end).unwrap();
    let read = cursor.next_read(end).unwrap();
    for item in
        crate::store::Store::read(store.as_ref(), &topic("demo.chat"), read.from, read.max_bytes).unwrap()
    {
        assert!(cursor.deliver(item, end, Instant::now()).into_frame().is_some());
    }
    let denied =
        Frame::Subscribe { request_id: 4, topic: topic("demo.chat"), from: StartAt::Earliest, durable: None };
    assert!(mallory.subscribe(denied).is_err());
    drop(mallory);

    let text = metrics.encode();
    assert_eq!(sample(&text, "sealpost_connections_open"), 2.0);
    assert_eq!(sample(&text, "sealpost_connections_accepted_total{principal=\"alice\"}"), 1.0);
    assert_eq!(sample(&text, "sealpost_connections_accepted_total{principal=\"mallory\"}"), 1.0);
    assert_eq!(sample(&text, "sealpost_publishes_total{topic=\"demo.chat\"}"), 1.0);
    assert_eq!(sample(&text, "sealpost_published_messages_total{topic=\"demo.chat\"}"), 1.0);
    assert_eq!(sample(&text, "sealpost_stored_messages_total{topic=\"demo.chat\"}"), 1.0);
    assert!(sample(&text, "sealpost_stored_bytes_total{topic=\"demo.chat\"}") > 0.0);
    assert_eq!(sample(&text, "sealpost_topic_next_offset{topic=\"demo.chat\"}"), 1.0);
    assert_eq!(sample(&text, "sealpost_delivered_messages_total{topic=\"demo.chat\"}"), 1.0);
    assert_eq!(sample(&text, "sealpost_refusals_total{action=\"publish\",code=\"NOT_AUTHORIZED\"}"), 1.0);
    assert_eq!(sample(&text, "sealpost_refusals_total{action=\"subscribe\",code=\"NOT_AUTHORIZED\"}"), 1.0);
    assert_eq!(sample(&text, "sealpost_subscriptions_total{kind=\"ephemeral\"}"), 1.0);
    assert_eq!(sample(&text, "sealpost_connections_refused_total{reason=\"no_client_certificate\"}"), 0.0);
    assert_eq!(sample(&text, "sealpost_fsync_duration_seconds_count"), 1.0);
    assert_eq!(sample(&text, "sealpost_group_commit_requests_count"), 1.0);
    assert!(text.ends_with("# EOF\n"), "{text}");

    // The same decisions, as an audit sink sees them: who (principal and certificate fingerprint), what.
    let fp = |who: &str| crate::tls::Fingerprint([who.as_bytes()[0]; 32]).to_string();
    let events = recorder.0.lock().unwrap().clone();
    for expected in [
        format!("connection_accepted alice {}", fp("alice")),
        format!("publish_accepted alice {}", fp("alice")),
        format!("publish_refused mallory {}", fp("mallory")),
        format!("subscribe_accepted bob {}", fp("bob")),
        format!("delivered bob {}", fp("bob")),
        format!("subscribe_refused mallory {}", fp("mallory")),
        format!("connection_closed mallory {}", fp("mallory")),
    ] {
        assert!(events.contains(&expected), "{expected} not in {events:#?}");
    }
    drop((alice, bob));
    log.close().await.unwrap();
}

#[test]
fn topic_labels_are_bounded_escaped_and_can_be_switched_off() {
    let labels = TopicLabels::new(true, 2);
    assert_eq!(&*labels.label(&topic("a.one")), "a.one");
    assert_eq!(&*labels.label(&topic("a.\"two\\")), "a.\\\"two\\\\");
    assert_eq!(&*labels.label(&topic("a.three")), OTHER_TOPICS);
    // A topic keeps the label it got.
    assert_eq!(&*labels.label(&topic("a.one")), "a.one");
    let off = TopicLabels::new(false, 100);
    assert_eq!(&*off.label(&topic("a.one")), OTHER_TOPICS);
}

#[test]
fn every_series_is_named_as_prometheus_asks() {
    let settings = MetricsSettings { data_dir: Some(std::env::temp_dir()), ..MetricsSettings::default() };
    let metrics = Metrics::new(settings).with_zero_series();
    metrics.synced(3, std::time::Duration::from_millis(2));
    metrics.committed(&topic("demo.chat"), &"bob".parse().unwrap(), "inbox", Offset(1));
    metrics.stored(&topic("demo.chat"), 4, 100, Offset(4));
    let text = metrics.encode();
    assert_eq!(sample(&text, "sealpost_durable_subscription_lag_messages{topic=\"demo.chat\",principal=\"bob\",name=\"inbox\"}"), 3.0);
    assert!(sample(&text, "sealpost_store_size_bytes") >= 0.0);
    assert!(sample(&text, "sealpost_store_available_bytes") >= 0.0);
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        assert!(line.starts_with("sealpost_"), "{line}");
    }
    for line in text.lines().filter(|l| l.starts_with("# TYPE ")) {
        let fields: Vec<&str> = line.split(' ').collect();
        match fields[3] {
            "histogram" => assert!(
                fields[2].ends_with("_seconds") || fields[2] == "sealpost_group_commit_requests",
                "{line}"
            ),
            "counter" | "gauge" => {}
            other => panic!("unexpected type {other}: {line}"),
        }
    }
}

#[test]
fn the_classic_text_names_counters_with_their_suffix_and_has_no_eof() {
    let open = "# HELP sealpost_publishes Batches.\n# TYPE sealpost_publishes counter\n\
                sealpost_publishes_total{topic=\"a\"} 1\n\
                # HELP sealpost_fsync_duration_seconds Syncs.\n# TYPE sealpost_fsync_duration_seconds histogram\n\
                # UNIT sealpost_fsync_duration_seconds seconds\nsealpost_fsync_duration_seconds_count 0\n# EOF\n";
    assert_eq!(
        classic_text(open),
        "# HELP sealpost_publishes_total Batches.\n# TYPE sealpost_publishes_total counter\n\
         sealpost_publishes_total{topic=\"a\"} 1\n\
         # HELP sealpost_fsync_duration_seconds Syncs.\n# TYPE sealpost_fsync_duration_seconds histogram\n\
         sealpost_fsync_duration_seconds_count 0\n"
    );
}

#[test]
fn a_retention_pass_moves_the_first_offset_and_counts_what_it_gave_back() {
    let metrics = Metrics::new(MetricsSettings::default());
    let done = crate::store::Retained {
        topics: vec![(topic("demo.chat"), sealpost_protocol::Offset(42))],
        segments_removed: 3,
        bytes_freed: 3 << 20,
    };
    metrics.retained(&done);
    metrics.retained(&crate::store::Retained::default());
    let text = metrics.encode();
    assert_eq!(sample(&text, "sealpost_topic_first_offset{topic=\"demo.chat\"}"), 42.0);
    assert_eq!(sample(&text, "sealpost_retention_segments_removed_total"), 3.0);
    assert_eq!(sample(&text, "sealpost_retention_freed_bytes_total"), f64::from(3 << 20));
}

#[tokio::test]
async fn members_of_shared_subscriptions_and_their_rewinds_are_counted() {
    let now = Instant::now();
    let metrics = Arc::new(Metrics::new(MetricsSettings::default()).with_zero_series());
    let (endpoint, store) = observed_endpoint(ServerLimits::default(), now, metrics.clone());
    let log = Log::with_metrics(store.clone(), 0, Some(metrics.clone())).unwrap();
    let alice = Connection::open(&endpoint, Ok(peer("alice")), Arc::new(Windows::default()), now).unwrap();
    let publish = Frame::Publish { request_id: 1, batch: batch_bytes(&key("alice"), "demo.chat") };
    let PublishAction::Submit { topic: t, batch, .. } =
        alice.publish_stream().on_frame(publish, store.as_ref(), now)
    else {
        panic!("not submitted");
    };
    log.submit(t, *batch).await.unwrap();
    let end = *log.durable_end(&topic("demo.chat")).unwrap().borrow();
    let member = |request_id| {
        let bob = Connection::open(&endpoint, Ok(peer("bob")), Arc::new(Windows::default()), now).unwrap();
        let join = Frame::SubscribeShared {
            request_id,
            topic: topic("demo.chat"),
            from: StartAt::Earliest,
            group: "workers".into(),
        };
        let mut subscribing = bob.subscribe(join).unwrap();
        assert!(subscribing.join(store.as_ref(), end).unwrap(), "joined");
        (bob, subscribing.start(store.as_ref(), end).unwrap())
    };
    let (_first, mut leaving) = member(1);
    let (_second, mut staying) = member(2);
    let text = metrics.encode();
    assert_eq!(sample(&text, "sealpost_shared_members{topic=\"demo.chat\"}"), 2.0);

    // The first is given alice's batch (its chain), and leaves without acknowledging it.
    let read = leaving.cursor.next_read(end).unwrap();
    let items =
        crate::store::Store::read(store.as_ref(), &topic("demo.chat"), read.from, read.max_bytes).unwrap();
    for item in items {
        assert!(leaving.cursor.deliver(item, end, Instant::now()).into_frame().is_some());
    }
    drop(leaving);
    let rewind = staying.cursor.take_rewind();
    assert!(
        matches!(rewind, Some(Frame::Rewind { offset, .. }) if offset == sealpost_protocol::Offset(0)),
        "{rewind:?}"
    );
    let text = metrics.encode();
    assert_eq!(sample(&text, "sealpost_shared_members{topic=\"demo.chat\"}"), 1.0);
    assert_eq!(sample(&text, "sealpost_shared_rewinds_total{topic=\"demo.chat\"}"), 1.0);
    drop(staying);
    log.close().await.unwrap();
}
