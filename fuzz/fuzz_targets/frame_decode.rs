//! Frame check + decode on arbitrary bytes: never panics; what decodes re-encodes to the same bytes.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sealpost_protocol::Frame;

fuzz_target!(|data: &[u8]| {
    if let Ok(Some(n)) = Frame::check(data, 1 << 16) {
        if let Ok(frame) = Frame::decode(&data[..n]) {
            let again = frame.to_vec().expect("a decoded frame encodes");
            assert_eq!(Frame::decode(&again).expect("re-decodes"), frame);
        }
    }
});
