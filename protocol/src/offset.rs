//! Offsets: the place of a message in a topic's log, as the broker assigns it.
//!
//! Offsets start at 0 for each topic and count messages: a batch of `n` messages stored at offset `o`
//! covers `o..o + n`. They are not publisher sequence numbers (those are signed, per publisher, and start at
//! 1), and the type keeps the two apart: where a frame, a receipt or a stored record carries both as
//! numbers side by side, an [`Offset`] cannot be passed where a sequence number is expected, or back.
//!
//! Adding a count says what happens at the end of the range: [`Offset::checked_add`] or
//! [`Offset::saturating_add`]; there is no `+` that could wrap silently. An `Offset` serializes as the bare
//! `u64` it holds, so frames and records keep their bytes.

use core::fmt;

use serde::{Deserialize, Serialize};

/// The offset of a message in its topic's log.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Offset(pub u64);

impl Offset {
    /// The offset of a topic's first message.
    pub const ZERO: Offset = Offset(0);
    /// The greatest offset: the end of a scan over every offset.
    pub const MAX: Offset = Offset(u64::MAX);

    /// The offset `count` messages after this one, or `None` if it would overflow.
    pub fn checked_add(self, count: u64) -> Option<Offset> {
        self.0.checked_add(count).map(Offset)
    }

    /// The offset `count` messages after this one, or [`u64::MAX`] if it would overflow: for the end of a
    /// range whose start and length were checked when it was stored.
    pub fn saturating_add(self, count: u64) -> Offset {
        Offset(self.0.saturating_add(count))
    }

    /// How many offsets lie from `start` up to this one: 0 if `start` is not before it.
    pub fn saturating_count_from(self, start: Offset) -> u64 {
        self.0.saturating_sub(start.0)
    }
}

impl fmt::Display for Offset {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.0, f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn adding_a_count_never_wraps() {
        assert_eq!(Offset(3).checked_add(4), Some(Offset(7)));
        assert_eq!(Offset(u64::MAX - 1).checked_add(1), Some(Offset(u64::MAX)));
        assert_eq!(Offset(u64::MAX).checked_add(1), None);
        assert_eq!(Offset(1).checked_add(u64::MAX), None);
        assert_eq!(Offset(3).saturating_add(4), Offset(7));
        assert_eq!(Offset(u64::MAX - 1).saturating_add(5), Offset(u64::MAX));
    }

    #[test]
    fn counts_between_offsets_stop_at_zero() {
        assert_eq!(Offset(7).saturating_count_from(Offset(3)), 4);
        assert_eq!(Offset(3).saturating_count_from(Offset(3)), 0);
        assert_eq!(Offset(3).saturating_count_from(Offset(7)), 0);
    }

    #[test]
    fn orders_and_displays_as_its_number() {
        assert!(Offset::ZERO < Offset(1));
        assert_eq!(Offset::default(), Offset::ZERO);
        assert_eq!(Offset(42).to_string(), "42");
        assert_eq!(format!("{:>4}", Offset(42)), "  42");
    }

    #[test]
    fn serializes_as_the_bare_u64() {
        for n in [0, 1, 127, 128, 300, u64::MAX] {
            let bare = postcard::to_allocvec(&n).unwrap();
            assert_eq!(postcard::to_allocvec(&Offset(n)).unwrap(), bare, "{n}");
            assert_eq!(postcard::from_bytes::<Offset>(&bare).unwrap(), Offset(n));
        }
    }
}
