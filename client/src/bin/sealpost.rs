//! `sealpost`: publish, subscribe, make keys, manage topic policies and ask a broker about itself from the
//! command line.
//!
//! Any failure prints exactly one line, `sealpost: <what went wrong>`, on stderr and exits with status 1.
//! Logs go to stderr, filtered by `RUST_LOG` (default `warn`). An unreachable broker, or a lost connection,
//! is retried with backoff for up to [`RETRY_FOR`] (a command at a terminal should not wait for minutes);
//! the client library's default is 2 minutes.

#[path = "sealpost/admin.rs"]
mod admin;
#[path = "sealpost/identity.rs"]
mod identity;
#[path = "sealpost/keys.rs"]
mod keys;
#[path = "sealpost/topic.rs"]
mod topic;

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{bail, Context as _};
use clap::{ArgGroup, Parser, Subcommand};
use futures_util::StreamExt;
use sealpost_client::authority::{Authority, Role};
use sealpost_client::protocol::Offset;
use sealpost_client::{
    Client, ClientOptions, Headers, Identity, PublisherOptions, RetryBudget, StartAt, SubscribeOptions, Topic,
};
use tokio::io::AsyncBufReadExt;

/// How long the CLI retries an unreachable broker or a lost connection before it fails.
const RETRY_FOR: std::time::Duration = std::time::Duration::from_secs(15);

