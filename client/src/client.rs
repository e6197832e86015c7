//! The [`Client`]: the facade a service holds. It connects, makes [`Publisher`]s and [`Subscription`]s, and
//! reads and stores topic policies.
//!
//! A [`Client`] holds one QUIC connection, shared by all its publishers and subscriptions; each of those
//! opens its own stream on it and reconnects on its own after a loss (see `link/` and `reconnect.rs`).
//! [`Client::connect`] retries an unreachable broker within the reconnect budget; a wrong certificate or
//! identity fails at once. Starting a publisher or a subscription on a connected client retries transient
//! losses like any outage.
//!
//! A client also keeps, for its whole life, the topic policies it has fetched and verified, and the content
//! keys it unwrapped from them (see `keyring.rs`): all its publishers and subscriptions share them, so the
//! broker cannot roll one of them back to a policy older than one another has seen.

use std::sync::Arc;

use sealpost_protocol::{ErrorCode, Topic, VerifiedPolicy};

use crate::authority;
use crate::error::{Error, Result};
use crate::identity::Identity;
use crate::link::ConnectionState;
use crate::options::{ClientOptions, PublisherOptions, SubscribeOptions};
use crate::policies;
use crate::publish::{Publisher, Receipt};
use crate::shared::Shared;
use crate::subscribe::Subscription;

/// A connection to the broker, shared by the publishers and subscriptions made from it.
///
/// Cheap to clone: clones share the connection and the topic policies the client has verified.
/// Publishers and subscriptions keep the connection alive while they exist, and reconnect on their own
/// after it is lost.
///
/// ```no_run
/// use std::time::Duration;
/// use sealpost_client::{
///     Client, ClientOptions, Identity, PublisherOptions, Reconnect, RetryBudget, SubscribeOptions,
/// };
///
/// # async fn example() -> sealpost_client::Result<()> {
/// let identity = Identity::load("alice.toml")?;
/// // After a loss, wait 50 ms before the first retry, never more than 30 s between retries, and never
/// // give up (the default gives up an outage after 2 minutes).
/// let mut options = ClientOptions::from_identity(&identity); // as `Client::connect` does
/// options.reconnect = Reconnect {
///     initial_delay: Duration::from_millis(50),
///     max_delay: Duration::from_secs(30),
///     budget: RetryBudget::Unlimited,
/// };
/// let client = Client::connect_with(&identity, options).await?;
///
/// let topic: sealpost_client::Topic = "demo.events".parse()?;
/// let subscription = client.subscribe(topic.clone(), SubscribeOptions::default()).await?;
/// let publisher = client.publisher(topic, PublisherOptions::default()).await?;
/// publisher.publish("hello").await?;
///
/// // Close what was made from the client first, then the client.
/// publisher.close().await?;
/// subscription.close().await?;
/// client.close().await;
/// # Ok(())
/// # }
/// ```
///
/// # Reconnection
///
/// A client holds one QUIC connection to the broker. [`connect`](Self::connect) retries an unreachable
/// broker within [`Reconnect::budget`](crate::Reconnect::budget); an untrusted broker certificate or a
/// refused identity certificate fail at once. After that a
/// lost connection reaches the application only if reconnecting fails: each publisher and subscription
/// notices the loss on its own stream and reconnects on its own (the first to need the connection dials it again, the
/// others share it), waiting before each attempt as [`ClientOptions::reconnect`] says, and carries on
/// where it was (see [`Publisher`] and [`Subscription`]). Starting a publisher or a subscription, and
/// [`policies`](Self::policies), retry the same way; [`put_policy`](Self::put_policy) and
/// [`admin`](Self::admin) make one attempt.
///
/// Reconnecting cures three errors only: [`Error::Unreachable`], [`Error::ConnectionLost`], and
/// [`Error::Refused`] with [`ErrorCode::UNAVAILABLE`](crate::ErrorCode::UNAVAILABLE) (the broker shutting
/// down or unable to serve). No other error is retried: it is returned at once, or ends the publisher or
/// subscription that met it (a refusal with another code, [`Error::BrokerNotTrusted`],
/// [`Error::CertificateRejected`], [`Error::CertificateRevoked`], [`Error::ProtocolViolation`],
/// [`Error::Closed`], ...), except the integrity and loss items a subscription yields and goes on after
/// (see [`Subscription`]). A curable error becomes final too once the outage's
/// [`RetryBudget`](crate::RetryBudget) is spent (a number of retries, a duration, default 2 minutes, or
/// never): the last one is returned. An outage ends, and the next loss starts the schedule and the budget
/// over, when the broker accepts or delivers a batch, or when a stream that had stayed up for 10 s is lost.
/// [`connection_state`](Self::connection_state) tells the application when the connection ends and when
/// it is back.
#[derive(Clone)]
pub struct Client {
    shared: Arc<Shared>,
}

