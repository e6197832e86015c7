//! `sealpost topic ...`: the topic authority's commands, and `topic show` for anyone who may read a topic's
//! policies.
//!
//! Every change makes the topic's next policy: the current one's epoch plus one (epoch 1 for `create`),
//! chained to it, created now, with a **fresh random content key** wrapped to every member, signed with the
//! authority key of the identity (`authority_key`), and stored on the broker with `PutPolicy`. The broker
//! accepts it only as the epoch right after its current one, so two administrators changing one topic at
//! once cannot both win: the second is told to run the command again.
//!
//! Members' public keys come from a folder (`--members DIR`, by default the folder of the administrator's
//! identity file): `DIR/NAME.pub.toml` (`principal`, `signing_key` and `hpke_key`, public keys in hex, as
//! `sealpost keygen --out` writes them) if it exists, else `DIR/NAME.toml`, an identity file (or a file
//! written by `sealpost keygen`) whose secret keys the public ones are derived from: in dev mode every
//! identity lives in one folder. A member already in the policy keeps the keys the policy lists for it.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context as _};
use sealpost_client::authority::{Authority, MemberKeys, Role};
use sealpost_client::protocol::principal::valid_principal;
use sealpost_client::protocol::{
    HpkePublicKey, HpkeSecretKey, Member, PublicKey, SigningKey, VerifiedPolicy,
};
use sealpost_client::{Client, Error, Identity, Principal, Timestamp, Topic};
use zeroize::Zeroize as _;

/// What a command changes in a topic's policy.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Change {
    /// The first policy, with these members (a name in both lists gets both roles).
    Create { publishers: Vec<String>, subscribers: Vec<String> },
    /// Adds a member with a role, or a role to a member.
    Grant { name: String, role: Role },
    /// Removes a member.
    Revoke { name: String },
    /// The same members, a new key.
    Rotate,
}

/// The folder members' public keys are read from.
pub(crate) struct Members {
    dir: PathBuf,
}

/// `NAME.pub.toml`: a principal's public keys.
#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct PublicFile {
    principal: String,
    signing_key: PublicKey,
    hpke_key: String,
}

/// The parts of an identity file (or of a file `sealpost keygen` wrote) that hold the secret keys.
#[derive(serde::Deserialize)]
struct SecretFile {
    principal: Option<String>,
    signing_key: String,
    hpke_key: String,
}

impl Drop for SecretFile {
    fn drop(&mut self) {
        self.signing_key.zeroize();
        self.hpke_key.zeroize();
    }
}

fn hex32(text: &str) -> Option<[u8; 32]> {
    let mut out = [0u8; 32];
    hex::decode_to_slice(text.trim(), &mut out).ok().map(|()| out)
}

impl Members {
    pub(crate) fn new(dir: impl Into<PathBuf>) -> Self {
        Self { dir: dir.into() }
    }

    /// The public keys of `name`: from `DIR/NAME.pub.toml` if it exists, else derived from the secret
    /// keys in `DIR/NAME.toml`.
    pub(crate) fn keys(&self, name: &str) -> anyhow::Result<(PublicKey, HpkePublicKey)> {
        principal(name)?;
        let public = self.dir.join(format!("{name}.pub.toml"));
        let secret = self.dir.join(format!("{name}.toml"));
        if public.exists() {
            let text = read(&public)?;
            let file: PublicFile = toml::from_str(&text)
                .map_err(|e| anyhow::anyhow!("{}: {}", public.display(), e.message()))?;
            if file.principal != name {
                bail!("{}: names principal {:?}, not {name:?}", public.display(), file.principal);
            }
            let hpke = hex32(&file.hpke_key)
                .with_context(|| format!("{}: field `hpke_key`: expected 64 hex digits", public.display()))?;
            Ok((file.signing_key, HpkePublicKey(hpke)))
        } else if secret.exists() {
            let text = zeroize::Zeroizing::new(read(&secret)?);
            // Only the message: the full error quotes the line, which may hold a secret.
            let file: SecretFile = toml::from_str(&text)
                .map_err(|e| anyhow::anyhow!("{}: {}", secret.display(), e.message()))?;
            if let Some(principal) = file.principal.as_deref().filter(|p| *p != name) {
                bail!("{}: names principal {principal:?}, not {name:?}", secret.display());
            }
            let mut signing = hex32(&file.signing_key).with_context(|| {
                format!("{}: field `signing_key`: expected 64 hex digits", secret.display())
            })?;
            let mut hpke = hex32(&file.hpke_key)
                .with_context(|| format!("{}: field `hpke_key`: expected 64 hex digits", secret.display()))?;
            let keys = (
                SigningKey::from_bytes(&signing).public_key(),
                HpkeSecretKey::from_bytes(&hpke).public_key(),
            );
            signing.zeroize();
            hpke.zeroize();
            Ok(keys)
        } else {
            bail!(
                "unknown member {name}: neither {} nor {} exists (pass --members DIR, or make its keys with \
                 sealpost keygen --out DIR/{name}.toml)",
                public.display(),
                secret.display()
            )
        }
    }