/// Connects as `identity` with the identity file's settings, retrying for [`RETRY_FOR`].
async fn connect(identity: &Identity) -> sealpost_client::Result<Client> {
    let mut options = ClientOptions::from_identity(identity);
    options.reconnect.budget = RetryBudget::Duration(RETRY_FOR);
    Client::connect_with(identity, options).await
}

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
    /// Publish messages: each MESSAGE argument, or else each line of stdin. Exits once all are stored; if
    /// not all are, says how many were ("published 3 of 5 messages before the failure: ...") and exits
    /// with status 1.
    Pub {
        /// The topic.
        topic: Topic,
        /// A user header sealed with every message, like the payload (repeatable). NAME is 1 to 64 of
        /// A-Z a-z 0-9 . _ - (case-sensitive); VALUE is the rest after the first `=`, at most 4096 bytes.
        #[arg(long = "header", value_name = "NAME=VALUE", value_parser = parse_header)]
        headers: Vec<(String, String)>,
        /// The messages; without any, one message per line of stdin.
        messages: Vec<String>,
    },
    /// Print messages, one payload per line (invalid UTF-8 is replaced). A message with headers is
    /// preceded by one line `# headers: NAME="VALUE" ...`, bytewise by name, each value quoted and escaped
    /// (`\"`, `\\`, `\n`, `\t`, `\u{..}`) so that it stays on the line; a message without headers is its
    /// payload line alone. A batch that fails a check, a policy that fails one, messages the broker reports
    /// lost ("data lost at offsets X..Y: storage corruption") or removed by retention, a chain the broker
    /// rolled back, is one line on stderr, and printing goes on (with `--strict`, the command exits 1 at
    /// the first).
    Sub {
        /// The topic.
        topic: Topic,
        /// Where to start: `earliest`, `latest`, or an offset.
        #[arg(long, default_value = "latest", value_parser = parse_start)]
        from: StartAt,
        /// A durable subscription name: the broker remembers what was printed and resumes after it.
        #[arg(long, value_name = "NAME")]
        durable: Option<String>,
        /// Share the durable subscription with the other subscribers of its name (a consumer group):
        /// each message is printed by one of them.
        #[arg(long, requires = "durable")]
        shared: bool,
        /// Exit after this many messages printed (acknowledged first); integrity events do not count.
        #[arg(long, value_name = "N")]
        count: Option<u64>,
        /// Exit with status 1 at the first integrity or policy event, after its line.
        #[arg(long)]
        strict: bool,
    },
    /// Make a fresh signing key and HPKE key: the secret keys as lines for an identity file, the public
    /// keys as a NAME.pub.toml file for the topic authority.
    Keygen {
        /// Write the secret keys to FILE (owner-only permissions; never overwritten) and the public keys to
        /// FILE's name with `.toml` replaced by `.pub.toml`, instead of printing them.
        #[arg(long, value_name = "FILE")]
        out: Option<PathBuf>,
        /// The principal the keys are for, named in the public keys. Default: FILE's name without `.toml`.
        #[arg(long, value_name = "NAME")]
        principal: Option<String>,
    },
    /// Make an identity with your own CA (`new`), or check one (`check`).
    Identity {
        #[command(subcommand)]
        command: IdentityCommand,
    },
    /// Make the topic authority's key (the one key that signs every topic policy).
    Authority {
        #[command(subcommand)]
        command: AuthorityCommand,
    },
    /// Manage a topic's policy (who may publish and read it, and its content key), as the topic
    /// authority; or show it.
    Topic {
        #[command(subcommand)]
        command: TopicCommand,
    },
    /// Ask the broker about itself: `stats`, `topics`, `subscriptions` (durable, with their lag) or
    /// `connections`, as aligned tables. Needs a principal the broker's ACL grants `admin` on every topic.
    Admin {
        /// What to show.
        #[arg(value_enum)]
        what: admin::What,
        /// Print JSON instead of a table: an object for `stats`, an array of rows for the lists.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand)]
enum IdentityCommand {
    /// Make NAME's keys, a certificate signing request with exactly the subject-alternative names the
    /// broker requires, and its identity file (naming the certificate your CA will sign as NAME.pem), in
    /// DIR. Nothing is overwritten.
    New {
        /// The principal.
        name: String,
        /// host:port of the broker.
        #[arg(long)]
        broker: String,
        /// The name the broker's certificate is valid for (a DNS or IP SAN of its certificate).
        #[arg(long, value_name = "NAME")]
        server_name: String,
        /// The CA certificate(s) the broker's certificate chains to, PEM.
        #[arg(long, value_name = "FILE")]
        ca: PathBuf,
        /// The topic authority's public key, hex (`sealpost authority new` prints it).
        #[arg(long, value_name = "HEX")]
        authority: String,
        /// Where to write the files.
        #[arg(long, value_name = "DIR", default_value = ".")]
        dir: PathBuf,
    },
    /// Check the identity (--identity): its certificate against its keys and principal, the connection to
    /// the broker, and for each --topic the broker's ACL and the topic's policy. One line per check; exit 1
    /// if any fails.
    Check {
        /// A topic this principal should publish or read.
        #[arg(long = "topic", value_name = "TOPIC")]
        topics: Vec<Topic>,
    },
}

#[derive(Subcommand)]
enum AuthorityCommand {
    /// Make a fresh topic authority key: its secret as an `authority_key` line for the administrator's
    /// identity file, its public half to set as `authority` in broker.toml and in every identity file.
    New {
        /// Write the secret line to FILE (owner-only permissions; never overwritten) instead of printing
        /// it.
        #[arg(long, value_name = "FILE")]
        out: Option<PathBuf>,
    },
    /// Print the public key of the topic authority whose secret `authority_key` line FILE holds (the
    /// file `authority new --out` wrote, or the administrator's identity file), 64 hex digits alone on a
    /// line, for scripts; its key id goes to stderr.
    Public {
        /// The file holding the `authority_key` line.
        file: PathBuf,
    },
}

#[derive(Subcommand)]
enum TopicCommand {
    /// Create the topic's first policy (epoch 1). A NAME given as both publisher and subscriber gets both
    /// roles.
    Create {
        /// The topic.
        topic: Topic,
        /// Members who may publish.
        #[arg(long = "publisher", value_name = "NAME", num_args = 1..)]
        publishers: Vec<String>,
        /// Members who may subscribe.
        #[arg(long = "subscriber", value_name = "NAME", num_args = 1..)]
        subscribers: Vec<String>,
        /// The folder of members' key files, NAME.pub.toml or NAME.toml. Default: the folder of the
        /// identity file.
        #[arg(long, value_name = "DIR")]
        members: Option<PathBuf>,
    },
    /// Add a member with a role, or a role to a member: a new epoch with a fresh content key.
    #[command(group(ArgGroup::new("role").required(true).args(["publisher", "subscriber"])))]
    Grant {
        /// The topic.
        topic: Topic,
        /// Let NAME publish.
        #[arg(long, value_name = "NAME")]
        publisher: Option<String>,
        /// Let NAME subscribe.
        #[arg(long, value_name = "NAME")]
        subscriber: Option<String>,
        /// The folder of members' key files, NAME.pub.toml or NAME.toml. Default: the folder of the
        /// identity file.
        #[arg(long, value_name = "DIR")]
        members: Option<PathBuf>,
    },
    /// Remove a member: a new epoch with a fresh content key that it cannot unwrap.
    Revoke {
        /// The topic.
        topic: Topic,
        /// The member to remove.
        name: String,
    },
    /// Replace the content key: a new epoch with a fresh key, the same members.
    Rotate {
        /// The topic.
        topic: Topic,
    },
    /// Print the topic's current policy: epoch, creation time, members with their roles and key ids.
    Show {
        /// The topic.
        topic: Topic,
    },
}

/// `NAME=VALUE`, split at the first `=`; the name is checked here so that a bad one is a usage error.
fn parse_header(s: &str) -> Result<(String, String), String> {
    let (name, value) = s.split_once('=').ok_or_else(|| format!("expected NAME=VALUE, got {s:?}"))?;
    sealpost_client::HeaderName::new(name).map_err(|e| format!("header {name:?}: {e}"))?;
    Ok((name.to_owned(), value.to_owned()))
}

/// The line `sealpost sub` prints before the payload of a message with headers (see `Command::Sub`).
fn headers_line(headers: &Headers) -> String {
    let mut line = String::from("# headers:");
    for (name, value) in headers.iter() {
        line.push_str(&format!(" {name}={value:?}"));
    }
    line
}

fn parse_start(s: &str) -> Result<StartAt, String> {
    match s {
        "earliest" => Ok(StartAt::Earliest),
        "latest" => Ok(StartAt::Latest),
        n => n
            .parse()
            .map(|n| StartAt::Offset(Offset(n)))
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
            // Usage errors too are one line and status 1: the first paragraph of clap's text, joined.
            let text = e.render().to_string();
            let first: Vec<&str> = text.lines().map(str::trim).take_while(|l| !l.is_empty()).collect();
            let first = if first.is_empty() { "invalid arguments".to_owned() } else { first.join(" ") };
            eprintln!("sealpost: {} (see sealpost --help)", first.trim_start_matches("error: "));
            return ExitCode::FAILURE;
        }
    };
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr()) && std::env::var_os("NO_COLOR").is_none();
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(ansi)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .init();
    let result = match cli.command {
        Command::Keygen { out, principal } => keys::keygen(out.as_deref(), principal.as_deref()),
        Command::Authority { command: AuthorityCommand::New { out } } => keys::authority_new(out.as_deref()),
        Command::Authority { command: AuthorityCommand::Public { file } } => keys::authority_public(&file),
        Command::Identity {
            command: IdentityCommand::New { name, broker, server_name, ca, authority, dir },
        } => identity::new(identity::New {
            principal: &name,
            broker: &broker,
            server_name: &server_name,
            ca: &ca,
            authority: &authority,
            dir: &dir,
        }),
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
    // Checked before anything else, like the other arguments.
    let headers = match &command {
        Command::Pub { headers, .. } => headers_of(headers)?,
        _ => Headers::new(),
    };
    let Some(identity) = identity else {
        bail!("no identity file: pass --identity FILE or set SEALPOST_IDENTITY");
    };
    let identity = Identity::load(identity)?;
    if let Command::Identity { command: IdentityCommand::Check { topics } } = &command {
        // Connects by itself, and says so if it cannot.
        return identity::check(&identity, topics).await;
    }
    let changes_policy =
        matches!(&command, Command::Topic { command } if !matches!(command, TopicCommand::Show { .. }));
    if changes_policy {
        // Before connecting: only the topic authority can change policies.
        Authority::of(&identity)?;
    }
    let client = connect(&identity).await?;
    let result = match command {
        Command::Pub { topic, messages, .. } => publish(&client, topic, headers, messages).await,
        Command::Sub { topic, from, durable, shared, count, strict } => {
            subscribe(&client, topic, SubscribeOptions { from, durable, shared }, count, strict).await
        }
        Command::Topic { command } => topic_command(&client, &identity, command).await,
        Command::Admin { what, json } => admin::run(&client, what, json).await,
        // Handled before the runtime starts.
        Command::Keygen { .. } | Command::Authority { .. } | Command::Identity { .. } => Ok(()),
    };
    client.close().await;
    result
}

