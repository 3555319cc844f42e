//! The contenders a user would pick instead of the enforcer: iptables and nftables in the client's
//! namespace, holding the rule set equivalent to a generated policy.
//!
//! The equivalent of a policy of [`Size`] is what an operator would write for the same egress
//! allow list: accept what conntrack already knows, accept each (peer, port) pair, accept the
//! measured flows, drop the rest. For the linear contenders the measured flows' rules come last,
//! after every peer's, as they do for a workload whose rules were added late: a new connection
//! walks the whole chain. nftables with a set holds every pair in one hashed set of
//! `address . port`, which is how nftables is meant to scale.

use std::{
    fmt::Write as _,
    fs,
    path::Path,
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};

use super::{
    SERVER,
    policy::{LOAD_PORT, Size, peer_address, peer_port},
};

/// A firewall contender.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Firewall {
    /// iptables with the legacy (xtables) back end: a linear chain of rules.
    IptablesLinear,
    /// nftables, one rule per (peer, port).
    NftLinear,
    /// nftables, one set of `address . port` looked up by one rule.
    NftSet,
}

/// The nftables table the bench owns in the client's namespace.
const NFT_TABLE: &str = "enforcer_bench";

impl Firewall {
    pub const ALL: [Self; 3] = [Self::IptablesLinear, Self::NftLinear, Self::NftSet];

    #[must_use]
    pub const fn label(self) -> &'static str {
        match self {
            Self::IptablesLinear => "iptables (legacy, linear)",
            Self::NftLinear => "nftables (linear)",
            Self::NftSet => "nftables (set)",
        }
    }

    /// The tool that loads a rule set, as a user would run it.
    #[must_use]
    pub const fn loader(self) -> &'static str {
        match self {
            Self::IptablesLinear => "iptables-legacy-restore",
            Self::NftLinear | Self::NftSet => "nft -f",
        }
    }

    /// The rule set equivalent to a policy of `size`, in the loader's input format.
    #[must_use]
    pub fn ruleset(self, size: Size) -> String {
        match self {
            Self::IptablesLinear => iptables(size),
            Self::NftLinear => nft_linear(size),
            Self::NftSet => nft_set(size),
        }
    }

    /// Writes the rule set for `size` to `file` and loads it in namespace `ns`, replacing what
    /// this contender held there; returns how long the loader took.
    ///
    /// # Errors
    /// When the file cannot be written or the loader fails.
    pub fn apply(self, ns: &str, size: Size, file: &Path) -> anyhow::Result<Duration> {
        let mut text = self.ruleset(size);
        if self != Self::IptablesLinear {
            // `nft -f` adds to what exists: declaring the table, then deleting it, makes the file
            // replace the table whether or not it was there, in one transaction.
            text = format!("table inet {NFT_TABLE}\ndelete table inet {NFT_TABLE}\n{text}");
        }
        fs::write(file, text).with_context(|| format!("writing {}", file.display()))?;
        let started = Instant::now();
        run_in(ns, &self.load_command(file), self.loader())?;
        Ok(started.elapsed())
    }

    /// Removes what this contender loaded in `ns`.
    ///
    /// # Errors
    /// When the tool fails.
    pub fn clear(self, ns: &str, scratch: &Path) -> anyhow::Result<()> {
        let empty = scratch.join("firewall-empty");
        let text = match self {
            Self::IptablesLinear => {
                "*filter\n:INPUT ACCEPT [0:0]\n:FORWARD ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\nCOMMIT\n"
                    .to_owned()
            }
            Self::NftLinear | Self::NftSet => {
                format!("table inet {NFT_TABLE}\ndelete table inet {NFT_TABLE}\n")
            }
        };
        fs::write(&empty, text).with_context(|| format!("writing {}", empty.display()))?;
        run_in(ns, &self.load_command(&empty), self.loader())
    }

    fn load_command(self, file: &Path) -> Vec<String> {
        let file = file.display().to_string();
        match self {
            Self::IptablesLinear => vec!["iptables-legacy-restore".into(), file],
            Self::NftLinear | Self::NftSet => vec!["nft".into(), "-f".into(), file],
        }
    }
}