    fn member(&self, name: &str, publish: bool, subscribe: bool) -> anyhow::Result<Member> {
        let (signing_key, hpke_key) = self.keys(name)?;
        Ok(Member { principal: principal(name)?, publish, subscribe, signing_key, hpke_key })
    }
}

/// `name` as a principal, or the one line that says why it is none.
fn principal(name: &str) -> anyhow::Result<Principal> {
    if !valid_principal(name) {
        bail!("{name:?} is not a principal name (1 to 64 of A-Z a-z 0-9 . _ -)");
    }
    Ok(name.parse()?)
}

fn read(path: &Path) -> anyhow::Result<String> {
    std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))
}

/// `topic`'s next policy after `change`, given its `current` policy, made by `authority` at `now`. Members'
/// keys are read from `members` only for principals the policy does not list yet (and not at all for a
/// topic that has a policy already, which `create` refuses).
pub(crate) fn next_policy(
    authority: &Authority<'_>,
    topic: &Topic,
    current: Option<&VerifiedPolicy>,
    change: &Change,
    members: &Members,
    now: Timestamp,
) -> anyhow::Result<VerifiedPolicy> {
    let next = match change {
        Change::Create { publishers, subscribers } => {
            let mut listed = Vec::new();
            if current.is_none() {
                if publishers.is_empty() && subscribers.is_empty() {
                    bail!("name at least one member with --publisher NAME or --subscriber NAME");
                }
                let mut names: Vec<&String> = publishers.iter().chain(subscribers).collect();
                names.sort();
                names.dedup();
                for name in names {
                    listed.push(members.member(
                        name,
                        publishers.contains(name),
                        subscribers.contains(name),
                    )?);
                }
            }
            authority.create(topic, current, listed, now)
        }
        Change::Grant { name, role } => {
            let who = principal(name)?;
            let keys = match current {
                Some(policy) if policy.member(&who).is_none() => {
                    let (signing_key, hpke_key) = members.keys(name)?;
                    Some(MemberKeys { signing_key, hpke_key })
                }
                _ => None,
            };
            authority.grant(topic, current, &who, *role, keys, now)
        }
        Change::Revoke { name } => authority.revoke(topic, current, &principal(name)?, now),
        Change::Rotate => authority.rotate(topic, current, now),
    };
    next.map_err(|e| match e {
        Error::Protocol(_) => anyhow::Error::new(e).context(format!("cannot make the policy of {topic}")),
        e => e.into(),
    })
}

/// Runs a change: fetches the current policy, makes the next one and stores it on the broker.
pub(crate) async fn change(
    client: &Client,
    identity: &Identity,
    topic: &Topic,
    change: &Change,
    members: &Members,
) -> anyhow::Result<()> {
    let authority = Authority::of(identity)?;
    let current = client.policies(topic).await?.pop();
    let policy = next_policy(&authority, topic, current.as_ref(), change, members, now())?;
    match client.store_policy(&policy).await {
        Ok(()) => {}
        Err(Error::StalePolicy { .. }) => {
            bail!("the policy of {topic} changed meanwhile (stale epoch): run the command again")
        }
        Err(e) => return Err(e.into()),
    }
    println!("{topic}: epoch {} stored", policy.epoch());
    print_members(&policy);
    Ok(())
}

