//! Parser tests: every table and value on its happy path, then every error, then directories.

mod errors;
mod happy;
mod load;

use super::*;

fn source(path: &str, text: &str) -> Source {
    Source {
        path: path.into(),
        text: text.to_owned(),
    }
}

/// Parses one file called `p.toml`.
fn parse(text: &str) -> Result<Policy, PolicyErrors> {
    parse_sources(&[source("p.toml", text)])
}

fn parse_ok(text: &str) -> Policy {
    parse(text).unwrap_or_else(|errors| panic!("expected a valid policy, got:\n{errors}"))
}

/// Every error of parsing `files` as `file:line:column: message` lines.
fn error_lines(files: &[(&str, &str)]) -> Vec<String> {
    let sources: Vec<Source> = files.iter().map(|(p, t)| source(p, t)).collect();
    match parse_sources(&sources) {
        Ok(_) => panic!("expected errors, the policy parsed"),
        Err(errors) => errors.iter().map(ToString::to_string).collect(),
    }
}

/// The errors of one file `p.toml`.
fn errors_of(text: &str) -> Vec<String> {
    error_lines(&[("p.toml", text)])
}

/// Asserts exactly one error, at `at` (`line:column` in `p.toml`), whose message contains `phrase`.
#[track_caller]
fn assert_one_error(text: &str, at: &str, phrase: &str) {
    let errors = errors_of(text);
    assert_eq!(errors.len(), 1, "expected one error, got {errors:#?}");
    let expected = format!("p.toml:{at}: ");
    assert!(
        errors[0].starts_with(&expected) && errors[0].contains(phrase),
        "expected an error at {expected:?} containing {phrase:?}, got {:?}",
        errors[0]
    );
}

const fn tcp(first: u16, last: u16) -> PortTerm {
    PortTerm::Range {
        protocol: Protocol::Tcp,
        first,
        last,
    }
}

const fn udp(first: u16, last: u16) -> PortTerm {
    PortTerm::Range {
        protocol: Protocol::Udp,
        first,
        last,
    }
}
