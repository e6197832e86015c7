//! The Sealpost client: publish and subscribe through a Sealpost broker with end-to-end sealed messages.
//!
//! A service loads its [`Identity`] (a TOML file naming the broker, its TLS certificate, its keys and the
//! topic authority it trusts), [`Client::connect`]s, and then makes [`Publisher`]s and [`Subscription`]s on
//! topics:
//!
//! ```no_run
//! use futures_util::StreamExt;
//! use sealpost_client::{Client, Identity, PublisherOptions, StartAt, SubscribeOptions, Topic};
//!
//! # async fn example() -> Result<(), sealpost_client::Error> {
//! let identity = Identity::load("alice.toml")?;
//! let client = Client::connect(&identity).await?;
//! let topic: Topic = "demo.chat".parse()?;
//!
//! let publisher = client.publisher(topic.clone(), PublisherOptions::default()).await?;
//! let receipt = publisher.publish("hello").await?; // resolves once the broker stored it durably
//! println!("stored at offset {}", receipt.offset);
//! publisher.close().await?;
//!
//! let options = SubscribeOptions { from: StartAt::Earliest, durable: Some("audit".into()), shared: false };
//! let mut subscription = client.subscribe(topic, options).await?;
//! while let Some(item) = subscription.next().await {
//!     match item {
//!         Ok(message) => {
//!             println!("{} says {:?}", message.publisher, message.payload);
//!             subscription.ack(&message)?;
//!         }
//!         // a batch failed a check (nothing from it is yielded), or the broker lost stored messages
//!         Err(e) if e.is_integrity() => eprintln!("{e}"),
//!         // the broker dropped batches of a chain this subscription had verified
//!         Err(e @ sealpost_client::Error::RolledBack { .. }) => eprintln!("{e}"),
//!         // the subscription has ended
//!         Err(e) => return Err(e),
//!     }
//! }
//! # Ok(())
//! # }
//! ```
//!
//! [`Client`] says what happens when the connection is lost and which errors are final, [`Publisher`]
//! how its window ([`PublisherOptions::max_in_flight`]) and its receipts give backpressure, and
//! [`Subscription`] which items it yields and which of them end it. `client/examples/service.rs` is a
//! small service that puts it together: `cargo run -p sealpost-client --example service -- IDENTITY`,
//! against the broker's `dev` mode and one of its identities.
//!
//! # Topic policies
//!
//! Who may publish on a topic and read it, and the topic's content key, come from the topic's **policies**:
//! one per epoch, signed by the topic authority whose public key the identity pins (`authority`), each with
//! a fresh content key wrapped (HPKE) to every member. The broker stores them; the client fetches them,
//! verifies them against the pinned key and keeps them for the life of the [`Client`], and the newest of
//! each topic in the identity's **state folder** ([`state`]: `<identity stem>.state/` by default), so the
//! broker can neither forge one nor roll a client back to an older one, in this process or a later one
//! (see [`Error::Policy`]). The topic authority
//! (an identity holding `authority_key`) makes new ones with the [`authority`] module (create, grant,
//! revoke: a new epoch whose key the removed member cannot unwrap, rotate) and stores them with
//! [`Client::store_policy`]; the `sealpost topic` commands do the same for people.
//!
//! # What it guarantees
//!
//! - **Publishing.** Messages are sealed in this process (encrypted with the content key of the topic's
//!   current epoch, signed once per batch with the identity's signing key) before they leave it, and only
//!   if the current policy lists this identity as a publisher. A receipt means the broker stored the
//!   message durably. Across reconnections, unacknowledged batches are resent byte for byte, and the broker
//!   stores each once (see [`Publisher`]). Publishers move to a new epoch within
//!   [`ClientOptions::policy_refresh`] of a rotation. With a state folder, a publisher continues the chain
//!   a previous process of the identity acknowledged (one live publisher per chain), and a broker whose
//!   head of that chain is behind what was acknowledged is an [`Error::RolledBack`], not continued.
//!   [`Publisher::publish_with`] attaches user [`Headers`] to a message: they are sealed inside its record
//!   with the payload, so they are as confidential and authentic as the payload ([`Message::headers`]).
//! - **Subscribing.** A [`Message`] is yielded only if its batch's signature verified, the signer is a
//!   publisher in the topic policy of the batch's epoch, that epoch is the current one or the batch was
//!   sealed while it was (its `created_at` before the next epoch's policy, plus
//!   [`ClientOptions::rotation_grace`]) and, if its signer was revoked since, before the revocation (older
//!   policies are fetched and their chain checked when needed), it was sealed for this topic, every record
//!   authenticated, and it continues its publisher's chain. Messages come in offset order, each once,
//!   across reconnections. A batch that fails a check yields one error item and no message; a gap in a
//!   publisher's chain (batches withheld or deleted) yields an error item, then the batch's messages. A
//!   plain subscription from [`StartAt::Earliest`] checks every chain from its first batch, so a deleted
//!   prefix of the log is reported too.
//! - **Transport.** QUIC with TLS 1.3 only, mutual authentication, the broker's certificate checked against
//!   the identity's CA file only, no 0-RTT.
//!
//! # What it does not do
//!
//! It does not hide who talks to whom, or when, from the broker, nor the members of a topic's policy; it
//! cannot stop a broker from withholding the newest batches (only from withholding older ones unnoticed),
//! nor from withholding a newer policy (the client goes on with the newest it has seen; a new `Client`
//! without a state folder, [`StateLocation::Off`], trusts the first authority-signed policies it is served);
//! without a state folder, a publisher's new process starts a fresh chain and cannot tell a broker that
//! dropped the previous process's acknowledged tail (with one it continues that chain and reports it:
//! [`Error::RolledBack`]); and without one it does not detect a range skipped before the committed offset
//! a durable subscription resumes from (the broker holds that offset). A batch sealed
//! under an epoch whose policy the broker no longer serves (two rotations ago) cannot be read. It never
//! logs payloads, header values or keys.
//!
//! # How it is built
//!
//! Each file owns one job, and imports only files below it:
//!
//! ```text
//! client          the facade: connect, publisher, subscribe, policies, store_policy
//! authority       create / grant / revoke / rotate: a topic's next policy (sans-IO)
//! publish/        Publisher (mod), its task (task), the sans-IO pipeline (pipeline: window, resend,
//!                 receipts, refusals) and the batcher
//! subscribe/      Subscription (mod), its task (task), the sans-IO reader (reader: open, authorize, chain)
//! policies        fetching a topic's policies into the keyring; storing one
//! shared          what a client's publishers and subscriptions share
//! reconnect       the one reconnect loop (backoff from backoff, what reconnecting cures)
//! link/           the QUIC connection (connector), frame streams (stream), transport errors (error_map)
//! keyring         verified policies and the content keys unwrapped from them
//! state           the state folder: crash-safe, checked files of what must outlive the process
//! tls, identity, options, clock, message, role, error
//! ```
#![forbid(unsafe_code)]
#![deny(missing_docs)]

