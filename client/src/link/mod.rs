//! The link to the broker: the QUIC connection ([`Connector`]: dial, dial again after a loss), frame
//! streams on it ([`Link`]: one bidirectional stream carrying frames both ways), and what transport
//! failures mean to the application (`error_map.rs`).
//!
//! Everything above this module speaks frames and [`Error`](crate::Error)s; nothing above it touches
//! quinn. Frames are cut out of a stream in one place only, the protocol's
//! [`FrameBuffer`](sealpost_protocol::FrameBuffer) inside [`Link::read`].

mod connector;
mod error_map;
mod stream;

pub use connector::ConnectionState;
pub(crate) use connector::Connector;
pub(crate) use stream::{unexpected, Link};