impl Client {
    /// Connects to the broker named by `identity` with the default [`ClientOptions`], but the
    /// identity file's `rotation_grace_secs` if it sets one.
    pub async fn connect(identity: &Identity) -> Result<Client> {
        Self::connect_with(identity, ClientOptions::from_identity(identity)).await
    }

    /// Connects to the broker named by `identity`: resolves its address, binds a UDP socket of the same
    /// address family, and completes the QUIC and TLS handshakes, each attempt within
    /// `options.connect_timeout`. An unreachable broker is tried again with backoff within
    /// `options.reconnect` ([`Reconnect`](crate::Reconnect): by default for up to 2 minutes); a failure
    /// retrying cannot cure (an untrusted broker, a refused certificate, a bad identity) is returned at once.
    pub async fn connect_with(identity: &Identity, options: ClientOptions) -> Result<Client> {
        let shared = Shared::connect(identity, options).await?;
        Ok(Client { shared: Arc::new(shared) })
    }

    /// What the connection to the broker is doing: [`ConnectionState::Connected`] after `connect`, then
    /// each change as it happens (a loss is told when the connection ends, before any publisher or
    /// subscription finds out; a successful reconnect when it dials). Await `changed()` on the receiver to
    /// follow it; it ends at [`ConnectionState::Closed`].
    pub fn connection_state(&self) -> tokio::sync::watch::Receiver<ConnectionState> {
        self.shared.connector.state()
    }

    /// Starts a publisher on `topic`: fetches the topic's policies, asks the broker where this identity's
    /// chain on the topic stands, and checks that the current policy lists this identity as a publisher and
    /// wraps a content key for it.
    ///
    /// Fails with [`Error::Refused`] if the broker does not let this identity publish there, with
    /// [`Error::NoPolicy`], [`Error::NotAPublisher`] or [`Error::NoContentKey`] if the topic's current
    /// policy does not let it, with [`Error::Policy`] if the broker serves policies that fail a check, and,
    /// when it continues a chain a previous process of this identity acknowledged (with the state folder),
    /// with [`Error::RolledBack`] if the broker holds less of that chain. Transient losses while it starts
    /// are retried like any outage (see [reconnection](Self#reconnection)).
    pub async fn publisher(&self, topic: Topic, options: PublisherOptions) -> Result<Publisher> {
        Publisher::start(self.shared.clone(), topic, options).await
    }

    /// Sends sealed `batches` of `topic` again, unchanged and in order (those a publisher that gave up
    /// handed back: [`Publisher::take_unacknowledged`]), and returns a [`Receipt`] per message. A batch the
    /// broker stored already is answered with its original offsets and not stored twice, so resending never
    /// duplicates, and a loss is retried from the start within the retry budget. Fails with
    /// [`Error::Refused`] if the broker refuses a batch (for example one that does not continue its chain:
    /// resend a publisher's batches before a new publisher continues its chain), and with
    /// [`Error::Protocol`] or [`Error::InvalidOptions`] for bytes that are not a sealed batch of `topic`.
    pub async fn resend(&self, topic: &Topic, batches: &[bytes::Bytes]) -> Result<Vec<Receipt>> {
        crate::publish::resend(&self.shared, topic, batches).await
    }

    /// Subscribes to `topic`. Fails with [`Error::Refused`] if the broker does not let this identity
    /// subscribe there (or, when the broker refuses with `NOT_AUTHORIZED` and the topic's policies can be
    /// read, with what the current policy lacks: [`Error::NoPolicy`], [`Error::NotASubscriber`] or
    /// [`Error::NoContentKey`]), with [`Error::NoPolicy`] or [`Error::NoContentKey`] if no policy of the
    /// topic wraps a content key for this identity (it could not open any message), and with
    /// [`Error::Policy`] if the broker serves policies that fail a check. Transient losses while it starts
    /// are retried like any outage (see [reconnection](Self#reconnection)).
    pub async fn subscribe(&self, topic: Topic, options: SubscribeOptions) -> Result<Subscription> {
        Subscription::start(self.shared.clone(), topic, options).await
    }

