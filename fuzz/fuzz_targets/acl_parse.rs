//! ACL file parsing on arbitrary UTF-8: never panics; a parsed ACL answers `allows` without panicking.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sealpost_broker::acl::{Acl, Action};
use sealpost_protocol::{Principal, Topic};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let Ok(acl) = Acl::from_toml(text) else { return };
    let empty = Acl::default();
    for topic in ["demo.chat", "demo", "a.b.c.d", "x"] {
        let topic = Topic::new(topic).expect("valid topic");
        for principal in ["alice", "bob", "a.b_c-d"] {
            let principal: Principal = principal.parse().expect("valid principal");
            for action in [Action::Publish, Action::Subscribe, Action::Admin] {
                let _ = acl.allows(&principal, &topic, action);
                assert!(!empty.allows(&principal, &topic, action));
            }
        }
    }
});
