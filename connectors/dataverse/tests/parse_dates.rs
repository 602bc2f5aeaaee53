//! `/Date(ms)/` parsing (reference §4.6) and RFC 3339 formatting.

#![allow(clippy::unwrap_used)]

use presync_dataverse::context::{parse, parse_date, to_rfc3339_millis, Value};
use proptest::prelude::*;

#[test]
fn plain_date_is_utc_milliseconds() {
    assert_eq!(parse_date("/Date(1722582038000)/"), Some(1_722_582_038_000));
    assert_eq!(parse_date("/Date(0)/"), Some(0));
}

#[test]
fn offset_suffix_is_ignored() {
    assert_eq!(
        parse_date("/Date(1722582039000+0000)/"),
        Some(1_722_582_039_000)
    );
    assert_eq!(
        parse_date("/Date(1506409448000-0700)/"),
        Some(1_506_409_448_000)
    );
    assert_eq!(
        parse_date("/Date(1506409448000+0530)/"),
        Some(1_506_409_448_000)
    );
}

#[test]
fn escaped_slashes_in_the_text_are_accepted() {
    assert_eq!(
        parse_date(r"\/Date(1722582038000)\/"),
        Some(1_722_582_038_000)
    );
    assert_eq!(
        parse_date(r"\/Date(1506409448000-0700)\/"),
        Some(1_506_409_448_000)
    );
}

#[test]
fn escaped_slashes_inside_json_are_decoded_by_json() {
    let body = br#"{"OperationCreatedOn":"\/Date(1722582039000+0000)\/",
        "InputParameters":[{"key":"when","value":"\/Date(1506409448000-0700)\/"}]}"#;
    let ctx = parse(body).unwrap();
    assert_eq!(ctx.operation_created_on, Some(1_722_582_039_000));
    assert_eq!(ctx.input_parameters[0].1, Value::Date(1_506_409_448_000));
}

#[test]
fn negative_milliseconds_are_before_1970() {
    assert_eq!(parse_date("/Date(-1)/"), Some(-1));
    assert_eq!(
        parse_date("/Date(-62135596800000)/"),
        Some(-62_135_596_800_000)
    );
    assert_eq!(
        parse_date("/Date(-2203934400000+0100)/"),
        Some(-2_203_934_400_000)
    );
}

#[test]
fn garbage_is_not_a_date() {
    for garbage in [
        "",
        "Date(1)",
        "/Date()/",
        "/Date(-)/",
        "/Date(12a)/",
        "/Date(1722582038000)",
        "Date(1722582038000)/",
        "/date(1722582038000)/",
        "/Date(1722582038000+00)/",
        "/Date(1722582038000+00000)/",
        "/Date(1722582038000Z)/",
        "/Date(+1722582038000)/",
        "/Date( 1)/",
        "/Date(99999999999999999999)/",
        "2024-08-02T07:00:38Z",
        "/Date(1)/ ",
        "/Date(1é)/",
        "/Date(1+é00)/",
        "/Date(-é)/",
        "/Date(1+00é)/",
    ] {
        assert_eq!(parse_date(garbage), None, "{garbage:?}");
    }
}

#[test]
fn date_looking_attribute_becomes_a_date_and_other_text_stays_text() {
    let body = br#"{"InputParameters":[{"key":"a","value":"/Date(1697526000000)/"},
        {"key":"b","value":"/Date(soon)/"}]}"#;
    let ctx = parse(body).unwrap();
    assert_eq!(ctx.input("a"), Some(&Value::Date(1_697_526_000_000)));
    assert_eq!(ctx.input("b"), Some(&Value::String("/Date(soon)/".into())));
}