    /// The policies of `topic` as the broker stores them, oldest epoch first (at most the previous and the
    /// current epoch's; none if the topic has no policy), each verified against the identity's pinned
    /// topic authority and admitted into this client's book of the topic (so that the broker cannot roll it
    /// back later).
    ///
    /// Any principal that may publish, subscribe or administer the topic may read them; others get
    /// [`Error::Refused`] with [`ErrorCode::NOT_AUTHORIZED`](crate::ErrorCode::NOT_AUTHORIZED). A policy
    /// that fails verification, or rolls back or forks what this client has seen, is an [`Error::Policy`].
    /// Transient losses are retried like any outage.
    pub async fn policies(&self, topic: &Topic) -> Result<Vec<VerifiedPolicy>> {
        policies::read(&self.shared, topic).await
    }

    /// Asks the broker an administrative query: its totals, or a page of its topics, durable subscriptions
    /// or connections (`sealpost_protocol::admin`; a page holds at most
    /// [`ADMIN_PAGE`](sealpost_protocol::ADMIN_PAGE) rows, ask the next one `after` the last row's key
    /// while `more` says so). Fails with [`Error::AdminRefused`] if the broker's ACL does not grant this
    /// principal `admin` on every topic. The answers are the broker's word, for operating it. One attempt.
    pub async fn admin(
        &self,
        query: sealpost_protocol::AdminQuery,
    ) -> Result<sealpost_protocol::AdminAnswer> {
        crate::admin::ask(&self.shared, query).await
    }

    /// Stores `policy` on the broker as the new policy of its topic; resolves once the broker holds it
    /// durably. Publishers and subscriptions of every client move to it when they next fetch the topic's
    /// policies (see [`ClientOptions::policy_refresh`]).
    ///
    /// Make `policy` with an [`Authority`](crate::authority::Authority) (or with
    /// [`issue_policy`](sealpost_protocol::issue_policy), signed with the authority's key
    /// ([`Identity::authority_key`]), of epoch 1 for a topic without policy, else chained to the current
    /// policy (from [`policies`](Self::policies)) with the next epoch and a fresh content key).
    /// [`store_policy`](Self::store_policy) does the same and tells the two reasons for `POLICY_REJECTED`
    /// apart.
    ///
    /// Fails with [`Error::Policy`] if `policy` is not signed by this identity's pinned authority (nothing
    /// is sent), and with [`Error::Refused`] if the broker refuses it: with
    /// [`ErrorCode::NOT_AUTHORIZED`](crate::ErrorCode::NOT_AUTHORIZED) if the ACL does not give this
    /// identity the `admin` action on the topic, with
    /// [`ErrorCode::POLICY_REJECTED`](crate::ErrorCode::POLICY_REJECTED) if the broker is configured with
    /// another authority or its epoch is not the one after the broker's current policy (someone else changed
    /// the policy meanwhile: fetch it again and redo the change). One attempt: it is not retried.
    pub async fn put_policy(&self, policy: &VerifiedPolicy) -> Result<()> {
        policies::store(&self.shared, policy).await
    }

    /// Stores `next`, a topic's next policy made by an [`Authority`](crate::authority::Authority) from the
    /// topic's current policy, like [`put_policy`](Self::put_policy), but says why the broker refused it
    /// with `POLICY_REJECTED`: [`Error::StalePolicy`] if the topic's policy changed since the one `next` was
    /// made from (fetch the policies again and redo the change), [`Error::AuthorityRejected`] if it did not
    /// (the broker is configured with another topic authority). To tell, it fetches the topic's policies
    /// once more after the refusal.
    pub async fn store_policy(&self, next: &VerifiedPolicy) -> Result<()> {
        match self.put_policy(next).await {
            Err(Error::Refused { code: ErrorCode::POLICY_REJECTED, .. }) => {
                let current = self.policies(next.topic()).await.ok().and_then(|mut p| p.pop());
                Err(authority::rejection(next, current.as_ref().map(VerifiedPolicy::epoch)))
            }
            result => result,
        }
    }

    /// The identity this client connects as.
    pub fn identity(&self) -> &Identity {
        &self.shared.identity
    }

    /// Closes the connection, for every clone of this client: publishers and subscriptions still open fail
    /// with [`Error::Closed`] and do not reconnect. Close them first ([`Publisher::close`],
    /// [`Subscription::close`]) to wait for what they have outstanding. Waits up to 2 s for the broker to
    /// acknowledge the close.
    pub async fn close(&self) {
        self.shared.connector.close().await;
    }
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("principal", &self.shared.identity.principal())
            .field("broker", &self.shared.connector.addr())
            .finish_non_exhaustive()
    }
}
