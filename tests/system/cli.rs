//! README's tour, run as a user runs it: `sealpost-broker dev` and the `sealpost` CLI as alice, bob and
//! mallory.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use crate::harness::cargo_bin;
use crate::process::{Ready, ServerProcess, LISTENING};

/// `sealpost-broker dev` as a process (killed when dropped) and its folder.
struct DevBroker {
    _process: ServerProcess,
    dir: PathBuf,
}

/// Starts `sealpost-broker dev` on 127.0.0.1:0 and points the identity files at the port it got.
fn start_dev(tmp: &Path) -> DevBroker {
    let dir = tmp.join("sealpost-dev");
    let mut command = Command::new(cargo_bin("sealpost-broker"));
    command.args(["dev", "--listen", "127.0.0.1:0", "--data"]).arg(&dir).env("RUST_LOG", "warn");
    let process = ServerProcess::start(&mut command, Ready::new(LISTENING, Duration::from_secs(60)));
    let addr = process.addr.to_string();
    let broker = DevBroker { _process: process, dir };
    for who in ["alice", "bob", "mallory", "admin"] {
        let path = broker.dir.join(format!("identities/{who}.toml"));
        let text = std::fs::read_to_string(&path).unwrap();
        std::fs::write(&path, text.replace("127.0.0.1:0", &addr)).unwrap();
    }
    broker
}

fn identity(broker: &DevBroker, who: &str) -> PathBuf {
    broker.dir.join(format!("identities/{who}.toml"))
}

fn sealpost(broker: &DevBroker, who: &str) -> Command {
    let mut cmd = Command::new(cargo_bin("sealpost"));
    cmd.arg("--identity").arg(identity(broker, who)).env("RUST_LOG", "error");
    cmd
}

/// Runs a command to completion, bounded: a hang fails the test.
fn run(mut cmd: Command, stdin: Option<&str>) -> Output {
    cmd.stdin(if stdin.is_some() { Stdio::piped() } else { Stdio::null() })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().unwrap();
    if let Some(input) = stdin {
        child.stdin.take().unwrap().write_all(input.as_bytes()).unwrap();
    }
    wait(child)
}

pub(crate) fn wait(child: Child) -> Output {
    let pid = child.id().to_string();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || tx.send(child.wait_with_output()));
    match rx.recv_timeout(Duration::from_secs(60)) {
        Ok(out) => out.unwrap(),
        Err(_) => {
            let _ = Command::new("kill").args(["-KILL", &pid]).status();
            panic!("command did not finish within 60 s");
        }
    }
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

