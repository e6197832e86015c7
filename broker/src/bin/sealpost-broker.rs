//! The `sealpost-broker` binary: `serve --config FILE` for operators (reloaded on SIGHUP and when its files
//! change), `dev` for a throwaway local setup (with
//! the `dev` feature, on by default),
//! `verify-store DIR` to check a stopped broker's data folder, `backup` and `restore` for a data folder
//! (while it runs, and into an empty folder), `audit verify` and `audit keygen` for the audit log.

use std::path::{Path, PathBuf};

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use sealpost_broker::audit::{self, AuditKey, AuditPublicKey};
use sealpost_broker::config::{Config, LogFormat};
#[cfg(feature = "dev")]
use sealpost_broker::dev;
use sealpost_broker::reload::Running;
use sealpost_broker::server::{Broker, BrokerOptions, STORAGE_FAILED_EXIT};
use sealpost_broker::store::disk::{backup, verify};

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
    /// Run with a configuration file (TOML; see docs/operations.md). Exit status 0 after SIGTERM or
    /// SIGINT, 74 if the storage failed (fail-stop: restart it, its opening recovers the store), 1 on any
    /// other error.
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
    /// Copy a data folder into DIR (new or empty) while a broker may run on it: every segment file up to
    /// the last synced checkpoint (everything acknowledged before the backup began), then a MANIFEST with
    /// their sizes and SHA-256. Not the index (rebuilt on restore), the audit log, keys or certificates.
    /// Exit status 0, or 1 with what went wrong.
    Backup {
        /// Take the data folder (`data_dir`) from this broker configuration.
        #[arg(long, required_unless_present = "data_dir", conflicts_with = "data_dir")]
        config: Option<PathBuf>,
        /// The data folder.
        #[arg(long)]
        data_dir: Option<PathBuf>,
        /// The folder to write the backup to: new or empty.
        #[arg(long)]
        to: PathBuf,
    },
    /// Restore a backup into a data folder that is new or empty (a broker must not run on it): checks the
    /// manifest and every file's size and SHA-256 first. The next `serve` builds the index. Exit status 0,
    /// or 1 with what went wrong.
    Restore {
        /// The backup's folder.
        #[arg(long)]
        from: PathBuf,
        /// Restore into the data folder (`data_dir`) of this broker configuration.
        #[arg(long, required_unless_present = "data_dir", conflicts_with = "data_dir")]
        config: Option<PathBuf>,
        /// The data folder to restore into: new or empty.
        #[arg(long)]
        data_dir: Option<PathBuf>,
    },
    /// The audit log: check its files, make its key (see docs/operations.md, "Audit log").
    #[command(subcommand)]
    Audit(AuditCommand),
    /// Check a configuration file without starting a broker: the file itself, the TLS files it names, the
    /// ACL, the metrics address and the audit key (the data folder is not opened). Prints `FILE: ok`, or
    /// what is wrong; exit status 0 or 1.
    CheckConfig {
        /// The configuration file.
        config: PathBuf,
    },
}

#[derive(Subcommand)]
enum AuditCommand {
    /// Check audit files: every hash, the chain across files in the order given, every checkpoint's
    /// signature and coverage, and that the log ends with a final checkpoint. Prints the first bad entry;
    /// exit status 0 when clean, 1 with a finding, 2 if it cannot check.
    Verify {
        /// The audit public key: 64 hex digits, or a file holding them.
        #[arg(long)]
        key: Option<String>,
        /// Take the key (from `[audit] key`) and, without FILES, every file of `[audit] dir` from this
        /// broker configuration.
        #[arg(long)]
        config: Option<PathBuf>,
        /// The audit files, oldest first.
        files: Vec<PathBuf>,
    },
    /// Write a new audit key to FILE (mode 0600; never overwrites) and its public key to FILE.pub, and
    /// print the public key.
    Keygen {
        /// Where to write the secret key.
        #[arg(long)]
        out: PathBuf,
    },
}

