//! Connection rate and latency: what judging a new flow costs, with no filter, the enforcer, and
//! the firewalls a user would pick instead, each holding the equivalent rule set at the same
//! sizes.
//!
//! The claim under test: judging with identity-keyed maps stays flat as the policy grows, where a
//! linear firewall slows with every rule a new connection walks past. The load is the bench's own
//! client (one thread: connect, then reset) for TCP, and a UDP loop that opens, connects, sends
//! one datagram and closes, so every datagram is a new flow.

use std::{collections::BTreeMap, fmt::Write as _, path::PathBuf};

use super::{
    Bench, LoadReport, Section, Spread, Table,
    firewall::Firewall,
    fixed, grouped, interleaved, median, plot,
    policy::{self, Size},
    program_cost, programs_of,
};
use crate::say;

/// The policy sizes, as peers × ports: 8, 1 000, 10 000 and 100 000 entries besides the measured
/// flows; the largest one also has 1 000 identities (one per peer).
pub const SIZES: [Size; 4] = [
    Size { peers: 2, ports: 4 },
    Size {
        peers: 10,
        ports: 100,
    },
    Size {
        peers: 100,
        ports: 100,
    },
    Size {
        peers: 1000,
        ports: 100,
    },
];

/// The SVG of connection rate against rule count, beside `docs/benchmarks.md`.
pub const PLOT: &str = "benchmarks-connect.svg";

enum Contender {
    None,
    Enforcer {
        size: Size,
        policy: PathBuf,
        entries: u64,
    },
    Firewall {
        firewall: Firewall,
        size: Size,
    },
}

impl Contender {
    fn label(&self) -> String {
        match self {
            Self::None => "none".into(),
            Self::Enforcer { entries, .. } => format!("enforcer @ {}", grouped(*entries)),
            Self::Firewall { firewall, size } => {
                format!(
                    "{} @ {}",
                    firewall.label(),
                    grouped(u64::from(size.entries()))
                )
            }
        }
    }

    /// The line of the plot this contender is a point of, and its x.
    fn series(&self) -> Option<(&'static str, Size)> {
        match self {
            Self::None => None,
            Self::Enforcer { size, .. } => Some(("enforcer", *size)),
            Self::Firewall { firewall, size } => Some((firewall.label(), *size)),
        }
    }
}

/// One run of one contender.
struct Run {
    tcp: LoadReport,
    udp: LoadReport,
    /// Per program of the enforcer: (runs, ns) in the TCP test and in the UDP test.
    costs: BTreeMap<(String, String), [(u64, u64); 2]>,
}

/// Measures every contender in interleaved rounds.
///
/// # Errors
/// When a policy is refused, a contender cannot be set up, or a load client fails.
pub fn run(bench: &mut Bench) -> anyhow::Result<Section> {
    let mut contenders = vec![Contender::None];
    for (k, size) in SIZES.into_iter().enumerate() {
        let dir = bench.scratch(&format!("connect-policy-{k}"));
        policy::generate(&dir, size)?;
        let entries = policy::check(&bench.enforcer, &dir)?;
        contenders.push(Contender::Enforcer {
            size,
            policy: dir,
            entries,
        });
        for firewall in Firewall::ALL {
            contenders.push(Contender::Firewall { firewall, size });
        }
    }
    say(&format!(
        "connection rate: {} contenders, a TCP and a UDP test of {} s each per round",
        contenders.len(),
        bench.settings.secs
    ));
    let rounds = bench.settings.rounds;
    let runs = interleaved(bench, &contenders, |bench, round, contender| {
        let run = measure(bench, contender)?;
        println!(
            "  round {round}/{rounds}  {:<40} TCP {:8.0} conn/s (p99 {:7.1} µs)  UDP {:8.0} flows/s{}",
            contender.label(),
            run.tcp.per_second,
            run.tcp.p99_us.unwrap_or(f64::NAN),
            run.udp.per_second,
            if run.tcp.failed + run.udp.failed > 0 {
                format!(
                    "  FAILED {} + {}: {}",
                    run.tcp.failed,
                    run.udp.failed,
                    run.tcp
                        .first_error
                        .as_deref()
                        .or(run.udp.first_error.as_deref())
                        .unwrap_or("")
                )
            } else {
                String::new()
            }
        );
        Ok(run)
    })?;
    Ok(section(&contenders, &runs))
}

fn measure(bench: &mut Bench, contender: &Contender) -> anyhow::Result<Run> {
    let secs = bench.settings.secs as f64;
    match contender {
        Contender::None => Ok(Run {
            tcp: bench.load("tcp", secs)?,
            udp: bench.load("udp", secs)?,
            costs: BTreeMap::new(),
        }),
        Contender::Firewall { firewall, size } => {
            let ns = bench.client_ns.clone();
            let file = bench.scratch("firewall-rules");
            firewall.apply(&ns, *size, &file)?;
            let result = (|| {
                anyhow::Ok(Run {
                    tcp: bench.load("tcp", secs)?,
                    udp: bench.load("udp", secs)?,
                    costs: BTreeMap::new(),
                })
            })();
            let cleared = firewall.clear(&ns, &bench.scratch("."));
            let run = result?;
            cleared?;
            Ok(run)
        }
        Contender::Enforcer { policy, .. } => bench.with_enforcer(policy, |bench, daemon| {
            let before = programs_of(daemon.pid)?;
            let tcp = bench.load("tcp", secs)?;
            let between = programs_of(daemon.pid)?;
            let udp = bench.load("udp", secs)?;
            let after = programs_of(daemon.pid)?;
            let mut costs: BTreeMap<(String, String), [(u64, u64); 2]> = BTreeMap::new();
            for (i, cost) in [
                program_cost(&before, &between),
                program_cost(&between, &after),
            ]
            .into_iter()
            .enumerate()
            {
                for (prog, runs_ns) in cost {
                    costs.entry(prog).or_default()[i] = runs_ns;
                }
            }
            Ok(Run { tcp, udp, costs })
        }),
    }
}

