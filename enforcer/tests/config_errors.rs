//! Bad config files on disk, as an operator writes them: each must be refused with
//! `FILE:LINE:COLUMN: message` pointing at the offending key or value.

use std::{
    path::{Path, PathBuf},
    process::Command,
};

use enforcer::config::{ConfigError, DaemonConfig};

struct Case {
    name: &'static str,
    text: &'static str,
    line: u32,
    column: u32,
    message: &'static str,
}

const CASES: &[Case] = &[
    Case {
        name: "unknown-key",
        text: "[events]\naggregate_windw = \"10s\"\n",
        line: 2,
        column: 1,
        message: "unknown key `aggregate_windw` in [events]; expected one of: aggregate_window, \
                  queue, lateral_movement",
    },
    Case {
        name: "bad-duration",
        text: "[events]\naggregate_window = \"ten seconds\"\n",
        line: 2,
        column: 20,
        message: "bad duration \"ten seconds\" for `aggregate_window`",
    },
    Case {
        name: "key-of-another-kind",
        text: "[[sink]]\nkind = \"syslog\"\naddress = \"127.0.0.1:514\"\ntransport = \"tcp\"\n\
               rotate_bytes = 1048576\n",
        line: 5,
        column: 1,
        message: "`rotate_bytes` does not apply to a syslog sink",
    },
    Case {
        name: "format-of-another-kind",
        text: "[[sink]]\nkind = \"stdout\"\nformat = \"cef\"\n",
        line: 3,
        column: 10,
        message: "format \"cef\" is not for a stdout sink",
    },
    Case {
        name: "host-name-address",
        text: "[[sink]]\nkind = \"syslog\"\naddress = \"siem.example:6514\"\ntransport = \"tcp\"\n",
        line: 3,
        column: 11,
        message: "host names are not resolved",
    },
    Case {
        name: "missing-ca-file",
        text: "[[sink]]\nkind = \"syslog\"\naddress = \"127.0.0.1:6514\"\ntransport = \"tls\"\n\
               ca_file = \"no-such-ca.pem\"\n",
        line: 5,
        column: 11,
        message: "cannot read ca_file",
    },
    Case {
        name: "keep-without-rotation",
        text: "[[sink]]\nkind = \"file\"\npath = \"events.jsonl\"\nkeep = 2\n",
        line: 4,
        column: 8,
        message: "`keep` counts rotated files, so it needs `rotate_bytes`",
    },
];

fn write_cases(dir: &Path) -> Vec<(PathBuf, &'static Case)> {
    CASES
        .iter()
        .map(|case| {
            let path = dir.join(format!("{}.toml", case.name));
            std::fs::write(&path, case.text).expect("write config");
            (path, case)
        })
        .collect()
}

#[test]
fn every_bad_file_is_refused_at_its_position() {
    let dir = tempfile::tempdir().expect("temp dir");
    for (path, case) in write_cases(dir.path()) {
        let error = DaemonConfig::load(&path).expect_err(case.name);
        let ConfigError::Invalid { line, column, .. } = &error else {
            panic!("{}: not positioned: {error}", case.name);
        };
        assert_eq!(
            (*line, *column),
            (case.line, case.column),
            "{}: {error}",
            case.name
        );
        let rendered = error.to_string();
        let prefix = format!("{}:{}:{}: ", path.display(), case.line, case.column);
        assert!(rendered.starts_with(&prefix), "{}: {rendered}", case.name);
        assert!(rendered.contains(case.message), "{}: {rendered}", case.name);
    }
}

/// The real binary must refuse a bad config before anything privileged, with exit code 2 and
/// the positioned message on stderr.
#[test]
fn the_binary_refuses_a_bad_config_before_loading_anything() {
    let binary = env!("CARGO_BIN_EXE_enforcer");
    let dir = tempfile::tempdir().expect("temp dir");
    let policy = dir.path().join("policy");
    std::fs::create_dir(&policy).expect("policy dir");
    for (path, case) in write_cases(dir.path()) {
        let output = Command::new(binary)
            .arg("run")
            .arg("--config")
            .arg(&path)
            .arg("--policy")
            .arg(&policy)
            .arg("--bpffs")
            .arg(dir.path().join("bpffs"))
            .output()
            .expect("run the binary");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(2), "{}: {stderr}", case.name);
        let prefix = format!("{}:{}:{}: ", path.display(), case.line, case.column);
        assert!(
            stderr.contains(&prefix) && stderr.contains(case.message),
            "{}: {stderr}",
            case.name
        );
    }
}
