//! The metrics endpoint against a real broker: a scripted session moves the counters by what it did, the
//! text passes `promtool check metrics`, a TLS endpoint refuses a client without a certificate, and a
//! plain endpoint beyond loopback stops the broker from starting.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures_util::StreamExt;
use sealpost_broker::metrics::MetricsSettings;
use sealpost_broker::pki::Issued;
use sealpost_broker::server::{Broker, MetricsOptions, ServerLimits};
use sealpost_client::{Client, Identity, PublisherOptions, SubscribeOptions};
use sealpost_protocol::{Frame, StartAt, Topic};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use crate::harness::*;
use crate::process::LISTENING;

fn chat() -> Topic {
    Topic::new("demo.chat").unwrap()
}

/// Every sample of a scrape: `name{labels}` (as written) -> value.
#[derive(Debug)]
pub(crate) struct Scrape {
    pub(crate) text: String,
    samples: BTreeMap<String, f64>,
}

impl Scrape {
    /// Parses the text format strictly: every line is a comment (`# ...`) or `SERIES VALUE`; the last is
    /// `# EOF`.
    fn parse(text: String) -> Scrape {
        assert!(text.ends_with("# EOF\n"), "no # EOF at the end:\n{text}");
        let mut samples = BTreeMap::new();
        for line in text.lines().filter(|line| !line.starts_with('#')) {
            let (series, value) = line.rsplit_once(' ').unwrap_or_else(|| panic!("not a sample: {line}"));
            let value: f64 = value.parse().unwrap_or_else(|_| panic!("not a value: {line}"));
            assert!(samples.insert(series.to_owned(), value).is_none(), "twice: {line}");
        }
        Scrape { text, samples }
    }

    /// The value of `series`, 0 if it is not there yet.
    pub(crate) fn get(&self, series: &str) -> f64 {
        self.samples.get(series).copied().unwrap_or(0.0)
    }
}

/// What a scraper asks for: OpenMetrics (as Prometheus does), or the classic text format.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Format {
    OpenMetrics,
    Classic,
}

/// `GET /metrics` over `io`, asking for `format`; the body of a `200 OK` in that format, or an error.
async fn get<S: AsyncRead + AsyncWrite + Unpin>(mut io: S, format: Format) -> Result<String, String> {
    let accept = match format {
        Format::OpenMetrics => {
            "Accept: application/openmetrics-text;version=1.0.0,text/plain;version=0.0.4;q=0.5\r\n"
        }
        Format::Classic => "",
    };
    let request = format!("GET /metrics HTTP/1.1\r\nHost: localhost\r\n{accept}Connection: close\r\n\r\n");
    io.write_all(request.as_bytes()).await.map_err(|e| e.to_string())?;
    let mut response = Vec::new();
    io.read_to_end(&mut response).await.map_err(|e| e.to_string())?;
    let response = String::from_utf8(response).map_err(|e| e.to_string())?;
    let (head, body) =
        response.split_once("\r\n\r\n").ok_or_else(|| format!("no header end: {response:?}"))?;
    if !head.starts_with("HTTP/1.1 200 ") {
        return Err(format!("not 200: {head}"));
    }
    let content_type = head.lines().find(|l| l.to_ascii_lowercase().starts_with("content-type:"));
    let expected = match format {
        Format::OpenMetrics => "application/openmetrics-text; version=1.0.0; charset=utf-8",
        Format::Classic => "text/plain; version=0.0.4; charset=utf-8",
    };
    assert_eq!(content_type.map(|l| l.split_once(':').unwrap().1.trim()), Some(expected), "{head}");
    assert_eq!(body.ends_with("# EOF\n"), format == Format::OpenMetrics, "{body}");
    Ok(body.to_owned())
}

/// The classic text of a plain endpoint, for promtool.
async fn scrape_classic(addr: SocketAddr) -> String {
    let stream = within("connect", tokio::net::TcpStream::connect(addr)).await.unwrap();
    within("scrape", get(stream, Format::Classic)).await.unwrap()
}