async fn topic_command(client: &Client, identity: &Identity, command: TopicCommand) -> anyhow::Result<()> {
    let default_dir = || identity.path().parent().map(Path::to_path_buf).unwrap_or_default();
    let folder = |members: Option<PathBuf>| topic::Members::new(members.unwrap_or_else(default_dir));
    let (topic, change, members) = match command {
        TopicCommand::Show { topic } => return topic::show(client, &topic).await,
        TopicCommand::Create { topic, publishers, subscribers, members } => {
            (topic, topic::Change::Create { publishers, subscribers }, folder(members))
        }
        TopicCommand::Grant { topic, publisher, subscriber, members } => {
            let change = match (publisher, subscriber) {
                (Some(name), _) => topic::Change::Grant { name, role: Role::Publish },
                (None, Some(name)) => topic::Change::Grant { name, role: Role::Subscribe },
                (None, None) => bail!("give --publisher NAME or --subscriber NAME"),
            };
            (topic, change, folder(members))
        }
        TopicCommand::Revoke { topic, name } => (topic, topic::Change::Revoke { name }, folder(None)),
        TopicCommand::Rotate { topic } => (topic, topic::Change::Rotate, folder(None)),
    };
    topic::change(client, identity, &topic, &change, &members).await
}

/// The headers of `--header NAME=VALUE` arguments (names already checked by [`parse_header`]): a name given
/// twice, or a value or a count over its limit, is an error.
fn headers_of(pairs: &[(String, String)]) -> anyhow::Result<Headers> {
    let mut headers = Headers::new();
    for (name, value) in pairs {
        if headers.insert(name, value.as_str()).with_context(|| format!("--header {name}"))?.is_some() {
            bail!("--header {name} is given twice");
        }
    }
    Ok(headers)
}

