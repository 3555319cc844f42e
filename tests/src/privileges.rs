//! The privilege gate every privileged test passes first, and the host facts it checks.

use std::{
    fs,
    path::PathBuf,
    process::{Command, Stdio},
};

/// Set by `cargo xtask test` in CI: there a skipped test is a failed test.
pub const REQUIRE_ENV: &str = "ENFORCER_REQUIRE_PRIVILEGED";

/// Whether this process may run privileged tests: root, a cgroup v2 mount and `ip`.
///
/// When it may not, panics with the reason if [`REQUIRE_ENV`] is `1` (so CI cannot pass by skipping),
/// else prints `SKIPPED: <reason>` and returns `false`. Begin every privileged test with
/// `if !require_privileges() { return; }`.
#[must_use]
pub fn require_privileges() -> bool {
    let Err(reason) = check() else {
        return true;
    };
    if std::env::var(REQUIRE_ENV).is_ok_and(|v| v == "1") {
        panic!("privileged test cannot run ({REQUIRE_ENV}=1): {reason}");
    }
    println!("SKIPPED: {reason}");
    false
}

fn check() -> Result<(), String> {
    if !nix::unistd::geteuid().is_root() {
        return Err("needs root (cgroup BPF programs, network namespaces)".to_owned());
    }
    cgroup2_mount().ok_or("no cgroup2 file system in /proc/self/mountinfo")?;
    let ip = Command::new("ip")
        .arg("-V")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
    if !ip.is_ok_and(|s| s.success()) {
        return Err("`ip` (iproute2) is not runnable".to_owned());
    }
    Ok(())
}

/// The mount point of the cgroup v2 hierarchy, wherever the distribution put it (`/sys/fs/cgroup`
/// on unified hosts, `/sys/fs/cgroup/unified` in the hybrid layout).
#[must_use]
pub fn cgroup2_mount() -> Option<PathBuf> {
    let info = fs::read_to_string("/proc/self/mountinfo").ok()?;
    info.lines().find_map(|line| {
        // Fields: id parent major:minor root mount-point options [optional...] - fstype source ...
        let (pre, post) = line.split_once(" - ")?;
        if post.split_whitespace().next()? != "cgroup2" {
            return None;
        }
        let mount_point = pre.split_whitespace().nth(4)?;
        Some(PathBuf::from(unescape_mountinfo(mount_point)))
    })
}

/// mountinfo escapes space, tab, newline and backslash as three octal digits.
fn unescape_mountinfo(field: &str) -> String {
    let mut out = String::with_capacity(field.len());
    let mut rest = field;
    while let Some(i) = rest.find('\\') {
        out.push_str(&rest[..i]);
        let code = rest
            .get(i + 1..i + 4)
            .and_then(|o| u8::from_str_radix(o, 8).ok());
        if let Some(byte) = code {
            out.push(char::from(byte));
            rest = &rest[i + 4..];
        } else {
            out.push('\\');
            rest = &rest[i + 1..];
        }
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unescapes_octal() {
        assert_eq!(unescape_mountinfo(r"/a\040b\\"), r"/a b\\");
        assert_eq!(unescape_mountinfo("/sys/fs/cgroup"), "/sys/fs/cgroup");
    }
}
