//! Setting up without dev mode, as an operator does: the operator's own CA (openssl), `sealpost identity
//! new`, the CA signing the request, `sealpost identity check` saying what is right and what is wrong,
//! one line each, and the new identity publishing.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;
use std::process::{Command, Output};
use std::sync::Arc;

use crate::cli::wait;
use crate::harness::{cargo_bin, within, Env, ACL};
use sealpost_broker::server::{Broker, BrokerOptions, ServerLimits};
use sealpost_broker::store::{MemoryStore, Store};
use sealpost_protocol::{HpkePublicKey, Member, PublicKey};

fn run(cmd: &mut Command) -> Output {
    wait(cmd.stdout(std::process::Stdio::piped()).stderr(std::process::Stdio::piped()).spawn().unwrap())
}

fn openssl(dir: &Path, args: &[&str]) {
    let out = run(Command::new("openssl").current_dir(dir).args(args));
    assert!(out.status.success(), "openssl {args:?}: {}", String::from_utf8_lossy(&out.stderr));
}

fn text(out: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr))
}

/// The value of `key = "..."` in a TOML file.
fn toml_value(file: &Path, key: &str) -> String {
    let text = std::fs::read_to_string(file).unwrap();
    let line = text.lines().find(|l| l.starts_with(&format!("{key} = "))).unwrap();
    line.split('"').nth(1).unwrap().to_owned()
}

/// An operator's CA made with openssl signs alice's request from `sealpost identity new`; `identity check`
/// passes every check for the topic whose policy lists her new keys, names the one that lists other keys,
/// and names what a certificate signed without the request's names lacks. The new identity publishes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_identity_made_with_identity_new_and_an_openssl_ca_passes_identity_check() {
    let env = Env::new();
    let ops = env.dir.path().join("ops");
    std::fs::create_dir_all(&ops).unwrap();
    openssl(
        &ops,
        &[
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-keyout",
            "ca.key",
            "-out",
            "ca.pem",
            "-days",
            "30",
            "-subj",
            "/CN=ops client CA",
            "-addext",
            "basicConstraints=critical,CA:TRUE",
            "-addext",
            "keyUsage=critical,keyCertSign,cRLSign",
        ],
    );
    std::fs::write(ops.join("client.ext"), "extendedKeyUsage=clientAuth\n").unwrap();

    // The broker trusts the openssl CA for clients; its own certificate is the test's.
    let store: Arc<dyn Store> = Arc::new(MemoryStore::new());
    let mut tls = env.tls();
    tls.client_ca_pem = std::fs::read_to_string(ops.join("ca.pem")).unwrap();
    let options = BrokerOptions {
        listen: "127.0.0.1:0".parse().unwrap(),
        tls,
        acl: sealpost_broker::acl::Acl::from_toml(ACL).unwrap(),
        store: store.clone(),
        authority: Some(env.authority.public_key()),
        limits: ServerLimits::default(),
        metrics: None,
        audit: None,
        retention: Default::default(),
    };
    let broker = within("broker start", Broker::start(options)).await.unwrap();
    let addr = broker.local_addr().to_string();

    let new = run(Command::new(cargo_bin("sealpost")).args([
        "identity",
        "new",
        "alice",
        "--broker",
        &addr,
        "--server-name",
        "localhost",
        "--ca",
        env.dir.path().join("ca.pem").to_str().unwrap(),
        "--authority",
        &env.authority.public_key().to_string(),
        "--dir",
        ops.to_str().unwrap(),
    ]));
    assert!(new.status.success(), "{}", text(&new));
    for file in ["alice.key", "alice.csr", "alice.toml", "alice.pub.toml"] {
        assert!(ops.join(file).is_file(), "{file}");
    }
    openssl(
        &ops,
        &[
            "x509",
            "-req",
            "-in",
            "alice.csr",
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-days",
            "30",
            "-copy_extensions",
            "copy",
            "-extfile",
            "client.ext",
            "-out",
            "alice.pem",
        ],
    );

    // demo.events lists alice's new keys; demo.chat the keys of another alice.
    let public = ops.join("alice.pub.toml");
    let member = Member {
        principal: "alice".parse().unwrap(),
        publish: true,
        subscribe: true,
        signing_key: toml_value(&public, "signing_key").parse::<PublicKey>().unwrap(),
        hpke_key: {
            let mut key = [0u8; 32];
            hex::decode_to_slice(toml_value(&public, "hpke_key"), &mut key).unwrap();
            HpkePublicKey(key)
        },
    };
    let events = env.policy("demo.events", 1, None, vec![member], &env.content_key);
    store.put_policy(events.topic(), 1, events.as_bytes()).unwrap();
    let chat = env.first_policy("demo.chat");
    store.put_policy(chat.topic(), 1, chat.as_bytes()).unwrap();

    let identity = ops.join("alice.toml");
    let check = |topic: &str| {
        let mut cmd = Command::new(cargo_bin("sealpost"));
        cmd.arg("--identity")
            .arg(&identity)
            .env("RUST_LOG", "error")
            .args(["identity", "check", "--topic", topic]);
        tokio::task::spawn_blocking(move || run(&mut cmd))
    };
    let good = check("demo.events").await.unwrap();
    let said = String::from_utf8_lossy(&good.stdout).into_owned();
    assert!(good.status.success(), "{}", text(&good));
    assert_eq!(said.lines().count(), 7, "{said}");
    assert!(said.lines().all(|l| l.starts_with("ok    ")), "{said}");
    assert!(said.contains("epoch 1 lists alice as publisher and subscriber"), "{said}");

    let other_keys = check("demo.chat").await.unwrap();
    assert_eq!(other_keys.status.code(), Some(1), "{}", text(&other_keys));
    let said = String::from_utf8_lossy(&other_keys.stdout).into_owned();
    let failed: Vec<&str> = said.lines().filter(|l| l.starts_with("FAIL")).collect();
    assert_eq!(failed.len(), 1, "{said}");
    assert!(
        failed[0].starts_with("FAIL  topic demo.chat: the policy lists alice with signing key "),
        "{said}"
    );

    // The new identity publishes where its policy lets it.
    let mut publish = Command::new(cargo_bin("sealpost"));
    publish.arg("--identity").arg(&identity).env("RUST_LOG", "error").args(["pub", "demo.events", "hello"]);
    let published = tokio::task::spawn_blocking(move || run(&mut publish)).await.unwrap();
    assert!(published.status.success(), "{}", text(&published));

    // Signed without the request's names (no -copy_extensions): the check names what is missing, and the
    // broker refuses the certificate.
    openssl(
        &ops,
        &[
            "x509",
            "-req",
            "-in",
            "alice.csr",
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-days",
            "30",
            "-extfile",
            "client.ext",
            "-out",
            "alice.pem",
        ],
    );
    let bare = check("demo.events").await.unwrap();
    assert_eq!(bare.status.code(), Some(1), "{}", text(&bare));
    let said = String::from_utf8_lossy(&bare.stdout).into_owned();
    assert!(
        said.contains("FAIL  certificate names principal alice: it has no sealpost:// URI SAN"),
        "{said}"
    );
    assert!(said.contains("FAIL  certificate binds the signing key"), "{said}");
    assert!(said.contains("FAIL  broker "), "{said}");
    broker.shutdown().await.unwrap();
}