#[test]
fn readme_tour_alice_publishes_bob_reads_bob_and_mallory_are_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let broker = start_dev(tmp.path());

    // bob: sealpost sub demo.chat --from earliest --count 2 (started first, waits for messages)
    let mut sub = sealpost(&broker, "bob");
    sub.args(["sub", "demo.chat", "--from", "earliest", "--count", "2"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let bob = sub.spawn().unwrap();

    // alice: one message as an argument, one from stdin, the identity from SEALPOST_IDENTITY.
    let mut publish = sealpost(&broker, "alice");
    publish.args(["pub", "demo.chat", "hello bob"]);
    let out = run(publish, None);
    assert!(out.status.success(), "alice pub failed: {}", text(&out.stderr));
    let mut publish = Command::new(cargo_bin("sealpost"));
    publish.env("SEALPOST_IDENTITY", identity(&broker, "alice")).args(["pub", "demo.chat"]);
    let out = run(publish, Some("hello again\n"));
    assert!(out.status.success(), "alice pub from stdin failed: {}", text(&out.stderr));

    let out = wait(bob);
    assert!(out.status.success(), "bob sub failed: {}", text(&out.stderr));
    assert_eq!(text(&out.stdout), "hello bob\nhello again\n");

    // bob may not publish: one clear line on stderr, non-zero exit.
    let mut publish = sealpost(&broker, "bob");
    publish.args(["pub", "demo.chat", "bob may not publish"]);
    let out = run(publish, None);
    assert!(!out.status.success());
    assert_eq!(
        text(&out.stderr).trim_end(),
        "sealpost: published 0 of 1 message before the failure: not authorized to publish on demo.chat"
    );

    // mallory has a valid certificate and no grants.
    let mut subscribe = sealpost(&broker, "mallory");
    subscribe.args(["sub", "demo.chat", "--count", "1"]);
    let out = run(subscribe, None);
    assert!(!out.status.success());
    let err = text(&out.stderr);
    assert!(err.starts_with("sealpost: not authorized to subscribe"), "{err}");
    assert_eq!(err.lines().count(), 1, "{err}");
}

/// `sealpost pub --header NAME=VALUE` (repeatable) seals the headers with every message it publishes;
/// `sealpost sub` prints a message with headers as a `# headers:` line (bytewise by name, values quoted
/// and escaped) before its payload line, and a message without headers as before, its payload line alone.
#[test]
fn cli_publishes_headers_and_prints_them_before_the_payload() {
    let tmp = tempfile::tempdir().unwrap();
    let broker = start_dev(tmp.path());

    let mut publish = sealpost(&broker, "alice");
    publish.args(["pub", "demo.chat", "no headers"]);
    let out = run(publish, None);
    assert!(out.status.success(), "alice pub failed: {}", text(&out.stderr));
    let mut publish = sealpost(&broker, "alice");
    publish.args([
        "pub",
        "demo.chat",
        "--header",
        "trace-id=a=b",
        "--header",
        "Content-Type=text/plain",
        "--header",
        "note=say \"hi\"\nbye",
        "one",
        "two",
    ]);
    let out = run(publish, None);
    assert!(out.status.success(), "alice pub --header failed: {}", text(&out.stderr));

    let mut subscribe = sealpost(&broker, "bob");
    subscribe.args(["sub", "demo.chat", "--from", "earliest", "--count", "3"]);
    let out = run(subscribe, None);
    assert!(out.status.success(), "bob sub failed: {}", text(&out.stderr));
    let headers = r#"# headers: Content-Type="text/plain" note="say \"hi\"\nbye" trace-id="a=b""#;
    assert_eq!(text(&out.stdout), format!("no headers\n{headers}\none\n{headers}\ntwo\n"));

    // A bad name is a usage error before anything is sent, in one line.
    let mut publish = sealpost(&broker, "alice");
    publish.args(["pub", "demo.chat", "--header", "bad name=x", "never sent"]);
    let out = run(publish, None);
    assert!(!out.status.success());
    let err = text(&out.stderr);
    assert!(err.starts_with("sealpost: invalid value 'bad name=x' for '--header <NAME=VALUE>'"), "{err}");
    assert_eq!(err.lines().count(), 1, "{err}");
    let mut publish = sealpost(&broker, "alice");
    publish.args(["pub", "demo.chat", "--header", "no-equals-sign", "never sent"]);
    assert!(!run(publish, None).status.success());
    let mut publish = sealpost(&broker, "alice");
    publish.args(["pub", "demo.chat", "--header", "a=1", "--header", "a=2", "never sent"]);
    let out = run(publish, None);
    assert!(!out.status.success());
    assert_eq!(text(&out.stderr).trim_end(), "sealpost: --header a is given twice");
    // None of them was published: bob's next message is the next one alice publishes.
    let mut publish = sealpost(&broker, "alice");
    publish.args(["pub", "demo.chat", "last"]);
    assert!(run(publish, None).status.success());
    let mut subscribe = sealpost(&broker, "bob");
    subscribe.args(["sub", "demo.chat", "--from", "3", "--count", "1"]);
    let out = run(subscribe, None);
    assert_eq!(text(&out.stdout), "last\n");
}

#[test]
fn cli_reports_an_unreachable_broker_in_one_line() {
    let tmp = tempfile::tempdir().unwrap();
    let broker = start_dev(tmp.path());
    // Point alice at a port where nothing listens.
    let free = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let dead = free.local_addr().unwrap();
    drop(free);
    let path = identity(&broker, "alice");
    let text_id = std::fs::read_to_string(&path).unwrap();
    let line = text_id.lines().find(|l| l.starts_with("broker = ")).unwrap().to_string();
    std::fs::write(&path, text_id.replace(&line, &format!("broker = \"{dead}\""))).unwrap();
    let mut publish = sealpost(&broker, "alice");
    publish.args(["pub", "demo.chat", "x"]);
    let out = run(publish, None);
    assert!(!out.status.success());
    let err = text(&out.stderr);
    assert!(err.starts_with(&format!("sealpost: broker unreachable at {dead}")), "{err}");
    assert_eq!(err.lines().count(), 1, "{err}");
}

#[test]
fn revoked_member_cannot_decrypt_what_is_published_after_the_revocation() {
    let tmp = tempfile::tempdir().unwrap();
    let broker = start_dev(tmp.path());
    let run_as = |who: &str, args: &[&str], stdin: Option<&str>| {
        let mut cmd = sealpost(&broker, who);
        cmd.args(args);
        run(cmd, stdin)
    };

    // bob reads what alice publishes before the revocation.
    let out = run_as("alice", &["pub", "demo.chat", "before the revocation"], None);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let out = run_as("bob", &["sub", "demo.chat", "--from", "earliest", "--count", "1"], None);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout), "before the revocation\n");

    // bob keeps a subscription open across the revocation.
    let mut sub = sealpost(&broker, "bob");
    sub.args(["sub", "demo.chat", "--from", "earliest", "--count", "2"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut bob = sub.spawn().unwrap();
    let (stdout, stderr) = (bob.stdout.take().unwrap(), bob.stderr.take().unwrap());
    let lines = |pipe: Box<dyn std::io::Read + Send>| {
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(pipe).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
        rx
    };
    let (bob_out, bob_err) = (lines(Box::new(stdout)), lines(Box::new(stderr)));
    assert_eq!(bob_out.recv_timeout(Duration::from_secs(60)).unwrap(), "before the revocation");

    // The authority revokes bob: a new epoch with a fresh key, without him.
    let out = run_as("admin", &["topic", "revoke", "demo.chat", "bob"], None);
    assert!(out.status.success(), "revoke failed: {}", text(&out.stderr));
    let out = run_as("admin", &["topic", "show", "demo.chat"], None);
    let shown = text(&out.stdout);
    assert!(shown.contains("epoch 2"), "{shown}");
    assert!(shown.contains("alice") && !shown.contains("bob"), "{shown}");

    // alice publishes after the revocation (her client seals under epoch 2).
    let out = run_as("alice", &["pub", "demo.chat", "after the revocation"], None);
    assert!(out.status.success(), "{}", text(&out.stderr));

    // bob's open subscription reports that it cannot read it, and never prints it.
    let line = bob_err.recv_timeout(Duration::from_secs(60)).expect("bob reported nothing");
    assert!(line.contains("demo.chat"), "{line}");
    let _ = bob.kill();
    let _ = bob.wait();
    let rest: Vec<String> = bob_out.try_iter().collect();
    assert!(rest.is_empty(), "bob printed {rest:?} after his revocation");

    // alice, still a member, reads both.
    let out = run_as("alice", &["sub", "demo.chat", "--from", "earliest", "--count", "2"], None);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout), "before the revocation\nafter the revocation\n");
}

