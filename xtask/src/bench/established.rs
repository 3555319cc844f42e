//! Established-flow cost: what a flow already judged pays per packet, with no filter and with the
//! enforcer holding policies of very different sizes.
//!
//! A judged flow should cost one flow-table lookup per packet, whatever the size of the policy; a
//! policy 10 000 times bigger must not show here. Two loads bound the cost: a TCP stream (few,
//! large, GSO packets: the per-byte view) and 64-byte UDP datagrams sent as fast as possible (the
//! per-packet view, where a filter hurts most). `kernel.bpf_stats_enabled` gives what each of the
//! daemon's programs costs per run.

use std::{collections::BTreeMap, fmt::Write as _, path::PathBuf};

use anyhow::Context as _;
use serde_json::Value;

use super::{
    Bench, Section, Spread, Table, fixed, grouped, interleaved, median,
    policy::{self, Size},
    program_cost, programs_of,
};
use crate::say;

/// The policy sizes: 10 rule entries (iperf3's two and 2 peers × 4 ports), and about 100 000
/// (340 peers × 300 ports).
const SIZES: [Size; 2] = [
    Size { peers: 2, ports: 4 },
    Size {
        peers: 340,
        ports: 300,
    },
];

/// The target of a filter on established flows.
const TARGET: f64 = 0.97;

enum Contender {
    None,
    Enforcer { policy: PathBuf, entries: u64 },
}

impl Contender {
    fn label(&self) -> String {
        match self {
            Self::None => "none".into(),
            Self::Enforcer { entries, .. } => {
                format!("enforcer @ {} rule entries", grouped(*entries))
            }
        }
    }
}

/// (type, name) of a program → per-round samples of: ns/run in the TCP test, ns/run in the UDP
/// test, runs and ns per UDP datagram sent.
type ProgSamples = BTreeMap<(String, String), [Vec<f64>; 4]>;

/// One contender's samples over the rounds.
#[derive(Default)]
struct Samples {
    tcp_gbps: Vec<f64>,
    udp_kpps: Vec<f64>,
    /// Against `none` of the same round.
    tcp_ratio: Vec<f64>,
    udp_ratio: Vec<f64>,
    ready_s: Vec<f64>,
    progs: ProgSamples,
    /// All programs' ns per UDP datagram sent, per round.
    udp_ns_per_datagram: Vec<f64>,
}

/// One run of one contender.
struct Run {
    tcp_gbps: f64,
    udp_kpps: f64,
    /// Datagrams the client sent (every one crosses the sending path, lost or not).
    udp_sent: f64,
    ready_s: Option<f64>,
    /// Per program: (runs, ns) in the TCP test and in the UDP test.
    costs: BTreeMap<(String, String), [(u64, u64); 2]>,
}

/// Measures every contender in interleaved rounds.
///
/// # Errors
/// When a policy is refused, the daemon does not start, or iperf3 fails.
pub fn run(bench: &mut Bench) -> anyhow::Result<Section> {
    let mut contenders = vec![Contender::None];
    for (k, size) in SIZES.into_iter().enumerate() {
        let dir = bench.scratch(&format!("policy-{k}"));
        policy::generate(&dir, size)?;
        let entries = policy::check(&bench.enforcer, &dir)?;
        say(&format!(
            "policy of {} peers × {} ports: enforcer check accepts it, {} rule entries",
            size.peers,
            size.ports,
            grouped(entries)
        ));
        contenders.push(Contender::Enforcer {
            policy: dir,
            entries,
        });
    }
    let rounds = bench.settings.rounds;
    let runs = interleaved(bench, &contenders, |bench, round, contender| {
        let run = measure(bench, contender, round == 1)?;
        println!(
            "  round {round}/{rounds}  {:<34} TCP {:6.2} Gbit/s  UDP 64 B {:7.1} kpps{}",
            contender.label(),
            run.tcp_gbps,
            run.udp_kpps,
            run.ready_s
                .map(|s| format!("  (ready in {s:.2} s)"))
                .unwrap_or_default()
        );
        Ok(run)
    })?;
    let samples: Vec<Samples> = runs
        .iter()
        .map(|of_contender| {
            let mut samples = Samples::default();
            // Each round's `none` (the first contender) is the reference of that round.
            for (run, none) in of_contender.iter().zip(&runs[0]) {
                record(&mut samples, run, none.tcp_gbps, none.udp_kpps);
            }
            samples
        })
        .collect();
    Ok(section(&contenders, &samples))
}

