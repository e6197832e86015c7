//! The wall clock: the one place the library reads the time of day.
//!
//! Sans-IO parts (the reader, the publish pipeline, the authority) take the time as an argument; the async
//! shells read it here and hand it in.

use sealpost_protocol::Timestamp;

/// The current time as the protocol carries it: milliseconds since the Unix epoch (0 if the clock is set
/// before it).
pub(crate) fn wall_clock() -> Timestamp {
    let millis = std::time::SystemTime::now()
        .duration_since(std::time::SystemTime::UNIX_EPOCH)
        .map(|d| d.as_millis())
        .unwrap_or(0);
    Timestamp(u64::try_from(millis).unwrap_or(u64::MAX))
}
