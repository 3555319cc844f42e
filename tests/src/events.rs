//! Reading OCSF events the daemon wrote: field access that names the event when a field is
//! missing, and the fixed shape of a denial and of an audit (POLICY.md, "Denied-flow events").

use std::net::IpAddr;

use serde_json::Value;

/// The value at a dotted path (`"dst_endpoint.name"`); panics with the event if it is absent.
#[track_caller]
#[must_use]
pub fn field<'a>(ev: &'a Value, path: &str) -> &'a Value {
    try_field(ev, path).unwrap_or_else(|| panic!("event has no {path}: {ev:#}"))
}

/// The value at a dotted path, if present and not null.
#[must_use]
pub fn try_field<'a>(ev: &'a Value, path: &str) -> Option<&'a Value> {
    path.split('.')
        .try_fold(ev, |v, key| v.get(key))
        .filter(|v| !v.is_null())
}

#[track_caller]
#[must_use]
pub fn str_at<'a>(ev: &'a Value, path: &str) -> &'a str {
    field(ev, path)
        .as_str()
        .unwrap_or_else(|| panic!("{path} is not a string: {ev:#}"))
}

#[track_caller]
#[must_use]
pub fn u64_at(ev: &Value, path: &str) -> u64 {
    field(ev, path)
        .as_u64()
        .unwrap_or_else(|| panic!("{path} is not an unsigned integer: {ev:#}"))
}

/// Whether the event is about a connection to `ip` (and `port`, when given).
#[must_use]
pub fn is_to(ev: &Value, ip: IpAddr, port: Option<u16>) -> bool {
    let ip_matches = try_field(ev, "dst_endpoint.ip")
        .and_then(Value::as_str)
        .and_then(|s| s.parse::<IpAddr>().ok())
        == Some(ip);
    let port_matches = port.is_none_or(|p| {
        try_field(ev, "dst_endpoint.port").and_then(Value::as_u64) == Some(u64::from(p))
    });
    ip_matches && port_matches
}

/// The verdict an event reports.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Refused by the kernel.
    Denied,
    /// Let through in audit mode, reported as what would have been denied.
    Audit,
}

/// Asserts the class, activity, action, disposition and mode that `verdict` fixes.
#[track_caller]
pub fn assert_verdict(ev: &Value, verdict: Verdict) {
    let (activity, type_uid, action, disposition, mode) = match verdict {
        Verdict::Denied => (5, 400_105, 2, 2, "enforce"),
        Verdict::Audit => (1, 400_101, 1, 17, "audit"),
    };
    let expect = [
        ("class_uid", 4001),
        ("category_uid", 4),
        ("activity_id", activity),
        ("type_uid", type_uid),
        ("action_id", action),
        ("disposition_id", disposition),
    ];
    for (path, want) in expect {
        assert_eq!(
            u64_at(ev, path),
            want,
            "{path} of a {verdict:?} event: {ev:#}"
        );
    }
    assert_eq!(str_at(ev, "unmapped.mode"), mode, "unmapped.mode: {ev:#}");
}

/// Asserts the endpoint names (identities) of an event.
#[track_caller]
pub fn assert_names(ev: &Value, src: &str, dst: &str) {
    assert_eq!(str_at(ev, "src_endpoint.name"), src, "src identity: {ev:#}");
    assert_eq!(str_at(ev, "dst_endpoint.name"), dst, "dst identity: {ev:#}");
}

/// Asserts `firewall_rule.uid`: a rule's `file:line` (the file may be given relative to the policy
/// directory or as a longer path ending in it), or `default-deny:<segment>`.
#[track_caller]
pub fn assert_rule(ev: &Value, uid: &str) {
    let got = str_at(ev, "firewall_rule.uid");
    let ok = if uid.starts_with("default-deny:") {
        got == uid
    } else {
        got == uid || got.ends_with(&format!("/{uid}"))
    };
    assert!(ok, "firewall_rule.uid is {got:?}, expected {uid:?}: {ev:#}");
}
