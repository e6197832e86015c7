//! Sealed-batch decode, verify and open on arbitrary bytes: never panics, never opens.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sealpost_protocol::{open, ContentKey, Epoch, Limits, Topic};

fuzz_target!(|data: &[u8]| {
    let topic = Topic::new("demo.chat").expect("valid topic");
    // 0xC1, not the tests' 0xC0: the golden batch in the seed corpus is sealed under 0xC0 and must not open.
    let keys = (Epoch(7), ContentKey::from_bytes(&[0xC1; 32]));
    // Arbitrary bytes must not forge a batch under a key nobody holds.
    assert!(open(bytes::Bytes::copy_from_slice(data), &topic, &keys, &Limits::default()).is_err());
});
