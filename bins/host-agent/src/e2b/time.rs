//! RFC 3339 timestamps, the form E2B's API uses for `startedAt`, `endAt`,
//! `startedAfter` and metric timestamps (UTC out; any offset in).

use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// `2025-01-02T03:04:05.678Z` (millisecond precision, UTC).
pub fn format_rfc3339(time: SystemTime) -> String {
    let (secs, millis) = match time.duration_since(UNIX_EPOCH) {
        Ok(d) => (d.as_secs() as i64, d.subsec_millis()),
        Err(before) => {
            // Before 1970: floor to whole seconds below.
            let d = before.duration();
            let secs = -(d.as_secs() as i64);
            if d.subsec_nanos() == 0 {
                (secs, 0)
            } else {
                (secs - 1, 1000 - d.subsec_millis().max(1))
            }
        }
    };
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400);
    let (year, month, day) = civil_from_days(days);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{millis:03}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// Parses `YYYY-MM-DDTHH:MM:SS[.fraction](Z|±HH:MM)` (also with a space or
/// lowercase `t`/`z`); `None` when malformed.
pub fn parse_rfc3339(text: &str) -> Option<SystemTime> {
    let b = text.as_bytes();
    if b.len() < 20 {
        return None;
    }
    let num = |range: std::ops::Range<usize>| -> Option<i64> {
        let part = text.get(range)?;
        if part.bytes().all(|c| c.is_ascii_digit()) {
            part.parse().ok()
        } else {
            None
        }
    };
    let (year, month, day) = (num(0..4)?, num(5..7)?, num(8..10)?);
    let (hour, minute, second) = (num(11..13)?, num(14..16)?, num(17..19)?);
    if b[4] != b'-'
        || b[7] != b'-'
        || !matches!(b[10], b'T' | b't' | b' ')
        || b[13] != b':'
        || b[16] != b':'
        || !(1..=12).contains(&month)
        || !(1..=31).contains(&day)
        || hour > 23
        || minute > 59
        || second > 60
    {
        return None;
    }
    let mut i = 19;
    let mut nanos: u32 = 0;
    if b.get(i) == Some(&b'.') {
        i += 1;
        let start = i;
        while b.get(i).is_some_and(u8::is_ascii_digit) {
            if i - start < 9 {
                nanos = nanos * 10 + u32::from(b[i] - b'0');
            }
            i += 1;
        }
        let digits = i - start;
        if digits == 0 {
            return None;
        }
        for _ in digits..9 {
            nanos *= 10;
        }
    }
    let offset_secs = match b.get(i..)? {
        [b'Z' | b'z'] => 0,
        [sign @ (b'+' | b'-'), h1, h2, b':', m1, m2] => {
            let digits = [*h1, *h2, *m1, *m2];
            if !digits.iter().all(u8::is_ascii_digit) {
                return None;
            }
            let hours = i64::from((h1 - b'0') * 10 + (h2 - b'0'));
            let minutes = i64::from((m1 - b'0') * 10 + (m2 - b'0'));
            let offset = hours * 3600 + minutes * 60;
            if *sign == b'+' { offset } else { -offset }
        }
        _ => return None,
    };
    let days = days_from_civil(year, month as u32, day as u32);
    let secs = days * 86_400 + hour * 3600 + minute * 60 + second - offset_secs;
    let whole = Duration::from_secs(secs.unsigned_abs());
    let time = if secs >= 0 {
        UNIX_EPOCH + whole
    } else {
        UNIX_EPOCH - whole
    };
    Some(time + Duration::from_nanos(u64::from(nanos)))
}

/// Days since 1970-01-01 of a proleptic Gregorian date (H. Hinnant).
fn days_from_civil(year: i64, month: u32, day: u32) -> i64 {
    let year = if month <= 2 { year - 1 } else { year };
    let era = year.div_euclid(400);
    let yoe = year.rem_euclid(400);
    let mp = i64::from((month + 9) % 12);
    let doy = (153 * mp + 2) / 5 + i64::from(day) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// The date of a day count since 1970-01-01 (H. Hinnant).
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_known_instants() {
        assert_eq!(format_rfc3339(UNIX_EPOCH), "1970-01-01T00:00:00.000Z");
        let t = UNIX_EPOCH + Duration::from_millis(1_735_787_045_678);
        assert_eq!(format_rfc3339(t), "2025-01-02T03:04:05.678Z");
        let leap = UNIX_EPOCH + Duration::from_secs(951_782_400);
        assert_eq!(format_rfc3339(leap), "2000-02-29T00:00:00.000Z");
    }

    #[test]
    fn parses_what_the_sdks_send() {
        let t = UNIX_EPOCH + Duration::from_millis(1_735_787_045_678);
        assert_eq!(parse_rfc3339("2025-01-02T03:04:05.678Z"), Some(t));
        // Python: datetime.astimezone().isoformat() with microseconds and an offset.
        assert_eq!(parse_rfc3339("2025-01-02T05:04:05.678000+02:00"), Some(t));
        assert_eq!(
            parse_rfc3339("2025-01-01T22:04:05-05:00"),
            Some(t - Duration::from_millis(678))
        );
        assert_eq!(parse_rfc3339("2025-01-02"), None);
        assert_eq!(parse_rfc3339("2025-13-02T03:04:05Z"), None);
        assert_eq!(parse_rfc3339("2025-01-02T03:04:05"), None);
        assert_eq!(parse_rfc3339("2025-01-02T03:04:05.Z"), None);
    }

    #[test]
    fn round_trips() {
        for millis in [
            0_u64,
            1,
            999,
            86_399_999,
            1_700_000_000_123,
            4_102_444_800_000,
        ] {
            let t = UNIX_EPOCH + Duration::from_millis(millis);
            assert_eq!(parse_rfc3339(&format_rfc3339(t)), Some(t), "{millis}");
        }
    }
}
