//! JSON lines (OCSF or ECS, one object per line) to a file, with optional size rotation, or to
//! standard output.
//!
//! Writes go through `tokio::fs` / `tokio::io::stdout`, which hand the blocking system calls to
//! the sink runtime's blocking pool: a slow disk holds up this sink only, never a worker thread
//! the other sinks run on. Each batch is flushed before it counts as delivered, so a tailing SIEM
//! agent sees it at once. A batch that fails halfway is written again whole on the retry: a
//! file sink delivers at least once.

use std::{
    ffi::OsString,
    io,
    path::{Path, PathBuf},
    sync::Arc,
};

use tokio::{
    fs::{File, OpenOptions},
    io::AsyncWriteExt,
};

use super::{JsonFormat, Rotation, Sink, SinkError};
use crate::events::{Report, ecs, ocsf, ocsf::Product};

/// The batch as JSON lines, each ending in a newline.
fn render_lines(batch: &[Arc<Report>], format: JsonFormat, product: &Product) -> Vec<String> {
    batch
        .iter()
        .map(|report| {
            let event = match format {
                JsonFormat::Ocsf => ocsf::render_report(report, product),
                JsonFormat::Ecs => ecs::render_report(report, product),
            };
            let mut line = event.to_string();
            line.push('\n');
            line
        })
        .collect()
}

/// Appends to a file; reopens it after an error (it may have been moved or deleted by hand).
#[derive(Debug)]
pub struct FileSink {
    path: PathBuf,
    format: JsonFormat,
    rotation: Option<Rotation>,
    product: Product,
    file: Option<File>,
    /// Bytes in the current file, for rotation.
    size: u64,
}

impl FileSink {
    /// Opens `path` for appending (creating it), so that a path the daemon cannot write fails
    /// at startup rather than at the first event.
    ///
    /// # Errors
    /// When the file cannot be opened.
    pub fn open(
        path: PathBuf,
        format: JsonFormat,
        rotation: Option<Rotation>,
        product: Product,
    ) -> Result<Self, SinkError> {
        let (file, size) = open_std(&path).map_err(|source| SinkError::Open {
            path: path.clone(),
            source,
        })?;
        Ok(Self {
            path,
            format,
            rotation,
            product,
            file: Some(File::from_std(file)),
            size,
        })
    }

    async fn file(&mut self) -> Result<&mut File, SinkError> {
        let file = match self.file.take() {
            Some(file) => file,
            None => {
                let file = OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(&self.path)
                    .await
                    .map_err(|source| self.open_error(source))?;
                self.size = file
                    .metadata()
                    .await
                    .map_err(|source| self.open_error(source))?
                    .len();
                file
            }
        };
        Ok(self.file.insert(file))
    }

    fn open_error(&self, source: io::Error) -> SinkError {
        SinkError::Open {
            path: self.path.clone(),
            source,
        }
    }

    async fn write(&mut self, bytes: &[u8]) -> Result<(), SinkError> {
        if bytes.is_empty() {
            return Ok(());
        }
        let file = self.file().await?;
        let written = async {
            file.write_all(bytes).await?;
            file.flush().await
        }
        .await;
        written.map_err(|source| SinkError::WriteFile {
            path: self.path.clone(),
            source,
        })?;
        self.size += bytes.len() as u64;
        Ok(())
    }

    async fn deliver_lines(&mut self, lines: &[String]) -> Result<(), SinkError> {
        let mut pending = String::new();
        for line in lines {
            if let Some(rotation) = self.rotation {
                let size = self.size + pending.len() as u64;
                // A line longer than the limit still goes into a file of its own.
                if size > 0 && size + line.len() as u64 > rotation.bytes {
                    self.write(pending.as_bytes()).await?;
                    pending.clear();
                    self.rotate(rotation).await?;
                }
            }
            pending.push_str(line);
        }
        self.write(pending.as_bytes()).await
    }

    /// `path.keep-1` → `path.keep` (replacing the oldest), …, `path` → `path.1`; with `keep`
    /// 0 the file is removed. The next write starts a new `path`.
    async fn rotate(&mut self, rotation: Rotation) -> Result<(), SinkError> {
        self.file = None;
        let rotate_error = |source| SinkError::Rotate {
            path: self.path.clone(),
            source,
        };
        if rotation.keep == 0 {
            ignore_missing(tokio::fs::remove_file(&self.path).await).map_err(rotate_error)?;
        } else {
            for generation in (1..rotation.keep).rev() {
                let from = numbered(&self.path, generation);
                let to = numbered(&self.path, generation + 1);
                ignore_missing(tokio::fs::rename(&from, &to).await).map_err(rotate_error)?;
            }
            tokio::fs::rename(&self.path, numbered(&self.path, 1))
                .await
                .map_err(rotate_error)?;
        }
        self.size = 0;
        Ok(())
    }
}

#[async_trait::async_trait]
impl Sink for FileSink {
    async fn deliver(&mut self, batch: &[Arc<Report>]) -> Result<(), SinkError> {
        let lines = render_lines(batch, self.format, &self.product);
        let delivered = self.deliver_lines(&lines).await;
        if delivered.is_err() {
            self.file = None;
        }
        delivered
    }

    async fn reset(&mut self) {
        self.file = None;
    }
}

fn open_std(path: &Path) -> io::Result<(std::fs::File, u64)> {
    let file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)?;
    let size = file.metadata()?.len();
    Ok((file, size))
}

/// `path.N`.
fn numbered(path: &Path, generation: u32) -> PathBuf {
    let mut name = OsString::from(path.as_os_str());
    name.push(format!(".{generation}"));
    PathBuf::from(name)
}

fn ignore_missing(result: io::Result<()>) -> io::Result<()> {
    match result {
        Err(error) if error.kind() == io::ErrorKind::NotFound => Ok(()),
        other => other,
    }
}

/// JSON lines to standard output, for a daemon run under a supervisor that collects it.
#[derive(Debug)]
pub struct StdoutSink {
    format: JsonFormat,
    product: Product,
    out: tokio::io::Stdout,
}

impl StdoutSink {
    #[must_use]
    pub fn new(format: JsonFormat, product: Product) -> Self {
        Self {
            format,
            product,
            out: tokio::io::stdout(),
        }
    }
}

#[async_trait::async_trait]
impl Sink for StdoutSink {
    async fn deliver(&mut self, batch: &[Arc<Report>]) -> Result<(), SinkError> {
        let text = render_lines(batch, self.format, &self.product).concat();
        self.out
            .write_all(text.as_bytes())
            .await
            .map_err(SinkError::Stdout)?;
        self.out.flush().await.map_err(SinkError::Stdout)
    }
}

#[cfg(test)]
mod tests;
