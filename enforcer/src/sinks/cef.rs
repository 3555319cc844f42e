//! ArcSight Common Event Format, for SIEMs that parse CEF rather than JSON:
//! `CEF:0|Vendor|Product|Version|SignatureID|Name|Severity|Extension`.
//!
//! Header fields escape `\` and `|` with a backslash; a control character (a newline) has no
//! escape in the header and becomes a space. Extension values escape `\`, `=`, and newlines as
//! `\n` / `\r`. Keys are CEF dictionary keys; what the dictionary has no key for goes into the
//! custom strings (`csN` with its `csNLabel`), the custom numbers (`cnN`) and `flexStringN`:
//!
//! | key | flow | alert | rejection |
//! | --- | --- | --- | --- |
//! | SignatureID | rule uid | ATT&CK technique | `policy-rejected` |
//! | `cs1` | rule uid (`rule`) | technique (`technique`) | |
//! | `cs2` | policy version (`policyVersion`) | policy version | version in force (`inForceVersion`) |
//! | `cs3`, `cs4` | source and destination identity (`srcIdentity`, `dstIdentity`) | source identity | |
//! | `cs5` | cgroup (`cgroup`) | cgroup | |
//! | `cs6` | swept ports (`sweptPorts`) | targets (`targets`) | |
//! | `flexString1`, `2` | layer, mode | pattern kind | origin |
//! | `cn1`–`cn3` | | distinct targets, destinations, ports | generation in force (`cn1`) |
//!
//! Severity (0–10) follows the OCSF `severity_id` of POLICY.md: 3 (low) for a denial that is not
//! between two segment members and for an audit, 5 (medium) for a denial between segment
//! members and for a rejected policy, 8 (high) for a suspected lateral movement.

use std::{
    fmt::{Display, Write},
    time::{SystemTime, UNIX_EPOCH},
};

use enforcer_common::protocol;

use crate::events::{
    FlowProcess, FlowRecord, FlowWorkload, LateralMovementAlert, PatternKind, PolicyRejection,
    Report, Verdict, ocsf::Product,
};

const SEVERITY_LOW: u8 = 3;
const SEVERITY_MEDIUM: u8 = 5;
const SEVERITY_HIGH: u8 = 8;

/// Renders a report as one CEF line (no trailing newline).
#[must_use]
pub fn render(report: &Report, product: &Product) -> String {
    match report {
        Report::Flow(record) => flow(record, product),
        Report::Alert(alert) => lateral_movement(alert, product),
        Report::Rejection(rejection) => policy_rejection(rejection, product),
    }
}

fn flow(record: &FlowRecord, product: &Product) -> String {
    let (verb, action) = match record.verdict {
        Verdict::Denied if record.revoked => ("revoked", "deny"),
        Verdict::Denied => ("denied", "deny"),
        Verdict::Audited => ("audited", "audit"),
    };
    let severity =
        if record.verdict == Verdict::Denied && record.src.segmented && record.dst.segmented {
            SEVERITY_MEDIUM
        } else {
            SEVERITY_LOW
        };
    let name = format!("connection {verb} by {}", record.rule.name);
    let mut extension = Extension::default();
    extension.push("rt", millis(record.time));
    extension.push("act", action);
    extension.push("deviceDirection", u8::from(record.outbound));
    extension.push("proto", protocol_name(record.protocol));
    extension.push("src", record.src.ip);
    extension.push_some("spt", record.src.port);
    extension.push("dst", record.dst.ip);
    extension.push_some("dpt", record.dst.port);
    extension.push("cnt", record.count);
    if let Some((first, last)) = record.span {
        extension.push("start", millis(first));
        extension.push("end", millis(last));
    }
    push_process(&mut extension, record.process.as_ref());
    extension.push("dvchost", &record.node.hostname);
    extension.push_labelled("cs1", "rule", &record.rule.uid);
    extension.push_labelled("cs2", "policyVersion", &record.policy_version);
    extension.push_labelled("cs3", "srcIdentity", &record.src.name);
    extension.push_labelled("cs4", "dstIdentity", &record.dst.name);
    push_workload(&mut extension, record.workload.as_ref());
    if !record.swept_ports.is_empty() {
        let ports: Vec<String> = record.swept_ports.iter().map(u16::to_string).collect();
        extension.push_labelled("cs6", "sweptPorts", ports.join(","));
    }
    extension.push_labelled("flexString1", "layer", record.layer.as_str());
    extension.push_labelled("flexString2", "mode", record.mode.as_str());
    if let Some(description) = &record.rule.description {
        extension.push("msg", description);
    }
    header(product, &record.rule.uid, &name, severity) + &extension.0
}

