//! `sealpost`: publish, subscribe and make keys from the command line.
//!
//! Any failure prints exactly one line, `sealpost: <what went wrong>`, on stderr and exits with status 1.
//! Logs go to stderr, filtered by `RUST_LOG` (default `warn`).

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{bail, Context as _};
use clap::{Parser, Subcommand};
use futures_util::StreamExt;
use sealpost_client::protocol::{HpkeSecretKey, SigningKey};
use sealpost_client::{Client, Identity, PublisherOptions, StartAt, SubscribeOptions, Topic};
use tokio::io::AsyncBufReadExt;
use zeroize::Zeroizing;

/// Publish and subscribe through a Sealpost broker.
#[derive(Parser)]
#[command(name = "sealpost", version)]
struct Cli {
    /// The identity file (TOML): who you are, the broker, your certificate and keys.
    #[arg(long, short, global = true, env = "SEALPOST_IDENTITY", value_name = "FILE")]
    identity: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Publish messages: each MESSAGE argument, or else each line of stdin. Exits once all are stored.
    Pub {
        /// The topic.
        topic: Topic,
        /// The messages; without any, one message per line of stdin.
        messages: Vec<String>,
    },
    /// Print messages, one payload per line (invalid UTF-8 is replaced).
    Sub {
        /// The topic.
        topic: Topic,
        /// Where to start: `earliest`, `latest`, or an offset.
        #[arg(long, default_value = "latest", value_parser = parse_start)]
        from: StartAt,
        /// A durable subscription name: the broker remembers what was printed and resumes after it.
        #[arg(long, value_name = "NAME")]
        durable: Option<String>,
        /// Exit after this many messages (acknowledged first).
        #[arg(long, value_name = "N")]
        count: Option<u64>,
    },
    /// Make a fresh signing key and HPKE key, as lines for an identity file.
    Keygen {
        /// Write them to FILE (created with owner-only permissions; never overwritten) instead of stdout.
        #[arg(long, value_name = "FILE")]
        out: Option<PathBuf>,
    },
}

fn parse_start(s: &str) -> Result<StartAt, String> {
    match s {
        "earliest" => Ok(StartAt::Earliest),
        "latest" => Ok(StartAt::Latest),
        n => n
            .parse()
            .map(StartAt::Offset)
            .map_err(|_| format!("expected earliest, latest or an offset, got {n:?}")),
    }
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            use clap::error::ErrorKind;
            if matches!(
                e.kind(),
                ErrorKind::DisplayHelp
                    | ErrorKind::DisplayVersion
                    | ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand
            ) {
                e.exit();
            }
            // Usage errors too are one line and status 1.
            let text = e.render().to_string();
            let first = text.lines().next().unwrap_or("invalid arguments");
            eprintln!("sealpost: {} (see sealpost --help)", first.trim_start_matches("error: "));
            return ExitCode::FAILURE;
        }
    };
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .init();
    let result = match cli.command {
        Command::Keygen { out } => keygen(out.as_deref()),
        command => tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()
            .context("cannot start the async runtime")
            .and_then(|runtime| runtime.block_on(run(cli.identity, command))),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // One line, whatever the error says.
            let message = format!("{e:#}").replace(['\n', '\r'], " ");
            eprintln!("sealpost: {message}");
            ExitCode::FAILURE
        }
    }
}

async fn run(identity: Option<PathBuf>, command: Command) -> anyhow::Result<()> {
    let Some(identity) = identity else {
        bail!("no identity file: pass --identity FILE or set SEALPOST_IDENTITY");
    };
    let identity = Identity::load(identity)?;
    let client = Client::connect(&identity).await?;
    let result = match command {
        Command::Pub { topic, messages } => publish(&client, topic, messages).await,
        Command::Sub { topic, from, durable, count } => subscribe(&client, topic, from, durable, count).await,
        // Handled before the runtime starts.
        Command::Keygen { .. } => Ok(()),
    };
    client.close().await;
    result
}

