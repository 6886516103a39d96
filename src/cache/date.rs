//! HTTP dates (RFC 9110 §5.6.7): the three formats a recipient must accept
//! — IMF-fixdate, RFC 850 and asctime — parsed by their grammar: `GMT`
//! only, fixed field widths. Day and month names and `GMT` are matched in
//! any case, as the Internet Message Format writes them (RFC 5322 §3.3),
//! the robustness §5.6.7 encourages. Anything else is invalid; callers
//! read an invalid `Expires` as a time in the past (RFC 9111 §5.3) and
//! ignore an invalid `Date` or `Last-Modified`.

const DAYS: [&[u8]; 7] = [b"Mon", b"Tue", b"Wed", b"Thu", b"Fri", b"Sat", b"Sun"];
const LONG_DAYS: [&[u8]; 7] = [
    b"Monday",
    b"Tuesday",
    b"Wednesday",
    b"Thursday",
    b"Friday",
    b"Saturday",
    b"Sunday",
];
const MONTHS: [&[u8]; 12] = [
    b"Jan", b"Feb", b"Mar", b"Apr", b"May", b"Jun", b"Jul", b"Aug", b"Sep", b"Oct", b"Nov", b"Dec",
];

/// Seconds since the Unix epoch of an HTTP-date (0 for a date before
/// 1970), or `None` when it is not one. `now_s` places a two-digit RFC 850
/// year: one that would be more than 50 years in the future is read as the
/// most recent such year in the past.
pub(crate) fn parse(v: &[u8], now_s: u64) -> Option<u64> {
    let v = v.trim_ascii();
    imf_fixdate(v)
        .or_else(|| rfc850(v, now_s))
        .or_else(|| asctime(v))
}

/// The seconds of a header value, if it is a valid HTTP-date.
pub(crate) fn of(v: Option<&http::HeaderValue>, now_s: u64) -> Option<u64> {
    parse(v?.as_bytes(), now_s)
}

fn digits(s: &[u8]) -> Option<u64> {
    if s.is_empty() || !s.iter().all(u8::is_ascii_digit) {
        return None;
    }
    Some(s.iter().fold(0, |n, d| n * 10 + u64::from(d - b'0')))
}

fn month(s: &[u8]) -> Option<u64> {
    MONTHS
        .iter()
        .position(|m| m.eq_ignore_ascii_case(s))
        .map(|i| i as u64 + 1)
}

/// Whether `s` is one of `names`, in any case.
fn named(names: &[&[u8]], s: &[u8]) -> bool {
    names.iter().any(|n| n.eq_ignore_ascii_case(s))
}

/// `HH:MM:SS` as seconds of the day.
fn time(s: &[u8]) -> Option<u64> {
    if s.len() != 8 || s[2] != b':' || s[5] != b':' {
        return None;
    }
    let (h, m, sec) = (digits(&s[..2])?, digits(&s[3..5])?, digits(&s[6..])?);
    (h < 24 && m < 60 && sec <= 60).then_some(h * 3600 + m * 60 + sec)
}

/// `Sun, 06 Nov 1994 08:49:37 GMT`
fn imf_fixdate(s: &[u8]) -> Option<u64> {
    if s.len() != 29 || s[3..5] != *b", " || s[7] != b' ' || s[11] != b' ' || s[16] != b' ' {
        return None;
    }
    if !named(&DAYS, &s[..3]) || !s[25..].eq_ignore_ascii_case(b" GMT") {
        return None;
    }
    let day = digits(&s[5..7])?;
    let year = digits(&s[12..16])?;
    to_epoch(year, month(&s[8..11])?, day, time(&s[17..25])?)
}

/// `Sunday, 06-Nov-94 08:49:37 GMT`
fn rfc850(s: &[u8], now_s: u64) -> Option<u64> {
    let comma = s.iter().position(|b| *b == b',')?;
    if !named(&LONG_DAYS, &s[..comma]) {
        return None;
    }
    let s = s[comma..].strip_prefix(b", ")?;
    if s.len() != 22 || s[2] != b'-' || s[6] != b'-' || s[9] != b' ' {
        return None;
    }
    if !s[18..].eq_ignore_ascii_case(b" GMT") {
        return None;
    }
    let yy = digits(&s[7..9])?;
    let this_year = civil_year(now_s / 86_400);
    let mut year = this_year / 100 * 100 + yy;
    if year > this_year + 50 {
        year -= 100;
    }
    to_epoch(year, month(&s[3..6])?, digits(&s[..2])?, time(&s[10..18])?)
}

