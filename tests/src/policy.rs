//! Policy directories written by tests.

use std::{
    fs,
    path::{Path, PathBuf},
};

use tempfile::TempDir;

/// A temporary policy directory; removed on drop.
#[derive(Debug)]
pub struct PolicyDir {
    dir: TempDir,
}

impl PolicyDir {
    #[must_use]
    pub fn new() -> Self {
        let dir = tempfile::Builder::new()
            .prefix("enf-t-policy-")
            .tempdir()
            .expect("create policy tempdir");
        Self { dir }
    }

    #[must_use]
    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// Writes `rel` (creating parent directories) and returns its full path.
    pub fn write(&self, rel: &str, content: &str) -> PathBuf {
        let path = self.dir.path().join(rel);
        if let Some(parent) = path.parent() {
            fs::create_dir_all(parent).expect("create policy subdirectory");
        }
        fs::write(&path, content).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
        path
    }

    /// The 1-based line of the `nth` (0-based) line of `rel` that starts with `prefix` once leading
    /// blanks are trimmed: how a test finds the `[[deny]]` header an event must point at without
    /// hard-coding line numbers.
    #[must_use]
    pub fn line_of(&self, rel: &str, prefix: &str, nth: usize) -> usize {
        let path = self.dir.path().join(rel);
        let text =
            fs::read_to_string(&path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
        line_of(&text, prefix, nth).unwrap_or_else(|| {
            panic!(
                "{} has no line #{nth} starting with {prefix:?}",
                path.display()
            )
        })
    }
}

impl Default for PolicyDir {
    fn default() -> Self {
        Self::new()
    }
}

/// See [`PolicyDir::line_of`].
#[must_use]
pub fn line_of(text: &str, prefix: &str, nth: usize) -> Option<usize> {
    text.lines()
        .enumerate()
        .filter(|(_, l)| l.trim_start().starts_with(prefix))
        .nth(nth)
        .map(|(i, _)| i + 1)
}

#[cfg(test)]
mod tests {
    use super::line_of;

    #[test]
    fn finds_nth_header() {
        let text = "[[allow]]\nx = 1\n  [[deny]]\n\n[[deny]]\n";
        assert_eq!(line_of(text, "[[deny]]", 0), Some(3));
        assert_eq!(line_of(text, "[[deny]]", 1), Some(5));
        assert_eq!(line_of(text, "[[deny]]", 2), None);
    }
}
