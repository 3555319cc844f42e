//! Reload under load: the connection rate of the TCP load while the daemon is handed a new
//! 10 000-entry policy every 100 ms, against the same daemon left alone, in interleaved rounds.
//!
//! Every version moves every peer's ports, so each reload rewrites every rule entry of the
//! standby slot (a policy that only alternated between two versions would cost the slots no
//! writes). The load's own port is allowed by every version: a connection that fails during a
//! reload is a fault, and is counted.

use std::{
    collections::BTreeMap,
    sync::atomic::{AtomicBool, Ordering},
    thread,
    time::{Duration, Instant},
};

use anyhow::Context as _;

use super::{
    Bench, Daemon, LoadReport, Section, Spread, Table, fixed, grouped,
    policy::{self, Change, Size},
};
use crate::say;

const SIZE: Size = Size {
    peers: 100,
    ports: 100,
};

const PERIOD: Duration = Duration::from_millis(100);

/// What one round under reloads did.
struct Churned {
    load: LoadReport,
    reloads: Vec<f64>,
    failed_reloads: usize,
    /// The daemon's counters that moved during the round, other than the ones every
    /// allowed connection moves.
    counters: BTreeMap<String, u64>,
}

/// Counters an allowed connection or a reload moves anyway.
const EXPECTED: [&str; 5] = [
    "allowed",
    "remembered",
    "established",
    "tracked",
    "self_exempt",
];

/// Measures the load with and without reloads, `rounds` times each, interleaved.
///
/// # Errors
/// When the daemon does not start or the load client fails.
pub fn run(bench: &mut Bench) -> anyhow::Result<Section> {
    let dir = bench.scratch("churn-policy");
    policy::generate(&dir, SIZE)?;
    let entries = policy::check(&bench.enforcer, &dir)?;
    let (rounds, secs) = (bench.settings.rounds, bench.settings.secs as f64);
    say(&format!(
        "reload under load: {rounds} rounds of {secs} s, quiet and with a {}-entry policy every {} ms",
        grouped(entries),
        PERIOD.as_millis()
    ));
    let (quiet, churned) = bench.with_enforcer(&dir, |bench, daemon| {
        let (mut quiet, mut churned) = (Vec::new(), Vec::new());
        let mut version = 0;
        for _ in 0..rounds {
            quiet.push(bench.load("tcp", secs)?);
            let before = bench.counters(daemon)?;
            let mut round = under_reloads(bench, daemon, &dir, secs, &mut version)?;
            let after = bench.counters(daemon)?;
            round.counters = after
                .into_iter()
                .filter(|(name, _)| !EXPECTED.contains(&name.as_str()))
                .filter_map(|(name, n)| {
                    let moved = n.saturating_sub(before.get(&name).copied().unwrap_or(0));
                    (moved > 0).then_some((name, moved))
                })
                .collect();
            churned.push(round);
        }
        // What the kernel denied, if anything, in the daemon's own words.
        let events = std::fs::read_to_string(&daemon.events).unwrap_or_default();
        for line in events
            .lines()
            .filter(|l| l.contains("\"class_uid\":4001"))
            .take(3)
        {
            println!("  denied during the rounds: {line}");
        }
        Ok((quiet, churned))
    })?;
    let rate = |loads: &mut dyn Iterator<Item = &LoadReport>| {
        Spread::of(&loads.map(|l| l.per_second).collect::<Vec<_>>())
    };
    let quiet_rate = rate(&mut quiet.iter());
    let churn_rate = rate(&mut churned.iter().map(|c| &c.load));
    let ratios: Vec<f64> = quiet
        .iter()
        .zip(&churned)
        .map(|(q, c)| c.load.per_second / q.per_second.max(1.0))
        .collect();
    let reload_ms: Vec<f64> = churned
        .iter()
        .flat_map(|c| c.reloads.iter().copied())
        .collect();
    let reload_spread = Spread::of(&reload_ms);
    let failed: u64 = churned.iter().map(|c| c.load.failed).sum::<u64>()
        + quiet.iter().map(|q| q.failed).sum::<u64>();
    let failed_reloads: usize = churned.iter().map(|c| c.failed_reloads).sum();
    let mut moved: BTreeMap<&str, u64> = BTreeMap::new();
    for round in &churned {
        for (name, n) in &round.counters {
            *moved.entry(name.as_str()).or_default() += n;
        }
    }
    let moved = if moved.is_empty() {
        "no verdict counter besides those of allowed traffic moved".to_owned()
    } else {
        let listed: Vec<String> = moved
            .iter()
            .map(|(name, n)| format!("`{name}` {n}"))
            .collect();
        format!(
            "counters that moved during the reloads: {}",
            listed.join(", ")
        )
    };
    let first_errors: Vec<&str> = quiet
        .iter()
        .chain(churned.iter().map(|c| &c.load))
        .filter_map(|l| l.first_error.as_deref())
        .collect();
    let show = |s: Option<Spread>, d| s.map_or_else(|| "–".into(), |s| s.show(d));
    let mut table = Table::new(&[
        "daemon",
        "connections/s (min / median / max)",
        "ratio to quiet",
        "p50 µs",
        "p99 µs",
        "failed connects",
    ]);
    let latency = |loads: &[&LoadReport], pick: fn(&LoadReport) -> Option<f64>| {
        fixed(&loads.iter().filter_map(|l| pick(l)).collect::<Vec<_>>(), 1)
    };
    let quiet_loads: Vec<&LoadReport> = quiet.iter().collect();
    let churn_loads: Vec<&LoadReport> = churned.iter().map(|c| &c.load).collect();
    table.row(vec![
        "quiet".into(),
        show(quiet_rate, 0),
        "1.00".into(),
        latency(&quiet_loads, |l| l.p50_us),
        latency(&quiet_loads, |l| l.p99_us),
        grouped(quiet.iter().map(|q| q.failed).sum()),
    ]);
    table.row(vec![
        format!("reloading every {} ms", PERIOD.as_millis()),
        show(churn_rate, 0),
        fixed(&ratios, 3),
        latency(&churn_loads, |l| l.p50_us),
        latency(&churn_loads, |l| l.p99_us),
        grouped(churned.iter().map(|c| c.load.failed).sum()),
    ]);
    let body = format!(
        "The TCP load (new connections, as in the first measure) against a daemon enforcing a \
         {}-entry policy, left alone and handed a new version every {} ms (`enforcer reload`, \
         each version moving every peer's ports so that every entry is rewritten), in {rounds} \
         interleaved rounds of {secs} s.\n\n{}\n\n{} reloads applied, {} ms each (min / median / \
         max, the daemon's own account); {failed_reloads} refused. {} connections failed in all{}; {moved}.\n",
        grouped(entries),
        PERIOD.as_millis(),
        table.markdown(),
        grouped(reload_ms.len() as u64),
        show(reload_spread, 1),
        grouped(failed),
        if first_errors.is_empty() {
            String::new()
        } else {
            format!(" (first errors: {})", first_errors.join("; "))
        },
    );
    Ok(Section {
        title: "Reload under load".to_owned(),
        body,
        files: Vec::new(),
    })
}

