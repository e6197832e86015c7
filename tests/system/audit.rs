//! The audit log of a real broker, as an operator reads it: `sealpost-broker dev` (which configures an
//! `[audit]` table and key), a scripted session with the `sealpost` CLI and a bare QUIC client, then
//! `sealpost-broker audit verify` (docs/operations.md, "Audit log").
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use crate::harness::cargo_bin;
use crate::process::{Ready, ServerProcess, LISTENING};

/// `sealpost-broker dev` in `dir` on 127.0.0.1:0 (set up on first run, reused after), with the identity
/// files pointed at the port it got.
fn start_dev(dir: &Path) -> ServerProcess {
    let mut command = Command::new(cargo_bin("sealpost-broker"));
    command.args(["dev", "--listen", "127.0.0.1:0", "--data"]).arg(dir).env("RUST_LOG", "warn");
    let process = ServerProcess::start(&mut command, Ready::new(LISTENING, Duration::from_secs(60)));
    for who in ["alice", "bob", "mallory", "admin"] {
        let path = dir.join(format!("identities/{who}.toml"));
        let text: String = std::fs::read_to_string(&path)
            .unwrap()
            .lines()
            .map(|l| {
                if l.starts_with("broker = ") {
                    format!("broker = \"{}\"\n", process.addr)
                } else {
                    format!("{l}\n")
                }
            })
            .collect();
        std::fs::write(&path, text).unwrap();
    }
    process
}

