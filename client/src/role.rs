//! [`Role`]: what a member of a topic's policy may do. Its own file because both the authority (which
//! grants roles) and the error type (which names a role already held) use it.

use std::fmt;

/// A role a member of a topic's policy can hold.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Role {
    /// May publish on the topic (its signing key is trusted for the topic's batches).
    Publish,
    /// May subscribe to the topic (the content key is wrapped to its HPKE key).
    Subscribe,
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Role::Publish => "publish",
            Role::Subscribe => "subscribe",
        })
    }
}