/// `topic show`: the current policy.
pub(crate) async fn show(client: &Client, topic: &Topic) -> anyhow::Result<()> {
    let policies = client.policies(topic).await?;
    let Some(current) = policies.last() else {
        println!("{topic} has no policy yet");
        return Ok(());
    };
    println!(
        "{topic}: epoch {}, created {} by authority {}",
        current.epoch(),
        utc(current.created_at()),
        current.authority().key_id()
    );
    print_members(current);
    Ok(())
}

fn print_members(policy: &VerifiedPolicy) {
    if policy.members().is_empty() {
        println!("  no members: nobody may publish or read");
    }
    let width = policy.members().iter().map(|m| m.principal.as_str().len()).max().unwrap_or(0);
    for m in policy.members() {
        let roles = match (m.publish, m.subscribe) {
            (true, true) => "publish,subscribe",
            (true, false) => "publish",
            _ => "subscribe",
        };
        println!(
            "  {:width$}  {roles:17}  signing key {}  hpke key {}",
            m.principal,
            m.signing_key.key_id(),
            hex::encode(&m.hpke_key.0[..8]),
        );
    }
}

fn now() -> Timestamp {
    let millis = std::time::SystemTime::now()
        .duration_since(std::time::SystemTime::UNIX_EPOCH)
        .map(|d| d.as_millis())
        .unwrap_or(0);
    Timestamp(u64::try_from(millis).unwrap_or(u64::MAX))
}

/// `t` as `YYYY-MM-DD HH:MM:SS UTC`.
pub(crate) fn utc(t: Timestamp) -> String {
    let secs = t.as_millis() / 1000;
    let (days, rem) = (secs / 86_400, secs % 86_400);
    // Howard Hinnant's civil_from_days, for days since 1970-01-01 (never negative here).
    let z = days + 719_468;
    let era = z / 146_097;
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + u64::from(month <= 2);
    format!("{year:04}-{month:02}-{day:02} {:02}:{:02}:{:02} UTC", rem / 3600, rem % 3600 / 60, rem % 60)
}

/// The contents of `NAME.pub.toml` for a principal with these keys.
pub(crate) fn public_file(principal: &str, signing: &PublicKey, hpke: &HpkePublicKey) -> String {
    format!(
        "# public keys of {principal}, for the topic authority (sealpost topic create/grant --members DIR);\n\
         # signing key id {} (as topic show names it)\n\
         principal = \"{principal}\"\nsigning_key = \"{signing}\"\nhpke_key = \"{hpke}\"\n",
        signing.key_id()
    )
}

#[cfg(test)]
mod tests {
    use sealpost_client::protocol::Epoch;

    use super::*;

    fn topic() -> Topic {
        "demo.chat".parse().unwrap()
    }

    fn authority() -> SigningKey {
        SigningKey::from_bytes(&[0xAA; 32])
    }

    fn signing(name: &str) -> SigningKey {
        SigningKey::from_bytes(&[name.as_bytes()[0]; 32])
    }

    fn hpke(name: &str) -> HpkeSecretKey {
        HpkeSecretKey::from_bytes(&[name.as_bytes()[0] ^ 0x55; 32])
    }