/// Scrapes a plain endpoint.
pub(crate) async fn scrape(addr: SocketAddr) -> Scrape {
    let stream = within("connect", tokio::net::TcpStream::connect(addr)).await.unwrap();
    Scrape::parse(within("scrape", get(stream, Format::OpenMetrics)).await.unwrap())
}

/// Scrapes until `done` says the scrape shows what the test waits for (events of connections that closed
/// reach the metrics when their tasks end); bounded.
pub(crate) async fn scrape_until(addr: SocketAddr, done: impl Fn(&Scrape) -> bool) -> Scrape {
    for _ in 0..200 {
        let scraped = scrape(addr).await;
        if done(&scraped) {
            return scraped;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("the metrics never showed what was expected:\n{}", scrape(addr).await.text);
}

pub(crate) fn metrics_options(listen: &str, tls: bool, env: &Env) -> MetricsOptions {
    MetricsOptions {
        listen: listen.parse().unwrap(),
        tls,
        settings: MetricsSettings { data_dir: Some(env.data_dir()), ..MetricsSettings::default() },
    }
}

async fn start_with_metrics(env: &mut Env, tls: bool) -> Broker {
    let mut options = env.options(Engine::Sled, "127.0.0.1:0".parse().unwrap(), ServerLimits::default());
    options.metrics = Some(metrics_options("127.0.0.1:0", tls, env));
    Broker::start(options).await.unwrap()
}

/// Runs `promtool check metrics` on `text`: the test fails if promtool is missing (CI installs it).
fn promtool_check(text: &str) {
    use std::io::Write;
    use std::process::{Command, Stdio};
    let mut child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool is not installed: `apt-get install prometheus` (.ci/run installs it)");
    child.stdin.take().unwrap().write_all(text.as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    let said = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success() && said.trim().is_empty(), "promtool check metrics: {said}\n{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_scripted_session_moves_the_counters_by_what_it_did() {
    let mut env = Env::new();
    let broker = start_with_metrics(&mut env, false).await;
    let (addr, metrics) = (broker.local_addr(), broker.metrics().unwrap().local_addr());
    let before = scrape(metrics).await;

    // alice publishes two messages; bob reads them.
    let alice = within("connect", Client::connect(&Identity::load(env.identity("alice", addr)).unwrap()))
        .await
        .unwrap();
    let publisher = within("publisher", alice.publisher(chat(), PublisherOptions::default())).await.unwrap();
    for text in ["one", "two"] {
        within("publish", publisher.publish(Bytes::from(text))).await.unwrap();
    }
    let bob = within("connect", Client::connect(&Identity::load(env.identity("bob", addr)).unwrap()))
        .await
        .unwrap();
    let options = SubscribeOptions { from: StartAt::Earliest, durable: None, shared: false };
    let mut subscription = within("subscribe", bob.subscribe(chat(), options)).await.unwrap();
    for text in ["one", "two"] {
        let message = within("message", subscription.next()).await.unwrap().unwrap();
        assert_eq!(message.payload, Bytes::from(text));
    }

    // mallory (a valid certificate, no grants) publishes a batch: refused by the ACL.
    let mallory_cert =
        env.ca.issue(&sealpost_broker::pki::LeafSpec::client("mallory", &[env.key("mallory").public_key()]));
    let mallory_cert: Issued = mallory_cert.unwrap();
    let mallory =
        RawClient::connect(addr, &env.ca.cert_pem(), ClientAuth::Cert(&mallory_cert)).await.unwrap();
    let batch = sealpost_protocol::seal(
        env.key("mallory"),
        &env.content_key,
        sealpost_protocol::SealParams {
            topic: chat(),
            epoch: sealpost_protocol::Epoch(1),
            chain: sealpost_protocol::ChainId([7; 16]),
            first_seq: 1,
            prev_digest: sealpost_protocol::Digest::ZERO,
            created_at: sealpost_protocol::Timestamp(0),
        },
        &[b"mallory was here"],
        &sealpost_protocol::Limits::default(),
        &mut rand::thread_rng(),
    )
    .unwrap();
    let answer =
        mallory.exchange(&[Frame::Publish { request_id: 1, batch: batch.into_bytes() }], 1).await.unwrap();
    assert!(
        matches!(
            answer.as_slice(),
            [Frame::Error { code: sealpost_protocol::ErrorCode::NOT_AUTHORIZED, .. }]
        ),
        "{answer:?}"
    );
    drop(mallory);

    // A client without a certificate: the handshake is refused.
    if let Ok(raw) = RawClient::connect(addr, &env.ca.cert_pem(), ClientAuth::None).await {
        let head = Frame::Head {
            request_id: 1,
            topic: chat(),
            publisher: sealpost_protocol::SigningKey::from_bytes(&[1; 32]).public_key(),
        };
        assert!(raw.exchange(&[head], 1).await.is_err());
    }

    let delta = |after: &Scrape, series: &str| after.get(series) - before.get(series);
    let no_cert = "sealpost_connections_refused_total{reason=\"no_client_certificate\"}";
    let after =
        scrape_until(metrics, |s| delta(s, no_cert) >= 1.0 && s.get("sealpost_connections_open") == 2.0)
            .await;
    let chat_series = |name: &str| format!("sealpost_{name}{{topic=\"demo.chat\"}}");
    assert_eq!(delta(&after, no_cert), 1.0);
    assert_eq!(delta(&after, "sealpost_connections_accepted_total{principal=\"alice\"}"), 1.0);
    assert_eq!(delta(&after, "sealpost_connections_accepted_total{principal=\"bob\"}"), 1.0);
    assert_eq!(delta(&after, "sealpost_connections_accepted_total{principal=\"mallory\"}"), 1.0);
    assert_eq!(after.get("sealpost_connections_open"), 2.0, "alice and bob are still connected");
    assert_eq!(delta(&after, &chat_series("published_messages_total")), 2.0);
    assert_eq!(delta(&after, &chat_series("stored_messages_total")), 2.0);
    assert_eq!(delta(&after, &chat_series("delivered_messages_total")), 2.0);
    assert!(delta(&after, &chat_series("stored_bytes_total")) > 0.0);
    assert_eq!(
        delta(&after, &chat_series("stored_bytes_total")),
        delta(&after, &chat_series("delivered_bytes_total")),
        "bob was delivered exactly what was stored"
    );
    assert_eq!(after.get(&chat_series("topic_next_offset")), 2.0);
    assert_eq!(delta(&after, "sealpost_refusals_total{action=\"publish\",code=\"NOT_AUTHORIZED\"}"), 1.0);
    assert_eq!(delta(&after, "sealpost_subscriptions_total{kind=\"ephemeral\"}"), 1.0);
    assert_eq!(delta(&after, "sealpost_rate_limited_total"), 0.0);
    let publishes = delta(&after, &chat_series("publishes_total"));
    assert!((1.0..=2.0).contains(&publishes), "two messages in one or two batches: {publishes}");
    assert_eq!(delta(&after, "sealpost_publish_ack_duration_seconds_count"), publishes);
    assert!(delta(&after, "sealpost_fsync_duration_seconds_count") >= 1.0);
    assert!(after.get("sealpost_store_size_bytes") > 0.0);
    assert!(after.get("sealpost_store_available_bytes") > 0.0);
    promtool_check(&scrape_classic(metrics).await);

    drop((publisher, subscription, alice, bob));
    broker.shutdown().await.unwrap();
}

/// A TLS client config trusting the env's CA, with `cert` as its client certificate if given.
fn tls_client(env: &Env, cert: Option<&Issued>) -> tokio_rustls::TlsConnector {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    roots.add(CertificateDer::from_pem_slice(env.ca.cert_pem().as_bytes()).unwrap()).unwrap();
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .with_root_certificates(roots);
    let config = match cert {
        Some(issued) => builder
            .with_client_auth_cert(
                vec![CertificateDer::from_pem_slice(issued.cert_pem.as_bytes()).unwrap()],
                PrivateKeyDer::from_pem_slice(issued.key_pem.as_bytes()).unwrap(),
            )
            .unwrap(),
        None => builder.with_no_client_auth(),
    };
    tokio_rustls::TlsConnector::from(Arc::new(config))
}

async fn tls_scrape(addr: SocketAddr, connector: tokio_rustls::TlsConnector) -> Result<String, String> {
    let stream = within("connect", tokio::net::TcpStream::connect(addr)).await.unwrap();
    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    let tls = within("handshake", connector.connect(name, stream)).await.map_err(|e| e.to_string())?;
    within("scrape", get(tls, Format::OpenMetrics)).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tls_metrics_endpoint_refuses_a_client_without_a_certificate() {
    let mut env = Env::new();
    let broker = start_with_metrics(&mut env, true).await;
    let endpoint = broker.metrics().unwrap();
    assert!(endpoint.url().starts_with("https://"), "{}", endpoint.url());
    let addr = endpoint.local_addr();

    let refused = tls_scrape(addr, tls_client(&env, None)).await;
    assert!(refused.is_err(), "a client without a certificate read the metrics: {refused:?}");
    let other_ca = sealpost_broker::pki::DevCa::generate("another CA").unwrap();
    let stranger = other_ca.issue(&sealpost_broker::pki::LeafSpec::client("alice", &[])).unwrap();
    let refused = tls_scrape(addr, tls_client(&env, Some(&stranger))).await;
    assert!(refused.is_err(), "a certificate from another CA read the metrics: {refused:?}");

    let alice = env.ca.issue(&sealpost_broker::pki::LeafSpec::client("alice", &[])).unwrap();
    let text = tls_scrape(addr, tls_client(&env, Some(&alice))).await.unwrap();
    let scraped = Scrape::parse(text);
    assert_eq!(scraped.get("sealpost_connections_open"), 0.0);
    assert!(scraped.samples.contains_key("sealpost_connections_open"));
    broker.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_broker_binary_serves_metrics_that_promtool_accepts() {
    let mut env = Env::new();
    let config = env.write_config();
    let text = std::fs::read_to_string(&config).unwrap();
    std::fs::write(&config, format!("{text}\n[metrics]\nlisten = \"127.0.0.1:0\"\n")).unwrap();
    let broker = BrokerProcess::start(&config);
    let log = broker.log_text();
    let url = log
        .lines()
        .find_map(|line| line.split("metrics on ").nth(1))
        .unwrap_or_else(|| panic!("no metrics line in:\n{log}"))
        .trim()
        .to_owned();
    let addr: SocketAddr = url.trim_start_matches("http://").trim_end_matches("/metrics").parse().unwrap();
    broker_still_serves(&env, broker.addr).await;
    let scraped =
        scrape_until(addr, |s| s.get("sealpost_stored_messages_total{topic=\"demo.chat\"}") >= 1.0).await;
    assert!(scraped.get("sealpost_fsync_duration_seconds_count") >= 1.0);
    promtool_check(&scrape_classic(addr).await);
    broker.terminate();
}

#[test]
fn a_plain_metrics_endpoint_beyond_loopback_stops_the_broker_from_starting() {
    let mut env = Env::new();
    let config = env.write_config();
    let text = std::fs::read_to_string(&config).unwrap();
    std::fs::write(&config, format!("{text}\n[metrics]\nlisten = \"0.0.0.0:0\"\n")).unwrap();
    let out = std::process::Command::new(cargo_bin("sealpost-broker"))
        .arg("serve")
        .arg("--config")
        .arg(&config)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("not a loopback address") && stderr.contains("metrics.tls = true"), "{stderr}");
    assert!(!stderr.contains(LISTENING), "{stderr}");
}
