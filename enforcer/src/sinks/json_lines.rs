//! OCSF JSON lines to stdout or a file.

use std::{
    fs::{File, OpenOptions},
    io::{self, Write},
    path::Path,
};

use super::SinkError;
use crate::events::{
    FlowRecord, PolicyRejection,
    ocsf::{Product, render_rejection, to_json_line},
};

/// One OCSF JSON object per line, flushed per event so a tailing SIEM agent sees it at once.
/// Flow events and policy rejections share the sink, in the order they happened, so a SIEM sees
/// a rejected policy next to the denials of the policy that stayed in force.
pub struct JsonLines {
    out: Box<dyn Write + Send>,
    product: Product,
}

impl std::fmt::Debug for JsonLines {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JsonLines").finish_non_exhaustive()
    }
}

impl JsonLines {
    /// Writes to standard output.
    #[must_use]
    pub fn stdout(product: Product) -> Self {
        Self {
            out: Box::new(io::stdout()),
            product,
        }
    }

    /// Appends to `path`, creating it if needed.
    ///
    /// # Errors
    /// When the file cannot be opened for appending.
    pub fn file(path: &Path, product: Product) -> Result<Self, SinkError> {
        let file: File = OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .map_err(|source| SinkError::Open {
                path: path.to_owned(),
                source,
            })?;
        Ok(Self {
            out: Box::new(file),
            product,
        })
    }

    /// Writes one record.
    ///
    /// # Errors
    /// When the write fails.
    pub fn send(&mut self, record: &FlowRecord) -> Result<(), SinkError> {
        let line = to_json_line(record, &self.product);
        self.write_line(&line)
    }

    /// Writes one policy rejection.
    ///
    /// # Errors
    /// When the write fails.
    pub fn send_rejection(&mut self, rejection: &PolicyRejection) -> Result<(), SinkError> {
        let line = render_rejection(rejection, &self.product).to_string();
        self.write_line(&line)
    }

    fn write_line(&mut self, line: &str) -> Result<(), SinkError> {
        writeln!(self.out, "{line}")
            .and_then(|()| self.out.flush())
            .map_err(SinkError::Write)
    }
}

#[cfg(test)]
mod tests {
    use std::time::SystemTime;

    use serde_json::Value;

    use super::*;
    use crate::events::FlowNode;

    #[test]
    fn a_rejection_is_one_line_of_its_own() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("events.jsonl");
        let mut sink = JsonLines::file(&path, Product::default()).expect("open");
        let rejection = PolicyRejection {
            time: SystemTime::now(),
            node: FlowNode {
                hostname: "app-1".to_owned(),
                is_virtual: false,
            },
            policy_dir: "/etc/enforcer/policy".to_owned(),
            origin: "control".to_owned(),
            errors: vec!["p.toml:2:1: first\nwith a newline".to_owned()],
            in_force_version: Some("abc123".to_owned()),
            in_force_generation: 1,
        };
        sink.send_rejection(&rejection).expect("send");
        sink.send_rejection(&rejection).expect("send");
        let text = std::fs::read_to_string(&path).expect("read");
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 2, "{text}");
        let event: Value = serde_json::from_str(lines[0]).expect("JSON");
        assert_eq!(event, render_rejection(&rejection, &Product::default()));
    }
}
