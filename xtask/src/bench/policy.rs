//! Generated policies of a chosen size for the bench lab.
//!
//! Every policy lets the client workload reach the iperf3 server (`tcp/5201`, `udp/5201`) and the
//! bench's own load server ([`LOAD_PORT`], TCP and UDP), so the measured flows are always allowed; what grows is the number of rule entries the kernel holds
//! besides them: `peers` remote /32 peers in 172.16.0.0/12, each allowed on `ports` TCP ports.
//! The ports are spaced two apart because the compiler merges adjacent ports into one
//! prefix-aligned entry, and the point is to make the map big, so each one costs an entry of its
//! own and the rule map holds `peers × ports` entries plus the two of iperf3.

use std::{fmt::Write as _, fs, net::Ipv4Addr, path::Path, process::Command};

use anyhow::{Context as _, bail};

use super::{CLIENT, CLIENT6, NODE, SERVER, SERVER6};

/// How big a generated policy is.
#[derive(Clone, Copy, Debug)]
pub struct Size {
    /// Remote peers, each a /32 of its own with a label of its own.
    pub peers: u32,
    /// TCP ports allowed to each peer.
    pub ports: u32,
}

impl Size {
    /// The entries the peers' rules need: one per peer and port.
    #[must_use]
    pub const fn entries(self) -> u32 {
        self.peers * self.ports
    }
}

/// The port of the bench's load server (TCP and UDP).
pub const LOAD_PORT: u16 = 5301;

/// First port of the peers' rules: far from iperf3's 5201 and the load's 5301.
const FIRST_PORT: u32 = 10_000;

/// The address of peer `i`: 172.16.0.0/12 holds 2^20 addresses, the bench uses far fewer.
#[must_use]
pub fn peer_address(i: u32) -> Ipv4Addr {
    Ipv4Addr::from(0xAC10_0000_u32 + i + 1)
}

/// The `j`-th TCP port allowed to every peer.
#[must_use]
pub fn peer_port(j: u32) -> u32 {
    FIRST_PORT + 2 * j
}

/// A later version of a generated policy: the last `peers` peers are allowed on other ports
/// than in every other version, so exactly their `peers × ports` entries change.
#[derive(Clone, Copy, Debug, Default)]
pub struct Change {
    /// How many peers (from the last) get other ports.
    pub peers: u32,
    /// Which version: 0 is the base policy, each other number a port set of its own.
    pub version: u32,
}

/// Writes the policy of `size` into `dir` (created), as three files the way an operator would
/// split them: settings, inventory, rules.
///
/// # Errors
/// When a file cannot be written.
pub fn generate(dir: &Path, size: Size) -> anyhow::Result<()> {
    generate_changed(dir, size, Change::default())
}

/// Writes version `change` of the policy of `size` into `dir` (see [`generate`]).
///
/// # Errors
/// When a file cannot be written.
pub fn generate_changed(dir: &Path, size: Size, change: Change) -> anyhow::Result<()> {
    fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    // No failsafe port: it adds an entry per pair of identities that may reach this node, which
    // would blur the sizes; the lab has no SSH to keep open.
    let settings = "[settings]\nmode = \"enforce\"\nfailsafe_inbound = []\n";
    let mut inventory = format!(
        r#"[[node]]
name = "{NODE}"
addresses = ["{CLIENT}", "{CLIENT6}"]

[[node]]
name = "bench-server"
addresses = ["{SERVER}", "{SERVER6}"]
labels = {{ segment = "server" }}

[[workload]]
name = "client"
cgroup = "client"
labels = {{ segment = "client" }}

[[segment]]
name = "clients"
select = {{ segment = "client" }}

[[segment]]
name = "servers"
select = {{ segment = "server" }}
"#
    );
    let mut rules = String::from(
        r#"[[allow]]
name = "iperf3"
from = "clients"
to = "servers"
ports = ["tcp/5201", "udp/5201"]
description = "the measured flows: iperf3's control connection and its TCP or UDP stream"
"#,
    );
    let _ = write!(
        rules,
        "\n[[allow]]\nname = \"load\"\nfrom = \"clients\"\nto = \"servers\"\nports = [\"tcp/{LOAD_PORT}\", \"udp/{LOAD_PORT}\"]\ndescription = \"the bench's new connections and datagrams\"\n"
    );
    let ports_of = |version: u32| {
        // Versions wrap around before the port numbers run out.
        let versions = (u32::from(u16::MAX) - FIRST_PORT) / (2 * size.ports.max(1));
        let first = (version % versions) * size.ports;
        let ports: Vec<String> = (first..first + size.ports)
            .map(|j| format!("\"tcp/{}\"", peer_port(j)))
            .collect();
        ports.join(", ")
    };
    let (base, changed) = (ports_of(0), ports_of(change.version));
    for i in 0..size.peers {
        let ports = if i + change.peers >= size.peers {
            &changed
        } else {
            &base
        };
        // Writing to a String cannot fail.
        let _ = write!(
            inventory,
            "\n[[peer]]\nname = \"peer-{i}\"\ncidrs = [\"{}/32\"]\nlabels = {{ peer = \"p{i}\" }}\n",
            peer_address(i)
        );
        let _ = write!(
            rules,
            "\n[[allow]]\nname = \"to-peer-{i}\"\nfrom = \"clients\"\nto = {{ peer = \"p{i}\" }}\nports = [{ports}]\n"
        );
    }
    for (name, text) in [
        ("settings.toml", settings),
        ("inventory.toml", inventory.as_str()),
        ("rules.toml", rules.as_str()),
    ] {
        let path = dir.join(name);
        fs::write(&path, text).with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(())
}

/// What `enforcer check` says the kernel maps will hold.
#[derive(Clone, Copy, Debug)]
pub struct Summary {
    pub entries: u64,
    pub identities: u64,
}

/// Runs `enforcer check` on `dir` as the client node and returns the rule entries it reports.
///
/// # Errors
/// When the policy is refused (the error carries the checker's output) or the summary has no
/// rule count.
pub fn check(enforcer: &Path, dir: &Path) -> anyhow::Result<u64> {
    Ok(summary(enforcer, dir)?.entries)
}

/// Runs `enforcer check` on `dir` as the client node and returns its count of rule entries and
/// identities.
///
/// # Errors
/// When the policy is refused (the error carries the checker's output) or a count is missing.
pub fn summary(enforcer: &Path, dir: &Path) -> anyhow::Result<Summary> {
    let out = Command::new(enforcer)
        .arg("check")
        .arg(dir)
        .args(["--node", NODE])
        .output()
        .context("running enforcer check")?;
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    if !out.status.success() {
        bail!(
            "enforcer check refused the generated policy {}:\n{text}",
            dir.display()
        );
    }
    let read = |label: &str| {
        count(&text, label)
            .with_context(|| format!("no \"{label}\" line in enforcer check's summary:\n{text}"))
    };
    Ok(Summary {
        entries: read("rule entries")?,
        identities: read("identities")?,
    })
}

/// The number of the summary's `  LABEL      N` line.
fn count(summary: &str, label: &str) -> Option<u64> {
    summary.lines().find_map(|line| {
        line.trim()
            .strip_prefix(label)
            .and_then(|n| n.trim().parse().ok())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_rule_count_of_the_summary() {
        let summary = "rules:      3 (3 allow, 0 deny)\nas node x, the kernel maps hold:\n  rule entries      102004\n  exact addresses   4\n";
        assert_eq!(count(summary, "rule entries"), Some(102_004));
        assert_eq!(count(summary, "exact addresses"), Some(4));
        assert_eq!(count("nothing", "rule entries"), None);
    }
}
