use std::time::{Duration, UNIX_EPOCH};

use proptest::prelude::*;

use super::{Message, SdElement, Severity, escape_param_value, timestamp};
use crate::sinks::test_support::{parse::parse_structured_data, reports::fixed_time};

fn message<'a>(params: Vec<(&'a str, String)>, msg: &'a str) -> Message<'a> {
    Message {
        facility: 16,
        severity: Severity::Warning,
        time: fixed_time(),
        hostname: "app-1",
        app_name: "enforcer",
        procid: "4242",
        msgid: "DENY",
        structured_data: vec![SdElement {
            id: "enforcer@32473",
            params,
        }],
        msg,
    }
}

#[test]
fn renders_the_rfc_5424_form() {
    let text = message(
        vec![("count", "3".to_owned()), ("rule", r#"a"b\c]d"#.to_owned())],
        "{\"class_uid\":4001}",
    )
    .to_string();
    assert_eq!(
        text,
        r#"<132>1 2024-05-06T07:08:09.123Z app-1 enforcer 4242 DENY [enforcer@32473 count="3" rule="a\"b\\c\]d"] {"class_uid":4001}"#
    );
}

#[test]
fn empty_fields_are_the_nilvalue_and_no_msg_leaves_no_space() {
    let text = Message {
        hostname: "",
        procid: "",
        structured_data: Vec::new(),
        ..message(Vec::new(), "")
    }
    .to_string();
    assert_eq!(text, "<132>1 2024-05-06T07:08:09.123Z - enforcer - DENY -");
}

#[test]
fn header_fields_are_printable_ascii_and_capped() {
    let long_host = "h".repeat(300);
    let text = Message {
        hostname: &long_host,
        app_name: "enforcer daemon ü",
        msgid: "A-MESSAGE-ID-LONGER-THAN-32-CHARACTERS",
        ..message(Vec::new(), "")
    }
    .to_string();
    let fields: Vec<&str> = text.split(' ').collect();
    assert_eq!(fields[2], "h".repeat(255));
    assert_eq!(fields[3], "enforcer_daemon__");
    assert_eq!(fields[5], "A-MESSAGE-ID-LONGER-THAN-32-CHAR");
    assert!(text.is_ascii());
}

#[test]
fn sd_names_lose_the_characters_they_may_not_hold() {
    let text = message(vec![("a=b c\"d]@", "v".to_owned())], "").to_string();
    assert!(
        text.ends_with(r#"[enforcer@32473 a_b_c_d__="v"]"#),
        "{text}"
    );
}

#[test]
fn a_utf8_msg_starts_with_the_bom_and_an_ascii_one_does_not() {
    let text = message(Vec::new(), "café").to_string();
    assert!(text.ends_with("] \u{feff}café"), "{text}");
    let text = message(Vec::new(), "cafe").to_string();
    assert!(text.ends_with("] cafe"), "{text}");
}

#[test]
fn times_a_timestamp_cannot_show_are_the_nilvalue() {
    assert_eq!(
        timestamp(fixed_time()).as_deref(),
        Some("2024-05-06T07:08:09.123Z")
    );
    assert_eq!(
        timestamp(UNIX_EPOCH - Duration::from_secs(1)),
        None,
        "before 1970"
    );
    assert_eq!(
        timestamp(UNIX_EPOCH + Duration::from_secs(253_402_300_800)),
        None,
        "year 10000"
    );
    let text = Message {
        time: UNIX_EPOCH - Duration::from_secs(1),
        ..message(Vec::new(), "")
    }
    .to_string();
    assert!(text.starts_with("<132>1 - app-1 "), "{text}");
}

proptest! {
    /// Any value comes back whole from a strict SD parser, and the element ends where it
    /// should: no `"` or `]` left unescaped inside.
    #[test]
    fn param_values_round_trip(first in any::<String>(), second in any::<String>()) {
        let text = message(
            vec![("first", first.clone()), ("second", second.clone())],
            "msg",
        )
        .to_string();
        let sd_start = text.find('[').expect("structured data");
        let (elements, rest) = parse_structured_data(&text[sd_start..]).expect("parses");
        prop_assert_eq!(rest, " msg");
        prop_assert_eq!(elements.len(), 1);
        prop_assert_eq!(elements[0].param("first"), Some(first.as_str()));
        prop_assert_eq!(elements[0].param("second"), Some(second.as_str()));
    }

    #[test]
    fn escaping_leaves_no_bare_delimiter(value in "[\"\\\\\\]a-z ]{0,40}") {
        let escaped = escape_param_value(&value);
        let mut chars = escaped.chars();
        while let Some(c) = chars.next() {
            match c {
                '\\' => prop_assert!(matches!(chars.next(), Some('"' | '\\' | ']'))),
                '"' | ']' => prop_assert!(false, "bare {c} in {escaped}"),
                _ => {}
            }
        }
    }
}
