//! Topic and pattern parsing on arbitrary strings: never panics; a valid topic matches itself and `>`.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sealpost_protocol::{Topic, TopicPattern};

fuzz_target!(|data: &[u8]| {
    let Ok(s) = std::str::from_utf8(data) else { return };
    let _ = TopicPattern::new(s);
    if let Ok(topic) = Topic::new(s) {
        assert!(TopicPattern::new(s).expect("a topic is a pattern").matches(&topic));
        assert!(TopicPattern::new(">").expect("valid").matches(&topic));
    }
});
