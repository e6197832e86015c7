//! Topic-policy decode and verify on arbitrary bytes: never panics; never verifies under a fixed authority
//! whose secret key signed nothing.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sealpost_protocol::{Limits, SignedPolicy, SigningKey};

fuzz_target!(|data: &[u8]| {
    let Ok(policy) = SignedPolicy::decode(bytes::Bytes::copy_from_slice(data), &Limits::default()) else {
        return;
    };
    let _ = (policy.topic(), policy.epoch(), policy.as_bytes().len());
    // Against the key the policy itself names: exercises verify_strict on arbitrary keys and signatures.
    // (The golden policy in the seed corpus does verify under its own authority, so no assertion here.)
    let claimed = *policy.authority();
    if let Ok(verified) = policy.clone().verify(&claimed) {
        let _ = (verified.members().len(), verified.digest(), verified.member("alice"));
    }
    // A pinned authority that never signed anything: nothing may verify under it.
    let authority = SigningKey::from_bytes(&[0x5A; 32]).public_key();
    assert!(policy.verify(&authority).is_err());
});
