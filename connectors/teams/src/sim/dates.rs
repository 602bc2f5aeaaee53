//! Date-times and durations as Graph writes and reads them: `expirationDateTime` with seven
//! fraction digits (`2024-08-02T07:00:38.1230000Z`), `innerError.date` without an offset, and
//! ISO 8601 durations (`PT5M`, `PT1H30M`, `P1D`) in the pattern of the action schemas.

use presync_engine::clock::Clock;
use presync_engine::Millis;

/// One minute, in milliseconds.
pub(crate) const MINUTE: Millis = 60_000;

/// `2024-08-02T07:00:38.1230000Z`, the form of Graph's `expirationDateTime`.
pub(crate) fn iso_graph(ms: Millis) -> String {
    let (date, secs) = civil(ms);
    format!(
        "{date}T{:02}:{:02}:{:02}.{:03}0000Z",
        secs / 3600,
        secs / 60 % 60,
        secs % 60,
        ms.rem_euclid(1000)
    )
}

/// `2024-08-02T07:00:38`, the form of `innerError.date`.
pub(crate) fn iso_plain(ms: Millis) -> String {
    let (date, secs) = civil(ms);
    format!(
        "{date}T{:02}:{:02}:{:02}",
        secs / 3600,
        secs / 60 % 60,
        secs % 60
    )
}

/// The clock's now as `innerError.date`.
pub(crate) fn now_plain(clock: &dyn Clock) -> String {
    iso_plain(clock.now())
}

/// `YYYY-MM-DD` and the second of the day.
fn civil(ms: Millis) -> (String, i64) {
    let secs = ms.div_euclid(1000);
    let (days, sod) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    (format!("{year:04}-{month:02}-{day:02}"), sod)
}

/// Days from 1970-01-01 to a proleptic Gregorian date.
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = if y >= 0 { y } else { y - 399 } / 400;
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// An `Edm.DateTimeOffset`: `YYYY-MM-DDTHH:MM:SS[.fraction](Z|±HH:MM)`. The offset is required,
/// as in the schema's pattern; `None` for anything else.
pub(crate) fn parse_date_time(s: &str) -> Option<Millis> {
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
    let num = |r: std::ops::Range<usize>| -> Option<i64> {
        let t = s.get(r)?;
        if t.bytes().all(|c| c.is_ascii_digit()) {
            t.parse().ok()
        } else {
            None
        }
    };
    let (y, mo, d) = (num(0..4)?, num(5..7)?, num(8..10)?);
    let (h, mi, se) = (num(11..13)?, num(14..16)?, num(17..19)?);
    if !(1..=12).contains(&mo) || !(1..=31).contains(&d) || h > 23 || mi > 59 || se > 59 {
        return None;
    }
    let mut rest = s.get(19..)?;
    let mut millis = 0;
    if let Some(frac) = rest.strip_prefix('.') {
        let digits = frac.bytes().take_while(u8::is_ascii_digit).count();
        if digits == 0 || digits > 12 {
            return None;
        }
        let first3: String = frac[..digits]
            .chars()
            .chain("000".chars())
            .take(3)
            .collect();
        millis = first3.parse::<i64>().ok()?;
        rest = &frac[digits..];
    }
    let offset_min = match rest {
        "Z" | "z" => 0,
        o if o.len() == 6 && (o.starts_with('+') || o.starts_with('-')) && &o[3..4] == ":" => {
            let sign = if o.starts_with('-') { -1 } else { 1 };
            let (oh, om) = (num_at(o, 1..3)?, num_at(o, 4..6)?);
            sign * (oh * 60 + om)
        }
        _ => return None,
    };
    let days = days_from_civil(y, mo, d);
    let secs = days * 86_400 + h * 3_600 + mi * 60 + se - offset_min * 60;
    Some(secs * 1_000 + millis)
}

