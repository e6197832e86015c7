//! `sealpost-broker dev` as an operator runs it: first run sets up, SIGTERM exits 0, second run reuses.
#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "../../tests/system/process.rs"]
mod process;

use std::process::Command;
use std::time::Duration;

use process::{Ready, ServerProcess, LISTENING};

/// Starts `sealpost-broker dev` and waits (bounded) until it prints that it listens. Returns the process
/// and everything it printed to stderr up to then.
fn start_dev(dir: &std::path::Path) -> (ServerProcess, String) {
    let mut command = Command::new(env!("CARGO_BIN_EXE_sealpost-broker"));
    command.args(["dev", "--listen", "127.0.0.1:0", "--data"]).arg(dir).env("RUST_LOG", "warn");
    let process = ServerProcess::start(&mut command, Ready::new(LISTENING, Duration::from_secs(60)));
    let seen = process.log_text();
    (process, seen)
}

fn sigterm_and_wait(process: ServerProcess) -> std::process::ExitStatus {
    process.terminate(Duration::from_secs(30))
}

#[test]
fn dev_sets_up_once_reuses_after_and_exits_cleanly_on_sigterm() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("sealpost-dev");

    let (child, out) = start_dev(&dir);
    assert!(out.contains("Created a throwaway dev PKI"), "{out}");
    assert!(out.contains("identities/bob.toml"), "it prints the next commands: {out}");
    // Metrics are on, on loopback (port 0 here, as the broker's), and the startup lines say where.
    assert!(out.contains("metrics on http://127.0.0.1:"), "it prints the metrics URL: {out}");
    let config = std::fs::read_to_string(dir.join("broker.toml")).unwrap();
    assert!(config.contains("[metrics]\nlisten = \"127.0.0.1:0\""), "{config}");
    for f in ["broker.toml", "acl.toml", "pki/ca.pem", "pki/server.pem", "audit.pub"] {
        assert!(dir.join(f).exists(), "{f} missing");
    }
    let audit_key = std::fs::metadata(dir.join("audit.key")).unwrap();
    assert_eq!(std::os::unix::fs::PermissionsExt::mode(&audit_key.permissions()) & 0o077, 0, "audit.key");
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
