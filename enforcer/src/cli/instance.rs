//! The commands that talk to an instance: through its control socket while a daemon runs, or
//! through its pins and state directory when none does.

use std::time::Duration;

use serde_json::json;

use super::InstanceArgs;
use crate::{
    control::{self, ControlError, Request, Response},
    daemon::{StateDir, StateError},
    datapath::{DatapathError, PinDir, read_pins},
};

/// How long a command waits for the daemon (a reload of a large policy takes a while).
const REQUEST_TIMEOUT: Duration = Duration::from_secs(120);

/// Errors of the instance commands.
#[derive(Debug, thiserror::Error)]
pub enum InstanceError {
    #[error("no daemon runs for instance {bpffs}: {action} needs one")]
    NotRunning { bpffs: String, action: &'static str },
    #[error(transparent)]
    Control(#[from] ControlError),
    #[error(transparent)]
    State(#[from] StateError),
    #[error(transparent)]
    Datapath(#[from] DatapathError),
    #[error("{message}")]
    Refused { message: String, detail: String },
    #[error(
        "a daemon (pid {pid}) runs this instance: stop it first, or run it with --on-exit detach"
    )]
    Running { pid: String },
}

/// Sends `request` to the instance's daemon.
///
/// # Errors
/// When no daemon runs, or it refuses.
pub fn ask(args: &InstanceArgs, request: &Request) -> Result<Response, InstanceError> {
    let state = StateDir::at(&args.state_dir());
    match control::request(&state.control_socket(), request, REQUEST_TIMEOUT) {
        Ok(response) if response.ok => Ok(response),
        Ok(response) => Err(InstanceError::Refused {
            message: response.message,
            detail: serde_json::to_string_pretty(&response.detail).unwrap_or_default(),
        }),
        Err(ControlError::NotRunning { .. }) => Err(InstanceError::NotRunning {
            bpffs: args.bpffs.display().to_string(),
            action: match request {
                Request::Reload => "reload",
                Request::Rollback => "rollback",
                Request::Reconcile => "reconcile",
                Request::Status => "status",
            },
        }),
        Err(error) => Err(error.into()),
    }
}

/// The instance's status as JSON: the daemon's answer when one runs, else the pins and the
/// state directory.
///
/// # Errors
/// When the pins or state cannot be read.
pub fn status(args: &InstanceArgs) -> Result<serde_json::Value, InstanceError> {
    let pinned = read_pins(&args.bpffs)?;
    let running = match ask(args, &Request::Status) {
        Ok(response) => Some(response.detail),
        Err(InstanceError::NotRunning { .. }) => None,
        Err(error) => return Err(error),
    };
    let recorded = StateDir::at(&args.state_dir()).status()?;
    Ok(json!({
        "bpffs": args.bpffs,
        "enforcing": pinned.as_ref().is_some_and(|p| !p.links.is_empty() && p.generation != 0),
        "daemon_attached": running.is_some(),
        "daemon": running,
        "pinned": pinned,
        "recorded": recorded,
    }))
}

/// Removes all enforcement of the instance.
///
/// # Errors
/// When a daemon still runs it, or a pin cannot be removed.
pub fn detach(args: &InstanceArgs) -> Result<bool, InstanceError> {
    match ask(args, &Request::Status) {
        Ok(response) => {
            let pid = response.detail["status"]["pid"].to_string();
            return Err(InstanceError::Running { pid });
        }
        Err(InstanceError::NotRunning { .. }) => {}
        Err(error) => return Err(error),
    }
    let pins = PinDir::new(&args.bpffs);
    let had = pins.root().exists();
    pins.remove_all()?;
    StateDir::at(&args.state_dir()).forget_policies()?;
    Ok(had)
}
