//! What an instance keeps on disk beside its pins, so that a restarted daemon (or `enforcer
//! status` with no daemon) knows what the kernel holds:
//!
//! ```text
//! <state dir>/identities.json        the identity allocator: numbers never move
//! <state dir>/generations/<N>.json   the policy files of generation N, to explain its events
//! <state dir>/status.json            what is in force, what was last rejected, who runs
//! <state dir>/control.sock           the daemon's control socket (root only)
//! ```
//!
//! Every file is written to a temporary name and renamed, so a crash leaves the old or the new
//! file, never half of one.

use std::{
    collections::BTreeSet,
    fs, io,
    os::unix::fs::{DirBuilderExt as _, PermissionsExt as _},
    path::{Path, PathBuf},
};

use serde::{Deserialize, Serialize, de::DeserializeOwned};

use crate::{identity::IdentityAllocator, policy::Source};

/// Errors reading or writing the state directory.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error("{action} {path}")]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{path} is not valid state")]
    Parse {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
}

/// One applied policy generation, as kept to explain its events.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct GenerationRecord {
    pub generation: u32,
    pub version: String,
    /// Seconds since the Unix epoch.
    pub applied_at: u64,
    pub sources: Vec<Source>,
}

/// A policy that was refused, and why.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rejection {
    /// Seconds since the Unix epoch.
    pub at: u64,
    /// What asked for it: `start`, `directory`, `SIGHUP`, `control`.
    pub origin: String,
    /// Every error, each `file:line:column: message` where it has a place.
    pub errors: Vec<String>,
}

/// What `enforcer status` reports.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Status {
    /// The running daemon's pid; `None` once it has exited.
    pub pid: Option<u32>,
    pub node: String,
    pub policy_dir: PathBuf,
    pub cgroup_root: PathBuf,
    /// The policy in force.
    pub version: Option<String>,
    pub generation: u32,
    /// Seconds since the Unix epoch.
    pub applied_at: Option<u64>,
    /// Entries the last apply wrote.
    pub last_written: usize,
    /// The generation `enforcer rollback` would bring back; 0 when none.
    pub standby_generation: u32,
    pub last_rejected: Option<Rejection>,
    /// Map entries put right by reconciles since the daemon started.
    pub repaired: u64,
    /// Events of generations this daemon could not explain.
    pub unknown_generation_events: u64,
}

/// An instance's state directory.
#[derive(Clone, Debug)]
pub struct StateDir {
    root: PathBuf,
}

fn io_error<'a>(action: &'static str, path: &'a Path) -> impl Fn(io::Error) -> StateError + 'a {
    move |source| StateError::Io {
        action,
        path: path.to_owned(),
        source,
    }
}

