//! Apply latency: from a changed policy to the kernel enforcing it, against loading the
//! equivalent rule set with `iptables-restore` and `nft -f`.
//!
//! The enforcer's figure is the daemon's own account of a reload (`elapsed_ms` in its answer):
//! reading and parsing the policy directory, compiling it, writing the inactive map slot and
//! flipping to it. The wall time of `enforcer reload` (a process, a round trip on the control
//! socket) is shown beside it. Two changes are applied in turn: every peer's ports move (every
//! entry differs from the policy in force) and one peer's ports move (a typical edit). The
//! firewalls replace their whole rule set each time, which is how a rule file is loaded
//! atomically.

use std::{path::Path, time::Instant};

use super::{
    Bench, Section, Spread, Table,
    firewall::Firewall,
    fixed, grouped,
    policy::{self, Change, Size},
};
use crate::say;

/// 10 000 and 100 000 entries besides the measured flows.
const SIZES: [Size; 2] = [
    Size {
        peers: 100,
        ports: 100,
    },
    Size {
        peers: 1000,
        ports: 100,
    },
];

/// The target of the issue: a 10 000-entry policy applied in under this.
const TARGET_MS: f64 = 50.0;

/// One reload as the daemon and the caller saw it.
struct Reload {
    daemon_ms: f64,
    wall_ms: f64,
    written: f64,
}

/// What the enforcer did at one size.
struct EnforcerRun {
    entries: u64,
    start_ms: f64,
    whole: Vec<Reload>,
    one: Vec<Reload>,
}

/// Measures every size with the enforcer, then with each firewall.
///
/// # Errors
/// When a policy is refused, the daemon does not reload, or a loader fails.
pub fn run(bench: &mut Bench) -> anyhow::Result<Section> {
    let samples = bench.settings.samples;
    say(&format!(
        "apply latency: {samples} applies of each change at {} sizes, enforcer and firewalls",
        SIZES.len()
    ));
    let mut table = Table::new(&[
        "contender @ rule entries",
        "first apply ms",
        "every entry changed: ms (min / median / max)",
        "wall ms",
        "entries written",
        "one peer changed: ms",
        "entries written",
    ]);
    let mut verdicts = Vec::new();
    for (k, size) in SIZES.into_iter().enumerate() {
        let dir = bench.scratch(&format!("apply-policy-{k}"));
        policy::generate(&dir, size)?;
        let run = enforcer(bench, &dir, size)?;
        let whole = Spread::of(&daemon_ms(&run.whole));
        let one = daemon_ms(&run.one);
        table.row(vec![
            format!("enforcer @ {}", grouped(run.entries)),
            format!("{:.1} (start to enforcing)", run.start_ms),
            whole.map_or_else(|| "–".into(), |s| s.show(1)),
            fixed(&run.whole.iter().map(|r| r.wall_ms).collect::<Vec<_>>(), 1),
            fixed(&run.whole.iter().map(|r| r.written).collect::<Vec<_>>(), 0),
            fixed(&one, 1),
            fixed(&run.one.iter().map(|r| r.written).collect::<Vec<_>>(), 0),
        ]);
        if k == 0
            && let Some(whole) = whole
        {
            let met = if whole.median < TARGET_MS {
                "met"
            } else {
                "missed"
            };
            verdicts.push(format!(
                "Target: a {}-entry policy applied in under {TARGET_MS:.0} ms — **{met}**: {:.1} ms \
                 (median, every entry changed), {} ms for a change of one peer.",
                grouped(run.entries),
                whole.median,
                fixed(&one, 1),
            ));
        }
        for firewall in Firewall::ALL {
            let file = bench.scratch(&format!("apply-{}", firewall.loader()));
            firewall.clear(&bench.client_ns, bench.scratch.path())?;
            let first = firewall.apply(&bench.client_ns, size, &file)?;
            let mut replaced = Vec::new();
            for _ in 0..samples {
                replaced
                    .push(firewall.apply(&bench.client_ns, size, &file)?.as_secs_f64() * 1000.0);
            }
            firewall.clear(&bench.client_ns, bench.scratch.path())?;
            let replaced = Spread::of(&replaced);
            println!(
                "  {} @ {}: first {:.1} ms, replace {} ms",
                firewall.label(),
                grouped(u64::from(size.entries())),
                first.as_secs_f64() * 1000.0,
                replaced.map_or_else(|| "–".into(), |s| s.show(1))
            );
            table.row(vec![
                format!(
                    "{} @ {}",
                    firewall.label(),
                    grouped(u64::from(size.entries()))
                ),
                format!("{:.1}", first.as_secs_f64() * 1000.0),
                replaced.map_or_else(|| "–".into(), |s| s.show(1)),
                "–".into(),
                "–".into(),
                "(whole set)".into(),
                "–".into(),
            ]);
        }
    }
    let body = format!(
        "From a changed policy to the kernel enforcing it. The enforcer's figures are the daemon's\n\
         own account of each `enforcer reload` (read and parse the directory, compile, write the\n\
         inactive map slot, flip to it); \"wall\" adds the `enforcer reload` process and its round\n\
         trip on the control socket. Each change is applied {samples} times, every time to a\n\
         version of the policy the kernel has not held before: once with every peer's ports\n\
         moved (every rule entry differs), once with one peer's. The firewalls load the\n\
         equivalent rule set with their own tool, in one transaction each (`iptables-legacy-restore`,\n\
         `nft -f` of a file that replaces the table): the first load into an empty table, then\n\
         {samples} replacements of the whole set. The enforcer's first apply is the time from\n\
         `enforcer run` to its ready file: loading and attaching the programs too.\n\n{}\n{}\n",
        table.markdown(),
        verdicts.join("\n")
    );
    Ok(Section {
        title: "Apply latency".into(),
        body,
        files: Vec::new(),
    })
}

fn daemon_ms(reloads: &[Reload]) -> Vec<f64> {
    reloads.iter().map(|r| r.daemon_ms).collect()
}

/// Starts the enforcer on the base policy in `dir`, then applies changed versions of it.
fn enforcer(bench: &mut Bench, dir: &Path, size: Size) -> anyhow::Result<EnforcerRun> {
    let entries = policy::check(&bench.enforcer, dir)?;
    let samples = bench.settings.samples;
    bench.with_enforcer(dir, |bench, daemon| {
        let mut run = EnforcerRun {
            entries,
            start_ms: daemon.ready.as_secs_f64() * 1000.0,
            whole: Vec::new(),
            one: Vec::new(),
        };
        let mut version = 0;
        for _ in 0..samples {
            for (peers, reloads) in [(size.peers, &mut run.whole), (1, &mut run.one)] {
                version += 1;
                policy::generate_changed(dir, size, Change { peers, version })?;
                let started = Instant::now();
                let answer = bench.control(daemon, "reload")?;
                let wall_ms = started.elapsed().as_secs_f64() * 1000.0;
                let number = |key: &str| {
                    answer[key].as_f64().ok_or_else(|| {
                        anyhow::anyhow!("the daemon's answer to reload has no {key}: {answer}")
                    })
                };
                reloads.push(Reload {
                    daemon_ms: number("elapsed_ms")?,
                    wall_ms,
                    written: number("written")?,
                });
            }
        }
        println!(
            "  enforcer @ {}: start {:.0} ms, every entry changed {} ms, one peer {} ms",
            grouped(entries),
            run.start_ms,
            fixed(&daemon_ms(&run.whole), 1),
            fixed(&daemon_ms(&run.one), 1),
        );
        Ok(run)
    })
}
