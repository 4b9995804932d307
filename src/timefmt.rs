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
    }
}
