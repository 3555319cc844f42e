//! The daemon's side: binding the socket safely and serving one request per connection.

use std::{
    fs::{self, DirBuilder, Permissions},
    io,
    os::unix::{
        fs::{DirBuilderExt as _, FileTypeExt as _, MetadataExt as _, PermissionsExt as _},
        net::UnixStream as StdUnixStream,
    },
    path::{Path, PathBuf},
    sync::Arc,
    time::Duration,
};

use tokio::{
    io::{AsyncBufReadExt as _, AsyncReadExt as _, AsyncWriteExt as _, BufReader},
    net::{UnixListener, UnixStream},
    task::JoinSet,
};
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

use super::{ControlError, MAX_REQUEST_BYTES, REQUEST_TIMEOUT, Request, Response};

/// Pause after a failed `accept`: the usual cause is running out of descriptors (EMFILE), which
/// retrying at once would only turn into a busy loop.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

/// How long writing the response may take before the connection is given up; a peer that stops
/// reading must not pin a task.
const RESPONSE_TIMEOUT: Duration = Duration::from_secs(5);

/// What the daemon does with a request. It forwards to its reconciler, so that the socket never
/// touches daemon state itself.
pub trait Handler: Send + Sync + 'static {
    /// Carries out `request` and says how it went. Failures are a [`Response::failed`], not an
    /// error: the peer is told either way.
    fn handle(&self, request: Request) -> impl std::future::Future<Output = Response> + Send;
}

/// The bound control socket. Dropping it removes the socket file, so a cleanly stopped daemon
/// leaves no stale socket for the next one to judge.
#[derive(Debug)]
pub struct ControlListener {
    listener: UnixListener,
    path: PathBuf,
    /// Device and inode of the socket we bound: on drop the file is removed only if it is still
    /// ours, never one another daemon bound after someone deleted ours.
    identity: (u64, u64),
}

impl Drop for ControlListener {
    fn drop(&mut self) {
        match fs::symlink_metadata(&self.path) {
            Ok(meta) if (meta.dev(), meta.ino()) == self.identity => {
                if let Err(error) = fs::remove_file(&self.path) {
                    warn!(path = %self.path.display(), %error, "removing the control socket");
                }
            }
            // Replaced or already gone: not ours to remove.
            Ok(_) | Err(_) => {}
        }
    }
}

/// Binds the control socket at `path`.
///
/// A missing parent directory is created with mode 0700. Something already at `path` is replaced
/// only if it is a socket nobody listens on (a daemon that died without cleaning up); a live
/// socket means another daemon owns it ([`ControlError::InUse`]), and anything else (a file, a
/// symlink, a directory) is refused rather than deleted. The socket is chmodded to 0600; between
/// bind and chmod the umask decides, which is why [`serve`] checks every peer's credentials as
/// well.
///
/// # Errors
/// See [`ControlError`]; each variant names the path and the step that failed.
///
/// # Panics
/// Outside a tokio runtime (the listener registers with its reactor).
pub fn bind(path: &Path) -> Result<ControlListener, ControlError> {
    if let Some(parent) = path
        .parent()
        .filter(|parent| !parent.as_os_str().is_empty())
    {
        create_private_dir(parent)?;
    }
    clear_stale(path)?;
    let bind_error = |source| ControlError::Bind {
        path: path.to_owned(),
        source,
    };
    let listener = std::os::unix::net::UnixListener::bind(path).map_err(bind_error)?;
    let identity = match fs::symlink_metadata(path) {
        Ok(meta) => (meta.dev(), meta.ino()),
        Err(source) => {
            return Err(ControlError::Inspect {
                path: path.to_owned(),
                source,
            });
        }
    };
    // A failure before `ControlListener` exists leaves a dead socket, which the next bind
    // replaces; from then on, dropping it on failure removes the file.
    let listener = listener
        .set_nonblocking(true)
        .and_then(|()| UnixListener::from_std(listener))
        .map_err(bind_error)?;
    let listener = ControlListener {
        listener,
        path: path.to_owned(),
        identity,
    };
    fs::set_permissions(path, Permissions::from_mode(0o600)).map_err(|source| {
        ControlError::Permissions {
            path: path.to_owned(),
            source,
        }
    })?;
    Ok(listener)
}

/// Creates `dir` (and its ancestors) if missing. Only a directory we created is chmodded to 0700:
/// an existing one such as `/run` belongs to the operator.
fn create_private_dir(dir: &Path) -> Result<(), ControlError> {
    if dir.is_dir() {
        return Ok(());
    }
    let error = |source| ControlError::CreateDir {
        path: dir.to_owned(),
        source,
    };
    DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(error)?;
    // The mode above is filtered through the umask; this is not.
    fs::set_permissions(dir, Permissions::from_mode(0o700)).map_err(error)
}

/// Makes room for the socket at `path`, removing only a socket no daemon answers on.
fn clear_stale(path: &Path) -> Result<(), ControlError> {
    let meta = match fs::symlink_metadata(path) {
        Ok(meta) => meta,
        Err(error) if error.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(source) => {
            return Err(ControlError::Inspect {
                path: path.to_owned(),
                source,
            });
        }
    };
    if !meta.file_type().is_socket() {
        return Err(ControlError::NotSocket {
            path: path.to_owned(),
        });
    }
    match StdUnixStream::connect(path) {
        Ok(_) => Err(ControlError::InUse {
            path: path.to_owned(),
        }),
        // A listener whose backlog is full is alive, just busy.
        Err(error) if error.kind() == io::ErrorKind::WouldBlock => Err(ControlError::InUse {
            path: path.to_owned(),
        }),
        Err(error) if error.kind() == io::ErrorKind::ConnectionRefused => fs::remove_file(path)
            .or_else(|error| match error.kind() {
                io::ErrorKind::NotFound => Ok(()),
                _ => Err(error),
            })
            .map_err(|source| ControlError::RemoveStale {
                path: path.to_owned(),
                source,
            }),
        // Removed between the two looks: the path is free.
        Err(error) if error.kind() == io::ErrorKind::NotFound => Ok(()),
        // Whatever else it is, we cannot tell it is dead, so it is not ours to delete.
        Err(source) => Err(ControlError::Probe {
            path: path.to_owned(),
            source,
        }),
    }
}