#[test]
fn admin_creates_grants_and_rotates_a_topic_through_the_cli() {
    let tmp = tempfile::tempdir().unwrap();
    let broker = start_dev(tmp.path());
    let run_as = |who: &str, args: &[&str]| {
        let mut cmd = sealpost(&broker, who);
        cmd.args(args);
        run(cmd, None)
    };
    let ok = |out: Output| {
        assert!(out.status.success(), "{}", text(&out.stderr));
        text(&out.stdout)
    };

    // Without a policy, nothing can be published on a topic.
    let out = run_as("alice", &["pub", "demo.news", "too early"]);
    assert!(!out.status.success());
    // Only the authority changes policies.
    let out = run_as("alice", &["topic", "create", "demo.news", "--publisher", "alice"]);
    assert!(!out.status.success());
    assert!(text(&out.stderr).contains("authority_key"), "{}", text(&out.stderr));

    ok(run_as("admin", &["topic", "create", "demo.news", "--publisher", "alice", "--subscriber", "bob"]));
    ok(run_as("alice", &["pub", "demo.news", "first"]));
    assert_eq!(ok(run_as("bob", &["sub", "demo.news", "--from", "earliest", "--count", "1"])), "first\n");
    let out = run_as("admin", &["topic", "create", "demo.news", "--publisher", "alice"]);
    assert!(!out.status.success(), "a second create must be refused");
    let out = run_as("admin", &["topic", "grant", "demo.news", "--subscriber", "nobody"]);
    assert!(text(&out.stderr).contains("unknown member nobody"), "{}", text(&out.stderr));

    // alice is granted reading; a rotation keeps the members with a fresh key.
    ok(run_as("admin", &["topic", "grant", "demo.news", "--subscriber", "alice"]));
    ok(run_as("admin", &["topic", "rotate", "demo.news"]));
    let shown = ok(run_as("bob", &["topic", "show", "demo.news"]));
    assert!(shown.contains("epoch 3"), "{shown}");
    ok(run_as("alice", &["pub", "demo.news", "second"]));
    // Epoch 1 is two epochs back: its key is not served any more (a documented limit), so read from 1.
    assert_eq!(ok(run_as("alice", &["sub", "demo.news", "--from", "1", "--count", "1"])), "second\n");
    assert_eq!(ok(run_as("bob", &["sub", "demo.news", "--from", "1", "--count", "1"])), "second\n");
}

