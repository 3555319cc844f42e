//! The script a guest runs: the test binaries built on the host, one at a time, with the
//! harness's environment.

use std::{
    collections::BTreeMap,
    fmt::Write as _,
    fs,
    os::unix::fs::PermissionsExt as _,
    path::{Path, PathBuf},
};

use anyhow::Context as _;

use super::{SELECTION, kernels::Kernel};

/// Under emulation the verifier and everything else run about twenty times slower; the
/// harness's waits for something to happen are stretched by this much (never its checks that
/// something does not happen).
const EMULATED_TIME_SCALE: u32 = 10;

/// Writes the guest's script for `kernel` and returns its path.
///
/// # Errors
/// When a selected test target was not built or the script cannot be written.
pub fn script(
    workspace: &Path,
    dir: &Path,
    kernel: &Kernel,
    tests: &BTreeMap<String, PathBuf>,
    full: bool,
    emulated: bool,
) -> anyhow::Result<PathBuf> {
    let mut runs: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
    if full {
        for name in tests.keys() {
            runs.insert(name, Vec::new());
        }
    } else {
        for (target, test) in SELECTION {
            runs.entry(target).or_default().push(test);
        }
    }
    let bin = workspace.join("target/debug");
    let mut text = String::from(
        "#!/bin/sh\n# Written by cargo xtask vm-test; runs inside the guest.\nset -u\n",
    );
    let _ = writeln!(
        text,
        "echo \"guest: $(uname -r), $(nproc) CPUs, $(awk '/MemTotal/ {{print $2 / 1024}}' /proc/meminfo) MiB\""
    );
    for (key, value) in [
        ("ENFORCER_BIN", bin.join("enforcer")),
        ("ENFORCER_PROBE_BIN", bin.join("enforcer-probe")),
        (
            "ENFORCER_OCSF_PYTHON",
            workspace.join("target/ocsf-venv/bin/python"),
        ),
    ] {
        let _ = writeln!(text, "export {key}='{}'", value.display());
    }
    let scale = if emulated { EMULATED_TIME_SCALE } else { 1 };
    let _ = writeln!(
        text,
        "export ENFORCER_REQUIRE_PRIVILEGED=1 ENFORCER_TEST_TIME_SCALE={scale}\nfailed=''"
    );
    for (target, names) in &runs {
        let executable = tests
            .get(*target)
            .with_context(|| format!("no test target {target} was built"))?;
        let mut filters = String::new();
        if !names.is_empty() {
            filters.push_str(" --exact");
            for name in names {
                let _ = write!(filters, " {name}");
            }
        }
        let _ = writeln!(
            text,
            "echo \"guest: {target}\"\n\
             if ! '{}' --test-threads=1 --nocapture{filters}; then failed=\"$failed {target}\"; fi",
            executable.display()
        );
    }
    text.push_str(
        "if [ -n \"$failed\" ]; then echo \"guest: FAILED on $(uname -r):$failed\"; exit 1; fi\n\
         echo \"guest: all passed on $(uname -r)\"\n",
    );
    let path = dir.join(format!("guest-{}.sh", kernel.package));
    fs::write(&path, text).with_context(|| format!("writing {}", path.display()))?;
    fs::set_permissions(&path, fs::Permissions::from_mode(0o755))?;
    Ok(path)
}
