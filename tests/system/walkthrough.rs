//! The walk-through of docs/operations.md ("Walk-through: from an empty folder to three services"), run as
//! written: its `sh` blocks, in order, as one bash script in an empty folder, with `openssl` and the
//! `sealpost` and `sealpost-broker` binaries of this build on the `PATH`. Only the broker's port is changed
//! (to one the OS gives), so that the test runs beside others.
//!
//! The script stops at its first failing command (`set -euo pipefail`); the test then checks what each
//! service saw: both readers read the first orders, `billing` the one published after `shipping` was
//! removed, and `shipping` was refused as revoked, which the broker logged with its subject.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::os::unix::process::CommandExt as _;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use crate::harness::cargo_bin;

const SECTION: &str = "## Walk-through: from an empty folder to three services";

/// The `sh` blocks of the walk-through section, in order.
fn walkthrough_blocks(docs: &str) -> Vec<String> {
    let start = docs.find(SECTION).expect("docs/operations.md has the walk-through section");
    let section = &docs[start + SECTION.len()..];
    let section = &section[..section.find("\n## ").unwrap_or(section.len())];
    let mut blocks = Vec::new();
    let mut current: Option<String> = None;
    for line in section.lines() {
        match (&mut current, line) {
            (None, "```sh") => current = Some(String::new()),
            (Some(block), "```") => {
                blocks.push(std::mem::take(block));
                current = None;
            }
            (Some(block), line) => {
                block.push_str(line);
                block.push('\n');
            }
            (None, _) => {}
        }
    }
    assert!(current.is_none(), "an sh block of the walk-through is not closed");
    blocks
}

fn free_udp_port() -> u16 {
    std::net::UdpSocket::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

#[test]
fn the_documented_walkthrough_runs_from_an_empty_folder() {
    let docs =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/operations.md")).unwrap();
    let blocks = walkthrough_blocks(&docs);
    assert!(blocks.len() >= 10, "found {} sh blocks", blocks.len());
    let script = format!("set -euo pipefail\n{}", blocks.concat());
    assert!(script.contains("127.0.0.1:7443"), "the walk-through's broker address changed");
    let script = script.replace("127.0.0.1:7443", &format!("127.0.0.1:{}", free_udp_port()));

    let dir = tempfile::tempdir().unwrap();
    let bin = cargo_bin("sealpost");
    let bin_dir = bin.parent().unwrap();
    let path = format!("{}:{}", bin_dir.display(), std::env::var("PATH").unwrap_or_default());
    // The output goes to a file, not a pipe: the broker the script starts in the background inherits it,
    // and a pipe would stay open as long as a broker left behind by a failed step.
    let out_path = dir.path().join("walkthrough.out");
    let out = std::fs::File::create(&out_path).unwrap();
    let mut child = Command::new("bash")
        .arg("-c")
        .arg(&script)
        .current_dir(dir.path())
        .env("PATH", path)
        .env_remove("RUST_LOG")
        .env_remove("NO_COLOR")
        .stdin(Stdio::null())
        .stdout(out.try_clone().unwrap())
        .stderr(out)
        .process_group(0)
        .spawn()
        .unwrap();
    let group = child.id();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || tx.send(child.wait()));
    let status = rx.recv_timeout(Duration::from_secs(240));
    // Whatever happened, nothing the script started outlives the test.
    let _ = Command::new("kill").args(["-KILL", "--", &format!("-{group}")]).status();
    let said = std::fs::read_to_string(&out_path).unwrap_or_default();
    let log = std::fs::read_to_string(dir.path().join("broker.log")).unwrap_or_default();
    let status =
        status.unwrap_or_else(|_| panic!("the walk-through did not finish in 240 s:\n{said}\n{log}"));
    assert!(status.unwrap().success(), "the walk-through failed:\n{said}\nbroker.log:\n{log}");

    let lines: Vec<&str> = said.lines().collect();
    let count = |text: &str| lines.iter().filter(|l| **l == text).count();
    // Step 8: billing and shipping each read orders 1 and 2; step 10: billing reads them again and order 3.
    assert_eq!(count("order 1"), 3, "{said}");
    assert_eq!(count("order 2"), 3, "{said}");
    assert_eq!(count("order 3"), 1, "{said}");
    assert!(said.contains("has been revoked") && said.contains("shipping was refused"), "{said}");
    // Step 7: every check of every service passed (the script would have stopped otherwise).
    assert_eq!(lines.iter().filter(|l| l.starts_with("FAIL")).count(), 0, "{said}");
    assert!(lines.iter().filter(|l| l.starts_with("ok ")).count() >= 3 * 7, "{said}");
    let refused = log.lines().find(|l| l.contains("client certificate refused")).unwrap_or_default();
    assert!(refused.contains("subject=CN=shipping") && refused.contains("revoked"), "{log}");
    // Step 11's `wait` gave the broker's exit status: the script's success says it stopped cleanly.
}
