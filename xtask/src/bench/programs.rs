//! What the enforcer's programs cost, from the kernel's own accounting (`bpf_stats`).

use std::{collections::BTreeMap, fs, process::Command};

use anyhow::Context as _;
use serde_json::Value;

use crate::output;

/// Turns on the kernel's per-program run time and count (`kernel.bpf_stats_enabled`) and
/// restores the old value on drop, also after an error.
pub struct BpfStats {
    old: String,
}

const BPF_STATS: &str = "/proc/sys/kernel/bpf_stats_enabled";

impl BpfStats {
    pub fn enable() -> anyhow::Result<Self> {
        let old = fs::read_to_string(BPF_STATS).with_context(|| format!("reading {BPF_STATS}"))?;
        fs::write(BPF_STATS, "1").with_context(|| format!("enabling {BPF_STATS}"))?;
        Ok(Self {
            old: old.trim().to_owned(),
        })
    }
}

impl Drop for BpfStats {
    fn drop(&mut self) {
        let _ = fs::write(BPF_STATS, &self.old);
    }
}

/// One loaded program's counters.
#[derive(Clone, Debug)]
pub struct ProgCounters {
    /// `bpftool`'s type (`cgroup_skb`, `sched_cls`, ...) and the program's name.
    pub kind: String,
    pub name: String,
    pub run_time_ns: u64,
    pub run_cnt: u64,
}

/// The counters of the programs process `pid` holds, by program id. A program is held when
/// `bpftool -j prog show` lists the process in its `pids` (bpftool built with skeletons), or when
/// one of the process's descriptors refers to it (`prog_id:` in /proc/PID/fdinfo, which program
/// and link descriptors both show; Debian's bpftool has no `pids`).
///
/// # Errors
/// When bpftool fails or its output is not the JSON expected.
pub fn programs_of(pid: u32) -> anyhow::Result<BTreeMap<u64, ProgCounters>> {
    let text = output(Command::new("bpftool").args(["-j", "prog", "show"]))
        .context("bpftool -j prog show failed")?;
    let progs: Vec<Value> = serde_json::from_str(&text).context("parsing bpftool's JSON")?;
    let held = fd_prog_ids(pid);
    let holds = |p: &Value| {
        p["id"].as_u64().is_some_and(|id| held.contains(&id))
            || p["pids"].as_array().is_some_and(|pids| {
                pids.iter()
                    .any(|h| h["pid"].as_u64() == Some(u64::from(pid)))
            })
    };
    Ok(progs
        .iter()
        .filter(|p| holds(p))
        .filter_map(|p| {
            let counters = ProgCounters {
                kind: p["type"].as_str().unwrap_or("?").to_owned(),
                name: p["name"].as_str().unwrap_or("?").to_owned(),
                run_time_ns: p["run_time_ns"].as_u64().unwrap_or(0),
                run_cnt: p["run_cnt"].as_u64().unwrap_or(0),
            };
            Some((p["id"].as_u64()?, counters))
        })
        .collect())
}

fn fd_prog_ids(pid: u32) -> Vec<u64> {
    let Ok(fds) = fs::read_dir(format!("/proc/{pid}/fdinfo")) else {
        return Vec::new();
    };
    fds.filter_map(|fd| fs::read_to_string(fd.ok()?.path()).ok())
        .filter_map(|info| {
            info.lines()
                .find_map(|l| l.strip_prefix("prog_id:")?.trim().parse().ok())
        })
        .collect()
}

/// What the programs cost between two snapshots, by (type, name), for the programs that ran:
/// (runs, nanoseconds). Programs of one name (attached to several hooks) are added up.
#[must_use]
pub fn program_cost(
    before: &BTreeMap<u64, ProgCounters>,
    after: &BTreeMap<u64, ProgCounters>,
) -> BTreeMap<(String, String), (u64, u64)> {
    let mut cost: BTreeMap<(String, String), (u64, u64)> = BTreeMap::new();
    for (id, now) in after {
        let (runs0, ns0) = before
            .get(id)
            .map_or((0, 0), |then| (then.run_cnt, then.run_time_ns));
        let runs = now.run_cnt.saturating_sub(runs0);
        if runs > 0 {
            let entry = cost
                .entry((now.kind.clone(), now.name.clone()))
                .or_default();
            entry.0 += runs;
            entry.1 += now.run_time_ns.saturating_sub(ns0);
        }
    }
    cost
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn costs_only_what_ran() {
        let prog = |name: &str, runs, ns| ProgCounters {
            kind: "cgroup_skb".into(),
            name: name.into(),
            run_time_ns: ns,
            run_cnt: runs,
        };
        let before = BTreeMap::from([(1, prog("egress", 10, 100)), (2, prog("ingress", 5, 50))]);
        let after = BTreeMap::from([
            (1, prog("egress", 30, 500)),
            (2, prog("ingress", 5, 50)),
            (3, prog("egress", 1, 10)),
        ]);
        let cost = program_cost(&before, &after);
        assert_eq!(cost.len(), 1);
        assert_eq!(cost[&("cgroup_skb".into(), "egress".into())], (21, 410));
    }
}
