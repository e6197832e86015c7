//! The Sealpost client: publish and subscribe through a Sealpost broker with end-to-end sealed messages.
//!
//! A service loads its [`Identity`] (a TOML file naming the broker, its TLS certificate and its keys),
//! [`Client::connect`]s, and then makes [`Publisher`]s and [`Subscription`]s on topics:
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
//! let options = SubscribeOptions { from: StartAt::Earliest, durable: Some("audit".into()) };
//! let mut subscription = client.subscribe(topic, options).await?;
//! while let Some(item) = subscription.next().await {
//!     match item {
//!         Ok(message) => {
//!             println!("{} says {:?}", message.publisher, message.payload);
//!             subscription.ack(&message)?;
//!         }
//!         Err(e) if e.is_integrity() => eprintln!("{e}"), // a batch failed a check; nothing from it
//!         Err(e) => return Err(e),
//!     }
//! }
//! # Ok(())
//! # }
//! ```
//!
//! # What it guarantees
//!
//! - **Publishing.** Messages are sealed in this process (encrypted with the topic's content key, signed
//!   once per batch with the identity's signing key) before they leave it. A receipt means the broker
//!   stored the message durably. Across reconnections, unacknowledged batches are resent byte for byte,
//!   and the broker stores each once (see [`Publisher`]).
//! - **Subscribing.** A [`Message`] is yielded only if its batch's signature verified, the signer is a
//!   trusted publisher of the topic, it was sealed for this topic, every record authenticated, and it
//!   continues its publisher's chain. Messages come in offset order, each once, across reconnections. A
//!   batch that fails a check yields one error item and no message; a gap in a publisher's chain (batches
//!   withheld or deleted) yields an error item, then the batch's messages.
//! - **Transport.** QUIC with TLS 1.3 only, mutual authentication, the broker's certificate checked against
//!   the identity's CA file only, no 0-RTT.
//!
//! # What it does not do
//!
//! It does not hide who talks to whom, or when, from the broker; it cannot stop a broker from withholding
//! the newest batches (only from withholding older ones unnoticed); it never logs payloads or keys. Keys
//! come from the identity file for now: content keys held directly, and a list of trusted publisher keys.
//! Topic policies (content keys wrapped to the identity's HPKE key by a topic authority) will arrive
//! without changes to this API.
#![forbid(unsafe_code)]
#![deny(missing_docs)]

mod batcher;
mod connection;
mod error;
mod identity;
mod keyring;
mod message;
mod publisher;
mod reader;
mod stream;
mod subscription;
mod tls;

pub use connection::{Client, ClientOptions, Reconnect};
pub use error::{Action, Error, Result};
pub use identity::Identity;
pub use message::Message;
pub use publisher::{PublishFuture, Publisher, PublisherOptions, Receipt};
pub use subscription::{SubscribeOptions, Subscription};

/// The protocol crate, for the types of integrity errors ([`Error::Integrity`]) and keys.
pub use sealpost_protocol as protocol;
pub use sealpost_protocol::{ErrorCode, KeyId, PublicKey, StartAt, Timestamp, Topic};
