//! Where events go. Today: OCSF JSON lines to stdout or a file.

use std::{
    fs::{File, OpenOptions},
    io::{self, Write},
    path::{Path, PathBuf},
};

use crate::events::{
    FlowRecord,
    ocsf::{Product, to_json_line},
};

/// Errors delivering an event.
#[derive(Debug, thiserror::Error)]
pub enum SinkError {
    #[error("opening {path}")]
    Open {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("writing an event")]
    Write(#[source] io::Error),
}

/// One OCSF JSON object per line, flushed per event so a tailing SIEM agent sees it at once.
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
        writeln!(self.out, "{line}")
            .and_then(|()| self.out.flush())
            .map_err(SinkError::Write)
    }
}