    /// A folder with alice as an identity file, bob as a public file, and carol as a keygen file.
    fn folder() -> (tempfile::TempDir, Members) {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        std::fs::write(
            d.join("alice.toml"),
            format!(
                "principal = \"alice\"\nbroker = \"127.0.0.1:7443\"\nserver_name = \"localhost\"\n\
                 ca = \"ca.pem\"\ncert = \"alice.pem\"\nkey = \"alice.key\"\nsigning_key = \"{}\"\n\
                 hpke_key = \"{}\"\nauthority = \"{}\"\n",
                hex::encode(*signing("alice").to_bytes()),
                hex::encode(hpke("alice").as_bytes()),
                authority().public_key()
            ),
        )
        .unwrap();
        std::fs::write(
            d.join("bob.pub.toml"),
            public_file("bob", &signing("bob").public_key(), &hpke("bob").public_key()),
        )
        .unwrap();
        // A secret file next to the public one is not read.
        std::fs::write(d.join("bob.toml"), "garbage").unwrap();
        std::fs::write(
            d.join("carol.toml"),
            format!(
                "signing_key = \"{}\"\nhpke_key = \"{}\"\n",
                hex::encode(*signing("carol").to_bytes()),
                hex::encode(hpke("carol").as_bytes())
            ),
        )
        .unwrap();
        let members = Members::new(d);
        (dir, members)
    }

    fn roles(policy_members: &[Member]) -> Vec<(String, bool, bool)> {
        policy_members.iter().map(|m| (m.principal.to_string(), m.publish, m.subscribe)).collect()
    }

    /// The CLI's next policy after `change`, as `change` makes it, an error as the one line it prints.
    fn try_make(
        current: Option<&VerifiedPolicy>,
        change: &Change,
        members: &Members,
        now: u64,
    ) -> Result<VerifiedPolicy, String> {
        let key = authority();
        next_policy(&Authority::new(&key), &topic(), current, change, members, Timestamp(now))
            .map_err(|e| format!("{e:#}"))
    }

    fn make(current: Option<&VerifiedPolicy>, change: Change, members: &Members, now: u64) -> VerifiedPolicy {
        try_make(current, &change, members, now).unwrap()
    }

    #[test]
    fn members_come_from_public_files_identity_files_or_keygen_files() {
        let (_dir, members) = folder();
        for name in ["alice", "bob", "carol"] {
            let (s, h) = members.keys(name).unwrap();
            assert_eq!(s, signing(name).public_key(), "{name}");
            assert_eq!(h, hpke(name).public_key(), "{name}");
        }
        let e = members.keys("dave").unwrap_err().to_string();
        assert!(e.starts_with("unknown member dave: neither "), "{e}");
        let e = members.keys("../alice").unwrap_err().to_string();
        assert!(e.contains("is not a principal name"), "{e}");
    }

    #[test]
    fn a_file_for_another_principal_is_refused() {
        let (dir, members) = folder();
        std::fs::copy(dir.path().join("alice.toml"), dir.path().join("eve.toml")).unwrap();
        let e = members.keys("eve").unwrap_err().to_string();
        assert!(e.ends_with("names principal \"alice\", not \"eve\""), "{e}");
        std::fs::write(dir.path().join("bad.toml"), "signing_key = \"secretzz\"\nhpke_key = \"00\"\n")
            .unwrap();
        let e = members.keys("bad").unwrap_err().to_string();
        assert!(e.ends_with("field `signing_key`: expected 64 hex digits"), "{e}");
        assert!(!e.contains("secretzz"));
    }

    #[test]
    fn create_makes_epoch_one_with_both_roles_for_a_name_in_both_lists() {
        let (_dir, members) = folder();
        let change = Change::Create {
            publishers: vec!["alice".into()],
            subscribers: vec!["alice".into(), "bob".into()],
        };
        let p = make(None, change.clone(), &members, 1000);
        assert_eq!(p.epoch(), Epoch(1));
        assert_eq!(p.created_at(), Timestamp(1000));
        assert_eq!(roles(p.members()), [("alice".into(), true, true), ("bob".into(), false, true)]);
        p.content_key("bob", &hpke("bob")).unwrap();
        // A topic with a policy is not created again.
        let e = try_make(Some(&p), &change, &members, 2000).unwrap_err();
        assert_eq!(
            e,
            "demo.chat already has a policy (epoch 1): change it with sealpost topic grant, revoke or rotate"
        );
        let empty = Change::Create { publishers: vec![], subscribers: vec![] };
        assert!(try_make(None, &empty, &members, 1000).is_err());
    }

