//! CRL visibility against a real `sealpost-broker` (docs/operations.md, "Certificate revocation lists"):
//! the start log names each CRL with its revoked count; a revoked client's refused handshake is logged with
//! its subject and serial, and the client says "revoked"; an expired CRL under `crl_expired = "refuse"`
//! fails `check-config` naming the file; and the openssl recipe of the docs makes a CRL the broker loads.
//!
//! Every wait is bounded and waits for something to happen (a log line, an error).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use sealpost_broker::pki::{Issued, LeafSpec};
use sealpost_client::{Client, Error, Identity, PublisherOptions};
use sealpost_protocol::Topic;

use crate::harness::*;

/// A subprocess broker's configuration folder (`broker.toml`, as [`Env::write_config`] writes it).
fn folder(env: &mut Env) -> (PathBuf, String) {
    let config = env.write_config();
    let text = std::fs::read_to_string(&config).unwrap();
    (config, text)
}

/// Makes `config` (whose text was `base`) name `crl.pem`, holding `crl`, with `extra` lines in `[tls]`.
fn with_crl(config: &Path, base: &str, crl: &str, extra: &str) -> PathBuf {
    std::fs::write(config.with_file_name("crl.pem"), crl).unwrap();
    // `[tls]` is the file's last table: the CRL list joins it.
    std::fs::write(config, format!("{base}crls = [\"crl.pem\"]\n{extra}")).unwrap();
    config.to_path_buf()
}

fn alice(env: &Env) -> Issued {
    env.ca.issue(&LeafSpec::client("alice", &[env.key("alice").public_key()])).unwrap()
}

