//! Per-program cost against a floor: every program the enforcer runs during the TCP load, beside
//! minimal `cgroup/connect4` programs built in the same run (`xtask/reference-ebpf`): one that
//! only allows, one that does a hash lookup, one that does a hash and an LPM trie lookup, their
//! maps filled to the entry count of the enforcer's policy. All figures are the kernel's own
//! (`bpf_stats`: run time over runs) under the same load, interleaved round by round.

use std::{collections::BTreeMap, fs::File, path::Path};

use anyhow::Context as _;
use aya::{
    Ebpf,
    maps::{HashMap, LpmTrie, lpm_trie::Key},
    programs::{CgroupAttachMode, CgroupSockAddr},
};

use super::{
    Bench, Section, Table, fixed, grouped, median,
    policy::{self, Size},
    program_cost, programs_of,
};
use crate::{command, exec, say};

/// The policy compared: 10 000 rule entries.
const SIZE: Size = Size {
    peers: 100,
    ports: 100,
};

/// The reference programs, by their name in the object, and the lookups each does.
const REFERENCES: [(&str, &str); 3] = [
    ("reference_empty", "empty (allow)"),
    ("reference_hash", "one hash lookup"),
    ("reference_hash_lpm", "hash + LPM lookup"),
];

/// Targets of the issue: a judging program within this many times the reference doing the same
/// lookups; a hook with nothing to do within this many times the empty program.
const JUDGE_TARGET: f64 = 2.0;
const OBSERVE_TARGET: f64 = 1.5;

/// The enforcer's programs that judge a connection (the rest record or observe).
const JUDGES: [&str; 4] = ["connect4", "sendmsg4", "egress", "ingress"];

/// The programs that observe sockets they mostly have nothing to do for.
const OBSERVERS: [&str; 3] = ["sock_release", "post_bind4", "setsockopt"];

/// Builds the reference object for the BPF target, as `enforcer`'s build script builds its own.
///
/// # Errors
/// When cargo fails.
pub fn build(workspace: &Path) -> anyhow::Result<std::path::PathBuf> {
    say("building the reference programs (xtask/reference-ebpf) for the BPF target");
    let target_dir = workspace.join("target/reference-ebpf");
    exec(
        "cargo build -p reference-ebpf",
        command("rustup")
            .current_dir(workspace)
            .env_remove("RUSTC")
            .env_remove("RUSTC_WORKSPACE_WRAPPER")
            .env(
                "CARGO_ENCODED_RUSTFLAGS",
                "--cfg=bpf_target_arch=\"x86_64\"\u{1f}-Cdebuginfo=2\u{1f}-Clink-arg=--btf",
            )
            .args([
                "run",
                "nightly",
                "cargo",
                "build",
                "--quiet",
                "-p",
                "reference-ebpf",
                "--release",
                "--target",
                "bpfel-unknown-none",
                "-Z",
                "build-std=core",
                "--target-dir",
            ])
            .arg(&target_dir),
    )?;
    Ok(target_dir.join("bpfel-unknown-none/release/reference"))
}

/// ns per run of each program, by round.
type Costs = BTreeMap<String, Vec<f64>>;

