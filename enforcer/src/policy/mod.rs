//! Segment policy: the model of POLICY.md and its parser. Pure: reads files, never touches the kernel.
//!
//! [`load_dir`] reads a policy directory; [`parse_sources`] does the same work on files already in
//! memory. Both either return a fully validated [`Policy`] or every problem they found, each with its
//! `file:line:column` ([`PolicyErrors`]). `docs/policy.md` describes the language as implemented.
#![forbid(unsafe_code)]

mod assemble;
mod convert;
mod error;
mod glob;
mod load;
mod model;
mod parse;
mod ports;
mod raw;
#[cfg(test)]
mod tests;

use std::{collections::HashMap, path::PathBuf};

use sha2::{Digest, Sha256};

pub use self::{
    error::{PolicyError, PolicyErrorKind, PolicyErrors},
    glob::{GlobError, cgroup_glob},
    load::{load_dir, load_dir_with_sources},
    model::*,
    ports::{PortTermError, UnknownMode, UnknownPacketSockets},
    raw::TableKind,
};

/// One policy file in memory.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Source {
    /// Relative to the policy directory; this is the path errors and rule uids show.
    pub path: PathBuf,
    pub text: String,
}

/// Parses `sources` as one policy directory. They are taken in byte order of their paths, whatever
/// order they are given in, so the result depends only on the files.
///
/// # Errors
/// Every problem found, in policy order; see [`PolicyErrorKind`].
pub fn parse_sources(sources: &[Source]) -> Result<Policy, PolicyErrors> {
    build(sources, Vec::new())
}

/// `errors` are problems already found while reading the directory.
fn build(sources: &[Source], mut errors: Vec<PolicyError>) -> Result<Policy, PolicyErrors> {
    if sources.is_empty() && errors.is_empty() {
        let dir = PathBuf::new();
        errors.push(PolicyError::new(
            None,
            PolicyErrorKind::NoPolicyFiles { dir },
        ));
    }
    let mut ordered: Vec<&Source> = sources.iter().collect();
    ordered.sort_by(|a, b| path_bytes(a).cmp(path_bytes(b)));

    let mut complete = errors.is_empty();
    let mut files = Vec::with_capacity(ordered.len());
    for source in &ordered {
        let mut tables = parse::FileTables::default();
        complete &= parse::parse_file(&source.path, &source.text, &mut tables, &mut errors);
        files.push(tables);
    }
    let mut policy = assemble::assemble(files, complete, &mut errors);

    // Policy order: errors without a location (unreadable files) first, then by file and position.
    let order: HashMap<&std::path::Path, usize> = ordered
        .iter()
        .enumerate()
        .map(|(index, source)| (source.path.as_path(), index))
        .collect();
    errors.sort_by_key(|error| {
        error
            .location()
            .map(|l| (order.get(l.file.as_path()).copied(), l.line, l.column))
    });
    if let Some(errors) = PolicyErrors::from_vec(errors) {
        return Err(errors);
    }
    policy.version = version(&ordered);
    Ok(policy)
}

fn path_bytes(source: &Source) -> &[u8] {
    source.path.as_os_str().as_encoded_bytes()
}

/// SHA-256 over each file's relative path and contents, each followed by a 0 byte: a rename changes
/// the version too, since rule uids name the file.
fn version(ordered: &[&Source]) -> String {
    let mut hash = Sha256::new();
    for source in ordered {
        hash.update(path_bytes(source));
        hash.update([0]);
        hash.update(source.text.as_bytes());
        hash.update([0]);
    }
    hex::encode(hash.finalize())
}
