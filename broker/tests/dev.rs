//! `sealpost-broker dev` as an operator runs it: first run sets up, SIGTERM exits 0, second run reuses.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

/// Starts `sealpost-broker dev` and waits (bounded) until it prints that it listens. Returns the process
/// and everything it printed to stderr up to then.
fn start_dev(dir: &std::path::Path) -> (Child, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_sealpost-broker"))
        .args(["dev", "--listen", "127.0.0.1:0", "--data"])
        .arg(dir)
        .env("RUST_LOG", "warn")
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let mut seen = String::new();
    loop {
        let Ok(line) = rx.recv_timeout(Duration::from_secs(60)) else {
            let _ = child.kill();
            let _ = child.wait();
            panic!("broker did not report listening; it printed:\n{seen}");
        };
        seen.push_str(&line);
        seen.push('\n');
        if line.contains("listening on") {
            return (child, seen);
        }
    }
}

fn sigterm_and_wait(mut child: Child) -> std::process::ExitStatus {
    let pid = child.id().to_string();
    let status = Command::new("kill").args(["-TERM", &pid]).status().unwrap();
    assert!(status.success());
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || tx.send(child.wait()));
    match rx.recv_timeout(Duration::from_secs(30)) {
        Ok(status) => status.unwrap(),
        Err(_) => {
            let _ = Command::new("kill").args(["-KILL", &pid]).status();
            panic!("broker did not exit within 30 s of SIGTERM");
        }
    }
}

#[test]
fn dev_sets_up_once_reuses_after_and_exits_cleanly_on_sigterm() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("sealpost-dev");

    let (child, out) = start_dev(&dir);
    assert!(out.contains("Created a throwaway dev PKI"), "{out}");
    assert!(out.contains("identities/bob.toml"), "it prints the next commands: {out}");
    for f in ["broker.toml", "acl.toml", "pki/ca.pem", "pki/server.pem"] {
        assert!(dir.join(f).exists(), "{f} missing");
    }
    for who in ["alice", "bob", "mallory", "admin"] {
        let id = dir.join(format!("identities/{who}.toml"));
        let mode = std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(&id).unwrap().permissions());
        assert_eq!(mode & 0o077, 0, "{who}'s identity file is readable by others");
        assert!(std::fs::read_to_string(&id).unwrap().contains(&format!("principal = \"{who}\"")));
    }
    let ca_before = std::fs::read(dir.join("pki/ca.pem")).unwrap();
    assert!(sigterm_and_wait(child).success(), "SIGTERM must exit 0");

    let (child, out) = start_dev(&dir);
    assert!(out.contains("Reusing the dev setup"), "{out}");
    assert_eq!(std::fs::read(dir.join("pki/ca.pem")).unwrap(), ca_before, "the CA was regenerated");
    assert!(sigterm_and_wait(child).success());
}
