//! Date-times as the Dataverse Web API writes them: ISO 8601 in UTC, whole seconds
//! (`2024-08-02T07:00:38Z`) or with milliseconds (`2024-08-02T07:00:38.123Z`).

/// `2024-08-02T07:00:38Z`: whole seconds, as the Web API writes Dataverse date-times.
pub(crate) fn iso_seconds(ms: i64) -> String {
    let (date, secs) = civil(ms);
    format!(
        "{date}T{:02}:{:02}:{:02}Z",
        secs / 3600,
        secs / 60 % 60,
        secs % 60
    )
}

/// `2024-08-02T07:00:38.123Z`.
pub(crate) fn iso_millis(ms: i64) -> String {
    let (date, secs) = civil(ms);
    format!(
        "{date}T{:02}:{:02}:{:02}.{:03}Z",
        secs / 3600,
        secs / 60 % 60,
        secs % 60,
        ms.rem_euclid(1000)
    )
}

/// `YYYY-MM-DD` and the second of the day.
fn civil(ms: i64) -> (String, i64) {
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::time::parse_iso8601;

    #[test]
    fn timestamps_round_trip_through_the_crate_parser() {
        for ms in [0, 1_722_582_038_000, 1_722_582_038_123, 951_782_400_999] {
            assert_eq!(parse_iso8601(&iso_millis(ms)), Some(ms));
            assert_eq!(parse_iso8601(&iso_seconds(ms)), Some(ms - ms % 1000));
        }
        assert_eq!(iso_seconds(1_722_582_038_000), "2024-08-02T07:00:38Z");
    }
}