/// `Sun Nov  6 08:49:37 1994`
fn asctime(s: &[u8]) -> Option<u64> {
    if s.len() != 24 || s[3] != b' ' || s[7] != b' ' || s[10] != b' ' || s[19] != b' ' {
        return None;
    }
    if !named(&DAYS, &s[..3]) {
        return None;
    }
    let day = match s[8] {
        b' ' => digits(&s[9..10])?,
        _ => digits(&s[8..10])?,
    };
    to_epoch(digits(&s[20..])?, month(&s[4..7])?, day, time(&s[11..19])?)
}

fn leap(y: u64) -> bool {
    y.is_multiple_of(4) && (!y.is_multiple_of(100) || y.is_multiple_of(400))
}

/// Days since 1970-01-01 of a civil date (proleptic Gregorian), for years
/// from 1 on.
fn days_from_civil(y: u64, m: u64, d: u64) -> i64 {
    let y = y as i64 - i64::from(m <= 2);
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let m = m as i64;
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + d as i64 - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// The civil year of a day since 1970-01-01.
fn civil_year(days: u64) -> u64 {
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let y = yoe + era * 400 + i64::from(mp >= 10);
    y.max(0) as u64
}

fn to_epoch(year: u64, month: u64, day: u64, secs: u64) -> Option<u64> {
    let len = match month {
        2 if leap(year) => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    };
    if year == 0 || day == 0 || day > len {
        return None;
    }
    let days = days_from_civil(year, month, day);
    Some((days * 86_400 + secs as i64).max(0) as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// 2026-01-01T00:00:00Z
    const NOW: u64 = 1_767_225_600;

    fn p(s: &str) -> Option<u64> {
        parse(s.as_bytes(), NOW)
    }

    #[test]
    fn the_three_formats_of_rfc_9110_5_6_7_name_one_instant() {
        let t = Some(784_111_777);
        assert_eq!(p("Sun, 06 Nov 1994 08:49:37 GMT"), t);
        assert_eq!(p("Sunday, 06-Nov-94 08:49:37 GMT"), t);
        assert_eq!(p("Sun Nov  6 08:49:37 1994"), t);
        assert_eq!(p("Thu, 01 Jan 2026 00:00:00 GMT"), Some(NOW));
        assert_eq!(p("Thu, 01 Jan 1970 00:00:00 GMT"), Some(0));
        assert_eq!(p("Fri, 31 Dec 1960 00:00:00 GMT"), Some(0), "before 1970");
        assert_eq!(p("Tue, 29 Feb 2028 12:00:00 GMT"), Some(1_835_438_400));
    }

    #[test]
    fn a_two_digit_year_more_than_50_years_ahead_is_in_the_past() {
        let year = |s: &str| p(s).map(|t| civil_year(t / 86_400));
        assert_eq!(year("Thursday, 18-Aug-50 02:01:18 GMT"), Some(2050));
        assert_eq!(year("Monday, 18-Aug-76 02:01:18 GMT"), Some(2076));
        assert_eq!(year("Monday, 18-Aug-77 02:01:18 GMT"), Some(1977));
        assert_eq!(year("Monday, 18-Aug-99 02:01:18 GMT"), Some(1999));
    }

    #[test]
    fn rfc9110_5_6_7_names_and_gmt_are_read_in_any_case() {
        let t = p("Thu, 18 Aug 2050 02:01:18 GMT");
        assert!(t.is_some());
        for odd in [
            "THU, 18 Aug 2050 02:01:18 GMT",
            "Thu, 18 AUG 2050 02:01:18 GMT",
            "Thu, 18 Aug 2050 02:01:18 gMT",
            "thursday, 18-aug-50 02:01:18 gmt",
            "THU AUG 18 02:01:18 2050",
        ] {
            assert_eq!(p(odd), t, "{odd:?}");
        }
    }

    #[test]
    fn anything_else_is_invalid() {
        for bad in [
            "0",
            "",
            "-1",
            "Thu, 18 Aug 2050 02:01:18 UTC",
            "Thu, 18 Aug 50 02:01:18 GMT",
            "Thu 18 Aug 2050 02:01:18 GMT",
            "Thu, 18  Aug  2050 02:01:18 GMT",
            "Thu, 18-Aug-2050 02:01:18 GMT",
            "Thu, 18 Aug 2050 02.01.18 GMT",
            "Thu, 18 Aug 2050 2:01:18 GMT",
            "Thu, 31 Feb 2050 02:01:18 GMT",
            "Thu, 18 Aug 2050 24:00:00 GMT",
            "Funday, 18-Aug-50 02:01:18 GMT",
            "Thu Aug 18 02:01:18 50",
        ] {
            assert_eq!(p(bad), None, "{bad:?}");
        }
    }
}