    #[test]
    fn grant_revoke_and_rotate_make_the_next_epoch_with_a_fresh_key() {
        let (_dir, members) = folder();
        let create = Change::Create { publishers: vec!["alice".into()], subscribers: vec!["bob".into()] };
        let p1 = make(None, create, &members, 1000);

        let p2 =
            make(Some(&p1), Change::Grant { name: "carol".into(), role: Role::Subscribe }, &members, 2000);
        assert_eq!((p2.epoch(), p2.prev_digest()), (Epoch(2), p1.digest()));
        assert_eq!(
            roles(p2.members()),
            [("alice".into(), true, false), ("bob".into(), false, true), ("carol".into(), false, true)]
        );
        let k1 = p1.content_key("bob", &hpke("bob")).unwrap();
        let k2 = p2.content_key("bob", &hpke("bob")).unwrap();
        assert_ne!(k1.as_bytes(), k2.as_bytes(), "every epoch has a fresh key");

        let p3 = make(Some(&p2), Change::Grant { name: "bob".into(), role: Role::Publish }, &members, 3000);
        assert_eq!(roles(p3.members())[1], ("bob".into(), true, true));
        let again = Change::Grant { name: "bob".into(), role: Role::Publish };
        let e = try_make(Some(&p3), &again, &members, 3500).unwrap_err();
        assert_eq!(e, "bob already has the publish role on demo.chat (epoch 3)");

        let p4 = make(Some(&p3), Change::Revoke { name: "carol".into() }, &members, 4000);
        assert_eq!(p4.epoch(), Epoch(4));
        assert!(p4.member("carol").is_none());
        assert!(p4.content_key("carol", &hpke("carol")).is_err(), "carol cannot unwrap the new key");
        let e = try_make(Some(&p4), &Change::Revoke { name: "carol".into() }, &members, 4500).unwrap_err();
        assert_eq!(e, "carol is not a member of the policy of demo.chat (epoch 4)");

        // The clock behind the current policy: created at its time, so that it still chains.
        let p5 = make(Some(&p4), Change::Rotate, &members, 10);
        assert_eq!((p5.epoch(), p5.created_at()), (Epoch(5), Timestamp(4000)));
        assert_eq!(roles(p5.members()), roles(p4.members()));
        let mut book = sealpost_client::protocol::PolicyBook::new(topic(), authority().public_key());
        for p in [&p1, &p2, &p3, &p4, &p5] {
            book.admit(p.clone()).unwrap();
        }
    }

    #[test]
    fn existing_members_keep_their_keys_without_a_file() {
        let (dir, members) = folder();
        let create = Change::Create { publishers: vec!["carol".into()], subscribers: vec![] };
        let p1 = make(None, create, &members, 1000);
        std::fs::remove_file(dir.path().join("carol.toml")).unwrap();
        let p2 =
            make(Some(&p1), Change::Grant { name: "carol".into(), role: Role::Subscribe }, &members, 2000);
        assert_eq!(p2.member("carol").unwrap().signing_key, signing("carol").public_key());
        let grant_dave = Change::Grant { name: "dave".into(), role: Role::Publish };
        let e = try_make(Some(&p2), &grant_dave, &members, 3000).unwrap_err();
        assert!(e.starts_with("unknown member dave"), "{e}");
        let e = try_make(None, &Change::Rotate, &members, 3000).unwrap_err();
        assert_eq!(
            e,
            "topic demo.chat has no policy yet: the topic authority must create one first (sealpost topic \
             create demo.chat ...)"
        );
    }

    #[test]
    fn timestamps_print_as_utc() {
        assert_eq!(utc(Timestamp(0)), "1970-01-01 00:00:00 UTC");
        assert_eq!(utc(Timestamp(1_763_856_000_000)), "2025-11-23 00:00:00 UTC");
        assert_eq!(utc(Timestamp(951_825_599_000)), "2000-02-29 11:59:59 UTC");
    }
}
