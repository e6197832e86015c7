//! Topic policies: who may publish on and read a topic in one epoch, and that epoch's content key, signed by
//! the topic authority.
//!
//! The **topic authority** is an ed25519 key that every client pins (see
//! [`IdentityFile::authority`](crate::identity::IdentityFile::authority)). It is not the broker's key and not
//! the TLS CA: a broker host that holds both still cannot make a client accept a member list or a content
//! key that the authority did not sign. The broker stores policies and serves them, but it cannot open the
//! content keys in them.
//!
//! # The parts, one file each
//!
//! - [`Member`] (`member.rs`): one member of a policy, its roles and its public keys.
//! - `codec.rs`: the canonical encoding (version 1), byte by byte, and the digest and signature over it. A
//!   policy has one encoding and one digest: [`SignedPolicy::decode`] accepts exactly the bytes
//!   [`issue_policy`] produces.
//! - `wrap.rs`: an epoch's content key wrapped to one member with HPKE (RFC 9180), so that it opens only for
//!   that member, topic and epoch.
//! - [`SignedPolicy`] -> [`VerifiedPolicy`] (`signed.rs`): parsed but not trusted, then checked against the
//!   pinned authority key; only the check (or [`issue_policy`]) can make a `VerifiedPolicy`.
//! - [`issue_policy`] (`issue.rs`): what the authority runs to make a topic's next policy.
//! - [`PolicyBook`] (`book.rs`): the verified policies of one topic, admitted in order: `prev_digest` chains
//!   them, and the book refuses an older epoch ([`Error::PolicyRollback`](crate::Error::PolicyRollback)) and
//!   reports two policies for one epoch ([`Error::PolicyFork`](crate::Error::PolicyFork)); older epochs
//!   enter by walking the history back ([`PolicyBook::admit_history`]), each link checked
//!   ([`Error::PolicyLinkBroken`](crate::Error::PolicyLinkBroken)).
//! - [`EpochKeys`] (`epoch_keys.rs`): the content keys one member unwrapped, by epoch, for
//!   [`open`](crate::open).
//!
//! The byte layout is also written up in `docs/architecture.md`; the golden vectors in
//! `protocol/tests/vectors/` make any change to it visible.
//!
//! # What a policy does not do
//!
//! It does not prove freshness: a broker can withhold a newer policy, and a client that never saw it keeps
//! trusting the newest one it has (a [`PolicyBook`] lives in memory; persist its policies to keep rollback
//! protection across restarts). It does not hide the member list, roles, public keys or timestamps from the
//! broker, only the content key. It does not decide who may connect: the broker's ACL does that.

mod book;
mod codec;
mod epoch_keys;
mod issue;
mod member;
mod signed;
mod wrap;

#[cfg(test)]
mod fixtures;

pub use book::PolicyBook;
pub use codec::POLICY_VERSION;
pub use epoch_keys::EpochKeys;
pub use issue::{issue_policy, PolicyParams};
pub use member::Member;
pub use signed::{SignedPolicy, VerifiedPolicy};
pub use wrap::{ENC_LEN, WRAPPED_LEN};

/// The principal-name rule, at its former path: it lives in [`principal`](crate::principal).
pub use crate::principal::{valid_principal, MAX_PRINCIPAL_LEN};
