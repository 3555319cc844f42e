//! What can be wrong with a config file. Every problem is placed at the key or value it is about,
//! so that the message reads `FILE:LINE:COLUMN: …` like a compiler's.

use std::{
    fmt, io,
    net::AddrParseError,
    ops::Range,
    path::{Path, PathBuf},
    time::Duration,
};

/// Why the daemon's config was refused.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{}: cannot read the config file: {source}", .path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    /// `line` and `column` are 1-based; the column counts characters.
    #[error("{}:{line}:{column}: {problem}", .path.display())]
    Invalid {
        path: PathBuf,
        line: u32,
        column: u32,
        problem: ConfigProblem,
    },
}

impl ConfigError {
    /// The problem at `span` (byte offsets into `text`).
    pub(super) fn at(path: &Path, text: &str, span: &Range<usize>, problem: ConfigProblem) -> Self {
        let (line, column) = line_column(text, span.start);
        Self::Invalid {
            path: path.to_owned(),
            line,
            column,
            problem,
        }
    }

    /// `(line, column)` of an [`Invalid`](Self::Invalid) config; `None` for an unreadable one.
    #[must_use]
    pub fn position(&self) -> Option<(u32, u32)> {
        match self {
            Self::Read { .. } => None,
            Self::Invalid { line, column, .. } => Some((*line, *column)),
        }
    }

    #[must_use]
    pub fn problem(&self) -> Option<&ConfigProblem> {
        match self {
            Self::Read { .. } => None,
            Self::Invalid { problem, .. } => Some(problem),
        }
    }
}

/// 1-based line and character column of byte `offset` in `text`.
fn line_column(text: &str, offset: usize) -> (u32, u32) {
    let offset = offset.min(text.len());
    let before = text.get(..offset).unwrap_or(text);
    let line_start = before.rfind('\n').map_or(0, |at| at + 1);
    let line = before.matches('\n').count() + 1;
    let column = before[line_start..].chars().count() + 1;
    let saturate = |n: usize| u32::try_from(n).unwrap_or(u32::MAX);
    (saturate(line), saturate(column))
}

/// The problem itself, written for the person editing the file.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigProblem {
    /// The message is toml's own, without its source excerpt.
    #[error("invalid TOML: {message}")]
    Syntax { message: String },

    /// `table` is how the table is written (`[events]`, `[[sink]]`, or "the top level").
    #[error("unknown key `{key}` in {table}; expected one of: {}", .allowed.join(", "))]
    UnknownKey {
        key: String,
        table: &'static str,
        allowed: &'static [&'static str],
    },

    #[error(
        "`{key}` does not apply to a {kind} sink; a {kind} sink takes: {}",
        .allowed.join(", ")
    )]
    KeyNotForKind {
        key: String,
        kind: &'static str,
        allowed: &'static [&'static str],
    },

    #[error("`{key}` applies only to transport = \"tls\", not {transport:?}")]
    KeyNotForTransport { key: String, transport: String },

    #[error("{table} is missing the required key `{key}`")]
    MissingKey {
        key: &'static str,
        table: &'static str,
    },

    /// `[sink]` where `[[sink]]` is meant, `events = 3`, …
    #[error("`{key}` must be written as {header}")]
    TableShape {
        key: &'static str,
        header: &'static str,
    },

    /// A value of the wrong TOML type; the message is toml's. `key` is the innermost key whose
    /// value holds the error.
    #[error("{}{message}", KeyPrefix(.key.as_deref()))]
    WrongType {
        key: Option<String>,
        message: String,
    },

    #[error("unknown sink kind {value:?}; expected one of: file, stdout, syslog, otlp")]
    UnknownSinkKind { value: String },

    #[error("format {value:?} is not for a {kind} sink; a {kind} sink writes {}", Quoted(.allowed))]
    BadFormat {
        value: String,
        kind: &'static str,
        allowed: &'static [&'static str],
    },

    #[error("unknown transport {value:?}; expected one of: udp, tcp, tls")]
    UnknownTransport { value: String },

    #[error(
        "bad duration {value:?} for `{key}`: {source}; write it like \"500ms\", \"10s\" or \"1m\""
    )]
    BadDuration {
        key: &'static str,
        value: String,
        #[source]
        source: humantime::DurationError,
    },

    #[error(
        "`{key}` = {} is out of range; it must be between {} and {}",
        humantime::format_duration(*.value),
        humantime::format_duration(*.min),
        humantime::format_duration(*.max)
    )]
    DurationOutOfRange {
        key: &'static str,
        value: Duration,
        min: Duration,
        max: Duration,
    },

    #[error("`{key}` = {value} is out of range; it must be between {min} and {max}")]
    OutOfRange {
        key: &'static str,
        value: i64,
        min: i64,
        max: i64,
    },

    /// Host names are refused: resolving one at startup would make where reports go depend on
    /// DNS, and a changed record would silently redirect them.
    #[error(
        "bad address {value:?} for `{key}`: {source}; expected an IP address and a port such as \
         127.0.0.1:6514 or [::1]:6514 (host names are not resolved)"
    )]
    BadAddress {
        key: &'static str,
        value: String,
        #[source]
        source: AddrParseError,
    },

    #[error("bad OTLP endpoint {value:?}: {reason}")]
    BadEndpoint { value: String, reason: &'static str },

    #[error("bad server_name {value:?}: expected a DNS name or an IP address")]
    BadServerName { value: String },

    #[error("`{key}` must not be empty")]
    EmptyPath { key: &'static str },

    #[error(
        "transport = \"tls\" needs `ca_file`, the CA certificates the server is checked against"
    )]
    MissingCaFile,

    #[error("cannot read ca_file {}: {source}", .path.display())]
    CaFileUnreadable {
        path: PathBuf,
        #[source]
        source: io::Error,
    },

    #[error("ca_file {} is not PEM: {source}", .path.display())]
    CaFileNotPem {
        path: PathBuf,
        #[source]
        source: rustls_pki_types::pem::Error,
    },

    #[error("ca_file {} holds no PEM certificate (-----BEGIN CERTIFICATE-----)", .path.display())]
    CaFileNoCertificate { path: PathBuf },

    #[error("`keep` counts rotated files, so it needs `rotate_bytes`")]
    KeepWithoutRotation,

    #[error("this sink writes to {}, as sink {first} does already", .path.display())]
    DuplicateFile { path: PathBuf, first: usize },

    #[error("only one stdout sink can write to standard output; sink {first} does already")]
    DuplicateStdout { first: usize },
}

struct KeyPrefix<'a>(Option<&'a str>);

impl fmt::Display for KeyPrefix<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            Some(key) => write!(f, "`{key}`: "),
            None => Ok(()),
        }
    }
}

struct Quoted(&'static [&'static str]);

impl fmt::Display for Quoted {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (index, value) in self.0.iter().enumerate() {
            if index > 0 {
                f.write_str(" or ")?;
            }
            write!(f, "{value:?}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::line_column;

    #[test]
    fn positions_are_one_based_and_count_characters() {
        let text = "a = 1\nbé = \"x\"\n";
        assert_eq!(line_column(text, 0), (1, 1));
        assert_eq!(line_column(text, 6), (2, 1));
        // `=` after a two-byte character: byte 10, character column 4.
        assert_eq!(line_column(text, 10), (2, 4));
        assert_eq!(line_column(text, 1000), (3, 1));
    }
}
