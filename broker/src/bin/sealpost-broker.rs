//! The `sealpost-broker` binary: `serve --config FILE` for operators, `dev` for a throwaway local setup.

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use sealpost_broker::config::Config;
use sealpost_broker::dev;
use sealpost_broker::server::{Broker, BrokerOptions};

#[derive(Parser)]
#[command(
    name = "sealpost-broker",
    version,
    about = "The Sealpost broker: QUIC, mutual TLS, sealed envelopes"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run with a configuration file (TOML; see docs/operations.md).
    Serve {
        /// The configuration file.
        #[arg(long)]
        config: PathBuf,
    },
    /// Run on a throwaway PKI generated in DIR on first run and reused after.
    Dev {
        /// Folder for the PKI, identities, ACL, configuration and data.
        #[arg(long, default_value = "./sealpost-dev")]
        data: PathBuf,
        /// Address to listen on (used when DIR is first set up).
        #[arg(long, default_value = "127.0.0.1:7443")]
        listen: SocketAddr,
    },
}

fn main() {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    if let Err(e) = run(Cli::parse()) {
        eprintln!("sealpost-broker: {e:#}");
        std::process::exit(1);
    }
}

#[tokio::main]
async fn run(cli: Cli) -> anyhow::Result<()> {
    let config_path = match cli.command {
        Command::Serve { config } => config,
        Command::Dev { data, listen } => {
            let setup =
                dev::prepare(&data, listen).with_context(|| format!("setting up {}", data.display()))?;
            if setup.created {
                eprintln!("Created a throwaway dev PKI, identities and ACL in {}", data.display());
            } else {
                eprintln!("Reusing the dev setup in {}", data.display());
            }
            eprintln!("{}", dev::next_steps(&data));
            setup.config
        }
    };
    let config = Config::load(&config_path).with_context(|| format!("loading {}", config_path.display()))?;
    let options = BrokerOptions::from_config(&config)?;
    let broker = Broker::start(options).await?;
    eprintln!("sealpost-broker listening on {} (Ctrl-C to stop)", broker.local_addr());
    wait_for_signal().await?;
    broker.shutdown().await?;
    Ok(())
}

async fn wait_for_signal() -> anyhow::Result<()> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate())?;
    tokio::select! {
        r = tokio::signal::ctrl_c() => r?,
        _ = term.recv() => {}
    }
    tracing::info!("signal received: shutting down");
    Ok(())
}