fn num_at(s: &str, r: std::ops::Range<usize>) -> Option<i64> {
    let t = s.get(r)?;
    if t.bytes().all(|c| c.is_ascii_digit()) {
        t.parse().ok()
    } else {
        None
    }
}

/// An ISO 8601 duration in the schemas' pattern
/// `^-?P([0-9]+D)?(T([0-9]+H)?([0-9]+M)?([0-9]+([.][0-9]+)?S)?)?$`, in milliseconds (negative
/// when it starts with `-`). `None` when it does not match.
pub(crate) fn parse_duration(s: &str) -> Option<Millis> {
    let (sign, rest) = match s.strip_prefix('-') {
        Some(r) => (-1, r),
        None => (1, s),
    };
    let rest = rest.strip_prefix('P')?;
    let (date, time) = match rest.split_once('T') {
        Some((d, t)) => (d, Some(t)),
        None => (rest, None),
    };
    let mut total: i64 = 0;
    if !date.is_empty() {
        let days = date.strip_suffix('D')?;
        total = total.checked_add(digits(days)?.checked_mul(86_400_000)?)?;
    }
    if let Some(mut t) = time {
        for (unit, ms) in [('H', 3_600_000_i64), ('M', 60_000)] {
            if let Some(i) = t.find(unit) {
                let n = digits(&t[..i])?;
                total = total.checked_add(n.checked_mul(ms)?)?;
                t = &t[i + 1..];
            }
        }
        if let Some(secs) = t.strip_suffix('S') {
            let (whole, frac) = match secs.split_once('.') {
                Some((w, f)) => (w, Some(f)),
                None => (secs, None),
            };
            total = total.checked_add(digits(whole)?.checked_mul(1000)?)?;
            if let Some(f) = frac {
                let ms: String = f.chars().chain("000".chars()).take(3).collect();
                digits(f)?;
                total = total.checked_add(ms.parse::<i64>().ok()?)?;
            }
        } else if !t.is_empty() {
            return None;
        }
    }
    Some(sign * total)
}

fn digits(s: &str) -> Option<i64> {
    if s.is_empty() || !s.bytes().all(|c| c.is_ascii_digit()) {
        return None;
    }
    s.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn date_times_round_trip() {
        for ms in [0, 1_722_582_038_000, 1_722_582_038_123, 951_782_400_999] {
            assert_eq!(parse_date_time(&iso_graph(ms)), Some(ms));
        }
        assert_eq!(iso_graph(1_722_582_038_123), "2024-08-02T07:00:38.1230000Z");
        assert_eq!(iso_plain(1_722_582_038_123), "2024-08-02T07:00:38");
        assert_eq!(
            parse_date_time("2024-08-02T09:00:38+02:00"),
            Some(1_722_582_038_000)
        );
    }

    #[test]
    fn date_times_need_an_offset() {
        assert_eq!(parse_date_time("2024-08-02T07:00:38"), None);
        assert_eq!(parse_date_time("2024-08-02 07:00:38Z"), None);
        assert_eq!(parse_date_time("yesterday"), None);
    }

    #[test]
    fn durations_follow_the_schema_pattern() {
        assert_eq!(parse_duration("PT5M"), Some(5 * MINUTE));
        assert_eq!(parse_duration("PT4H"), Some(240 * MINUTE));
        assert_eq!(parse_duration("PT1H30M"), Some(90 * MINUTE));
        assert_eq!(parse_duration("P1D"), Some(1_440 * MINUTE));
        assert_eq!(parse_duration("PT300S"), Some(5 * MINUTE));
        assert_eq!(parse_duration("PT0.5S"), Some(500));
        assert_eq!(parse_duration("-PT5M"), Some(-5 * MINUTE));
        assert_eq!(parse_duration("PT"), Some(0));
        for bad in ["5M", "PT5", "PTM", "P1W", "PT5M3H", "PT1.S", "", "pt5m"] {
            assert_eq!(parse_duration(bad), None, "{bad}");
        }
    }
}
