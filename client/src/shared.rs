//! What a client's publishers and subscriptions share: its identity and options, the protocol limits, the
//! connection to the broker, and the topic policies and keys it has admitted (seeded from, and persisted
//! to, its state folder).
//!
//! One [`Shared`] per [`Client`](crate::Client), behind an `Arc`; it lives as long as the client or any
//! publisher or subscription made from it. Sharing the key source is what makes the no-rollback guarantee
//! hold across all of them (see `keyring.rs`).

use sealpost_protocol::Limits;

use crate::error::Result;
use crate::identity::Identity;
use crate::keyring::KeySource;
use crate::link::{Connector, Link};
use crate::options::ClientOptions;
use crate::state::{StateFolder, StateLocation};

/// What a client's publishers and subscriptions share.
pub(crate) struct Shared {
    pub(crate) identity: Identity,
    pub(crate) options: ClientOptions,
    pub(crate) limits: Limits,
    pub(crate) connector: Connector,
    pub(crate) keys: KeySource,
}

impl Shared {
    /// Opens the state folder `options` name (creating it if missing), connects to the broker named by
    /// `identity` (one attempt) and starts with no policies in memory (each topic's book is seeded from the
    /// state folder when the topic is first used).
    pub(crate) async fn connect(identity: &Identity, options: ClientOptions) -> Result<Shared> {
        let limits = Limits::default();
        let state = match &options.state {
            StateLocation::Identity => Some(StateFolder::open(identity.state_folder())?),
            StateLocation::Folder(dir) => Some(StateFolder::open(dir.clone())?),
            StateLocation::Off => None,
        };
        let connector = Connector::connect(identity, &options, limits.max_frame_len).await?;
        let keys = KeySource::new(
            identity.principal().clone(),
            identity.inner().hpke.clone(),
            identity.authority(),
            limits,
            state,
        );
        Ok(Shared { identity: identity.clone(), options, limits, connector, keys })
    }

    /// A fresh request id, unique on this client's connections.
    pub(crate) fn request_id(&self) -> u64 {
        self.connector.request_id()
    }

    /// Opens a frame stream on the current connection (dialing one if it is down). One attempt.
    pub(crate) async fn open_link(&self) -> Result<Link> {
        Link::open(&self.connector).await
    }
}