impl StateDir {
    /// Opens (creating, mode 0700) the state directory at `root`.
    ///
    /// # Errors
    /// When it cannot be created.
    pub fn create(root: &Path) -> Result<Self, StateError> {
        let generations = root.join("generations");
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&generations)
            .map_err(io_error("creating", &generations))?;
        fs::set_permissions(root, fs::Permissions::from_mode(0o700))
            .map_err(io_error("restricting", root))?;
        Ok(Self {
            root: root.to_owned(),
        })
    }

    /// The state directory at `root`, which may not exist (for reading only).
    #[must_use]
    pub fn at(root: &Path) -> Self {
        Self {
            root: root.to_owned(),
        }
    }

    #[must_use]
    pub fn control_socket(&self) -> PathBuf {
        self.root.join("control.sock")
    }

    fn generation_path(&self, generation: u32) -> PathBuf {
        self.root
            .join("generations")
            .join(format!("{generation}.json"))
    }

    /// The identity allocator; a fresh one when none was saved.
    ///
    /// # Errors
    /// When the file exists but cannot be read or parsed: numbering afresh would move identities
    /// under the kernel's feet, so that is never done silently.
    pub fn identities(&self) -> Result<IdentityAllocator, StateError> {
        Ok(read_json(&self.root.join("identities.json"))?.unwrap_or_default())
    }

    /// # Errors
    /// When the file cannot be written.
    pub fn save_identities(&self, allocator: &IdentityAllocator) -> Result<(), StateError> {
        write_json(&self.root.join("identities.json"), allocator)
    }

    /// # Errors
    /// When the file exists but cannot be read or parsed.
    pub fn generation(&self, generation: u32) -> Result<Option<GenerationRecord>, StateError> {
        read_json(&self.generation_path(generation))
    }

    /// # Errors
    /// When the file cannot be written.
    pub fn save_generation(&self, record: &GenerationRecord) -> Result<(), StateError> {
        write_json(&self.generation_path(record.generation), record)
    }

    /// Removes the records of every generation not in `keep`.
    ///
    /// # Errors
    /// When the directory cannot be read or a file removed.
    pub fn prune_generations(&self, keep: &BTreeSet<u32>) -> Result<(), StateError> {
        let dir = self.root.join("generations");
        for entry in fs::read_dir(&dir).map_err(io_error("reading", &dir))? {
            let entry = entry.map_err(io_error("reading", &dir))?;
            let name = entry.file_name();
            let generation = name
                .to_str()
                .and_then(|n| n.strip_suffix(".json"))
                .and_then(|n| n.parse::<u32>().ok());
            if generation.is_some_and(|g| !keep.contains(&g)) {
                let path = entry.path();
                fs::remove_file(&path).map_err(io_error("removing", &path))?;
            }
        }
        Ok(())
    }

    /// # Errors
    /// When the file exists but cannot be read or parsed.
    pub fn status(&self) -> Result<Option<Status>, StateError> {
        read_json(&self.root.join("status.json"))
    }

    /// # Errors
    /// When the file cannot be written.
    pub fn save_status(&self, status: &Status) -> Result<(), StateError> {
        write_json(&self.root.join("status.json"), status)
    }

    /// Forgets what was in force (after `enforcer detach`); the identity allocator stays, so
    /// that numbers never move even across a detach.
    ///
    /// # Errors
    /// When a file cannot be removed.
    pub fn forget_policies(&self) -> Result<(), StateError> {
        for path in [self.root.join("status.json"), self.root.join("generations")] {
            let removed = if path.is_dir() {
                fs::remove_dir_all(&path)
            } else {
                fs::remove_file(&path)
            };
            match removed {
                Ok(()) => {}
                Err(error) if error.kind() == io::ErrorKind::NotFound => {}
                Err(error) => return Err(io_error("removing", &path)(error)),
            }
        }
        Ok(())
    }
}

fn read_json<T: DeserializeOwned>(path: &Path) -> Result<Option<T>, StateError> {
    match fs::read(path) {
        Ok(bytes) => serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|source| StateError::Parse {
                path: path.to_owned(),
                source,
            }),
        Err(error) if error.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(error) => Err(io_error("reading", path)(error)),
    }
}

fn write_json<T: Serialize>(path: &Path, value: &T) -> Result<(), StateError> {
    let text = serde_json::to_vec_pretty(value).map_err(|source| StateError::Parse {
        path: path.to_owned(),
        source,
    })?;
    let temporary = path.with_extension("json.tmp");
    fs::write(&temporary, text).map_err(io_error("writing", &temporary))?;
    fs::rename(&temporary, path).map_err(io_error("renaming into", path))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_round_trip_and_prune() {
        let dir = tempfile::tempdir().expect("tempdir");
        let state = StateDir::create(&dir.path().join("instance")).expect("state dir");
        assert_eq!(
            state.identities().expect("read"),
            IdentityAllocator::default()
        );
        assert_eq!(state.generation(3).expect("read"), None);
        for generation in [3, 4, 5] {
            let record = GenerationRecord {
                generation,
                version: format!("v{generation}"),
                applied_at: 1,
                sources: vec![Source {
                    path: "a.toml".into(),
                    text: "x".into(),
                }],
            };
            state.save_generation(&record).expect("save");
            assert_eq!(state.generation(generation).expect("read"), Some(record));
        }
        state
            .prune_generations(&BTreeSet::from([4, 5]))
            .expect("prune");
        assert_eq!(state.generation(3).expect("read"), None);
        assert!(state.generation(5).expect("read").is_some());
        let status = Status {
            generation: 5,
            ..Status::default()
        };
        state.save_status(&status).expect("save");
        assert_eq!(state.status().expect("read"), Some(status));
        state.forget_policies().expect("forget");
        assert_eq!(state.status().expect("read"), None);
    }

    #[test]
    fn a_corrupt_allocator_is_an_error_not_a_fresh_start() {
        let dir = tempfile::tempdir().expect("tempdir");
        let state = StateDir::create(dir.path()).expect("state dir");
        fs::write(dir.path().join("identities.json"), "{not json").expect("write");
        assert!(matches!(state.identities(), Err(StateError::Parse { .. })));
    }
}
