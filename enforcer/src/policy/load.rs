//! Reading a policy directory from disk.

use std::{
    fs,
    path::{Path, PathBuf},
};

use super::{Policy, PolicyError, PolicyErrorKind, PolicyErrors, Source, build};

/// Reads every `*.toml` file below `dir` (recursively, following symbolic links, skipping entries
/// whose name starts with `.`) and parses them as one policy, in byte order of their paths relative
/// to `dir`. Those relative paths are what errors and rule uids name.
///
/// # Errors
/// Every problem found: unreadable files, no policy file at all, and everything
/// [`parse_sources`](super::parse_sources) reports.
pub fn load_dir(dir: &Path) -> Result<Policy, PolicyErrors> {
    load_dir_with_sources(dir).map(|(policy, _)| policy)
}

/// [`load_dir`], also returning the files as read, so that the policy can be rebuilt exactly
/// later (the daemon keeps them to explain the events of the generations it applied).
///
/// # Errors
/// As [`load_dir`].
pub fn load_dir_with_sources(dir: &Path) -> Result<(Policy, Vec<Source>), PolicyErrors> {
    let mut found = Vec::new();
    let mut errors = Vec::new();
    walk(dir, Path::new(""), &mut Vec::new(), &mut found, &mut errors);
    let mut sources = Vec::with_capacity(found.len());
    for path in found {
        match fs::read_to_string(dir.join(&path)) {
            Ok(text) => sources.push(Source { path, text }),
            Err(source) => errors.push(PolicyError::new(
                None,
                PolicyErrorKind::Read { path, source },
            )),
        }
    }
    if sources.is_empty() && errors.is_empty() {
        let dir = dir.to_owned();
        errors.push(PolicyError::new(
            None,
            PolicyErrorKind::NoPolicyFiles { dir },
        ));
    }
    build(&sources, errors).map(|policy| (policy, sources))
}

/// `ancestors` holds the canonical paths of the directories being walked, so that a symbolic link
/// back up the tree is reported instead of followed forever. Hidden entries are skipped: editors
/// leave `.#name.toml` lock links and Kubernetes mounts config maps through `..data` directories,
/// and neither must be read as (a second copy of) the policy.
fn walk(
    root: &Path,
    rel: &Path,
    ancestors: &mut Vec<PathBuf>,
    found: &mut Vec<PathBuf>,
    errors: &mut Vec<PolicyError>,
) {
    let full = root.join(rel);
    let shown = if rel.as_os_str().is_empty() {
        root.to_owned()
    } else {
        rel.to_owned()
    };
    let read = |source| PolicyErrorKind::Read {
        path: shown.clone(),
        source,
    };
    let canonical = match fs::canonicalize(&full) {
        Ok(canonical) => canonical,
        Err(source) => return errors.push(PolicyError::new(None, read(source))),
    };
    if ancestors.contains(&canonical) {
        let kind = PolicyErrorKind::DirectoryLoop { path: shown };
        return errors.push(PolicyError::new(None, kind));
    }
    let entries = match fs::read_dir(&full) {
        Ok(entries) => entries,
        Err(source) => return errors.push(PolicyError::new(None, read(source))),
    };
    ancestors.push(canonical);
    for entry in entries {
        let entry = match entry {
            Ok(entry) => entry,
            Err(source) => {
                errors.push(PolicyError::new(None, read(source)));
                continue;
            }
        };
        let name = entry.file_name();
        if name.as_encoded_bytes().starts_with(b".") {
            continue;
        }
        let path = rel.join(&name);
        let is_toml = Path::new(&name)
            .extension()
            .is_some_and(|ext| ext == "toml");
        // `fs::metadata` follows links, so a linked file or directory counts as what it points to.
        match fs::metadata(entry.path()) {
            Ok(meta) if meta.is_dir() => walk(root, &path, ancestors, found, errors),
            Ok(meta) if meta.is_file() && is_toml => found.push(path),
            Ok(_) => {}
            // A dangling link named like a policy file is a file the operator expects to be read.
            Err(source) if is_toml => errors.push(PolicyError::new(
                None,
                PolicyErrorKind::Read { path, source },
            )),
            Err(_) => {}
        }
    }
    ancestors.pop();
}
