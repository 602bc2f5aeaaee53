//! Date-times and durations as Graph writes and reads them: `expirationDateTime` with seven
//! fraction digits (`2024-08-02T07:00:38.1230000Z`), `innerError.date` without an offset, and
//! ISO 8601 durations (`PT5M`, `PT1H30M`, `P1D`) in the pattern of the action schemas.

use presync_engine::clock::Clock;
use presync_engine::time::{civil, parse_rfc3339};
use presync_engine::Millis;

/// One minute, in milliseconds.
pub(crate) const MINUTE: Millis = 60_000;

/// `2024-08-02T07:00:38.1230000Z`, the form of Graph's `expirationDateTime`.
pub(crate) fn iso_graph(ms: Millis) -> String {
    let c = civil(ms);
    format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:03}0000Z",
        c.year, c.month, c.day, c.hour, c.minute, c.second, c.milli
    )
}

/// `2024-08-02T07:00:38`, the form of `innerError.date`.
pub(crate) fn iso_plain(ms: Millis) -> String {
    let c = civil(ms);
    format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}",
        c.year, c.month, c.day, c.hour, c.minute, c.second
    )
}

/// The clock's now as `innerError.date`.
pub(crate) fn now_plain(clock: &dyn Clock) -> String {
    iso_plain(clock.now())
}

/// An `Edm.DateTimeOffset`: `YYYY-MM-DDTHH:MM:SS[.fraction](Z|±HH:MM)`. The offset is required,
/// as in the schema's pattern; `None` for anything else.
pub(crate) fn parse_date_time(s: &str) -> Option<Millis> {
    parse_rfc3339(s)
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
