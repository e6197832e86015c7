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

const CHILD_DIR: &str = "SEALPOST_AUDIT_TEST_CHILD_DIR";

/// The child of `a_writer_killed_with_sigkill_...`: a process that writes an audit log and is killed. Run
/// without the variable (a normal test run), it does nothing.
#[test]
fn writer_child() {
    let Ok(dir) = std::env::var(CHILD_DIR) else { return };
    let dir = PathBuf::from(dir);
    let config = AuditConfig {
        checkpoint_entries: 1000,
        ..AuditConfig::new(dir.join("audit"), dir.join("audit.key"))
    };
    let log = AuditLog::open(&config).unwrap();
    for i in 0..10 {
        log.record(Entry::new(Action::Publish).principal(format!("alice{i}")).allow());
    }
    log.checkpoint().unwrap();
    for i in 10..15 {
        log.record(Entry::new(Action::Publish).principal(format!("alice{i}")).allow());
    }
    println!("ready");
    // Wait to be killed (the parent never writes to our stdin).
    let mut line = String::new();
    let _ = std::io::stdin().read_line(&mut line);
}

#[test]
fn a_writer_killed_with_sigkill_leaves_a_not_closed_log_that_the_next_run_continues() {
    use std::io::BufRead as _;
    let tmp = tempfile::tempdir().unwrap();
    let key_path = tmp.path().join("audit.key");
    let key = AuditKey::generate();
    key.write_new(&key_path).unwrap();
    let public = key.public_key().to_string();

    let mut child = Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "writer_child", "--nocapture", "--test-threads=1"])
        .env(CHILD_DIR, tmp.path())
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let ready = std::io::BufReader::new(stdout)
        .lines()
        .map_while(Result::ok)
        .any(|l| l.trim_end().ends_with("ready"));
    assert!(ready, "the child did not get ready");
    child.kill().unwrap(); // SIGKILL
    let _ = child.wait();

    let dir = tmp.path().join("audit");
    let files: Vec<String> =
        audit::list_files(&dir).unwrap().into_iter().map(|(_, p)| p.to_str().unwrap().to_owned()).collect();
    let mut args = vec!["audit", "verify", "--key", &public];
    args.extend(files.iter().map(String::as_str));
    let (code, stdout, _) = broker(&args);
    assert_eq!(code, 1, "{stdout}");
    assert!(stdout.contains("not closed") && stdout.contains("checkpoint 1, covering entry 11"), "{stdout}");
    let entries: u64 = stdout.split(" entries").next().unwrap().rsplit(' ').next().unwrap().parse().unwrap();
    assert!((11..=16).contains(&entries), "every entry the checkpoint flushed is intact: {stdout}");

    // The next run writes a restart entry and continues the chain; the whole log then verifies.
    let config = AuditConfig::new(dir.clone(), key_path);
    let log = AuditLog::open(&config).unwrap();
    log.record(Entry::new(Action::Shutdown));
    log.close().unwrap();
    let (code, stdout, _) = broker(&["audit", "verify", "--key", &public, "--config", "/nonexistent"]);
    assert_eq!(code, 2, "{stdout}");
    let files: Vec<String> =
        audit::list_files(&dir).unwrap().into_iter().map(|(_, p)| p.to_str().unwrap().to_owned()).collect();
    let mut args = vec!["audit", "verify", "--key", &public];
    args.extend(files.iter().map(String::as_str));
    let (code, stdout, _) = broker(&args);
    assert_eq!(code, 0, "{stdout}");
    assert!(stdout.contains("note: entry") && stdout.contains("restart"), "{stdout}");
}