#[test]
fn pub_without_grants_says_none_of_its_messages_was_acknowledged() {
    let tmp = tempfile::tempdir().unwrap();
    let broker = start_dev(tmp.path());
    let mut publish = sealpost(&broker, "mallory");
    publish.args(["pub", "demo.chat", "one", "two", "three"]);
    let out = run(publish, None);
    assert!(!out.status.success());
    let err = text(&out.stderr);
    assert!(
        err.starts_with("sealpost: published 0 of 3 messages before the failure: not authorized"),
        "{err}"
    );
    assert_eq!(err.lines().count(), 1, "{err}");
}

/// The broker stores alice's first three lines, then its storage refuses every append (as a full device
/// does): `sealpost pub` reading stdin says that 3 of its 5 messages were acknowledged, and exits non-zero.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pub_that_fails_midway_says_how_many_of_its_messages_were_acknowledged() {
    use crate::harness::{within, Env, ACL};
    use sealpost_broker::server::{Broker, BrokerOptions, ServerLimits};
    use sealpost_broker::store::testing::TestStore;
    use sealpost_protocol::Topic;
    use std::sync::Arc;

    let mut env = Env::new();
    let store = Arc::new(TestStore::default());
    env.seed(store.as_ref());
    // Nothing from offset 3 on is stored.
    store.before_append(|append| {
        if append.offset().0 >= 3 {
            Err(sealpost_broker::Error::StorageFull)
        } else {
            Ok(())
        }
    });
    let (synced_tx, mut synced) = tokio::sync::mpsc::unbounded_channel();
    store.after_sync(move || {
        let _ = synced_tx.send(());
    });
    let options = BrokerOptions {
        listen: "127.0.0.1:0".parse().unwrap(),
        tls: env.tls(),
        acl: sealpost_broker::acl::Acl::from_toml(ACL).unwrap(),
        store: store.clone(),
        authority: Some(env.authority.public_key()),
        limits: ServerLimits::default(),
        metrics: None,
        audit: None,
        retention: Default::default(),
    };
    let broker = within("broker start", Broker::start(options)).await.unwrap();
    let alice = env.identity("alice", broker.local_addr());

    let mut cmd = Command::new(cargo_bin("sealpost"));
    cmd.arg("--identity")
        .arg(&alice)
        .env("RUST_LOG", "error")
        .args(["pub", "demo.chat"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().unwrap();
    let mut stdin = child.stdin.take().unwrap();
    stdin.write_all(b"m0\nm1\nm2\n").unwrap();
    stdin.flush().unwrap();
    // Until the three are stored and synced (so acknowledged), in however many batches.
    let chat = Topic::new("demo.chat").unwrap();
    let stored = || store.honest(&chat).unwrap().iter().map(|b| u64::from(b.count)).sum::<u64>();
    for _ in 0..10 {
        if stored() == 3 {
            break;
        }
        within("a sync", synced.recv()).await.unwrap();
    }
    assert_eq!(stored(), 3);
    stdin.write_all(b"m3\nm4\n").unwrap();
    drop(stdin);

    let out = tokio::task::spawn_blocking(move || wait(child)).await.unwrap();
    assert!(!out.status.success());
    let err = text(&out.stderr);
    assert!(err.starts_with("sealpost: published 3 of 5 messages before the failure: "), "{err}");
    assert!(err.contains("storage full"), "{err}");
    assert_eq!(err.lines().count(), 1, "{err}");
    assert_eq!(stored(), 3);
    broker.shutdown().await.unwrap();
}

/// `sealpost admin` against `sealpost-broker dev`, as an operator runs it: alice publishes three messages,
/// bob's durable subscription "audit" reads one; admin sees the totals, the topic with its offsets and
/// epoch, the subscription with its lag, and its own connection, as tables and as JSON; bob, who does not
/// administer the broker, is refused in one line.
#[test]
fn admin_shows_stats_topics_subscriptions_and_connections_and_refuses_others() {
    let tmp = tempfile::tempdir().unwrap();
    let broker = start_dev(tmp.path());
    let mut publish = sealpost(&broker, "alice");
    publish.args(["pub", "demo.chat", "one", "two", "three"]);
    let out = run(publish, None);
    assert!(out.status.success(), "alice pub failed: {}", text(&out.stderr));
    let mut sub = sealpost(&broker, "bob");
    sub.args(["sub", "demo.chat", "--from", "earliest", "--durable", "audit", "--count", "1"]);
    let out = run(sub, None);
    assert_eq!(text(&out.stdout), "one\n", "bob sub: {}", text(&out.stderr));

    let admin = |args: &[&str]| {
        let mut cmd = sealpost(&broker, "admin");
        cmd.arg("admin").args(args);
        let out = run(cmd, None);
        assert!(out.status.success(), "admin {args:?} failed: {}", text(&out.stderr));
        text(&out.stdout)
    };
    let stats = admin(&["stats"]);
    let value = |what: &str| {
        let line =
            stats.lines().find(|l| l.starts_with(what)).unwrap_or_else(|| panic!("no {what} in {stats}"));
        line[what.len()..].trim().to_owned()
    };
    assert_eq!(value("stored messages"), "3", "{stats}");
    assert_eq!(value("topics"), "1", "{stats}");
    assert_eq!(value("connections"), "1", "{stats}");

    let topics = admin(&["topics"]);
    let lines: Vec<Vec<&str>> = topics.lines().map(|l| l.split_whitespace().collect()).collect();
    assert_eq!(lines[0], ["topic", "first", "offset", "next", "offset", "messages", "epoch"], "{topics}");
    assert_eq!(lines[1], ["demo.chat", "0", "3", "3", "1"], "{topics}");

    let subs = admin(&["subscriptions"]);
    let rows: Vec<Vec<&str>> = subs.lines().map(|l| l.split_whitespace().collect()).collect();
    assert_eq!(rows[1], ["demo.chat", "bob", "audit", "1", "2"], "{subs}");

    let json: serde_json::Value = serde_json::from_str(&admin(&["connections", "--json"])).unwrap();
    let rows = json.as_array().expect("an array of rows");
    assert_eq!(rows.len(), 1, "{json}");
    assert_eq!(rows[0]["principal"], "admin");
    assert!(rows[0]["remote"].as_str().is_some_and(|r| r.starts_with("127.0.0.1:")), "{json}");
    let stats: serde_json::Value = serde_json::from_str(&admin(&["stats", "--json"])).unwrap();
    assert_eq!(stats["stored_messages"], 3);

    let mut refused = sealpost(&broker, "bob");
    refused.args(["admin", "stats"]);
    let out = run(refused, None);
    assert_eq!(out.status.code(), Some(1));
    let err = text(&out.stderr);
    assert!(
        err.starts_with("sealpost: the broker refused the administrative query: not authorized"),
        "{err}"
    );
    assert_eq!(err.lines().count(), 1, "{err}");
}

/// `sealpost sub` and an integrity event (here: the broker says offset 0 was removed by retention): one
/// line on stderr and printing goes on, `--count` counting messages only; with `--strict`, the line and
/// exit status 1.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sub_prints_one_line_per_event_and_goes_on_or_with_strict_exits_1() {
    use crate::harness::{within, Env, ACL};
    use sealpost_broker::server::{Broker, BrokerOptions, ServerLimits};
    use sealpost_broker::store::testing::TestStore;
    use sealpost_protocol::Offset;
    use std::sync::Arc;

    let mut env = Env::new();
    let store = Arc::new(TestStore::default());
    env.seed(store.as_ref());
    let options = BrokerOptions {
        listen: "127.0.0.1:0".parse().unwrap(),
        tls: env.tls(),
        acl: sealpost_broker::acl::Acl::from_toml(ACL).unwrap(),
        store: store.clone(),
        authority: Some(env.authority.public_key()),
        // Every read from the store, where the claim is made (no in-memory tail).
        limits: ServerLimits { tail_cache_bytes: 0, ..ServerLimits::default() },
        metrics: None,
        audit: None,
        retention: Default::default(),
    };
    let broker = within("broker start", Broker::start(options)).await.unwrap();
    let (alice, bob) = (env.identity("alice", broker.local_addr()), env.identity("bob", broker.local_addr()));
    let cli = |identity: &std::path::Path, args: &[&str]| {
        let mut cmd = Command::new(cargo_bin("sealpost"));
        cmd.arg("--identity").arg(identity).env("RUST_LOG", "error").args(args);
        tokio::task::spawn_blocking(move || run(cmd, None))
    };
    for m in ["m0", "m1", "m2"] {
        let out = cli(&alice, &["pub", "demo.chat", m]).await.unwrap();
        assert!(out.status.success(), "{}", text(&out.stderr));
    }
    store.claim_first_offset(Offset(1));

    let out = cli(&bob, &["sub", "demo.chat", "--from", "earliest", "--count", "2"]).await.unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout), "m1\nm2\n");
    let err = text(&out.stderr);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(
        err.starts_with("sealpost: offsets 0..1 of demo.chat were removed by the broker's retention"),
        "{err}"
    );

    let strict =
        cli(&bob, &["sub", "demo.chat", "--from", "earliest", "--count", "2", "--strict"]).await.unwrap();
    assert_eq!(strict.status.code(), Some(1));
    assert_eq!(text(&strict.stdout), "");
    assert_eq!(text(&strict.stderr), err);
    broker.shutdown().await.unwrap();
}