/// Runs `sealpost ARGS` as `who`, bounded; returns whether it succeeded.
fn sealpost(dir: &Path, who: &str, args: &[&str]) -> bool {
    let mut child = Command::new(cargo_bin("sealpost"))
        .arg("--identity")
        .arg(dir.join(format!("identities/{who}.toml")))
        .args(args)
        .env("RUST_LOG", "error")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    for _ in 0..600 {
        if let Some(status) = child.try_wait().unwrap() {
            return status.success();
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = child.kill();
    panic!("sealpost {args:?} as {who} did not finish within 30 s");
}

/// `sealpost-broker audit verify --key DIR/audit.pub FILES...`: exit status and output.
fn verify(dir: &Path, files: &[PathBuf]) -> (i32, String) {
    let out = Command::new(cargo_bin("sealpost-broker"))
        .args(["audit", "verify", "--key"])
        .arg(dir.join("audit.pub"))
        .args(files)
        .output()
        .unwrap();
    (out.status.code().unwrap_or(-1), String::from_utf8_lossy(&out.stdout).into_owned())
}

fn audit_files(dir: &Path) -> Vec<PathBuf> {
    sealpost_broker::audit::list_files(&dir.join("audit")).unwrap().into_iter().map(|(_, p)| p).collect()
}

/// The entries (not the checkpoints) of `files`, parsed.
fn entries(files: &[PathBuf]) -> Vec<serde_json::Value> {
    files
        .iter()
        .flat_map(|f| std::fs::read_to_string(f).unwrap().lines().map(str::to_owned).collect::<Vec<_>>())
        .map(|l| serde_json::from_str::<serde_json::Value>(&l).unwrap())
        .filter(|v| v.get("checkpoint").is_none())
        .collect()
}

/// Whether some entry has every `(field, value)` of `want`.
fn has(entries: &[serde_json::Value], want: &[(&str, &str)]) -> bool {
    entries.iter().any(|e| want.iter().all(|(k, v)| e.get(*k).and_then(|x| x.as_str()) == Some(*v)))
}

/// alice publishes twice, bob subscribes durably, mallory is refused publishing and reading, bob is
/// refused an administrative query and admin is answered one; the broker stops cleanly. The log verifies
/// clean and holds each decision with its principal, certificate fingerprint, address, topic and reason.
/// Then one entry edited, the newest entry deleted, or the final checkpoint cut off: each is reported.
#[test]
fn a_scripted_session_is_in_the_audit_log_and_tampering_with_it_is_reported() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("dev");
    let broker = start_dev(&dir);
    assert!(sealpost(&dir, "alice", &["pub", "demo.chat", "one"]));
    assert!(sealpost(&dir, "alice", &["pub", "demo.chat", "two"]));
    assert!(sealpost(
        &dir,
        "bob",
        &["sub", "demo.chat", "--from", "earliest", "--durable", "audit", "--count", "2"]
    ));
    assert!(!sealpost(&dir, "mallory", &["pub", "demo.chat", "nope"]));
    assert!(!sealpost(&dir, "mallory", &["sub", "demo.chat", "--count", "1"]));
    assert!(!sealpost(&dir, "bob", &["admin", "stats"]));
    assert!(sealpost(&dir, "admin", &["admin", "stats"]));
    let status = broker.terminate(Duration::from_secs(30));
    assert!(status.success(), "{status}");

    let files = audit_files(&dir);
    let (code, out) = verify(&dir, &files);
    assert_eq!(code, 0, "{out}");
    let log = entries(&files);
    for want in [
        &[("action", "connect"), ("principal", "alice"), ("decision", "allow")][..],
        &[("action", "publish"), ("principal", "alice"), ("topic", "demo.chat"), ("decision", "allow")],
        &[("action", "subscribe"), ("principal", "bob"), ("topic", "demo.chat"), ("decision", "allow")],
        &[("action", "durable_create"), ("principal", "bob"), ("reason", "audit")],
        &[("action", "read_policies"), ("principal", "mallory"), ("reason", "NOT_AUTHORIZED")],
        &[("action", "admin"), ("principal", "bob"), ("decision", "refuse"), ("reason", "NOT_AUTHORIZED")],
        &[("action", "admin"), ("principal", "admin"), ("decision", "allow"), ("reason", "stats")],
        &[("action", "disconnect"), ("principal", "alice")],
        &[("action", "shutdown")],
    ] {
        assert!(has(&log, want), "no entry with {want:?} in:\n{log:#?}");
    }
    // Who is who: a certificate fingerprint (SHA-256, hex) and a loopback address on each peer's entries.
    let alice = log.iter().find(|e| e["principal"] == "alice").unwrap();
    assert_eq!(alice["fingerprint"].as_str().map(str::len), Some(64), "{alice}");
    assert!(alice["remote"].as_str().is_some_and(|r| r.starts_with("127.0.0.1:")), "{alice}");
    // A publish allowed is one entry per connection and topic (each `sealpost pub` is a connection).
    let publishes = log.iter().filter(|e| e["action"] == "publish" && e["decision"] == "allow").count();
    assert_eq!(publishes, 2, "{log:#?}");

    // Tampering, each on a fresh copy of the files.
    let last = files.last().unwrap().clone();
    let text = std::fs::read_to_string(&last).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    let tamper = |lines: Vec<String>| {
        let copy = tmp.path().join("tampered.jsonl");
        std::fs::write(&copy, lines.join("\n") + "\n").unwrap();
        let mut given = files[..files.len() - 1].to_vec();
        given.push(copy);
        verify(&dir, &given)
    };
    let owned = |ls: &[&str]| ls.iter().map(|l| l.to_string()).collect::<Vec<_>>();
    // Edit a refusal of mallory's into an allow.
    let mut edited = owned(&lines);
    let at = edited
        .iter()
        .position(|l| l.contains("\"mallory\"") && l.contains("\"refuse\""))
        .expect("mallory's refusal is in the newest file");
    edited[at] = edited[at].replace("\"refuse\"", "\"allow\"");
    let (code, out) = tamper(edited);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("first bad entry"), "{out}");
    // Delete the newest entry (the one before the final checkpoint).
    let mut deleted = owned(&lines);
    let newest = deleted.iter().rposition(|l| !l.starts_with("{\"checkpoint\"")).unwrap();
    deleted.remove(newest);
    let (code, out) = tamper(deleted);
    assert_eq!(code, 1, "{out}");
    // Cut off the final checkpoint: the log no longer says it was closed.
    let cut = owned(&lines[..lines.len() - 1]);
    let (code, out) = tamper(cut);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("not closed"), "{out}");
}

/// The broker killed with SIGKILL: its audit log is "not closed" (what was queued since the last
/// checkpoint is lost, as docs/operations.md says); the next start writes a `restart` entry that
/// continues the chain, and after a clean stop the whole log verifies, with a note of the restart.
#[test]
fn a_killed_broker_leaves_its_audit_log_not_closed_and_the_next_start_continues_it() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("dev");
    let broker = start_dev(&dir);
    assert!(sealpost(&dir, "alice", &["pub", "demo.chat", "one"]));
    broker.kill();
    let (code, out) = verify(&dir, &audit_files(&dir));
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("not closed"), "{out}");

    let broker = start_dev(&dir);
    assert!(sealpost(&dir, "alice", &["pub", "demo.chat", "two"]));
    assert!(broker.terminate(Duration::from_secs(30)).success());
    let files = audit_files(&dir);
    let (code, out) = verify(&dir, &files);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("restart"), "{out}");
    assert!(has(&entries(&files), &[("action", "restart")]), "no restart entry");
}