fn main() {
    let cli = Cli::parse();
    if let Command::VerifyStore { dir } = &cli.command {
        init_log(LogFormat::Text);
        std::process::exit(verify_store(dir));
    }
    if let Command::CheckConfig { config } = &cli.command {
        // The checks of `sealpost_broker::server::check_config`, keeping what they loaded to warn about it.
        let checked = Config::load(config).and_then(Running::from_config);
        match checked {
            Ok(running) => {
                for crl in running.crls().iter().filter(|crl| crl.expired) {
                    let next =
                        crl.summary.next_update.map(sealpost_broker::crl::time_text).unwrap_or_default();
                    eprintln!(
                        "sealpost-broker: warning: tls.crls {}: expired: its next-update {next} is past \
                         (accepted: tls.crl_expired = \"warn\")",
                        crl.path.display()
                    );
                }
                println!("{}: ok", config.display())
            }
            Err(e) => {
                // One line, whatever the error says (a TOML parse error spans several).
                let text = e.to_string();
                let line = text.split_whitespace().collect::<Vec<_>>().join(" ");
                eprintln!("sealpost-broker: {}: {line}", config.display());
                std::process::exit(1);
            }
        }
        return;
    }
    if let Command::Backup { config, data_dir, to } = &cli.command {
        std::process::exit(backup_command(config.as_deref(), data_dir.as_deref(), to));
    }
    if let Command::Restore { from, config, data_dir } = &cli.command {
        std::process::exit(restore_command(from, config.as_deref(), data_dir.as_deref()));
    }
    if let Command::Audit(command) = &cli.command {
        std::process::exit(match command {
            AuditCommand::Verify { key, config, files } => {
                audit_verify(key.as_deref(), config.as_deref(), files)
            }
            AuditCommand::Keygen { out } => audit_keygen(out),
        });
    }
    if let Err(e) = run(cli) {
        if let Some(sealpost_broker::Error::StorageFailed(_)) = e.downcast_ref() {
            // The log has said why (an error line); a supervisor restarts the broker into recovery.
            eprintln!("sealpost-broker: {e:#}; exiting with status {STORAGE_FAILED_EXIT} (fail-stop)");
            std::process::exit(STORAGE_FAILED_EXIT);
        }
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

/// The data folder given by `--data-dir`, or by the configuration of `--config`.
fn data_dir_of(config: Option<&Path>, data_dir: Option<&Path>) -> anyhow::Result<PathBuf> {
    match (data_dir, config) {
        (Some(dir), _) => Ok(dir.to_path_buf()),
        (None, Some(config)) => Ok(Config::load(config)?.data_dir),
        (None, None) => anyhow::bail!("give the data folder with --data-dir, or --config"),
    }
}

/// `backup`: returns the exit status.
fn backup_command(config: Option<&Path>, data_dir: Option<&Path>, to: &Path) -> i32 {
    init_log(LogFormat::Text);
    let done = data_dir_of(config, data_dir).and_then(|dir| Ok((backup::backup(&dir, to)?, dir)));
    match done {
        Ok((report, dir)) => {
            let m = &report.manifest;
            let bytes: u64 = m.segments.iter().map(|s| s.len).sum();
            for number in &report.skipped {
                println!("note: segment {number} was removed by the broker while the backup ran; not needed");
            }
            println!(
                "backed up {} to {}: {} segment files, {bytes} bytes, up to checkpoint {}:{} (format {})",
                dir.display(),
                to.display(),
                m.segments.len(),
                m.checkpoint.segment,
                m.checkpoint.position,
                m.store_format
            );
            0
        }
        Err(e) => {
            eprintln!("sealpost-broker: backup failed: {e:#}");
            1
        }
    }
}

/// `restore`: returns the exit status.
fn restore_command(from: &Path, config: Option<&Path>, data_dir: Option<&Path>) -> i32 {
    init_log(LogFormat::Text);
    let done = data_dir_of(config, data_dir).and_then(|dir| Ok((backup::restore(from, &dir)?, dir)));
    match done {
        Ok((m, dir)) => {
            let bytes: u64 = m.segments.iter().map(|s| s.len).sum();
            println!(
                "restored {} into {}: {} segment files, {bytes} bytes, taken by broker {} at {} (unix); \
                 the next start builds the index",
                from.display(),
                dir.display(),
                m.segments.len(),
                m.broker,
                m.created_unix
            );
            0
        }
        Err(e) => {
            eprintln!("sealpost-broker: restore failed: {e:#}");
            1
        }
    }
}

/// `audit keygen --out FILE`: returns the exit status.
fn audit_keygen(out: &std::path::Path) -> i32 {
    let key = AuditKey::generate();
    if let Err(e) = key.write_new(out) {
        eprintln!("sealpost-broker: {e}");
        return 1;
    }
    let mut public_path = out.as_os_str().to_owned();
    public_path.push(".pub");
    let public_path = PathBuf::from(public_path);
    if let Err(e) = std::fs::write(&public_path, format!("{}\n", key.public_key())) {
        eprintln!("sealpost-broker: cannot write {}: {e}", public_path.display());
        return 1;
    }
    eprintln!(
        "wrote the audit key to {} (mode 0600) and its public key to {}",
        out.display(),
        public_path.display()
    );
    println!("{}", key.public_key());
    0
}

/// `audit verify`: prints the notes, the first bad entry and a summary; returns the exit status.
fn audit_verify(key: Option<&str>, config: Option<&std::path::Path>, files: &[PathBuf]) -> i32 {
    let cannot = |what: String| {
        eprintln!("sealpost-broker: cannot verify: {what}");
        2
    };
    let audit_config = match config.map(Config::load) {
        None => None,
        Some(Err(e)) => return cannot(e.to_string()),
        Some(Ok(c)) => match c.audit {
            Some(a) => Some(a),
            None => return cannot("the configuration has no [audit] table".into()),
        },
    };
    let public = match (key, &audit_config) {
        (Some(k), _) => AuditPublicKey::from_arg(k),
        (None, Some(a)) => AuditKey::load(&a.key).map(|k| k.public_key()),
        (None, None) => return cannot("give the public key with --key, or --config".into()),
    };
    let public = match public {
        Ok(p) => p,
        Err(e) => return cannot(e.to_string()),
    };
    let files = match (files.is_empty(), &audit_config) {
        (false, _) => files.to_vec(),
        (true, Some(a)) => match audit::list_files(&a.dir) {
            Ok(list) => list.into_iter().map(|(_, p)| p).collect(),
            Err(e) => return cannot(e.to_string()),
        },
        (true, None) => return cannot("no files given".into()),
    };
    let report = match audit::verify_files(&public, &files) {
        Ok(r) => r,
        Err(e) => return cannot(e.to_string()),
    };
    for note in &report.notes {
        println!("note: {note}");
    }
    if let Some(finding) = &report.finding {
        println!("first bad entry: {finding}");
    }
    let last = match &report.last_checkpoint {
        Some(c) => format!(
            "last checkpoint {} at {} covering entry {} (hash {})",
            c.number,
            audit::rfc3339::to_string(c.time),
            c.seq,
            c.hash
        ),
        None => "no checkpoint".into(),
    };
    println!(
        "{} files, {} entries, {} checkpoints, {last}: {}",
        report.files,
        report.entries,
        report.checkpoints,
        if report.finding.is_some() { "NOT clean" } else { "clean" }
    );
    i32::from(report.finding.is_some())
}

#[tokio::main]
async fn run(cli: Cli) -> anyhow::Result<()> {
    let config_path = match cli.command {
        Command::Serve { config } => config,
        Command::VerifyStore { .. }
        | Command::Audit(_)
        | Command::CheckConfig { .. }
        | Command::Backup { .. }
        | Command::Restore { .. } => {
            unreachable!("handled in main")
        }
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
    let running = Running::load(&config_path)?;
    running.log_crls();
    let options = BrokerOptions::from_config(running.config())?;
    // The handlers are installed before the broker says it listens: a SIGTERM sent as soon as that line
    // appears (a supervisor, a test) must stop it cleanly, not kill it with the default action; a SIGHUP
    // must reload, not kill it.
    let mut stop = StopSignals::install()?;
    let mut broker = Broker::start(options).await?;
    broker.reload_on_change(config_path.clone(), running)?;
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
    tokio::select! {
        () = stop.wait() => {}
        // The broker is already stopping; its log said why.
        _ = broker.storage_failed() => {}
    }
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