fn record(samples: &mut Samples, run: &Run, tcp0: f64, udp0: f64) {
    samples.tcp_gbps.push(run.tcp_gbps);
    samples.udp_kpps.push(run.udp_kpps);
    samples.tcp_ratio.push(run.tcp_gbps / tcp0);
    samples.udp_ratio.push(run.udp_kpps / udp0);
    samples.ready_s.extend(run.ready_s);
    let mut total = 0.0;
    for (prog, [(tcp_runs, tcp_ns), (udp_runs, udp_ns)]) in &run.costs {
        let entry = samples.progs.entry(prog.clone()).or_default();
        if *tcp_runs > 0 {
            entry[0].push(*tcp_ns as f64 / *tcp_runs as f64);
        }
        if *udp_runs > 0 {
            entry[1].push(*udp_ns as f64 / *udp_runs as f64);
            entry[2].push(*udp_runs as f64 / run.udp_sent);
            entry[3].push(*udp_ns as f64 / run.udp_sent);
            total += *udp_ns as f64 / run.udp_sent;
        }
    }
    if !run.costs.is_empty() {
        samples.udp_ns_per_datagram.push(total);
    }
}

/// One TCP test and one UDP test of `contender`, with the daemon's program costs.
fn measure(bench: &mut Bench, contender: &Contender, first: bool) -> anyhow::Result<Run> {
    let secs = bench.settings.secs.to_string();
    let tcp_args = ["-t", secs.as_str()];
    let udp_args = ["-u", "-l", "64", "-b", "0", "-t", secs.as_str()];
    let Contender::Enforcer { policy, .. } = contender else {
        let tcp_gbps = tcp(&bench.iperf3(&tcp_args)?)?;
        let (udp_kpps, udp_sent) = udp(&bench.iperf3(&udp_args)?)?;
        return Ok(Run {
            tcp_gbps,
            udp_kpps,
            udp_sent,
            ready_s: None,
            costs: BTreeMap::new(),
        });
    };
    let daemon = bench.start_enforcer(policy)?;
    let result = (|| {
        let before = programs_of(daemon.pid)?;
        if first {
            let mut names: Vec<String> = before
                .values()
                .map(|p| format!("{} ({})", p.name, p.kind))
                .collect();
            names.sort();
            names.dedup();
            say(&format!(
                "the daemon (pid {}) holds {} programs: {}",
                daemon.pid,
                before.len(),
                names.join(", ")
            ));
        }
        let tcp_gbps = tcp(&bench.iperf3(&tcp_args)?)?;
        let between = programs_of(daemon.pid)?;
        let (udp_kpps, udp_sent) = udp(&bench.iperf3(&udp_args)?)?;
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
        anyhow::Ok(Run {
            tcp_gbps,
            udp_kpps,
            udp_sent,
            ready_s: Some(daemon.ready.as_secs_f64()),
            costs,
        })
    })();
    let stopped = bench.stop_enforcer(&daemon);
    let run = result.with_context(|| {
        format!(
            "measuring {}; the daemon's log:\n{}",
            contender.label(),
            std::fs::read_to_string(&daemon.log).unwrap_or_default()
        )
    })?;
    stopped?;
    Ok(run)
}

/// Gbit/s received by the server.
fn tcp(report: &Value) -> anyhow::Result<f64> {
    let bps = report["end"]["sum_received"]["bits_per_second"]
        .as_f64()
        .context("no end.sum_received.bits_per_second in iperf3's report")?;
    Ok(bps / 1e9)
}

/// Thousands of datagrams per second the server received, and how many the client sent.
fn udp(report: &Value) -> anyhow::Result<(f64, f64)> {
    // iperf3 ≥ 3.9 has the server's view in sum_received and the client's in sum_sent; older
    // ones only the server's, in sum.
    let end = &report["end"];
    let pick = |name: &str| {
        if end[name].is_object() {
            &end[name]
        } else {
            &end["sum"]
        }
    };
    let field = |sum: &Value, name: &str| {
        sum[name]
            .as_f64()
            .with_context(|| format!("no {name} in iperf3's UDP summary: {sum}"))
    };
    let (server, client) = (pick("sum_received"), pick("sum_sent"));
    let received = field(server, "packets")? - field(server, "lost_packets")?;
    let seconds = field(server, "seconds")?;
    anyhow::ensure!(
        seconds > 0.0 && received > 0.0,
        "iperf3 received no datagrams: {server}"
    );
    Ok((received / seconds / 1e3, field(client, "packets")?))
}

