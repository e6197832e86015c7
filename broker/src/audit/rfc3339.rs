//! The audit log's timestamps: milliseconds since the Unix epoch, shown as RFC 3339 UTC with exactly three
//! fractional digits (`2026-12-05T00:43:17.123Z`). This is the only form written, and [`parse`] accepts only
//! it, so a time reads back to the same milliseconds and renders to the same text.

use std::fmt::Write as _;

/// Appends `millis` as `YYYY-MM-DDTHH:MM:SS.mmmZ` (UTC).
pub fn format(millis: u64, out: &mut String) {
    let secs = millis / 1000;
    let days = i64::try_from(secs / 86_400).unwrap_or(i64::MAX / 2);
    let rem = secs % 86_400;
    let (y, m, d) = civil_from_days(days);
    let _ = write!(
        out,
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{:03}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60,
        millis % 1000
    );
}

/// The text of `millis`, for messages.
pub fn to_string(millis: u64) -> String {
    let mut s = String::with_capacity(24);
    format(millis, &mut s);
    s
}

/// Parses the form [`format`] writes, and nothing else.
pub fn parse(s: &str) -> Option<u64> {
    let b = s.as_bytes();
    if b.len() != 24 || b[4] != b'-' || b[7] != b'-' || b[10] != b'T' || b[13] != b':' || b[16] != b':' {
        return None;
    }
    if b[19] != b'.' || b[23] != b'Z' {
        return None;
    }
    let num = |range: core::ops::Range<usize>| -> Option<u64> {
        let part = s.get(range)?;
        if part.bytes().all(|c| c.is_ascii_digit()) {
            part.parse().ok()
        } else {
            None
        }
    };
    let (y, mo, d) = (num(0..4)?, num(5..7)?, num(8..10)?);
    let (h, mi, sec, ms) = (num(11..13)?, num(14..16)?, num(17..19)?, num(20..23)?);
    if y < 1970 || !(1..=12).contains(&mo) || !(1..=31).contains(&d) || h > 23 || mi > 59 || sec > 59 {
        return None;
    }
    let days = u64::try_from(days_from_civil(i64::try_from(y).ok()?, mo, d)).ok()?;
    let millis = ((days * 86_400 + h * 3600 + mi * 60 + sec) * 1000).checked_add(ms)?;
    // Rejects dates that do not exist (February 30th) by rendering back.
    (to_string(millis) == s).then_some(millis)
}

/// (year, month, day) of a day count since 1970-01-01 (H. Hinnant's algorithm).
fn civil_from_days(z: i64) -> (i64, u64, u64) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, u64::try_from(m).unwrap_or(0), u64::try_from(d).unwrap_or(0))
}

fn days_from_civil(y: i64, m: u64, d: u64) -> i64 {
    let (m, d) = (i64::try_from(m).unwrap_or(0), i64::try_from(d).unwrap_or(0));
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_times_render_and_parse_back() {
        assert_eq!(to_string(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(to_string(1_796_431_397_123), "2026-12-05T00:43:17.123Z");
        assert_eq!(to_string(951_782_400_000), "2000-02-29T00:00:00.000Z");
        for millis in [0, 1, 999, 951_782_400_000, 1_796_431_397_123, 4_102_444_799_999] {
            assert_eq!(parse(&to_string(millis)), Some(millis));
        }
        let mut t = 0u64;
        while t < 5_000_000_000_000 {
            assert_eq!(parse(&to_string(t)), Some(t), "{t}");
            t += 86_399_937;
        }
    }

    #[test]
    fn other_forms_are_rejected() {
        for bad in [
            "2026-12-05T00:43:17Z",
            "2026-12-05T00:43:17.123+00:00",
            "2026-12-05 00:43:17.123Z",
            "2026-02-30T00:00:00.000Z",
            "2026-13-01T00:00:00.000Z",
            "2026-12-05T24:00:00.000Z",
            "+026-12-05T00:43:17.123Z",
            "",
        ] {
            assert_eq!(parse(bad), None, "{bad}");
        }
    }
}