/// Measures the enforcer's programs and the references, `rounds` times, interleaved.
///
/// # Errors
/// When the build, a load or the daemon fails.
pub fn run(bench: &mut Bench) -> anyhow::Result<Section> {
    let object = build(&bench.workspace)?;
    let dir = bench.scratch("reference-policy");
    policy::generate(&dir, SIZE)?;
    let entries = policy::check(&bench.enforcer, &dir)?;
    let (rounds, secs) = (bench.settings.rounds, bench.settings.secs as f64);
    say(&format!(
        "per-program cost: {rounds} rounds of the enforcer at {} entries and {} reference programs",
        grouped(entries),
        REFERENCES.len()
    ));
    let (mut enforcer, mut references): (Costs, Costs) = Default::default();
    let mut runs_per_connection: BTreeMap<String, Vec<f64>> = BTreeMap::new();
    for _ in 0..rounds {
        bench.with_enforcer(&dir, |bench, daemon| {
            let before = programs_of(daemon.pid)?;
            let load = bench.load("tcp", secs)?;
            let after = programs_of(daemon.pid)?;
            for ((kind, name), (runs, ns)) in program_cost(&before, &after) {
                let label = format!("{name} ({kind})");
                enforcer
                    .entry(label.clone())
                    .or_default()
                    .push(ns as f64 / runs as f64);
                runs_per_connection
                    .entry(label)
                    .or_default()
                    .push(runs as f64 / (load.attempts.max(1)) as f64);
            }
            Ok(())
        })?;
        for (program, _) in REFERENCES {
            let ns = reference(bench, &object, program, entries, secs)?;
            references.entry(program.to_owned()).or_default().push(ns);
        }
    }
    let floor = |program: &str| references.get(program).and_then(|s| median(s));
    let (empty, hash, hash_lpm) = (
        floor("reference_empty"),
        floor("reference_hash"),
        floor("reference_hash_lpm"),
    );
    let ratio = |ns: Option<f64>, to: Option<f64>| match (ns, to) {
        (Some(ns), Some(to)) if to > 0.0 => format!("{:.1}×", ns / to),
        _ => "–".to_owned(),
    };
    let mut table = Table::new(&[
        "program",
        "ns per run (median)",
        "runs per connection",
        "÷ empty",
        "÷ hash",
        "÷ hash + LPM",
    ]);
    for (program, description) in REFERENCES {
        let ns = floor(program);
        table.row(vec![
            format!("reference: {description}"),
            fixed(references.get(program).map_or(&[][..], Vec::as_slice), 0),
            "1".to_owned(),
            ratio(ns, empty),
            ratio(ns, hash),
            ratio(ns, hash_lpm),
        ]);
    }
    let mut verdicts = Vec::new();
    for (label, samples) in &enforcer {
        let ns = median(samples);
        table.row(vec![
            format!("enforcer: {label}"),
            fixed(samples, 0),
            fixed(&runs_per_connection[label], 2),
            ratio(ns, empty),
            ratio(ns, hash),
            ratio(ns, hash_lpm),
        ]);
        let name = label.split(' ').next().unwrap_or_default();
        let (target, floor, what) = if JUDGES.contains(&name) {
            (JUDGE_TARGET, hash_lpm, "the hash + LPM reference")
        } else if OBSERVERS.contains(&name) {
            (OBSERVE_TARGET, empty, "the empty reference")
        } else {
            continue;
        };
        if let (Some(ns), Some(floor)) = (ns, floor) {
            let met = ns <= target * floor;
            verdicts.push(format!(
                "- `{name}`: {:.1}× {what} (target {target}×): {}",
                ns / floor,
                if met { "met" } else { "**missed**" }
            ));
        }
    }
    let body = format!(
        "The kernel's own account (`bpf_stats`) of every program that ran during {secs} s of the \
         TCP load (new connections), for the enforcer at {} rule entries and for minimal \
         `cgroup/connect4` programs built in the same run, attached alone to the client's cgroup, \
         their maps filled with {} entries; {rounds} interleaved round(s). `connect4` judges with \
         more than two lookups (the cgroup's label, the destination's address, both identities, \
         the rule, the socket's memory), so its ratio to the two-lookup reference is an upper \
         bound of the overhead per lookup; the observers run for every socket and mostly have \
         nothing to do.\n\n{}\n\nTargets (a judging program within {JUDGE_TARGET}× the reference \
         doing the same lookups, compared here with the two-lookup one; an observer within \
         {OBSERVE_TARGET}× the empty program):\n\n{}\n",
        grouped(entries),
        grouped(entries),
        table.markdown(),
        verdicts.join("\n"),
    );
    Ok(Section {
        title: "Per-program cost against reference programs".to_owned(),
        body,
        files: Vec::new(),
    })
}

/// Loads `program` of the reference object, fills its maps with `entries` entries that the load
/// never hits, attaches it to the client's cgroup, runs the TCP load, and returns ns per run.
fn reference(
    bench: &Bench,
    object: &Path,
    program: &str,
    entries: u64,
    secs: f64,
) -> anyhow::Result<f64> {
    let mut ebpf =
        Ebpf::load_file(object).with_context(|| format!("loading {}", object.display()))?;
    let count = u32::try_from(entries).context("entry count")?;
    {
        let map = ebpf
            .map_mut("REFERENCE_HASH")
            .context("no REFERENCE_HASH")?;
        let mut hash: HashMap<_, u64, u64> = HashMap::try_from(map)?;
        for i in 0..count {
            // Keys in 0.0.0.0/8 with port 0: no connection of the bench looks for them.
            hash.insert(u64::from(i) << 32, 0, 0)?;
        }
    }
    {
        let map = ebpf
            .map_mut("REFERENCE_TRIE")
            .context("no REFERENCE_TRIE")?;
        let mut trie: LpmTrie<_, [u32; 4], u64> = LpmTrie::try_from(map)?;
        for i in 0..count {
            trie.insert(&Key::new(128, [i, 0, 0, 1]), 0, 0)?;
        }
    }
    let prog: &mut CgroupSockAddr = ebpf
        .program_mut(program)
        .with_context(|| format!("no program {program}"))?
        .try_into()?;
    prog.load().with_context(|| format!("loading {program}"))?;
    let cgroup = File::open(&bench.client_cgroup).context("opening the client's cgroup")?;
    prog.attach(&cgroup, CgroupAttachMode::Single)
        .with_context(|| format!("attaching {program}"))?;
    let me = std::process::id();
    let before = programs_of(me)?;
    bench.load("tcp", secs)?;
    let after = programs_of(me)?;
    // Dropping the object detaches and unloads the program.
    drop(ebpf);
    let (runs, ns) = program_cost(&before, &after)
        .into_iter()
        .find(|((_, name), _)| program.starts_with(name.as_str()))
        .map(|(_, cost)| cost)
        .with_context(|| format!("{program} never ran"))?;
    Ok(ns as f64 / runs.max(1) as f64)
}
