//! The CLI's side: one blocking request. The CLI is synchronous, so this needs no runtime.

use std::{
    io::{self, BufRead as _, BufReader, Write as _},
    net::Shutdown,
    os::unix::net::UnixStream,
    path::Path,
    time::Duration,
};

use super::{ControlError, Request, Response};

/// Sends `request` to the daemon listening on `path` and waits for its response.
///
/// `timeout` bounds each read and write on the socket (not connecting, which on a local socket
/// returns at once). It must not be zero: std refuses a zero socket timeout, reported as
/// [`ControlError::Connect`].
///
/// # Errors
/// [`ControlError::NotRunning`] when no daemon listens (no socket file, or a stale one), so that
/// `enforcer status` can fall back to reading the pinned maps; [`ControlError::TimedOut`] when the
/// daemon does not answer in time; otherwise the step that failed.
pub fn request(
    path: &Path,
    request: &Request,
    timeout: Duration,
) -> Result<Response, ControlError> {
    let mut stream = UnixStream::connect(path).map_err(|source| match source.kind() {
        io::ErrorKind::NotFound | io::ErrorKind::ConnectionRefused => ControlError::NotRunning {
            path: path.to_owned(),
        },
        _ => ControlError::Connect {
            path: path.to_owned(),
            source,
        },
    })?;
    stream
        .set_read_timeout(Some(timeout))
        .and_then(|()| stream.set_write_timeout(Some(timeout)))
        .map_err(|source| ControlError::Connect {
            path: path.to_owned(),
            source,
        })?;
    let timed_out = |source: &io::Error| {
        // A socket timeout surfaces as EAGAIN (WouldBlock) on Linux.
        matches!(
            source.kind(),
            io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
        )
        .then(|| ControlError::TimedOut {
            path: path.to_owned(),
            timeout,
        })
    };

    // Serializing a fieldless enum cannot fail; mapping the error only keeps this free of
    // `expect`.
    let mut line = serde_json::to_vec(request).map_err(|error| ControlError::Send {
        path: path.to_owned(),
        source: error.into(),
    })?;
    line.push(b'\n');
    stream
        .write_all(&line)
        .and_then(|()| stream.shutdown(Shutdown::Write))
        .map_err(|source| {
            timed_out(&source).unwrap_or_else(|| ControlError::Send {
                path: path.to_owned(),
                source,
            })
        })?;

    let mut answer = Vec::new();
    BufReader::new(&stream)
        .read_until(b'\n', &mut answer)
        .map_err(|source| {
            timed_out(&source).unwrap_or_else(|| ControlError::Receive {
                path: path.to_owned(),
                source,
            })
        })?;
    if answer.is_empty() {
        return Err(ControlError::NoResponse {
            path: path.to_owned(),
        });
    }
    serde_json::from_slice(&answer).map_err(|source| ControlError::Decode {
        path: path.to_owned(),
        source,
    })
}
