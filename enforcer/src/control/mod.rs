//! The local control socket: `enforcer reload`, `rollback`, `reconcile` and `status` ask the
//! running daemon over a Unix stream socket.
//!
//! The wire format is one JSON object per line, one request and one response per connection:
//!
//! ```text
//! client → {"command":"reload"}\n
//! daemon → {"ok":true,"message":"policy reloaded","detail":{...}}\n
//! ```
//!
//! A Unix socket rather than the gRPC API because the verbs need no network reachability, the
//! kernel tells who is calling (`SO_PEERCRED`), and the CLI stays synchronous. The transport owns
//! no daemon state: the daemon implements [`Handler`] by forwarding to its reconciler, so a
//! request is served by the same code path as a policy change seen on disk.

use std::{io, path::PathBuf, time::Duration};

use serde::{Deserialize, Serialize};

mod client;
mod server;

pub use client::request;
pub use server::{ControlListener, Handler, bind, serve};

/// Largest request the daemon reads; anything longer is refused before it is parsed. Requests
/// are a few dozen bytes, so this only bounds what a confused or hostile peer can make us buffer.
pub const MAX_REQUEST_BYTES: usize = 64 * 1024;

/// How long the daemon waits for a connected peer to send its request line, so that a peer that
/// connects and stays silent cannot hold a connection task forever.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

/// What a CLI verb asks the daemon to do.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(tag = "command", rename_all = "snake_case")]
pub enum Request {
    /// Read the policy directory again and apply it if it changed.
    Reload,
    /// Go back to the previous applied policy.
    Rollback,
    /// Dump the kernel maps and repair any drift from the desired state.
    Reconcile,
    /// Report what the daemon is doing.
    Status,
}

/// The daemon's answer. `detail` is free JSON (status, policy errors, counts) so that adding a
/// field to what a verb reports needs no change here.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct Response {
    pub ok: bool,
    pub message: String,
    #[serde(default)]
    pub detail: serde_json::Value,
}

impl Response {
    /// A request that was carried out.
    #[must_use]
    pub fn ok(message: impl Into<String>, detail: serde_json::Value) -> Self {
        Self {
            ok: true,
            message: message.into(),
            detail,
        }
    }

    /// A request that was refused or failed; `message` says why for a human.
    #[must_use]
    pub fn failed(message: impl Into<String>, detail: serde_json::Value) -> Self {
        Self {
            ok: false,
            message: message.into(),
            detail,
        }
    }
}

