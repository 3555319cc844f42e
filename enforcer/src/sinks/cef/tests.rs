use proptest::prelude::*;

use super::{Extension, escape_header, render};
use crate::{
    events::{Report, ocsf::Product},
    sinks::test_support::{
        parse::parse_cef,
        reports::{aggregated_flow, alert, flow_denial, rejection},
    },
};

fn product() -> Product {
    Product {
        name: "enforcer".to_owned(),
        vendor_name: "enforcer project".to_owned(),
        version: "0.1.0".to_owned(),
    }
}

#[test]
fn a_denial_carries_its_rule_endpoints_and_process() {
    let line = render(&Report::Flow(flow_denial()), &product());
    let cef = parse_cef(&line).expect("parses");
    assert_eq!(
        cef.header,
        [
            "CEF:0",
            "enforcer project",
            "enforcer",
            "0.1.0",
            "rules/20-finance.toml:31",
            r#"connection denied by web-never-"finance" [v2] \ a|b=c"#,
            "5",
        ]
    );
    let expected = [
        ("rt", "1714979289123"),
        ("act", "deny"),
        ("deviceDirection", "1"),
        ("proto", "TCP"),
        ("src", "10.0.0.1"),
        ("spt", "40000"),
        ("dst", "10.0.0.2"),
        ("dpt", "5432"),
        ("cnt", "1"),
        ("spid", "4242"),
        ("sproc", "curl"),
        ("suid", "1000"),
        ("suser", "alice"),
        ("dvchost", "app-1"),
        ("cs1", "rules/20-finance.toml:31"),
        ("cs1Label", "rule"),
        ("cs2", "40103edb9c3cae46"),
        ("cs2Label", "policyVersion"),
        ("cs3", "web"),
        ("cs3Label", "srcIdentity"),
        ("cs4", "db"),
        ("cs4Label", "dstIdentity"),
        ("cs5", "/system.slice/web.service"),
        ("cs5Label", "cgroup"),
        ("flexString1", "socket"),
        ("flexString1Label", "layer"),
        ("flexString2", "enforce"),
        ("flexString2Label", "mode"),
        (
            "msg",
            "the web tier never talks to the database\nsee ticket=42 | ops",
        ),
    ];
    let extension: Vec<(&str, &str)> = cef
        .extension
        .iter()
        .map(|(key, value)| (key.as_str(), value.as_str()))
        .collect();
    assert_eq!(extension, expected);
    assert!(!line.contains('\n'), "{line}");
}

#[test]
fn an_aggregated_audit_has_its_count_span_and_swept_ports() {
    let cef = parse_cef(&render(&Report::Flow(aggregated_flow()), &product())).expect("parses");
    assert_eq!(cef.header[5], "connection audited by default-deny:db");
    assert_eq!(cef.header[6], "3");
    assert_eq!(cef.get("act"), Some("audit"));
    assert_eq!(cef.get("proto"), Some("UDP"));
    assert_eq!(cef.get("cnt"), Some("17"));
    assert_eq!(cef.get("start"), Some("1714979279123"));
    assert_eq!(cef.get("end"), Some("1714979289123"));
    assert_eq!(cef.get("dpt"), None);
    assert_eq!(cef.get("cs6"), Some("22,80,443"));
    assert_eq!(cef.get("cs6Label"), Some("sweptPorts"));
    assert_eq!(cef.get("deviceDirection"), Some("0"));
    assert_eq!(cef.get("sproc"), None);
}

#[test]
fn an_alert_is_high_with_its_technique_and_targets() {
    let cef = parse_cef(&render(&Report::Alert(alert()), &product())).expect("parses");
    assert_eq!(cef.header[4], "T1046");
    assert_eq!(cef.header[5], "suspected lateral movement: port scan");
    assert_eq!(cef.header[6], "8");
    assert_eq!(cef.get("cnt"), Some("30"));
    assert_eq!(cef.get("start"), Some("1714979269123"));
    assert_eq!(cef.get("cs1"), Some("T1046 Network Service Discovery"));
    assert_eq!(
        cef.get("cs6"),
        Some("10.0.0.2:22/TCP db,10.0.0.2:23/TCP db")
    );
    assert_eq!(cef.get("cn1"), Some("12"));
    assert_eq!(cef.get("cn2"), Some("1"));
    assert_eq!(cef.get("cn3"), Some("12"));
    assert_eq!(cef.get("flexString1"), Some("port scan"));
    assert_eq!(
        cef.get("msg"),
        Some("port scan by web: 12 targets (1 destinations, 12 ports) in 60s (Discovery)")
    );
}

#[test]
fn a_rejection_lists_its_errors_one_a_line() {
    let cef = parse_cef(&render(&Report::Rejection(rejection()), &product())).expect("parses");
    assert_eq!(cef.header[4..], ["policy-rejected", "policy rejected", "5"]);
    assert_eq!(cef.get("filePath"), Some("/etc/enforcer/policy"));
    assert_eq!(cef.get("cs2"), Some("40103edb9c3cae46"));
    assert_eq!(cef.get("cn1"), Some("3"));
    assert_eq!(cef.get("flexString1"), Some("directory"));
    assert_eq!(
        cef.get("msg"),
        Some(
            "rules/20-finance.toml:31:1: unknown key `prots` in [[deny]]\nnodes.toml:4:13: invalid address"
        )
    );
}

#[test]
fn control_characters_in_the_header_become_spaces() {
    assert_eq!(escape_header("a\nb\r\tc"), "a b  c");
}

fn line(first: &str, second: &str, value: &str) -> String {
    let mut header = String::from("CEF:0");
    for field in [first, "p", "1", second, "n", "3"] {
        header.push('|');
        header.push_str(&escape_header(field));
    }
    header.push('|');
    let mut extension = Extension::default();
    extension.push("src", "10.0.0.1");
    extension.push("msg", value);
    extension.push("cs1", value);
    extension.push("cnt", 1);
    header + &extension.0
}

proptest! {
    /// Any header field (without control characters) and any extension value come back whole
    /// from a strict parser, and no unescaped `|` adds a field.
    #[test]
    fn fields_round_trip(
        first in "[^\\p{Cc}]*",
        second in "[^\\p{Cc}]*",
        value in any::<String>(),
    ) {
        let cef = parse_cef(&line(&first, &second, &value)).expect("parses");
        prop_assert_eq!(cef.header.len(), 7);
        prop_assert_eq!(&cef.header[1], &first);
        prop_assert_eq!(&cef.header[4], &second);
        let keys: Vec<&str> = cef.extension.iter().map(|(key, _)| key.as_str()).collect();
        prop_assert_eq!(keys, ["src", "msg", "cs1", "cnt"]);
        prop_assert_eq!(cef.get("msg"), Some(value.as_str()));
        prop_assert_eq!(cef.get("cs1"), Some(value.as_str()));
    }

    #[test]
    fn header_control_characters_never_split_the_line(field in any::<String>()) {
        let escaped = escape_header(&field);
        prop_assert!(!escaped.chars().any(char::is_control));
        let cef = parse_cef(&line(&field, "s", "v")).expect("parses");
        prop_assert_eq!(cef.header.len(), 7);
    }
}