fn section(contenders: &[Contender], samples: &[Samples]) -> Section {
    let show = |v: &[f64], decimals| Spread::of(v).map_or_else(|| "–".into(), |s| s.show(decimals));
    let mut flows = Table::new(&[
        "contender",
        "TCP Gbit/s (min / median / max)",
        "ratio to none (median)",
        "UDP 64 B kpps (min / median / max)",
        "ratio to none (median)",
        "daemon ready, s (median)",
    ]);
    let mut progs = Table::new(&[
        "contender",
        "program (type)",
        "TCP stream: ns/run",
        "UDP 64 B: ns/run",
        "UDP 64 B: runs/datagram",
        "UDP 64 B: ns/datagram",
    ]);
    let mut verdicts = Vec::new();
    for (contender, s) in contenders.iter().zip(samples) {
        let none = matches!(contender, Contender::None);
        flows.row(vec![
            contender.label(),
            show(&s.tcp_gbps, 2),
            if none {
                "1".into()
            } else {
                fixed(&s.tcp_ratio, 3)
            },
            show(&s.udp_kpps, 1),
            if none {
                "1".into()
            } else {
                fixed(&s.udp_ratio, 3)
            },
            fixed(&s.ready_s, 2),
        ]);
        if none {
            continue;
        }
        let (tcp, udp) = (
            median(&s.tcp_ratio).unwrap_or(0.0),
            median(&s.udp_ratio).unwrap_or(0.0),
        );
        verdicts.push(format!(
            "- {}: {} (TCP {:+.1} %, UDP {:+.1} %)",
            contender.label(),
            if tcp >= TARGET && udp >= TARGET {
                "**met**"
            } else {
                "**not met**"
            },
            (tcp - 1.0) * 100.0,
            (udp - 1.0) * 100.0
        ));
        for ((kind, name), [tcp_run, udp_run, udp_runs, udp_ns]) in &s.progs {
            progs.row(vec![
                contender.label(),
                format!("{name} ({kind})"),
                fixed(tcp_run, 0),
                fixed(udp_run, 0),
                fixed(udp_runs, 2),
                fixed(udp_ns, 1),
            ]);
        }
        progs.row(vec![
            contender.label(),
            "**all programs**".into(),
            String::new(),
            String::new(),
            String::new(),
            format!("**{}**", fixed(&s.udp_ns_per_datagram, 1)),
        ]);
    }
    let none = &samples[0];
    let noise = |v: &[f64]| Spread::of(v).map_or(0.0, |s| (s.max - s.min) / s.median * 100.0);
    let mut body = String::from(
        "A flow already judged should cost one flow-table lookup per packet, whatever the policy's\n\
         size. Two loads bound it: one TCP stream (`iperf3 -c`, large GSO packets) and 64-byte UDP\n\
         datagrams sent as fast as the client can (`iperf3 -u -l 64 -b 0`), counted where the server\n\
         receives them. Ratios are taken against `none` of the same round, then the median over the\n\
         rounds.\n\n",
    );
    body.push_str(&flows.markdown());
    let _ = write!(
        body,
        "\nTarget: within {:.0} % of no filter (median ratio ≥ {TARGET} on both loads).\n\n{}\n",
        (1.0 - TARGET) * 100.0,
        verdicts.join("\n")
    );
    if samples.first().is_some_and(|s| s.tcp_gbps.len() > 1) {
        let _ = writeln!(
            body,
            "\nFor scale, `none` alone spread by {:.1} % (TCP) and {:.1} % (UDP) between rounds: a\n\
             difference smaller than that is noise of this machine, not the filter.",
            noise(&none.tcp_gbps),
            noise(&none.udp_kpps)
        );
    }
    body.push_str(
        "\nPer-program cost from `kernel.bpf_stats_enabled` (`run_time_ns` / `run_cnt` of the\n\
         daemon's programs over each test, median over the rounds; only programs that ran). Per\n\
         datagram: every run of the program during the UDP test, over the datagrams the client sent.\n\n",
    );
    body.push_str(&progs.markdown());
    print!("\n{}\n", body);
    Section {
        title: "Established flows".into(),
        body,
        files: Vec::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_iperf3_udp_reports() {
        let report = serde_json::json!({"end": {
            "sum_sent": {"seconds": 2.0, "packets": 1000, "lost_packets": 0},
            "sum_received": {"seconds": 2.0, "packets": 1000, "lost_packets": 100}
        }});
        let (kpps, sent) = udp(&report).expect("a complete report");
        assert!((kpps - 0.45).abs() < 1e-9);
        assert!((sent - 1000.0).abs() < 1e-9);
    }
}
