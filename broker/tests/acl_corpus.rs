//! Replays every file of the kept `acl_parse` fuzz corpus (`fuzz/corpus/acl_parse/`) through
//! [`Acl::from_toml`] and [`Acl::allows`], as the fuzz target does, so that CI catches a regression on any
//! input the fuzzer found interesting. A missing or empty corpus folder fails the test.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};

use sealpost_broker::acl::{Acl, Action};
use sealpost_protocol::{Principal, Topic};

#[test]
fn acl_parse_corpus() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz/corpus/acl_parse");
    let entries = std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("corpus {}: {e}", dir.display()));
    let mut files: Vec<PathBuf> = entries.map(|e| e.unwrap().path()).filter(|p| p.is_file()).collect();
    files.sort();
    assert!(!files.is_empty(), "corpus {} is empty", dir.display());

    let topics: Vec<Topic> = ["demo.chat", "demo", "a.b.c.d", "x"].map(|t| Topic::new(t).unwrap()).into();
    // "*" and "" were asked about too, before principals were typed: neither can be a `Principal` now.
    let principals: Vec<Principal> = ["alice", "bob", "a.b_c-d"].map(|p| p.parse().unwrap()).into();
    let empty = Acl::default();
    let mut parsed = 0;
    for path in &files {
        let data = std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        let Ok(text) = std::str::from_utf8(&data) else { continue };
        let ok = catch_unwind(AssertUnwindSafe(|| {
            let Ok(acl) = Acl::from_toml(text) else { return false };
            for topic in &topics {
                for principal in &principals {
                    for action in [Action::Publish, Action::Subscribe, Action::Admin] {
                        let _ = acl.allows(principal, topic, action);
                        assert!(!empty.allows(principal, topic, action));
                    }
                }
            }
            true
        }));
        match ok {
            Ok(true) => parsed += 1,
            Ok(false) => {}
            Err(_) => {
                panic!("acl_parse: corpus file {} fails its check (see the panic above)", path.display())
            }
        }
    }
    // The seeds include valid ACL files: if none parses any more, the parser (or the corpus) broke.
    assert!(parsed > 0, "no file of {} parses as an ACL", dir.display());
}