mod admin;
pub mod authority;
mod backoff;
mod client;
mod clock;
mod error;
mod head;
mod identity;
mod keyring;
mod link;
mod message;
mod options;
mod policies;
mod publish;
mod reconnect;
mod role;
mod shared;
pub mod state;
mod subscribe;
mod tls;

pub use client::Client;
pub use error::{Action, Error, Result};
pub use identity::Identity;
pub use link::ConnectionState;
pub use message::Message;
pub use options::{ClientOptions, PublisherOptions, Reconnect, RetryBudget, SubscribeOptions};
pub use publish::{PublishFuture, Publisher, Receipt, Unacknowledged};
pub use state::{StateFault, StateFolder, StateLocation};
pub use subscribe::Subscription;

/// The protocol crate, for keys and topic policies ([`issue_policy`](sealpost_protocol::issue_policy),
/// [`VerifiedPolicy`]); its error type is re-exported as [`ProtocolError`].
pub use sealpost_protocol as protocol;
/// The protocol crate's error type, under a name of its own: the failed check of an [`Error::Integrity`]
/// item (for example [`ProtocolError::Gap`]) or of an [`Error::Policy`], and the cause of an
/// [`Error::Protocol`]. Match on it to tell which check failed; it is `#[non_exhaustive]`.
pub use sealpost_protocol::Error as ProtocolError;
pub use sealpost_protocol::{
    ErrorCode, HeaderName, Headers, KeyId, Offset, Principal, PublicKey, StartAt, Timestamp, Topic,
    VerifiedPolicy,
};
