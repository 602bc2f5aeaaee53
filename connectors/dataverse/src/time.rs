//! ISO 8601 timestamps as the Dataverse Web API writes them (`2024-08-02T07:00:38Z`,
//! `2024-08-02T07:00:38.123Z`, `2024-08-02T09:00:38+02:00`), to milliseconds since the epoch.

pub use presync_engine::time::{days_from_civil, parse_rfc3339 as parse_iso8601};

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_forms_the_web_api_writes() {
        assert_eq!(parse_iso8601("1970-01-01T00:00:00Z"), Some(0));
        assert_eq!(
            parse_iso8601("2024-08-02T07:00:38Z"),
            Some(1_722_582_038_000)
        );
        assert_eq!(
            parse_iso8601("2024-08-02T07:00:38.123Z"),
            Some(1_722_582_038_123)
        );
        assert_eq!(
            parse_iso8601("2024-08-02T07:00:38.1234567Z"),
            Some(1_722_582_038_123)
        );
        assert_eq!(
            parse_iso8601("2024-08-02T09:00:38+02:00"),
            Some(1_722_582_038_000)
        );
        assert_eq!(parse_iso8601("2000-02-29T00:00:00Z"), Some(951_782_400_000));
        assert_eq!(parse_iso8601("1969-12-31T23:59:59Z"), Some(-1_000));
    }

    #[test]
    fn refuses_what_is_not_a_timestamp() {
        for bad in [
            "",
            "yesterday",
            "2024-13-01T00:00:00Z",
            "2024-08-02T07:00:38",
            "2024-08-02T07:00:38.Z",
            "2024-08-02T07:00:38+0200",
        ] {
            assert_eq!(parse_iso8601(bad), None, "{bad}");
        }
    }
}
