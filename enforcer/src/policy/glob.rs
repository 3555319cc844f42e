//! Workload cgroup globs. They are matched against cgroup v2 paths relative to the managed root, so
//! anything that could never name such a path (absolute, `..`, empty segments) is refused up front
//! instead of silently matching nothing.

use globset::{Glob, GlobBuilder, GlobMatcher};

use super::Workload;

/// Why a cgroup glob is refused.
#[derive(Clone, Debug, thiserror::Error)]
#[non_exhaustive]
pub enum GlobError {
    #[error("it is empty")]
    Empty,
    #[error("it must be relative to the managed cgroup root: remove the leading `/`")]
    Absolute,
    #[error("it has an empty path segment (`//` or a trailing `/`)")]
    EmptySegment,
    #[error("path segment `{segment}` is not allowed: cgroup paths have no `.` or `..`")]
    DotSegment { segment: String },
    #[error("it does not compile: {}", .0.kind())]
    Invalid(#[source] globset::Error),
}

/// Compiles a cgroup glob the one way the whole enforcer matches them: `*` stays within a path
/// segment and `**` crosses segments.
///
/// # Errors
/// When the glob is not relative, has empty or dot segments, or is not a valid glob.
pub fn cgroup_glob(glob: &str) -> Result<Glob, GlobError> {
    if glob.is_empty() {
        return Err(GlobError::Empty);
    }
    if glob.starts_with('/') {
        return Err(GlobError::Absolute);
    }
    for segment in glob.split('/') {
        if segment.is_empty() {
            return Err(GlobError::EmptySegment);
        }
        if segment == "." || segment == ".." {
            return Err(GlobError::DotSegment {
                segment: segment.to_owned(),
            });
        }
    }
    GlobBuilder::new(glob)
        .literal_separator(true)
        .build()
        .map_err(GlobError::Invalid)
}

impl Workload {
    /// The matcher for [`Workload::cgroup`], built as the parser validated it.
    ///
    /// # Errors
    /// Only for a `Workload` built by hand with a glob the parser would have refused.
    pub fn cgroup_matcher(&self) -> Result<GlobMatcher, GlobError> {
        cgroup_glob(&self.cgroup).map(|glob| glob.compile_matcher())
    }
}