async fn publish(client: &Client, topic: Topic, messages: Vec<String>) -> anyhow::Result<()> {
    let publisher = client.publisher(topic, PublisherOptions::default()).await?;
    let mut receipts = Vec::new();
    if messages.is_empty() {
        let mut stdin = tokio::io::BufReader::new(tokio::io::stdin());
        let mut line = Vec::new();
        loop {
            line.clear();
            if stdin.read_until(b'\n', &mut line).await.context("cannot read stdin")? == 0 {
                break;
            }
            let end = line.strip_suffix(b"\n").map_or(line.len(), <[u8]>::len);
            let end = line[..end].strip_suffix(b"\r").map_or(end, <[u8]>::len);
            receipts.push(publisher.publish(line[..end].to_vec()));
        }
    } else {
        receipts.extend(messages.into_iter().map(|m| publisher.publish(m)));
    }
    // The first failure, in publishing order, is the one reported.
    let results = futures_util::future::join_all(receipts).await;
    publisher.close().await?;
    for result in results {
        result?;
    }
    Ok(())
}

async fn subscribe(
    client: &Client,
    topic: Topic,
    from: StartAt,
    durable: Option<String>,
    count: Option<u64>,
) -> anyhow::Result<()> {
    let mut subscription = client.subscribe(topic, SubscribeOptions { from, durable }).await?;
    let mut printed = 0u64;
    let mut stdout = std::io::stdout().lock();
    let result = loop {
        if count.is_some_and(|n| printed >= n) {
            break Ok(());
        }
        let item = tokio::select! {
            item = subscription.next() => item,
            _ = tokio::signal::ctrl_c() => break Ok(()),
        };
        match item {
            None => break Err(anyhow::anyhow!("the subscription ended")),
            Some(Ok(message)) => {
                let mut line = message.payload.to_vec();
                line.push(b'\n');
                match stdout.write_all(&line).and_then(|()| stdout.flush()) {
                    Ok(()) => {}
                    // The reader went away (`| head`): stop quietly.
                    Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => break Ok(()),
                    Err(e) => break Err(anyhow::Error::new(e).context("cannot write to stdout")),
                }
                printed += 1;
                subscription.ack(&message)?;
            }
            Some(Err(e)) if e.is_integrity() => eprintln!("sealpost: {e}"),
            Some(Err(e)) => break Err(e.into()),
        }
    };
    subscription.close().await?;
    result
}

fn keygen(out: Option<&Path>) -> anyhow::Result<()> {
    let signing = SigningKey::generate(&mut rand::rngs::OsRng);
    let hpke = HpkeSecretKey::generate(&mut rand::rngs::OsRng);
    let public = format!(
        "# public signing key (for [[publisher]] entries and the broker): {}\n# public HPKE key: {}\n",
        signing.public_key(),
        hpke.public_key()
    );
    let signing_hex = Zeroizing::new(hex::encode(*signing.to_bytes()));
    let hpke_hex = Zeroizing::new(hex::encode(hpke.as_bytes()));
    let secret =
        Zeroizing::new(format!("signing_key = \"{}\"\nhpke_key = \"{}\"\n", *signing_hex, *hpke_hex));
    match out {
        None => {
            let mut stdout = std::io::stdout().lock();
            stdout.write_all(public.as_bytes())?;
            stdout.write_all(secret.as_bytes())?;
            stdout.flush()?;
        }
        Some(path) => {
            let mut options = std::fs::OpenOptions::new();
            options.write(true).create_new(true);
            #[cfg(unix)]
            std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
            let mut file = options.open(path).with_context(|| format!("cannot create {}", path.display()))?;
            file.write_all(public.as_bytes())
                .and_then(|()| file.write_all(secret.as_bytes()))
                .and_then(|()| file.sync_all())
                .with_context(|| format!("cannot write {}", path.display()))?;
            print!("{public}");
        }
    }
    Ok(())
}
