//! Principal names: who a client is, as its certificate names it and as topic policies list it.
//!
//! A principal name is 1 to 64 bytes of ASCII letters, digits, `.`, `_` and `-`. The rule is written once,
//! here ([`valid_principal`]), and a [`Principal`] can only be made through it: by [`Principal::new`],
//! [`FromStr`], [`TryFrom<String>`] or by deserializing, which validates too. So a bad name is refused where
//! it enters (the broker's reading of a client certificate, a policy's decoding, an identity file, the CLI)
//! and code that holds a `Principal` never checks again.
//!
//! A `Principal` serializes as the plain string, and the canonical encodings write its bytes as they are:
//! the type changes no byte on the wire or on disk.
//!
//! **Durable subscription names** follow the same rule (the broker checks them with [`valid_principal`])
//! but are not principals and get no type of their own: a subscriber picks one per subscription, it travels
//! in [`Frame::Subscribe`](crate::Frame::Subscribe) as a string, and the broker refuses a bad one with an
//! error answer to that request (a frame that fails to decode would end the stream instead).

use core::borrow::Borrow;
use core::fmt;
use core::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::{Error, Result};

/// Longest principal name, in bytes.
pub const MAX_PRINCIPAL_LEN: usize = 64;

/// Whether `name` is a valid principal name: 1 to 64 bytes of ASCII letters, digits, `.`, `_` and `-`
/// (the names the broker reads from client certificates). Durable subscription names follow it too.
pub fn valid_principal(name: &str) -> bool {
    check(name).is_ok()
}

fn check(name: &str) -> core::result::Result<(), &'static str> {
    if name.is_empty() {
        return Err("empty");
    }
    if name.len() > MAX_PRINCIPAL_LEN {
        return Err("longer than 64 bytes");
    }
    if !name.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-')) {
        return Err("a character other than A-Z a-z 0-9 . _ -");
    }
    Ok(())
}

/// A validated principal name.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Principal(String);

impl Principal {
    /// Validates `name` as a principal name; fails with [`Error::InvalidPrincipal`].
    pub fn new(name: impl Into<String>) -> Result<Self> {
        let name = name.into();
        check(&name).map_err(Error::InvalidPrincipal)?;
        Ok(Self(name))
    }

    /// The name as a string.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// The bare name; width and alignment apply as to a `str` (`{:8}` pads it).
impl fmt::Display for Principal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(&self.0)
    }
}

impl fmt::Debug for Principal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Principal({:?})", self.0)
    }
}

impl FromStr for Principal {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        Self::new(s)
    }
}

impl TryFrom<String> for Principal {
    type Error = Error;
    fn try_from(s: String) -> Result<Self> {
        Self::new(s)
    }
}

impl TryFrom<&str> for Principal {
    type Error = Error;
    fn try_from(s: &str) -> Result<Self> {
        Self::new(s)
    }
}

impl From<Principal> for String {
    fn from(p: Principal) -> String {
        p.0
    }
}

impl AsRef<str> for Principal {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

/// Hashes and compares as its `str`, so maps keyed by `Principal` can be looked up by `&str`.
impl Borrow<str> for Principal {
    fn borrow(&self) -> &str {
        &self.0
    }
}

impl PartialEq<str> for Principal {
    fn eq(&self, other: &str) -> bool {
        self.0 == other
    }
}

impl PartialEq<&str> for Principal {
    fn eq(&self, other: &&str) -> bool {
        self.0 == *other
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_of_1_to_64_letters_digits_dots_underscores_and_dashes_are_principals() {
        for ok in ["a", "alice", "svc.orders-eu_1", "A.B_C-9", &"x".repeat(64)] {
            assert!(valid_principal(ok), "{ok}");
            assert_eq!(Principal::new(ok).unwrap().as_str(), ok);
        }
    }

    #[test]
    fn other_names_are_refused_with_the_reason() {
        assert_eq!(Principal::new(""), Err(Error::InvalidPrincipal("empty")));
        assert_eq!(Principal::new("x".repeat(65)), Err(Error::InvalidPrincipal("longer than 64 bytes")));
        for bad in ["a b", "ä", "a/b", "a@b", "a:b", "*", ">", "a\0", "\u{202e}abc", " alice", "alice\n"] {
            assert!(!valid_principal(bad), "{bad:?}");
            assert_eq!(
                Principal::new(bad),
                Err(Error::InvalidPrincipal("a character other than A-Z a-z 0-9 . _ -")),
                "{bad:?}"
            );
        }
        // Length is counted in bytes: 32 two-byte characters are 64 bytes but not ASCII.
        assert!(!valid_principal(&"é".repeat(32)));
    }

    #[test]
    fn every_constructor_validates() {
        assert_eq!("alice".parse::<Principal>().unwrap(), "alice");
        assert!("a b".parse::<Principal>().is_err());
        assert_eq!(Principal::try_from(String::from("bob")).unwrap(), "bob");
        assert!(Principal::try_from(String::new()).is_err());
        assert!(Principal::try_from("a/b").is_err());
    }

    #[test]
    fn displays_as_the_bare_name_and_converts_back_to_the_string() {
        let p = Principal::new("svc.orders").unwrap();
        assert_eq!(p.to_string(), "svc.orders");
        assert_eq!(format!("[{p:12}] [{p:>12}]"), "[svc.orders  ] [  svc.orders]");
        assert_eq!(format!("{p:?}"), "Principal(\"svc.orders\")");
        assert_eq!(AsRef::<str>::as_ref(&p), "svc.orders");
        assert_eq!(String::from(p), "svc.orders");
    }

    #[test]
    fn a_map_keyed_by_principal_is_looked_up_by_str() {
        let mut m = std::collections::HashMap::new();
        m.insert(Principal::new("alice").unwrap(), 1);
        assert_eq!(m.get("alice"), Some(&1));
        assert_eq!(m.get("bob"), None);
    }

    #[test]
    fn orders_bytewise_like_the_policy_member_order() {
        let mut names: Vec<Principal> =
            ["b", "B", "a-1", "a.1", "a_1", "a"].iter().map(|n| n.parse().unwrap()).collect();
        names.sort();
        let mut strings: Vec<&str> = names.iter().map(Principal::as_str).collect();
        let sorted = strings.clone();
        strings.sort_by(|a, b| a.as_bytes().cmp(b.as_bytes()));
        assert_eq!(sorted, strings);
    }

    #[test]
    fn serializes_as_a_plain_string_and_validates_when_deserialized() {
        #[derive(Debug, PartialEq, Serialize, Deserialize)]
        struct File {
            principal: Principal,
        }
        let file = File { principal: Principal::new("alice").unwrap() };
        let text = toml::to_string(&file).unwrap();
        assert_eq!(text.trim(), "principal = \"alice\"");
        assert_eq!(toml::from_str::<File>(&text).unwrap(), file);
        for bad in ["", "a b", "a/b"] {
            let err = toml::from_str::<File>(&format!("principal = {bad:?}\n")).unwrap_err();
            assert!(err.to_string().contains("invalid principal name"), "{bad:?}: {err}");
        }
        // postcard writes the same bytes as for the String it wraps.
        let as_string = postcard::to_allocvec(&String::from("alice")).unwrap();
        assert_eq!(postcard::to_allocvec(&file.principal).unwrap(), as_string);
        assert_eq!(postcard::from_bytes::<Principal>(&as_string).unwrap(), "alice");
        let bad = postcard::to_allocvec(&String::from("a b")).unwrap();
        assert!(postcard::from_bytes::<Principal>(&bad).is_err());
    }
}