/// Accepts connections until `cancel` fires, each served in its own task. Connections still in
/// flight at cancellation are aborted (their peers see the connection close), and the socket file
/// is removed when `listener` drops on return.
pub async fn serve<H: Handler>(
    listener: ControlListener,
    handler: Arc<H>,
    cancel: CancellationToken,
) {
    let own_uid = nix::unistd::geteuid().as_raw();
    let mut connections = JoinSet::new();
    loop {
        tokio::select! {
            () = cancel.cancelled() => break,
            accepted = listener.listener.accept() => match accepted {
                Ok((stream, _)) => {
                    let handler = Arc::clone(&handler);
                    connections.spawn(async move { connection(stream, &*handler, own_uid).await });
                }
                Err(error) => {
                    warn!(path = %listener.path.display(), %error, "accepting a control connection");
                    tokio::select! {
                        () = cancel.cancelled() => break,
                        () = tokio::time::sleep(ACCEPT_BACKOFF) => {}
                    }
                }
            },
            // Reaps finished connections so the set does not grow with the daemon's uptime.
            Some(joined) = connections.join_next(), if !connections.is_empty() => {
                if let Err(error) = joined {
                    warn!(%error, "a control connection task failed");
                }
            }
        }
    }
}

/// Only root and the daemon's own user may steer it: the socket's 0600 mode says the same, and
/// this check holds even if the mode was loosened or raced (see [`bind`]).
fn permitted(peer_uid: u32, own_uid: u32) -> bool {
    peer_uid == 0 || peer_uid == own_uid
}

/// Serves one connection: check the peer, read one request line, answer one response line.
async fn connection<H: Handler>(mut stream: UnixStream, handler: &H, own_uid: u32) {
    let response = match stream.peer_cred() {
        Ok(cred) if permitted(cred.uid(), own_uid) => match read_request(&mut stream).await {
            Ok(request) => handler.handle(request).await,
            Err(refusal) => refusal,
        },
        Ok(cred) => {
            warn!(uid = cred.uid(), pid = ?cred.pid(), "refused a control connection");
            Response::failed(
                format!(
                    "permission denied: uid {} may not control this daemon (only root or uid \
                     {own_uid})",
                    cred.uid()
                ),
                serde_json::Value::Null,
            )
        }
        // Fail closed: a peer we cannot identify is not served.
        Err(error) => {
            warn!(%error, "refused a control connection: reading its credentials failed");
            Response::failed(
                format!("permission denied: peer credentials unavailable: {error}"),
                serde_json::Value::Null,
            )
        }
    };
    if let Err(error) = write_response(&mut stream, &response).await {
        debug!(%error, "writing a control response");
    }
}

/// Reads and parses the request line. Every way this fails is answered, not just dropped, so the
/// CLI can show the operator what went wrong.
async fn read_request(stream: &mut UnixStream) -> Result<Request, Response> {
    let refuse = |message: String| Response::failed(message, serde_json::Value::Null);
    let mut line = Vec::new();
    // One byte more than allowed, to tell "exactly at the cap" from "over it".
    let limit = u64::try_from(MAX_REQUEST_BYTES + 1).unwrap_or(u64::MAX);
    let mut reader = BufReader::new(stream.take(limit));
    match tokio::time::timeout(REQUEST_TIMEOUT, reader.read_until(b'\n', &mut line)).await {
        Err(_elapsed) => {
            return Err(refuse(format!(
                "timed out after {REQUEST_TIMEOUT:?} waiting for the request"
            )));
        }
        Ok(Err(error)) => return Err(refuse(format!("reading the request: {error}"))),
        Ok(Ok(_)) => {}
    }
    if line.last() == Some(&b'\n') {
        line.pop();
    }
    if line.len() > MAX_REQUEST_BYTES {
        return Err(refuse(format!("request exceeds {MAX_REQUEST_BYTES} bytes")));
    }
    if line.is_empty() {
        return Err(refuse("empty request".to_owned()));
    }
    serde_json::from_slice(&line).map_err(|error| refuse(format!("malformed request: {error}")))
}

async fn write_response(stream: &mut UnixStream, response: &Response) -> io::Result<()> {
    let mut line = serde_json::to_vec(response)?;
    line.push(b'\n');
    let write = async {
        stream.write_all(&line).await?;
        stream.shutdown().await
    };
    tokio::time::timeout(RESPONSE_TIMEOUT, write)
        .await
        .map_err(|_elapsed| io::Error::from(io::ErrorKind::TimedOut))?
}

#[cfg(test)]
mod tests {
    use super::permitted;

    #[test]
    fn only_root_and_the_daemon_user_are_permitted() {
        assert!(permitted(0, 0));
        assert!(permitted(0, 1000));
        assert!(permitted(1000, 1000));
        assert!(!permitted(1000, 0));
        assert!(!permitted(1001, 1000));
    }
}