/// Per round samples of one contender.
#[derive(Default)]
struct Samples {
    tcp_rate: Vec<f64>,
    tcp_ratio: Vec<f64>,
    p50_us: Vec<f64>,
    p99_us: Vec<f64>,
    udp_rate: Vec<f64>,
    udp_ratio: Vec<f64>,
    failed: u64,
    /// (type, name) → ns/run and runs per connection in the TCP test, the same in the UDP test.
    progs: BTreeMap<(String, String), [Vec<f64>; 4]>,
}

fn samples(runs: &[Run], nones: &[Run]) -> Samples {
    let mut s = Samples::default();
    for (run, none) in runs.iter().zip(nones) {
        s.tcp_rate.push(run.tcp.per_second);
        s.tcp_ratio.push(run.tcp.per_second / none.tcp.per_second);
        s.p50_us.extend(run.tcp.p50_us);
        s.p99_us.extend(run.tcp.p99_us);
        s.udp_rate.push(run.udp.per_second);
        s.udp_ratio.push(run.udp.per_second / none.udp.per_second);
        s.failed += run.tcp.failed + run.udp.failed;
        let attempts = [run.tcp.attempts as f64, run.udp.attempts as f64];
        for (prog, tests) in &run.costs {
            let entry = s.progs.entry(prog.clone()).or_default();
            for (i, (runs, ns)) in tests.iter().enumerate() {
                if *runs > 0 && attempts[i] > 0.0 {
                    entry[2 * i].push(*ns as f64 / *runs as f64);
                    entry[2 * i + 1].push(*runs as f64 / attempts[i]);
                }
            }
        }
    }
    s
}

fn section(contenders: &[Contender], runs: &[Vec<Run>]) -> Section {
    let all: Vec<Samples> = runs.iter().map(|r| samples(r, &runs[0])).collect();
    let show = |v: &[f64], decimals| Spread::of(v).map_or_else(|| "–".into(), |s| s.show(decimals));
    let mut rates = Table::new(&[
        "contender @ rule entries",
        "TCP conn/s (min / median / max)",
        "ratio to none",
        "connect p50 / p99 µs",
        "UDP flows/s (min / median / max)",
        "ratio to none",
        "failed",
    ]);
    let mut progs = Table::new(&[
        "contender",
        "program (type)",
        "TCP: ns/run",
        "TCP: runs/conn",
        "UDP: ns/run",
        "UDP: runs/flow",
    ]);
    let mut series: BTreeMap<&str, Vec<(f64, f64)>> = BTreeMap::new();
    for (contender, s) in contenders.iter().zip(&all) {
        rates.row(vec![
            contender.label(),
            show(&s.tcp_rate, 0),
            fixed(&s.tcp_ratio, 3),
            format!("{} / {}", fixed(&s.p50_us, 1), fixed(&s.p99_us, 1)),
            show(&s.udp_rate, 0),
            fixed(&s.udp_ratio, 3),
            s.failed.to_string(),
        ]);
        if let Some((line, size)) = contender.series() {
            series.entry(line).or_default().push((
                f64::from(size.entries()),
                median(&s.tcp_ratio).unwrap_or(0.0),
            ));
        }
        for ((kind, name), [tcp_ns, tcp_runs, udp_ns, udp_runs]) in &s.progs {
            progs.row(vec![
                contender.label(),
                format!("{name} ({kind})"),
                fixed(tcp_ns, 0),
                fixed(tcp_runs, 2),
                fixed(udp_ns, 0),
                fixed(udp_runs, 2),
            ]);
        }
    }
    let svg = plot::lines(&plot::Chart {
        title: "New TCP connections/s relative to no filter",
        x_label: "rule entries besides the measured flows (log scale)",
        y_label: "connections/s ÷ none (median of rounds)",
        series: series
            .into_iter()
            .map(|(name, points)| (name.to_owned(), points))
            .collect(),
    });
    let mut body = String::from(
        "New connections are where a filter judges. The client (one thread, in the client's\n\
         cgroup) opens TCP connections to the server one after the other and resets each once it is\n\
         up; the UDP test opens a socket, connects it, sends one datagram and closes it, again and\n\
         again. Every contender holds the same allow list: the measured flows plus `peers × ports`\n\
         entries for other peers (the enforcer as a generated policy, the firewalls as the\n\
         equivalent rule set in the client's namespace, the measured flows' rules last behind an\n\
         `established` accept). The enforcer's count is what `enforcer check` reports, measured\n\
         flows included; the largest policy has 1 000 peers, each an identity of its own.\n\n",
    );
    body.push_str(&rates.markdown());
    let _ = write!(body, "\n![connection rate against rule count]({PLOT})\n");
    body.push_str(
        "\nThe enforcer's programs during these tests (`bpf_stats`, median over the rounds; runs per\n\
         connection or flow attempted):\n\n",
    );
    body.push_str(&progs.markdown());
    print!("\n{body}\n");
    Section {
        title: "Connection rate and latency".into(),
        body,
        files: vec![(PLOT.into(), svg)],
    }
}