async fn publish(
    client: &Client,
    topic: Topic,
    headers: Headers,
    messages: Vec<String>,
) -> anyhow::Result<()> {
    let given = (!messages.is_empty()).then_some(messages.len());
    let publisher = match client.publisher(topic, PublisherOptions::default()).await {
        Ok(publisher) => publisher,
        Err(e) => return Err(not_all_published(0, given, e.into())),
    };
    let mut receipts = Vec::new();
    let mut failure = None;
    if messages.is_empty() {
        let mut stdin = tokio::io::BufReader::new(tokio::io::stdin());
        let mut line = Vec::new();
        loop {
            line.clear();
            match stdin.read_until(b'\n', &mut line).await {
                Ok(0) => break,
                Ok(_) => {}
                Err(e) => {
                    failure = Some(anyhow::Error::new(e).context("cannot read stdin"));
                    break;
                }
            }
            let end = line.strip_suffix(b"\n").map_or(line.len(), <[u8]>::len);
            let end = line[..end].strip_suffix(b"\r").map_or(end, <[u8]>::len);
            receipts.push(publisher.publish_with(headers.clone(), line[..end].to_vec()));
        }
    } else {
        receipts.extend(messages.into_iter().map(|m| publisher.publish_with(headers.clone(), m)));
    }
    let sent = receipts.len();
    let results = futures_util::future::join_all(receipts).await;
    let closed = publisher.close().await;
    let acknowledged = results.iter().filter(|r| r.is_ok()).count();
    // A stdin that failed, else the first failure in publishing order, else the close's.
    let failure = failure
        .or_else(|| results.into_iter().find_map(Result::err).map(anyhow::Error::new))
        .or_else(|| closed.err().map(anyhow::Error::new));
    match failure {
        None => Ok(()),
        Some(e) => Err(not_all_published(acknowledged, Some(sent), e)),
    }
}

/// `error`, saying first how many messages the broker acknowledged (stored durably) before it: of `sent`,
/// or of an unknown number (stdin not read yet).
fn not_all_published(acknowledged: usize, sent: Option<usize>, error: anyhow::Error) -> anyhow::Error {
    let noun = |n: usize| if n == 1 { "message" } else { "messages" };
    let what = match sent {
        Some(n) => format!("published {acknowledged} of {n} {}", noun(n)),
        None => format!("published {acknowledged} {}", noun(acknowledged)),
    };
    error.context(format!("{what} before the failure"))
}

async fn subscribe(
    client: &Client,
    topic: Topic,
    options: SubscribeOptions,
    count: Option<u64>,
    strict: bool,
) -> anyhow::Result<()> {
    let mut subscription = client.subscribe(topic, options).await?;
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
                let mut line = Vec::new();
                if !message.headers.is_empty() {
                    line.extend_from_slice(headers_line(&message.headers).as_bytes());
                    line.push(b'\n');
                }
                line.extend_from_slice(&message.payload);
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
            // A chain the broker rolled back is reported like an integrity event: the stream goes on.
            Some(Err(e))
                if (e.is_integrity() || matches!(e, sealpost_client::Error::RolledBack { .. }))
                    && !strict =>
            {
                eprintln!("sealpost: {e}")
            }
            Some(Err(e)) => break Err(e.into()),
        }
    };
    subscription.close().await?;
    result
}