fn lateral_movement(alert: &LateralMovementAlert, product: &Product) -> String {
    let pattern = match alert.kind {
        PatternKind::PortScan => "port scan",
        PatternKind::Sweep => "sweep",
        PatternKind::FanOut => "fan-out",
    };
    let name = format!("suspected lateral movement: {pattern}");
    let mut extension = Extension::default();
    extension.push("rt", millis(alert.time));
    extension.push("start", millis(alert.first_seen));
    extension.push("deviceDirection", u8::from(alert.outbound));
    extension.push("src", alert.src.ip);
    extension.push_some("spt", alert.src.port);
    extension.push("cnt", alert.attempts);
    push_process(&mut extension, alert.process.as_ref());
    extension.push("dvchost", &alert.node.hostname);
    extension.push_labelled(
        "cs1",
        "technique",
        format!("{} {}", alert.technique.uid, alert.technique.name),
    );
    extension.push_labelled("cs2", "policyVersion", &alert.policy_version);
    extension.push_labelled("cs3", "srcIdentity", &alert.src.name);
    push_workload(&mut extension, alert.workload.as_ref());
    let targets: Vec<String> = alert
        .targets
        .iter()
        .map(|target| {
            let port = target
                .port
                .map(|port| format!(":{port}"))
                .unwrap_or_default();
            format!(
                "{}{port}/{} {}",
                target.ip,
                protocol_name(target.protocol),
                target.name
            )
        })
        .collect();
    extension.push_labelled("cs6", "targets", targets.join(","));
    extension.push_labelled("flexString1", "pattern", pattern);
    extension.push_labelled("cn1", "distinctTargets", alert.distinct_targets);
    extension.push_labelled("cn2", "distinctDestinations", alert.distinct_destinations);
    extension.push_labelled("cn3", "distinctPorts", alert.distinct_ports);
    extension.push(
        "msg",
        format!(
            "{pattern} by {}: {} targets ({} destinations, {} ports) in {:?} ({})",
            alert.src.name,
            alert.distinct_targets,
            alert.distinct_destinations,
            alert.distinct_ports,
            alert.window,
            alert.technique.tactic_name,
        ),
    );
    header(product, alert.technique.uid, &name, SEVERITY_HIGH) + &extension.0
}

fn policy_rejection(rejection: &PolicyRejection, product: &Product) -> String {
    let mut extension = Extension::default();
    extension.push("rt", millis(rejection.time));
    extension.push("dvchost", &rejection.node.hostname);
    extension.push("filePath", &rejection.policy_dir);
    if let Some(version) = &rejection.in_force_version {
        extension.push_labelled("cs2", "inForceVersion", version);
    }
    extension.push_labelled("cn1", "inForceGeneration", rejection.in_force_generation);
    extension.push_labelled("flexString1", "origin", &rejection.origin);
    extension.push("msg", rejection.errors.join("\n"));
    header(
        product,
        "policy-rejected",
        "policy rejected",
        SEVERITY_MEDIUM,
    ) + &extension.0
}

fn push_process(extension: &mut Extension, process: Option<&FlowProcess>) {
    let Some(process) = process else {
        return;
    };
    extension.push("spid", process.pid);
    extension.push("sproc", &process.name);
    extension.push("suid", process.uid);
    if let Some(user) = &process.user_name {
        extension.push("suser", user);
    }
}

fn push_workload(extension: &mut Extension, workload: Option<&FlowWorkload>) {
    if let Some(workload) = workload {
        extension.push_labelled("cs5", "cgroup", &workload.cgroup_path);
    }
}

/// `CEF:0|vendor|product|version|signature|name|severity|`.
fn header(product: &Product, signature: &str, name: &str, severity: u8) -> String {
    let mut out = String::from("CEF:0");
    for field in [
        product.vendor_name.as_str(),
        &product.name,
        &product.version,
        signature,
        name,
    ] {
        out.push('|');
        out.push_str(&escape_header(field));
    }
    let _ = write!(out, "|{severity}|");
    out
}

/// A header field: `\` and `|` escaped, control characters (which have no escape there) as
/// spaces.
fn escape_header(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for c in value.chars() {
        match c {
            '\\' | '|' => {
                out.push('\\');
                out.push(c);
            }
            c if c.is_control() => out.push(' '),
            c => out.push(c),
        }
    }
    out
}

/// An extension value: `\`, `=` escaped, newlines as `\n` and `\r`.
fn escape_extension(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for c in value.chars() {
        match c {
            '\\' | '=' => {
                out.push('\\');
                out.push(c);
            }
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            c => out.push(c),
        }
    }
    out
}

/// `key=value` pairs, space separated, values escaped.
#[derive(Default)]
struct Extension(String);

impl Extension {
    fn push(&mut self, key: &str, value: impl Display) {
        if !self.0.is_empty() {
            self.0.push(' ');
        }
        self.0.push_str(key);
        self.0.push('=');
        self.0.push_str(&escape_extension(&value.to_string()));
    }

    fn push_some(&mut self, key: &str, value: Option<impl Display>) {
        if let Some(value) = value {
            self.push(key, value);
        }
    }

    /// A custom field and its label (`cs1=… cs1Label=…`).
    fn push_labelled(&mut self, key: &str, label: &str, value: impl Display) {
        self.push(key, value);
        self.push(&format!("{key}Label"), label);
    }
}

/// CEF's `proto`: the transport protocol's name.
fn protocol_name(number: u8) -> String {
    match number {
        protocol::TCP => "TCP".to_owned(),
        protocol::UDP => "UDP".to_owned(),
        protocol::ICMP => "ICMP".to_owned(),
        protocol::ICMPV6 => "ICMPv6".to_owned(),
        other => other.to_string(),
    }
}

/// Milliseconds since the epoch, the form of CEF timestamps that needs no time zone; 0 for a
/// clock set before 1970.
fn millis(time: SystemTime) -> u128 {
    time.duration_since(UNIX_EPOCH)
        .map_or(0, |elapsed| elapsed.as_millis())
}

#[cfg(test)]
mod tests;