fn run_in(ns: &str, argv: &[String], what: &str) -> anyhow::Result<()> {
    let out = Command::new("ip")
        .args(["netns", "exec", ns])
        .args(argv)
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("running {what}"))?;
    if !out.status.success() {
        bail!(
            "{what} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(())
}

/// Every (peer, port) pair of `size`, in the order a linear chain holds them.
fn pairs(size: Size) -> impl Iterator<Item = (String, u32)> {
    (0..size.peers).flat_map(move |i| {
        let peer = peer_address(i).to_string();
        (0..size.ports).map(move |j| (peer.clone(), peer_port(j)))
    })
}

// Writing to a String cannot fail: the `write!` results below are ignored for that reason.

fn iptables(size: Size) -> String {
    let mut out = String::from(
        "*filter\n:INPUT ACCEPT [0:0]\n:FORWARD ACCEPT [0:0]\n:OUTPUT DROP [0:0]\n\
         -A OUTPUT -o lo -j ACCEPT\n\
         -A OUTPUT -m conntrack --ctstate ESTABLISHED,RELATED -j ACCEPT\n",
    );
    for (peer, port) in pairs(size) {
        let _ = writeln!(
            out,
            "-A OUTPUT -d {peer}/32 -p tcp -m tcp --dport {port} -j ACCEPT"
        );
    }
    for proto in ["tcp", "udp"] {
        for port in [5201, LOAD_PORT] {
            let _ = writeln!(
                out,
                "-A OUTPUT -d {SERVER}/32 -p {proto} -m {proto} --dport {port} -j ACCEPT"
            );
        }
    }
    out.push_str("COMMIT\n");
    out
}

fn nft_chain_head() -> String {
    "  chain output {\n    type filter hook output priority filter; policy drop;\n    \
     oifname \"lo\" accept\n    ct state established,related accept\n"
        .to_owned()
}

fn nft_measured() -> String {
    format!(
        "    ip daddr {SERVER} tcp dport {{ 5201, {LOAD_PORT} }} accept\n    \
         ip daddr {SERVER} udp dport {{ 5201, {LOAD_PORT} }} accept\n  }}\n}}\n"
    )
}

fn nft_linear(size: Size) -> String {
    let mut out = format!("table inet {NFT_TABLE} {{\n{}", nft_chain_head());
    for (peer, port) in pairs(size) {
        let _ = writeln!(out, "    ip daddr {peer} tcp dport {port} accept");
    }
    out.push_str(&nft_measured());
    out
}

fn nft_set(size: Size) -> String {
    let mut out =
        format!("table inet {NFT_TABLE} {{\n  set allowed {{\n    type ipv4_addr . inet_service\n");
    if size.entries() > 0 {
        out.push_str("    elements = {\n");
        for (peer, port) in pairs(size) {
            let _ = writeln!(out, "      {peer} . {port},");
        }
        out.push_str("    }\n");
    }
    out.push_str("  }\n");
    out.push_str(&nft_chain_head());
    out.push_str("    ip daddr . tcp dport @allowed accept\n");
    out.push_str(&nft_measured());
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const TWO: Size = Size { peers: 2, ports: 1 };

    #[test]
    fn linear_rule_sets_hold_a_rule_per_pair_and_the_measured_flows_last() {
        let text = iptables(TWO);
        let rules: Vec<&str> = text.lines().filter(|l| l.starts_with("-A")).collect();
        assert_eq!(rules.len(), 2 + 2 + 4, "{text}");
        assert!(rules[2].contains("-d 172.16.0.1/32") && rules[2].contains("--dport 10000"));
        assert!(rules[7].contains(&format!("-d {SERVER}/32 -p udp -m udp --dport {LOAD_PORT}")));
        let text = nft_linear(TWO);
        assert_eq!(text.matches("tcp dport 10000 accept").count(), 2, "{text}");
    }

    #[test]
    fn the_set_holds_every_pair_once() {
        let text = nft_set(Size { peers: 3, ports: 2 });
        assert_eq!(text.matches(" . 100").count(), 6, "{text}");
        assert_eq!(text.matches("@allowed").count(), 1);
    }
}
