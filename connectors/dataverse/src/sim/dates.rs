//! Date-times as the Dataverse Web API writes them: ISO 8601 in UTC, whole seconds
//! (`2024-08-02T07:00:38Z`) or with milliseconds (`2024-08-02T07:00:38.123Z`).

use presync_engine::time::{to_rfc3339_millis, to_rfc3339_seconds};

/// `2024-08-02T07:00:38Z`: whole seconds, as the Web API writes Dataverse date-times.
pub(crate) fn iso_seconds(ms: i64) -> String {
    to_rfc3339_seconds(ms)
}

/// `2024-08-02T07:00:38.123Z`.
pub(crate) fn iso_millis(ms: i64) -> String {
    to_rfc3339_millis(ms)
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