#[test]
fn rfc3339_formats_known_instants() {
    let cases = [
        (0, "1970-01-01T00:00:00.000Z"),
        (1_722_582_038_000, "2024-08-02T07:00:38.000Z"),
        (1_721_816_905_786, "2024-07-24T10:28:25.786Z"),
        (1_697_526_000_000, "2023-10-17T07:00:00.000Z"),
        (1_506_409_448_000, "2017-09-26T07:04:08.000Z"),
        (951_868_799_999, "2000-02-29T23:59:59.999Z"),
        (1_709_164_800_000, "2024-02-29T00:00:00.000Z"),
        (253_402_300_799_999, "9999-12-31T23:59:59.999Z"),
    ];
    for (ms, text) in cases {
        assert_eq!(to_rfc3339_millis(ms), text, "{ms}");
    }
}

#[test]
fn rfc3339_formats_instants_before_1970() {
    let cases = [
        (-1, "1969-12-31T23:59:59.999Z"),
        (-86_400_000, "1969-12-31T00:00:00.000Z"),
        (-58_037_384_750, "1968-02-29T06:30:15.250Z"),
        (-2_203_934_400_000, "1900-02-28T12:00:00.000Z"),
        (-11_670_912_000_000, "1600-03-01T00:00:00.000Z"),
        (-62_135_596_800_000, "0001-01-01T00:00:00.000Z"),
    ];
    for (ms, text) in cases {
        assert_eq!(to_rfc3339_millis(ms), text, "{ms}");
    }
}

#[test]
fn rfc3339_never_panics_at_the_extremes() {
    for ms in [i64::MIN, i64::MIN + 1, i64::MAX, i64::MAX - 1] {
        let text = to_rfc3339_millis(ms);
        assert!(text.ends_with('Z'), "{text}");
    }
}

#[test]
fn rfc3339_walks_every_calendar_day_across_four_centuries() {
    // 146,097 days (one Gregorian cycle) from 1800-01-01: each a valid date after the previous.
    let mut previous = to_rfc3339_millis(-5_364_662_400_000); // 1800-01-01
    assert!(previous.starts_with("1800-01-01"));
    for day in 1..146_097 {
        let text = to_rfc3339_millis(-5_364_662_400_000 + day * 86_400_000);
        assert!(text > previous, "{text} after {previous}");
        assert!(text.ends_with("T00:00:00.000Z"));
        let field = |range: std::ops::Range<usize>| text[range].parse::<i64>().unwrap();
        let (year, month, day) = (field(0..4), field(5..7), field(8..10));
        let leap = year % 4 == 0 && (year % 100 != 0 || year % 400 == 0);
        let days_in_month = [
            31,
            if leap { 29 } else { 28 },
            31,
            30,
            31,
            30,
            31,
            31,
            30,
            31,
            30,
            31,
        ];
        assert!(
            (1..=days_in_month[(month - 1) as usize]).contains(&day),
            "{text}"
        );
        previous = text;
    }
    assert!(previous.starts_with("2199-12-31"), "{previous}");
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn any_date_text_parses_back_to_its_milliseconds(
        ms in any::<i64>(),
        offset in prop::option::of((prop::bool::ANY, 0u32..10_000)),
        escaped in prop::bool::ANY,
    ) {
        let offset = offset.map_or(String::new(), |(plus, hhmm)| {
            format!("{}{hhmm:04}", if plus { '+' } else { '-' })
        });
        let slash = if escaped { "\\/" } else { "/" };
        prop_assert_eq!(parse_date(&format!("{slash}Date({ms}{offset}){slash}")), Some(ms));
    }

    #[test]
    fn arbitrary_text_inside_the_date_brackets_never_panics(inner in "\\PC{0,16}") {
        let _ = parse_date(&format!("/Date({inner})/"));
        let _ = parse_date(&inner);
    }

    #[test]
    fn rfc3339_of_any_instant_has_the_fixed_shape(ms in -62_135_596_800_000i64..253_402_300_800_000) {
        let text = to_rfc3339_millis(ms);
        prop_assert_eq!(text.len(), 24);
        prop_assert_eq!(&text[text.len() - 5..text.len() - 4], ".");
        prop_assert!(text.ends_with('Z'));
    }
}