/// Waits (bounded) for a line of `broker`'s log holding every one of `parts`; returns it.
async fn log_line(broker: &BrokerProcess, parts: &[&str]) -> String {
    within("a log line", async {
        loop {
            let text = broker.log_text();
            if let Some(line) = text.lines().find(|l| parts.iter().all(|p| l.contains(p))) {
                return line.to_owned();
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
}

/// What the real client says when `cert` asks the broker at `addr` for something.
async fn client_error(env: &Env, addr: std::net::SocketAddr, cert: &Issued) -> Error {
    let path = env.identity_with_cert("alice", addr, cert, "ca.pem");
    let topic = Topic::new("demo.chat").unwrap();
    within("refused client", async {
        let client = Client::connect(&Identity::load(path).unwrap()).await?;
        client.publisher(topic, PublisherOptions::default()).await.map(|_| ())
    })
    .await
    .expect_err("a revoked certificate was served")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revoked_client_is_logged_by_subject_and_serial_and_told_it_was_revoked() {
    let mut env = Env::new();
    let revoked = alice(&env);
    let (config, base) = folder(&mut env);
    let config = with_crl(&config, &base, &env.ca.crl(&[&revoked]).unwrap(), "");
    let broker = BrokerProcess::start_logging(&config, "info");
    // The start log names the CRL, its issuer and what it revokes.
    let loaded = log_line(&broker, &["CRL loaded", "crl.pem", "revoked=1"]).await;
    assert!(loaded.contains("issuer=") && loaded.contains("next_update=20"), "{loaded}");

    let err = client_error(&env, broker.addr, &revoked).await;
    assert!(matches!(err, Error::CertificateRevoked), "{err:?}");
    let text = err.to_string();
    assert!(text.contains("revoked") && !text.contains("expired"), "{text}");

    // As `openssl x509 -serial` shows it: two hex digits a byte, no leading zero byte.
    let bytes = revoked.serial.to_be_bytes();
    let hex: String = bytes.iter().skip_while(|b| **b == 0).map(|b| format!("{b:02X}")).collect();
    let serial = format!("serial={hex}");
    let line = log_line(&broker, &["client certificate refused", &serial]).await;
    assert!(line.contains("subject=CN=alice") && line.contains("revoked"), "{line}");
    assert!(!line.contains("BEGIN CERTIFICATE"), "{line}");
    broker_still_serves(&env, broker.addr).await;

    // A reload logs the CRLs again: a new list, renamed into place, revoking nothing.
    let fresh = env.dir.path().join("crl.pem.new");
    std::fs::write(&fresh, env.ca.crl(&[]).unwrap()).unwrap();
    std::fs::rename(&fresh, env.dir.path().join("crl.pem")).unwrap();
    log_line(&broker, &["CRL loaded", "crl.pem", "revoked=0"]).await;
    broker.terminate();
}

fn check_config(config: &Path) -> std::process::Output {
    Command::new(cargo_bin("sealpost-broker")).arg("check-config").arg(config).output().unwrap()
}

#[test]
fn check_config_refuses_an_expired_crl_naming_the_file_when_told_to() {
    let mut env = Env::new();
    let crl = env.ca.crl_due_in(&[], -3_600).unwrap();
    let (config, base) = folder(&mut env);
    // By default, an expired CRL is accepted with a warning.
    let warned = check_config(&with_crl(&config, &base, &crl, ""));
    let stderr = String::from_utf8_lossy(&warned.stderr);
    assert!(warned.status.success(), "{stderr}");
    assert!(
        stderr.contains("warning") && stderr.contains("crl.pem") && stderr.contains("expired"),
        "{stderr}"
    );

    let refused = check_config(&with_crl(&config, &base, &crl, "crl_expired = \"refuse\"\n"));
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert_eq!(refused.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("crl.pem") && stderr.contains("expired") && stderr.contains("next-update"),
        "{stderr}"
    );

    // A file that is not a CRL is named too.
    let broken = check_config(&with_crl(&config, &base, "not a CRL", ""));
    let stderr = String::from_utf8_lossy(&broken.stderr);
    assert!(!broken.status.success() && stderr.contains("crl.pem"), "{stderr}");
}

/// The recipe of docs/operations.md ("Revoking a client certificate with openssl"), run with the
/// `openssl` binary in `dir` (which holds `ca.pem`, `ca.key` and `alice.pem`).
const OPENSSL_RECIPE: &str = r#"set -e
mkdir -p crl-db && touch crl-db/index.txt && echo 01 > crl-db/crlnumber
cat > crl-db/openssl.cnf <<'CNF'
[ca]
default_ca = sealpost_ca

[sealpost_ca]
database         = crl-db/index.txt
crlnumber        = crl-db/crlnumber
certificate      = ca.pem
private_key      = ca.key
default_md       = sha256
default_crl_days = 7
CNF
openssl ca -config crl-db/openssl.cnf -revoke alice.pem -crl_reason keyCompromise
openssl ca -config crl-db/openssl.cnf -gencrl -out crl.pem.new && mv crl.pem.new crl.pem
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_documented_openssl_recipe_makes_a_crl_the_broker_enforces() {
    let docs =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/operations.md")).unwrap();
    for line in OPENSSL_RECIPE.lines().skip(1) {
        assert!(docs.contains(line), "docs/operations.md lacks the recipe's line {line:?}");
    }
    let mut env = Env::new();
    let (config, base) = folder(&mut env);
    let dir = env.dir.path().to_path_buf();
    let ca = env.ca.to_pem();
    std::fs::write(dir.join("ca.key"), &ca.key_pem).unwrap();
    let revoked = alice(&env);
    std::fs::write(dir.join("alice.pem"), &revoked.cert_pem).unwrap();
    let ran = Command::new("sh").arg("-c").arg(OPENSSL_RECIPE).current_dir(&dir).output().unwrap();
    assert!(ran.status.success(), "{}", String::from_utf8_lossy(&ran.stderr));
    let crl = std::fs::read_to_string(dir.join("crl.pem")).unwrap();
    let config = with_crl(&config, &base, &crl, "crl_expired = \"refuse\"\n");
    let broker = BrokerProcess::start_logging(&config, "info");
    log_line(&broker, &["CRL loaded", "crl.pem", "revoked=1"]).await;
    let err = client_error(&env, broker.addr, &revoked).await;
    assert!(matches!(err, Error::CertificateRevoked), "{err:?}");
    // The refusal names the serial as openssl's database does.
    let index = std::fs::read_to_string(dir.join("crl-db/index.txt")).unwrap();
    let serial = index.split('\t').nth(3).expect("a serial in index.txt");
    log_line(&broker, &["client certificate refused", &format!("serial={serial}"), "revoked"]).await;
    broker_still_serves(&env, broker.addr).await;
    broker.terminate();
}