/// `sealpost authority new --out FILE`: the secret line in a new owner-only file, the public key and its
/// key id on stdout with where they go; the file is never overwritten. `authority public FILE` prints the
/// public key again.
#[test]
fn authority_new_writes_the_secret_once_and_says_where_the_public_key_goes() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("authority.toml");
    let mut cmd = Command::new(cargo_bin("sealpost"));
    cmd.args(["authority", "new", "--out"]).arg(&file);
    let out = run(cmd, None);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let written = std::fs::read_to_string(&file).unwrap();
    let line = written.lines().find(|l| l.starts_with("authority_key = ")).unwrap();
    let hex_seed = line.trim_start_matches("authority_key = ").trim_matches('"');
    let mut seed = [0u8; 32];
    hex::decode_to_slice(hex_seed, &mut seed).unwrap();
    let public = sealpost_protocol::SigningKey::from_bytes(&seed).public_key();
    let said = text(&out.stdout);
    assert!(said.contains(&format!("authority = \"{public}\"")), "{said}");
    assert!(said.contains(&public.key_id().to_string()), "{said}");
    assert!(!said.contains(hex_seed), "the secret is not printed with --out");
    // `authority public` gives the public half back from the file, alone on stdout, for scripts.
    let mut public_of = Command::new(cargo_bin("sealpost"));
    public_of.args(["authority", "public"]).arg(&file);
    let shown = run(public_of, None);
    assert!(shown.status.success(), "{}", text(&shown.stderr));
    assert_eq!(text(&shown.stdout), format!("{public}\n"));
    let mut not_a_key = Command::new(cargo_bin("sealpost"));
    not_a_key.args(["authority", "public"]).arg(dir.path().join("missing.toml"));
    assert!(!run(not_a_key, None).status.success());
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(std::fs::metadata(&file).unwrap().permissions().mode() & 0o777, 0o600);
    }
    let mut again = Command::new(cargo_bin("sealpost"));
    again.args(["authority", "new", "--out"]).arg(&file);
    let again = run(again, None);
    assert!(!again.status.success());
    assert_eq!(std::fs::read_to_string(&file).unwrap(), written, "never overwritten");
}
