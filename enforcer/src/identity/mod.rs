//! Identities: labels → small numeric ids; workload cgroup globs → local identities.
