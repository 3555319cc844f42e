//! What several test files share: policies written table by table, the lab most bypass tests
//! start from, and the assertions about a denial.

use std::{fmt::Write as _, net::IpAddr};

use serde_json::Value;

use crate::{
    EVENT_TIMEOUT, Lab, Listener,
    events::{self, Verdict},
};

/// IP protocol numbers, as events report them (`connection_info.protocol_num`).
pub const TCP: u64 = 6;
pub const UDP: u64 = 17;
pub const UDPLITE: u64 = 136;

/// A policy file's text, one table at a time: tables of one kind stay in the order they are
/// added, which is all the policy's meaning depends on.
#[derive(Clone, Debug, Default)]
pub struct PolicyText(String);

impl PolicyText {
    #[must_use]
    pub fn new() -> Self {
        Self::default()
    }

    /// One table: `header`, then `lines` (`key = value`).
    #[must_use]
    pub fn table(mut self, header: &str, lines: &[String]) -> Self {
        let _ = writeln!(self.0, "\n[[{header}]]");
        for line in lines {
            let _ = writeln!(self.0, "{line}");
        }
        self
    }

    /// A workload in the managed cgroup of its name, with `labels` (an inline table).
    #[must_use]
    pub fn workload(self, name: &str, labels: &str) -> Self {
        let lines = [
            format!("name = {name:?}"),
            format!("cgroup = {name:?}"),
            format!("labels = {labels}"),
        ];
        self.table("workload", &lines)
    }

    /// A workload labelled `{ segment = name }`: a member of [`PolicyText::segment`]`(name)`.
    #[must_use]
    pub fn member(self, name: &str) -> Self {
        self.workload(name, &segment_label(name))
    }

    /// A peer of `cidrs` (templates such as `${SERVER4}/32`), with `labels`.
    #[must_use]
    pub fn peer(self, name: &str, cidrs: &[&str], labels: &str) -> Self {
        let lines = [
            format!("name = {name:?}"),
            format!("cidrs = {}", list(cidrs)),
            format!("labels = {labels}"),
        ];
        self.table("peer", &lines)
    }

    /// A peer labelled `{ segment = name }`.
    #[must_use]
    pub fn member_peer(self, name: &str, cidrs: &[&str]) -> Self {
        self.peer(name, cidrs, &segment_label(name))
    }

    /// The segment `{label}-seg`, of what is labelled `{ segment = label }`.
    #[must_use]
    pub fn segment(self, label: &str) -> Self {
        self.segment_with(label, &[])
    }

    /// [`PolicyText::segment`] with more keys (`packet_sockets = "allow"`).
    #[must_use]
    pub fn segment_with(self, label: &str, extra: &[&str]) -> Self {
        let mut lines = vec![
            format!("name = \"{label}-seg\""),
            format!("select = {}", segment_label(label)),
        ];
        lines.extend(extra.iter().map(|line| (*line).to_owned()));
        self.table("segment", &lines)
    }

    /// An allow rule from the segment `from` to `to` (a segment or `@world`) on `ports`.
    #[must_use]
    pub fn allow(self, from: &str, to: &str, ports: &[&str]) -> Self {
        let lines = [
            format!("from = {from:?}"),
            format!("to = {to:?}"),
            format!("ports = {}", list(ports)),
        ];
        self.table("allow", &lines)
    }

    #[must_use]
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// `{ segment = "name" }`.
fn segment_label(name: &str) -> String {
    format!("{{ segment = {name:?} }}")
}

/// A TOML array of strings.
fn list(items: &[&str]) -> String {
    let quoted: Vec<String> = items.iter().map(|item| format!("{item:?}")).collect();
    format!("[{}]", quoted.join(", "))
}

/// `app` (a segment member) and `free` (a workload in no segment), and `db`: the lab's server, a
/// segmented peer. No rule yet.
#[must_use]
pub fn app_free_and_db() -> PolicyText {
    PolicyText::new()
        .member("app")
        .workload("free", r#"{ app = "free" }"#)
        .member_peer("db", &["${SERVER4}/32", "${SERVER6}/128"])
        .segment("app")
        .segment("db")
}

/// A lab with the workloads `app` and `free`, the server's extra `server_addrs` (templates) and
/// `policy` as `main.toml`.
#[must_use]
pub fn app_and_free_lab(server_addrs: &[&str], policy: &PolicyText) -> Lab {
    let builder = Lab::builder().workload("app").workload("free");
    server_addrs
        .iter()
        .fold(builder, |builder, addr| builder.server_addr(addr))
        .policy("main.toml", policy.as_str())
        .start()
}

/// Waits for the event to any of `ips` (one destination written in several forms), on `port` and
/// over IP protocol `protocol` where given, and asserts it a denial from `src` to `dst`.
#[track_caller]
pub fn assert_denial(
    lab: &Lab,
    ips: &[IpAddr],
    port: Option<u16>,
    protocol: Option<u64>,
    src: &str,
    dst: &str,
) -> Value {
    let ev = lab.daemon().wait_for_event(EVENT_TIMEOUT, |e| {
        ips.iter().any(|ip| events::is_to(e, *ip, port))
            && protocol.is_none_or(|number| {
                events::try_field(e, "connection_info.protocol_num").and_then(Value::as_u64)
                    == Some(number)
            })
    });
    events::assert_verdict(&ev, Verdict::Denied);
    events::assert_names(&ev, src, dst);
    ev
}

/// Nothing reached `listener`; `what` names what must not have.
#[track_caller]
pub fn assert_nothing_delivered(listener: &Listener, what: &str) {
    assert!(
        listener.peers().is_empty(),
        "{what} was delivered: {:?}",
        listener.peers()
    );
}
