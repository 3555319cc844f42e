//! The OCSF schema check on real events: every events file a test daemon writes goes through
//! `tests/ocsf/validate.py`.

use std::{
    env,
    path::{Path, PathBuf},
    process::Command,
};

/// The interpreter of the venv `cargo xtask setup` makes, or `ENFORCER_OCSF_PYTHON`.
#[must_use]
pub fn python() -> PathBuf {
    env::var_os("ENFORCER_OCSF_PYTHON").map_or_else(
        || workspace().join("target/ocsf-venv/bin/python"),
        PathBuf::from,
    )
}

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ sits in the workspace")
        .to_owned()
}

/// Panics unless every event in the JSON-lines file at `path` is valid OCSF 1.1.0 of its class
/// (network activity for flows, device config state change for policy rejections; see
/// `validate.py`), and the file holds at least one event. A missing
/// interpreter is a failure, not a skip: the OCSF contract is part of what every test checks.
pub fn assert_valid_ocsf(path: &Path) {
    let python = python();
    assert!(
        python.exists(),
        "{} is missing: run `cargo xtask test` (or `cargo xtask setup`), which installs the OCSF validator",
        python.display()
    );
    let output = Command::new(&python)
        .arg(workspace().join("tests/ocsf/validate.py"))
        .arg(path)
        .output()
        .unwrap_or_else(|error| panic!("running {}: {error}", python.display()));
    assert!(
        output.status.success(),
        "{} is not valid OCSF:\n{}{}",
        path.display(),
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}