/// Errors setting up the control socket or talking to it.
#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    #[error("creating the control socket directory {path}")]
    CreateDir {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("inspecting {path}")]
    Inspect {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{path} exists and is not a socket; refusing to replace it")]
    NotSocket { path: PathBuf },
    #[error("another daemon is listening on {path}")]
    InUse { path: PathBuf },
    #[error("probing whether a daemon listens on {path}")]
    Probe {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("removing the stale control socket {path}")]
    RemoveStale {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("binding the control socket {path}")]
    Bind {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("restricting the permissions of {path}")]
    Permissions {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("no daemon is listening on {path}")]
    NotRunning { path: PathBuf },
    #[error("connecting to {path}")]
    Connect {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("the daemon on {path} did not answer within {timeout:?}")]
    TimedOut { path: PathBuf, timeout: Duration },
    #[error("sending the request to {path}")]
    Send {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("reading the response from {path}")]
    Receive {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("the daemon on {path} closed the connection without answering")]
    NoResponse { path: PathBuf },
    #[error("decoding the response from {path}")]
    Decode {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
}

#[cfg(test)]
mod tests {
    use std::{
        io::{BufRead as _, Write as _},
        os::unix::{fs::PermissionsExt as _, net::UnixStream},
        path::Path,
        sync::Arc,
    };

    use tokio_util::sync::CancellationToken;

    use super::*;

    const TIMEOUT: Duration = Duration::from_secs(5);

    /// Answers every request with its own JSON, so a round trip shows what the daemon received.
    struct Echo;

    impl Handler for Echo {
        async fn handle(&self, request: Request) -> Response {
            let detail = serde_json::to_value(&request).expect("a request serializes");
            Response::ok(format!("{request:?}"), detail)
        }
    }

    /// A daemon serving [`Echo`] on `path` until the token is cancelled.
    fn start(path: &Path) -> (CancellationToken, tokio::task::JoinHandle<()>) {
        let listener = bind(path).expect("bind");
        let cancel = CancellationToken::new();
        let task = tokio::spawn(serve(listener, Arc::new(Echo), cancel.clone()));
        (cancel, task)
    }

    async fn ask(path: &Path, request: Request) -> Result<Response, ControlError> {
        let path = path.to_owned();
        tokio::task::spawn_blocking(move || super::request(&path, &request, TIMEOUT))
            .await
            .expect("client thread")
    }

    /// Sends raw bytes as a request and parses whatever comes back.
    async fn ask_raw(path: &Path, bytes: Vec<u8>) -> Response {
        let path = path.to_owned();
        tokio::task::spawn_blocking(move || {
            let mut stream = UnixStream::connect(&path).expect("connect");
            stream.set_read_timeout(Some(TIMEOUT)).expect("timeout");
            stream.write_all(&bytes).expect("write");
            stream
                .shutdown(std::net::Shutdown::Write)
                .expect("shutdown");
            // One line, like the real client: after refusing an oversized request the daemon
            // closes with input unread, and the kernel then reports ECONNRESET after the line.
            let mut answer = String::new();
            std::io::BufReader::new(stream)
                .read_line(&mut answer)
                .expect("read");
            serde_json::from_str(answer.trim_end()).expect("a JSON response")
        })
        .await
        .expect("client thread")
    }

    #[test]
    fn the_wire_format_is_one_tagged_object() {
        let line = serde_json::to_string(&Request::Reload).expect("serialize");
        assert_eq!(line, r#"{"command":"reload"}"#);
        let response: Response =
            serde_json::from_str(r#"{"ok":true,"message":"fine"}"#).expect("detail defaults");
        assert_eq!(response, Response::ok("fine", serde_json::Value::Null));
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn every_request_round_trips() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("control.sock");
        let (cancel, task) = start(&path);
        for request in [
            Request::Reload,
            Request::Rollback,
            Request::Reconcile,
            Request::Status,
        ] {
            let response = ask(&path, request.clone()).await.expect("response");
            assert!(response.ok);
            assert_eq!(response.message, format!("{request:?}"));
            let echoed: Request = serde_json::from_value(response.detail).expect("echo");
            assert_eq!(echoed, request);
        }
        cancel.cancel();
        task.await.expect("serve ends");
        assert!(!path.exists(), "the socket file is removed on shutdown");
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn a_stale_socket_is_replaced() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("control.sock");
        // A daemon that died: its socket file stays, nobody listens.
        drop(std::os::unix::net::UnixListener::bind(&path).expect("bind"));
        assert!(matches!(
            ask(&path, Request::Status).await,
            Err(ControlError::NotRunning { .. })
        ));
        let (cancel, task) = start(&path);
        assert!(ask(&path, Request::Status).await.expect("response").ok);
        cancel.cancel();
        task.await.expect("serve ends");
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn a_live_socket_is_not_taken_over() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("control.sock");
        let (cancel, task) = start(&path);
        match bind(&path) {
            Err(ControlError::InUse { path: used }) => assert_eq!(used, path),
            other => panic!("expected InUse, got {other:?}"),
        }
        // The refused bind left the running daemon's socket alone.
        assert!(ask(&path, Request::Status).await.expect("response").ok);
        cancel.cancel();
        task.await.expect("serve ends");
    }

    #[tokio::test]
    async fn something_else_at_the_path_is_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("control.sock");
        std::fs::write(&path, "keep me").expect("write");
        assert!(matches!(bind(&path), Err(ControlError::NotSocket { .. })));
        assert_eq!(std::fs::read_to_string(&path).expect("read"), "keep me");

        let link = dir.path().join("link.sock");
        std::os::unix::fs::symlink(&path, &link).expect("symlink");
        assert!(matches!(bind(&link), Err(ControlError::NotSocket { .. })));
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn bad_requests_get_a_failed_response() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("control.sock");
        let (cancel, task) = start(&path);

        let response = ask_raw(&path, b"not json\n".to_vec()).await;
        assert!(!response.ok);
        assert!(
            response.message.starts_with("malformed request: "),
            "{response:?}"
        );

        let response = ask_raw(&path, br#"{"command":"explode"}"#.to_vec()).await;
        assert!(!response.ok);
        assert!(response.message.contains("explode"), "{response:?}");

        let response = ask_raw(&path, Vec::new()).await;
        assert_eq!(response.message, "empty request");

        let response = ask_raw(&path, vec![b' '; MAX_REQUEST_BYTES + 10]).await;
        assert!(!response.ok);
        assert!(response.message.contains("exceeds"), "{response:?}");

        // A request without its newline is still read to the end of the stream.
        let response = ask_raw(&path, br#"{"command":"status"}"#.to_vec()).await;
        assert!(response.ok, "{response:?}");

        cancel.cancel();
        task.await.expect("serve ends");
    }

    #[tokio::test]
    async fn nothing_listening_is_not_running() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("missing/control.sock");
        match ask(&path, Request::Status).await {
            Err(ControlError::NotRunning { path: missing }) => assert_eq!(missing, path),
            other => panic!("expected NotRunning, got {other:?}"),
        }
    }

    #[test]
    fn a_daemon_that_does_not_answer_times_out() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("control.sock");
        // Accepted by the kernel's backlog, never read or answered.
        let _listener = std::os::unix::net::UnixListener::bind(&path).expect("bind");
        let timeout = Duration::from_millis(200);
        match super::request(&path, &Request::Status, timeout) {
            Err(ControlError::TimedOut {
                timeout: waited, ..
            }) => assert_eq!(waited, timeout),
            other => panic!("expected TimedOut, got {other:?}"),
        }
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn the_socket_and_its_new_directory_are_private() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("run/enforcer/control.sock");
        let (cancel, task) = start(&path);
        let mode = |path: &Path| std::fs::metadata(path).expect("stat").permissions().mode();
        assert_eq!(mode(&path) & 0o777, 0o600);
        assert_eq!(mode(path.parent().expect("parent")) & 0o777, 0o700);
        cancel.cancel();
        task.await.expect("serve ends");
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn a_silent_peer_does_not_block_others() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("control.sock");
        let (cancel, task) = start(&path);
        // Connected, never writes: served in its own task, so the next peer is answered.
        let _silent = UnixStream::connect(&path).expect("connect");
        assert!(ask(&path, Request::Status).await.expect("response").ok);
        cancel.cancel();
        task.await.expect("serve ends");
    }
}
