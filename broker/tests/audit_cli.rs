//! `sealpost-broker audit keygen` and `audit verify`, run as the built binary: output and exit statuses.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::process::Command;

use sealpost_broker::audit::{self, Action, AuditKey, AuditLog, Entry};
use sealpost_broker::config::AuditConfig;

fn broker(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_sealpost-broker")).args(args).output().unwrap();
    let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
    (out.status.code().unwrap_or(-1), text(&out.stdout), text(&out.stderr))
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// A key made by `audit keygen`, and a closed log of a few decisions written with it.
fn setup(dir: &Path) -> (PathBuf, String, Vec<PathBuf>) {
    let key_path = dir.join("audit.key");
    let (code, stdout, stderr) = broker(&["audit", "keygen", "--out", s(&key_path)]);
    assert_eq!(code, 0, "{stderr}");
    let public = stdout.trim().to_owned();
    assert_eq!(public.len(), 64, "{stdout}");
    let mode = std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(&key_path).unwrap().permissions());
    assert_eq!(mode & 0o777, 0o600);
    assert_eq!(std::fs::read_to_string(dir.join("audit.key.pub")).unwrap().trim(), public);
    let (code, _, stderr) = broker(&["audit", "keygen", "--out", s(&key_path)]);
    assert_ne!(code, 0, "keygen never overwrites a key: {stderr}");

    let config =
        AuditConfig { checkpoint_entries: 3, ..AuditConfig::new(dir.join("audit"), key_path.clone()) };
    let log = AuditLog::open(&config).unwrap();
    for i in 0..7 {
        log.record(Entry::new(Action::Publish).principal(format!("alice{i}")).topic("demo.chat").allow());
    }
    log.record(Entry::new(Action::Connect).principal("mallory\n{\"seq\":1}").refuse("NOT_AUTHORIZED"));
    log.close().unwrap();
    let files = audit::list_files(&dir.join("audit")).unwrap().into_iter().map(|(_, p)| p).collect();
    (key_path, public, files)
}

#[test]
fn audit_verify_exit_statuses_and_first_bad_entry() {
    let tmp = tempfile::tempdir().unwrap();
    let (key_path, public, files) = setup(tmp.path());
    let file = s(&files[0]).to_owned();

    let (code, stdout, _) = broker(&["audit", "verify", "--key", &public, &file]);
    assert_eq!(code, 0, "{stdout}");
    assert!(stdout.contains("1 files, 9 entries") && stdout.contains(": clean"), "{stdout}");
    let (code, stdout, _) =
        broker(&["audit", "verify", "--key", s(&tmp.path().join("audit.key.pub")), &file]);
    assert_eq!(code, 0, "a key file works as well: {stdout}");

    // --config: the key and the folder from a broker configuration.
    let config = tmp.path().join("broker.toml");
    std::fs::write(
        &config,
        "acl = \"acl.toml\"\n[tls]\nca = \"a\"\ncert = \"b\"\nkey = \"c\"\n[audit]\ndir = \"audit\"\nkey = \"audit.key\"\n",
    )
    .unwrap();
    let (code, stdout, stderr) = broker(&["audit", "verify", "--config", s(&config)]);
    assert_eq!(code, 0, "{stdout}{stderr}");

    // An edited entry: exit 1, and the file, line and seq of the first bad entry.
    let original = std::fs::read_to_string(&files[0]).unwrap();
    std::fs::write(&files[0], original.replacen("alice4", "alice5", 1)).unwrap();
    let (code, stdout, _) = broker(&["audit", "verify", "--key", &public, &file]);
    assert_eq!(code, 1, "{stdout}");
    assert!(stdout.contains(&format!("first bad entry: {file} line 7 (seq 6)")), "{stdout}");
    assert!(stdout.contains("edited") && stdout.contains("NOT clean"), "{stdout}");

    // The final checkpoint cut off: not closed.
    let cut: Vec<&str> = original.lines().collect();
    std::fs::write(&files[0], cut[..cut.len() - 1].join("\n") + "\n").unwrap();
    let (code, stdout, _) = broker(&["audit", "verify", "--key", &public, &file]);
    assert_eq!(code, 1, "{stdout}");
    assert!(stdout.contains("not closed"), "{stdout}");
    std::fs::write(&files[0], &original).unwrap();

    // Another key: exit 1. No key, a bad key, a missing file: exit 2.
    let other = AuditKey::generate().public_key().to_string();
    assert_eq!(broker(&["audit", "verify", "--key", &other, &file]).0, 1);
    assert_eq!(broker(&["audit", "verify", &file]).0, 2);
    assert_eq!(broker(&["audit", "verify", "--key", "00", &file]).0, 2);
    assert_eq!(broker(&["audit", "verify", "--key", &public, s(&tmp.path().join("missing.jsonl"))]).0, 2);
    assert!(key_path.exists());
}
