//! Which cgroups must hold their new children fail-closed.
//!
//! The kernel judges a cgroup it has no label for yet (one made since the daemon last labelled)
//! as its nearest labelled ancestor. That is exactly right unless a deeper workload glob could
//! claim the new cgroup: then inheriting could be broader than its own identity, so the ancestor
//! is marked [`CGROUP_HOLD`](enforcer_common::CGROUP_HOLD) and the kernel refuses the new
//! cgroup's connections until it is labelled.

use globset::{GlobBuilder, GlobMatcher};

/// One `/`-separated segment of a workload glob.
#[derive(Clone, Debug)]
enum Segment {
    /// `**`: any number of segments, none included.
    AnyDepth,
    Matches(GlobMatcher),
    /// A segment this analysis cannot reason about (a brace or class spanning `/`): assume it
    /// matches anything, which only ever holds more, never less.
    Unknown,
}

/// A workload glob split into segments, for "could it match below this path?".
#[derive(Clone, Debug)]
pub(super) struct SegmentGlob(Vec<Segment>);

impl SegmentGlob {
    pub(super) fn new(glob: &str) -> Self {
        let spans_segments = glob.contains('{') || glob.contains('[');
        Self(
            glob.split('/')
                .map(|segment| {
                    if segment == "**" {
                        Segment::AnyDepth
                    } else if spans_segments {
                        Segment::Unknown
                    } else {
                        GlobBuilder::new(segment)
                            .literal_separator(true)
                            .build()
                            .map_or(Segment::Unknown, |g| Segment::Matches(g.compile_matcher()))
                    }
                })
                .collect(),
        )
    }

    /// Whether the glob could match some cgroup strictly below `path` (relative, `/`-separated;
    /// `""` for the root).
    pub(super) fn could_match_below(&self, path: &str) -> bool {
        let path: Vec<&str> = if path.is_empty() {
            Vec::new()
        } else {
            path.split('/').collect()
        };
        below(&self.0, &path)
    }
}

fn below(glob: &[Segment], path: &[&str]) -> bool {
    match (glob.split_first(), path.split_first()) {
        // The glob is used up: it can match the path itself at most, nothing below it.
        (None, _) => false,
        // Segments remain once the path is used up: a child named to match them can exist.
        (Some(_), None) => true,
        (Some((Segment::AnyDepth, rest)), Some((_, path_rest))) => {
            below(rest, path) || below(glob, path_rest)
        }
        (Some((Segment::Matches(matcher), rest)), Some((name, path_rest))) => {
            matcher.is_match(name) && below(rest, path_rest)
        }
        (Some((Segment::Unknown, rest)), Some((_, path_rest))) => below(rest, path_rest),
    }
}

#[cfg(test)]
mod tests {
    use super::SegmentGlob;

    #[test]
    fn a_glob_one_level_deeper_holds_the_parent() {
        let glob = SegmentGlob::new("tenant/*");
        assert!(glob.could_match_below("tenant"));
        assert!(glob.could_match_below(""));
        assert!(!glob.could_match_below("tenant/c-1"));
        assert!(!glob.could_match_below("other"));
    }

    #[test]
    fn any_depth_holds_every_level_it_spans() {
        let glob = SegmentGlob::new("chain/**/leaf");
        assert!(glob.could_match_below("chain"));
        assert!(glob.could_match_below("chain/a/a/a"));
        assert!(!glob.could_match_below("elsewhere"));
        // `leaf` itself could have a child named `leaf`.
        assert!(glob.could_match_below("chain/a/leaf"));
        let trailing = SegmentGlob::new("apps/**");
        assert!(trailing.could_match_below("apps/x/y"));
    }

    #[test]
    fn an_exact_path_holds_only_its_ancestors() {
        let glob = SegmentGlob::new("system.slice/ledger.service");
        assert!(glob.could_match_below("system.slice"));
        assert!(!glob.could_match_below("system.slice/ledger.service"));
        assert!(!glob.could_match_below("system.slice/web.service"));
    }

    #[test]
    fn braces_are_assumed_to_match() {
        let glob = SegmentGlob::new("{a,b/c}");
        assert!(glob.could_match_below("zzz") || glob.could_match_below(""));
    }
}
