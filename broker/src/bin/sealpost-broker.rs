//! The `sealpost-broker` binary: `serve --config FILE` for operators, `dev` for a throwaway local setup (with
//! the `dev` feature, on by default),
//! `verify-store DIR` to check a stopped broker's data folder.

use std::path::PathBuf;

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use sealpost_broker::config::{Config, LogFormat};
#[cfg(feature = "dev")]
use sealpost_broker::dev;
use sealpost_broker::server::{Broker, BrokerOptions};
use sealpost_broker::store::disk::verify;

/// jemalloc, with its background threads purging freed pages (after `dirty_decay_ms`, 10 s by default):
/// memory that peers made the broker hold goes back to the system once they are gone. With glibc's
/// malloc the broker's RSS stayed at the high-water mark of a burst (fragmented arenas are never trimmed);
/// docs/reliability.md has the figures of both.
#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

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
    #[cfg(feature = "dev")]
    Dev {
        /// Folder for the PKI, identities, ACL, configuration and data.
        #[arg(long, default_value = "./sealpost-dev")]
        data: PathBuf,
        /// Address to listen on (used when DIR is first set up).
        #[arg(long, default_value = "127.0.0.1:7443")]
        listen: std::net::SocketAddr,
    },
    /// Check a stopped broker's data folder: every record against its checksum, and the index against the
    /// segments. Prints one line per finding; exit status 0 when clean, 1 with findings, 2 if it cannot
    /// check (not a data folder, or a broker is running on it).
    VerifyStore {
        /// The data folder (`data_dir` in the configuration).
        dir: PathBuf,
    },
}

fn main() {
    let cli = Cli::parse();
    if let Command::VerifyStore { dir } = &cli.command {
        init_log(LogFormat::Text);
        std::process::exit(verify_store(dir));
    }
    if let Err(e) = run(cli) {
        eprintln!("sealpost-broker: {e:#}");
        std::process::exit(1);
    }
}

/// `verify-store DIR`: prints what [`verify::verify`] finds; returns the exit status.
fn verify_store(dir: &std::path::Path) -> i32 {
    match verify::verify(dir) {
        Err(e) => {
            eprintln!("sealpost-broker: cannot verify {}: {e}", dir.display());
            2
        }
        Ok(report) => {
            for note in &report.notes {
                println!("note: {note}");
            }
            for finding in &report.findings {
                println!("{finding}");
            }
            println!(
                "{}: {} segment files, {} bytes, {} intact records, {} index keys: {}",
                dir.display(),
                report.segments,
                report.bytes,
                report.records,
                report.index_keys,
                match report.findings.len() {
                    0 => "clean".to_owned(),
                    n => format!("{n} findings"),
                }
            );
            i32::from(!report.findings.is_empty())
        }
    }
}

#[tokio::main]
async fn run(cli: Cli) -> anyhow::Result<()> {
    let config_path = match cli.command {
        Command::Serve { config } => config,
        Command::VerifyStore { .. } => unreachable!("handled in main"),
        #[cfg(feature = "dev")]
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
    init_log(config.log.format);
    let options = BrokerOptions::from_config(&config)?;
    // The handlers are installed before the broker says it listens: a SIGTERM sent as soon as that line
    // appears (a supervisor, a test) must stop it cleanly, not kill it with the default action.
    let mut stop = StopSignals::install()?;
    let broker = Broker::start(options).await?;
    let ready = format!("sealpost-broker listening on {} (Ctrl-C to stop)", broker.local_addr());
    let metrics = broker.metrics().map(|m| format!("sealpost-broker metrics on {}", m.url()));
    match config.log.format {
        LogFormat::Text => {
            if let Some(metrics) = &metrics {
                eprintln!("{metrics}");
            }
            eprintln!("{ready}");
        }
        LogFormat::Json => {
            if let Some(metrics) = &metrics {
                tracing::info!(url = %broker.metrics().map(|m| m.url()).unwrap_or_default(), "{metrics}");
            }
            tracing::info!(listen = %broker.local_addr(), "{ready}");
        }
    }
    stop.wait().await;
    broker.shutdown().await?;
    Ok(())
}

/// The log on standard error, filtered by `RUST_LOG` (default `info`), in `format`; colour codes only on
/// a terminal and without `NO_COLOR` (a log file or a collector gets none).
fn init_log(format: LogFormat) {
    use std::io::IsTerminal;
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let ansi = std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none();
    let log = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).with_ansi(ansi);
    match format {
        LogFormat::Text => log.init(),
        LogFormat::Json => {
            log.json().flatten_event(true).with_span_list(true).with_current_span(false).init()
        }
    }
}

/// SIGTERM and SIGINT, caught from the moment they are installed.
struct StopSignals {
    term: tokio::signal::unix::Signal,
    int: tokio::signal::unix::Signal,
}

impl StopSignals {
    fn install() -> anyhow::Result<StopSignals> {
        use tokio::signal::unix::{signal, SignalKind};
        Ok(StopSignals { term: signal(SignalKind::terminate())?, int: signal(SignalKind::interrupt())? })
    }

    async fn wait(&mut self) {
        tokio::select! {
            _ = self.term.recv() => {}
            _ = self.int.recv() => {}
        }
        tracing::info!("signal received: shutting down");
    }
}
