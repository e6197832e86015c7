//! The TLS refusal matrix: each bad client (or bad broker) against a real broker is refused, the client
//! sees a clear error, and the broker keeps serving the others.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use crate::harness::*;
use rcgen::ExtendedKeyUsagePurpose;
use sealpost_broker::pki::{Issued, LeafSpec};
use sealpost_client::{Client, Error, Identity, PublisherOptions};
use sealpost_protocol::Topic;

fn chat() -> Topic {
    Topic::new("demo.chat").unwrap()
}

/// Alice's identity with `cert` instead of a good certificate: the broker must refuse it. The real client
/// reports it when it first asks the broker anything (TLS 1.3 checks client certificates after the
/// client's side of the handshake), as a rejected certificate.
async fn assert_client_certificate_refused(env: &Env, addr: std::net::SocketAddr, cert: &Issued) {
    let path = env.identity_with_cert("alice", addr, cert, "ca.pem");
    let result = within("refused client", async {
        let client = Client::connect(&Identity::load(path).unwrap()).await?;
        client.publisher(chat(), PublisherOptions::default()).await.map(|_| ())
    })
    .await;
    match result {
        Err(
            e
            @ (Error::CertificateRejected { .. } | Error::CertificateRevoked | Error::ConnectionLost { .. }),
        ) => {
            assert!(e.to_string().contains("certificate") || e.to_string().contains("connection"), "{e}");
        }
        other => panic!("expected the certificate to be refused, got {other:?}"),
    }
    // The raw view: no answer to anything.
    let Ok(raw) = RawClient::connect(addr, &env.ca.cert_pem(), ClientAuth::Cert(cert)).await else { return };
    let get = sealpost_protocol::Frame::GetPolicies { request_id: 1, topic: chat() };
    assert!(raw.exchange(&[get], 1).await.is_err(), "a refused certificate got an answer");
}

fn alice_spec(env: &Env) -> LeafSpec {
    LeafSpec::client("alice", &[env.key("alice").public_key()])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expired_client_certificate_is_refused() {
    let mut env = Env::new();
    let broker = env.start(Engine::Memory).await;
    let spec = LeafSpec { not_before_secs: -2 * 86_400, not_after_secs: -86_400, ..alice_spec(&env) };
    assert_client_certificate_refused(&env, broker.local_addr(), &env.ca.issue(&spec).unwrap()).await;
    broker_still_serves(&env, broker.local_addr()).await;
    broker.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn not_yet_valid_client_certificate_is_refused() {
    let mut env = Env::new();
    let broker = env.start(Engine::Memory).await;
    let spec = LeafSpec { not_before_secs: 86_400, not_after_secs: 2 * 86_400, ..alice_spec(&env) };
    assert_client_certificate_refused(&env, broker.local_addr(), &env.ca.issue(&spec).unwrap()).await;
    broker_still_serves(&env, broker.local_addr()).await;
    broker.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_certificate_used_as_client_certificate_is_refused() {
    let mut env = Env::new();
    let broker = env.start(Engine::Memory).await;
    // alice's principal URI, but the serverAuth extended key usage: not a client certificate.
    let spec = LeafSpec { usages: vec![ExtendedKeyUsagePurpose::ServerAuth], ..alice_spec(&env) };
    assert_client_certificate_refused(&env, broker.local_addr(), &env.ca.issue(&spec).unwrap()).await;
    broker_still_serves(&env, broker.local_addr()).await;
    broker.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_certificate_without_any_extended_key_usage_is_refused() {
    let mut env = Env::new();
    let broker = env.start(Engine::Memory).await;
    // WebPKI alone would take a certificate with no extended key usage for any purpose; the broker asks for
    // clientAuth explicitly.
    let spec = LeafSpec { usages: Vec::new(), ..alice_spec(&env) };
    assert_client_certificate_refused(&env, broker.local_addr(), &env.ca.issue(&spec).unwrap()).await;
    broker_still_serves(&env, broker.local_addr()).await;
    broker.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revoked_client_certificate_is_refused_when_a_crl_is_configured() {
    let mut env = Env::new();
    let revoked = env.ca.issue(&alice_spec(&env)).unwrap();
    env.crls = vec![env.ca.crl(&[&revoked]).unwrap()];
    let broker = env.start(Engine::Memory).await;
    assert_client_certificate_refused(&env, broker.local_addr(), &revoked).await;
    // Other certificates from the same CA, alice's new one included, still work.
    broker_still_serves(&env, broker.local_addr()).await;
    broker.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_refuses_a_broker_certificate_with_the_wrong_name() {
    let mut env = Env::new();
    let broker = env.start(Engine::Memory).await;
    let path = env.identity("alice", broker.local_addr());
    let text = std::fs::read_to_string(&path)
        .unwrap()
        .replace("server_name = \"localhost\"", "server_name = \"broker.example\"");
    std::fs::write(&path, text).unwrap();
    let err = within("connect", Client::connect(&Identity::load(&path).unwrap())).await.unwrap_err();
    assert!(matches!(err, Error::BrokerNotTrusted { .. }), "{err}");
    assert!(err.to_string().starts_with("broker certificate not trusted"), "{err}");
    broker_still_serves(&env, broker.local_addr()).await;
    broker.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_datagrams_do_not_disturb_the_broker() {
    use rand::{Rng, SeedableRng};
    let mut env = Env::new();
    let broker = env.start(Engine::Memory).await;
    let socket = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let mut rng = rand::rngs::StdRng::seed_from_u64(5);
    for i in 0..2_000usize {
        // Random bytes of every size up to a full datagram, some with a QUIC long-header first byte.
        let mut datagram = vec![0u8; rng.gen_range(1..1400)];
        rng.fill(&mut datagram[..]);
        if i % 2 == 0 {
            datagram[0] |= 0xC0;
        }
        socket.send_to(&datagram, broker.local_addr()).await.unwrap();
    }
    broker_still_serves(&env, broker.local_addr()).await;
    broker.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plain_tcp_connection_is_refused() {
    let mut env = Env::new();
    let broker = env.start(Engine::Memory).await;
    // There is no TCP listener at all (QUIC is UDP): the connection is refused outright.
    let tcp = within("tcp connect", tokio::net::TcpStream::connect(broker.local_addr())).await;
    assert!(tcp.is_err(), "a TCP connection to the broker's port was accepted");
    broker_still_serves(&env, broker.local_addr()).await;
    broker.shutdown().await.unwrap();
}