/// Runs the load for `secs` while another thread writes and reloads a new version every period.
fn under_reloads(
    bench: &Bench,
    daemon: &Daemon,
    dir: &std::path::Path,
    secs: f64,
    version: &mut u32,
) -> anyhow::Result<Churned> {
    let done = AtomicBool::new(false);
    let first = *version;
    thread::scope(|scope| {
        let reloader = scope.spawn(|| -> anyhow::Result<(Vec<f64>, usize, u32)> {
            let (mut reloads, mut failed, mut next) = (Vec::new(), 0, first);
            let mut tick = Instant::now();
            while !done.load(Ordering::Relaxed) {
                next += 1;
                policy::generate_changed(
                    dir,
                    SIZE,
                    Change {
                        peers: SIZE.peers,
                        version: next,
                    },
                )?;
                match bench.control(daemon, "reload") {
                    Ok(answer) => reloads.push(
                        answer["elapsed_ms"]
                            .as_f64()
                            .with_context(|| format!("no elapsed_ms in {answer}"))?,
                    ),
                    Err(_) => failed += 1,
                }
                tick += PERIOD;
                if let Some(wait) = tick.checked_duration_since(Instant::now()) {
                    thread::sleep(wait);
                }
            }
            Ok((reloads, failed, next))
        });
        let load = bench.load("tcp", secs);
        done.store(true, Ordering::Relaxed);
        let (reloads, failed_reloads, last) = reloader
            .join()
            .map_err(|_| anyhow::anyhow!("the reloading thread panicked"))??;
        *version = last;
        Ok(Churned {
            load: load?,
            reloads,
            failed_reloads,
            counters: BTreeMap::new(),
        })
    })
}
