//! Calendar arithmetic for the timestamps remote systems write and read (RFC 3339 / ISO 8601,
//! UTC), written once: connectors and simulators format and parse through it. Proleptic
//! Gregorian, exact over the whole range of [`Millis`].

use crate::model::Millis;

/// A UTC instant broken into its calendar fields.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Civil {
    pub year: i64,
    pub month: i64,
    pub day: i64,
    pub hour: i64,
    pub minute: i64,
    pub second: i64,
    pub milli: i64,
}

/// Days since 1970-01-01 of a date (Howard Hinnant's `days_from_civil`).
pub fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// The date of a day count since 1970-01-01 (Howard Hinnant's `civil_from_days`).
pub fn civil_from_days(days: i64) -> (i64, i64, i64) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    (yoe + era * 400 + i64::from(month <= 2), month, day)
}

/// The calendar fields of an instant.
pub fn civil(ms: Millis) -> Civil {
    const DAY: i64 = 86_400_000;
    let (year, month, day) = civil_from_days(ms.div_euclid(DAY));
    let t = ms.rem_euclid(DAY);
    Civil {
        year,
        month,
        day,
        hour: t / 3_600_000,
        minute: t / 60_000 % 60,
        second: t / 1000 % 60,
        milli: t % 1000,
    }
}

/// `2024-08-02T07:00:38.000Z`. Years outside 0..=9999 are written with a sign.
pub fn to_rfc3339_millis(ms: Millis) -> String {
    let c = civil(ms);
    let year = if (0..=9999).contains(&c.year) {
        format!("{:04}", c.year)
    } else {
        format!("{:+05}", c.year)
    };
    format!(
        "{year}-{:02}-{:02}T{:02}:{:02}:{:02}.{:03}Z",
        c.month, c.day, c.hour, c.minute, c.second, c.milli
    )
}

/// `2024-08-02T07:00:38Z`: whole seconds.
pub fn to_rfc3339_seconds(ms: Millis) -> String {
    let c = civil(ms);
    format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}Z",
        c.year, c.month, c.day, c.hour, c.minute, c.second
    )
}

/// Parse an RFC 3339 date-time: `YYYY-MM-DDTHH:MM:SS[.fraction](Z|±HH:MM)`. The offset is
/// required; the fraction (1 to 12 digits) is cut to milliseconds. `None` for anything else.
pub fn parse_rfc3339(s: &str) -> Option<Millis> {
    let s = s.trim();
    let b = s.as_bytes();
    if b.len() < 20
        || b[4] != b'-'
        || b[7] != b'-'
        || !matches!(b[10], b'T' | b't')
        || b[13] != b':'
        || b[16] != b':'
    {
        return None;
    }
    let (y, mo, d) = (digits(s, 0..4)?, digits(s, 5..7)?, digits(s, 8..10)?);
    let (h, mi, se) = (digits(s, 11..13)?, digits(s, 14..16)?, digits(s, 17..19)?);
    if !(1..=12).contains(&mo) || !(1..=31).contains(&d) || h > 23 || mi > 59 || se > 60 {
        return None;
    }
    let mut rest = s.get(19..)?;
    let mut millis = 0;
    if let Some(frac) = rest.strip_prefix('.') {
        let n = frac.bytes().take_while(u8::is_ascii_digit).count();
        if n == 0 || n > 12 {
            return None;
        }
        let first3: String = frac[..n].chars().chain("000".chars()).take(3).collect();
        millis = first3.parse::<i64>().ok()?;
        rest = &frac[n..];
    }
    let offset_min = match rest {
        "Z" | "z" => 0,
        o if o.len() == 6 && (o.starts_with('+') || o.starts_with('-')) && &o[3..4] == ":" => {
            let sign = if o.starts_with('-') { -1 } else { 1 };
            sign * (digits(o, 1..3)? * 60 + digits(o, 4..6)?)
        }
        _ => return None,
    };
    let secs = days_from_civil(y, mo, d) * 86_400 + h * 3_600 + mi * 60 + se - offset_min * 60;
    Some(secs * 1_000 + millis)
}

fn digits(s: &str, r: std::ops::Range<usize>) -> Option<i64> {
    let t = s.get(r)?;
    if t.bytes().all(|c| c.is_ascii_digit()) {
        t.parse().ok()
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_and_parses_known_instants() {
        for (ms, text) in [
            (0, "1970-01-01T00:00:00.000Z"),
            (1_722_582_038_123, "2024-08-02T07:00:38.123Z"),
            (951_782_400_000, "2000-02-29T00:00:00.000Z"),
            (-1_000, "1969-12-31T23:59:59.000Z"),
        ] {
            assert_eq!(to_rfc3339_millis(ms), text);
            assert_eq!(parse_rfc3339(text), Some(ms));
        }
        assert_eq!(
            to_rfc3339_seconds(1_722_582_038_999),
            "2024-08-02T07:00:38Z"
        );
        assert_eq!(
            parse_rfc3339("2024-08-02T09:00:38+02:00"),
            Some(1_722_582_038_000)
        );
        assert_eq!(
            parse_rfc3339("2024-08-02T07:00:38.1234567Z"),
            Some(1_722_582_038_123)
        );
    }

    #[test]
    fn refuses_what_is_not_an_rfc3339_date_time() {
        for bad in [
            "",
            "yesterday",
            "2024-13-01T00:00:00Z",
            "2024-08-02T07:00:38",
            "2024-08-02 07:00:38Z",
            "2024-08-02T07:00:38.Z",
            "2024-08-02T07:00:38+0200",
        ] {
            assert_eq!(parse_rfc3339(bad), None, "{bad}");
        }
    }

    #[test]
    fn days_and_dates_are_inverse() {
        for days in (-800_000..800_000).step_by(997) {
            let (y, m, d) = civil_from_days(days);
            assert_eq!(days_from_civil(y, m, d), days);
        }
    }
}
