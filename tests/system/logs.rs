//! The broker's own log as an operator's collector gets it: the real `sealpost-broker` binary with its
//! standard error on a pipe (docs/operations.md, `[log]`).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use crate::harness::*;

/// Runs a broker with `log_table` appended to its config through a session (start, alice publishes and
/// bob reads, shutdown) and returns its log lines.
async fn session_log(log_table: &str) -> Vec<String> {
    let mut env = Env::new();
    let config = env.write_config();
    let mut text = std::fs::read_to_string(&config).unwrap();
    text.push_str(log_table);
    std::fs::write(&config, text).unwrap();
    let broker = BrokerProcess::start_logging(&config, "info");
    broker_still_serves(&env, broker.addr).await;
    let log = broker.log.clone();
    broker.terminate();
    let lines = log.lock().unwrap().clone();
    assert!(lines.len() >= 3, "too few lines to judge: {lines:?}");
    lines
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_the_json_format_every_line_is_one_json_object_with_time_level_message_and_who() {
    let lines = session_log("\n[log]\nformat = \"json\"\n").await;
    for line in &lines {
        let value: serde_json::Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"));
        for key in ["timestamp", "level", "target", "message"] {
            assert!(value.get(key).is_some(), "no {key} in {line}");
        }
    }
    // A line logged inside a connection's stream names its principal and address (the span's fields).
    let subscribed =
        lines.iter().find(|l| l.contains("\"subscribed\"")).expect("bob's subscription is logged");
    let subscribed: serde_json::Value = serde_json::from_str(subscribed).unwrap();
    let span = &subscribed["spans"][0];
    assert_eq!(
        (span["name"].as_str(), span["principal"].as_str()),
        (Some("connection"), Some("bob")),
        "{subscribed}"
    );
    assert!(span["remote"].as_str().is_some_and(|r| r.starts_with("127.0.0.1:")), "{subscribed}");
    assert_eq!(subscribed["topic"], "demo.chat", "{subscribed}");
    let ready = lines.iter().find(|l| l.contains("listening on")).expect("the ready line");
    let ready: serde_json::Value = serde_json::from_str(ready).unwrap();
    assert!(ready["listen"].as_str().is_some_and(|a| a.starts_with("127.0.0.1:")), "{ready}");
    assert!(lines.iter().any(|l| l.contains("storage synced; bye")), "no shutdown line: {lines:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_log_written_to_a_pipe_has_no_colour_codes() {
    let lines = session_log("").await;
    for line in &lines {
        assert!(!line.contains('\u{1b}'), "an escape code in {line:?}");
    }
    assert!(lines.iter().any(|l| l.contains(" INFO ")), "no level in the text lines: {lines:?}");
}
