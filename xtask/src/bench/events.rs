//! Events under a flood: one client process opens TCP connections to a port the policy denies as
//! fast as it can, and every attempt must be accounted for: delivered to the JSON sink (an event
//! with a `count`: aggregated repeats add to it), or counted lost by the kernel. The kernel's
//! `denied` counter is the number of attempts the datapath saw; the client's own count of refused
//! connects is shown beside it.

use std::{
    fs,
    time::{Duration, Instant},
};

use anyhow::Context as _;
use serde_json::Value;

use super::{
    Bench, Daemon, SERVER, Section, Table, grouped, median,
    policy::{self, Size},
};
use crate::say;

/// A port no generated policy allows.
const DENIED_PORT: u16 = 7;

/// The target of the issue: this many attempts per second fully accounted, under 1 % lost.
const TARGET_RATE: f64 = 150_000.0;
const TARGET_LOST: f64 = 0.01;

/// How long the daemon may take to write out what the flood left in its ring buffer.
const DRAIN: Duration = Duration::from_secs(20);

/// One flood as the client, the kernel and the sink saw it.
struct Flood {
    secs: f64,
    /// Connects the client saw refused.
    refused: u64,
    /// Denials the kernel counted.
    denied: u64,
    /// Events written for the flood, and the attempts their `count`s add up to.
    events: u64,
    counted: u64,
    /// Events the kernel could not write.
    lost: u64,
}

impl Flood {
    fn attempts_per_second(&self) -> f64 {
        self.denied as f64 / self.secs
    }

    fn lost_share(&self) -> f64 {
        self.lost as f64 / (self.denied as f64).max(1.0)
    }

    fn adds_up(&self) -> bool {
        self.counted + self.lost == self.denied && self.denied == self.refused
    }
}

/// Floods the enforcer with denied attempts, `rounds` times.
///
/// # Errors
/// When the daemon does not start, the client fails, or the daemon does not answer.
pub fn run(bench: &mut Bench) -> anyhow::Result<Section> {
    let dir = bench.scratch("events-policy");
    policy::generate(
        &dir,
        Size {
            peers: 10,
            ports: 1,
        },
    )?;
    let (rounds, secs) = (bench.settings.rounds, bench.settings.secs as f64);
    say(&format!(
        "events: {rounds} floods of {secs} s of denied TCP connects from one process"
    ));
    let floods = bench.with_enforcer(&dir, |bench, daemon| {
        (0..rounds)
            .map(|_| flood(bench, daemon, secs))
            .collect::<anyhow::Result<Vec<_>>>()
    })?;
    let mut table = Table::new(&[
        "round",
        "attempts/s",
        "refused (client)",
        "denied (kernel)",
        "events written",
        "attempts in their counts",
        "lost (counted)",
        "lost %",
        "adds up",
    ]);
    for (k, f) in floods.iter().enumerate() {
        table.row(vec![
            (k + 1).to_string(),
            grouped(f.attempts_per_second().round() as u64),
            grouped(f.refused),
            grouped(f.denied),
            grouped(f.events),
            grouped(f.counted),
            grouped(f.lost),
            format!("{:.2}", 100.0 * f.lost_share()),
            if f.adds_up() { "yes" } else { "**no**" }.to_owned(),
        ]);
    }
    let rates: Vec<f64> = floods.iter().map(Flood::attempts_per_second).collect();
    let rate = median(&rates).unwrap_or(0.0);
    let lost_max = floods.iter().map(Flood::lost_share).fold(0.0, f64::max);
    let all_add_up = floods.iter().all(Flood::adds_up);
    let met = rate >= TARGET_RATE && lost_max < TARGET_LOST && all_add_up;
    let body = format!(
        "One process in the client's cgroup opens TCP connections to port {DENIED_PORT} of the \
         server, which the policy denies, for {secs} s per round; the daemon writes OCSF events to \
         a JSON-lines file. Every attempt must be delivered (in an event's `count`) or counted \
         lost by the kernel.\n\n{}\n\n**Target** (a flood of {} attempts/s fully accounted, under \
         {:.0} % lost): {}. Median rate {} attempts/s; lost {:.2} % at most; {}.\n",
        table.markdown(),
        grouped(TARGET_RATE as u64),
        TARGET_LOST * 100.0,
        if met { "met" } else { "**missed**" },
        grouped(rate.round() as u64),
        100.0 * lost_max,
        if all_add_up {
            "every round adds up exactly"
        } else {
            "**some round does not add up**"
        },
    );
    Ok(Section {
        title: "Events under a flood of denied attempts".to_owned(),
        body,
        files: Vec::new(),
    })
}

/// One flood of `secs` seconds, then waits for the daemon to write out what it read.
fn flood(bench: &Bench, daemon: &Daemon, secs: f64) -> anyhow::Result<Flood> {
    let before = counters(bench, daemon)?;
    let events_before = fs::read_to_string(&daemon.events).unwrap_or_default().len();
    let report = bench.load_at("tcp", DENIED_PORT, secs)?;
    let after = counters(bench, daemon)?;
    let (denied, lost) = (after.0 - before.0, after.1 - before.1);
    let deadline = Instant::now() + DRAIN;
    let (events, counted) = loop {
        let (events, counted) = flood_events(&daemon.events, events_before)?;
        if counted + lost >= denied || Instant::now() > deadline {
            break (events, counted);
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    Ok(Flood {
        secs,
        refused: report.failed,
        denied,
        events,
        counted,
        lost,
    })
}

/// The kernel's `denied` and `events_lost` counters, from `enforcer status`.
fn counters(bench: &Bench, daemon: &Daemon) -> anyhow::Result<(u64, u64)> {
    let counters = bench.counters(daemon)?;
    let read = |name: &str| {
        counters
            .get(name)
            .copied()
            .with_context(|| format!("no counter {name} in the status: {counters:?}"))
    };
    Ok((read("denied")?, read("events_lost")?))
}

/// The denial events for the flood's port written after byte `from` of the sink, and the
/// attempts their counts add up to.
fn flood_events(path: &std::path::Path, from: usize) -> anyhow::Result<(u64, u64)> {
    let text = fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let (mut events, mut counted) = (0, 0);
    for line in text.get(from..).unwrap_or_default().lines() {
        // The last line may be half written.
        let Ok(event) = serde_json::from_str::<Value>(line) else {
            continue;
        };
        let for_flood = event["class_uid"] == 4001
            && event["action_id"] == 2
            && event["dst_endpoint"]["ip"] == SERVER
            && event["dst_endpoint"]["port"] == DENIED_PORT;
        if for_flood {
            events += 1;
            counted += event["count"].as_u64().unwrap_or(1);
        }
    }
    Ok((events, counted))
}
