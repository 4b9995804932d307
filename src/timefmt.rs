//! Times as people read them.

/// Formats Unix seconds as RFC 3339 UTC.
pub fn rfc3339(secs: u64) -> String {
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    // Civil-from-days (proleptic Gregorian).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rem / 3_600,
        rem % 3_600 / 60,
        rem % 60
    )
}

/// Formats a time since the Unix epoch as RFC 3339 UTC with milliseconds
/// (`2026-12-04T20:57:09.123Z`).
pub fn rfc3339_millis(since_epoch: std::time::Duration) -> String {
    let s = rfc3339(since_epoch.as_secs());
    format!(
        "{}.{:03}Z",
        s.trim_end_matches('Z'),
        since_epoch.subsec_millis()
    )
}

/// Reads an RFC 3339 UTC time (`2026-06-17T08:00:00Z`, fractions of a
/// second allowed and dropped) as Unix seconds; `None` for anything else
/// (other offsets included) or a time before 1970.
pub fn parse_rfc3339(s: &str) -> Option<u64> {
    let s = s.strip_suffix('Z')?;
    let (date, time) = s.split_once('T')?;
    let num = |t: &str| -> Option<i64> {
        (!t.is_empty() && t.bytes().all(|b| b.is_ascii_digit())).then(|| t.parse().ok())?
    };
    let mut d = date.split('-');
    let (y, m, day) = (num(d.next()?)?, num(d.next()?)?, num(d.next()?)?);
    let time = time.split('.').next()?;
    let mut t = time.split(':');
    let (h, mi, sec) = (num(t.next()?)?, num(t.next()?)?, num(t.next()?)?);
    if d.next().is_some()
        || t.next().is_some()
        || !(1..=12).contains(&m)
        || !(1..=31).contains(&day)
        || h > 23
        || mi > 59
        || sec > 60
    {
        return None;
    }
    // Days-from-civil (proleptic Gregorian), the inverse of `rfc3339`.
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y.rem_euclid(400);
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    u64::try_from(days * 86_400 + h * 3_600 + mi * 60 + sec).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3339_dates() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(951_782_400), "2000-02-29T00:00:00Z");
        assert_eq!(rfc3339(1_781_654_399), "2026-06-16T23:59:59Z");
        assert_eq!(
            rfc3339_millis(std::time::Duration::from_millis(951_782_400_042)),
            "2000-02-29T00:00:00.042Z"
        );
        for t in [0, 951_782_400, 1_781_654_399, 4_102_444_800] {
            assert_eq!(parse_rfc3339(&rfc3339(t)), Some(t));
        }
        assert_eq!(parse_rfc3339("2000-02-29T00:00:00.042Z"), Some(951_782_400));
        for bad in [
            "",
            "2026-06-17",
            "2026-06-17T08:00:00+02:00",
            "2026-13-01T00:00:00Z",
            "1969-12-31T23:59:59Z",
            "x026-01-01T00:00:00Z",
        ] {
            assert_eq!(parse_rfc3339(bad), None, "{bad}");
        }
    }

    proptest::proptest! {
        #[test]
        fn parsing_undoes_formatting(t in 0u64..10_000_000_000) {
            proptest::prop_assert_eq!(parse_rfc3339(&rfc3339(t)), Some(t));
        }
    }
}
