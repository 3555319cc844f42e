//! Connections attempted in a tight loop while something else happens (reloads, a `kill -9`, a
//! restart), so that a test can check every single verdict, not a sample.

use std::{
    collections::BTreeMap,
    net::IpAddr,
    path::Path,
    process::{Child, Command, Stdio},
    time::Duration,
};

use crate::probe::probe_bin;

/// One connection attempt.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Attempt {
    /// Since the loop started.
    pub millis: u64,
    pub port: u16,
    /// `ok`, or the errno name (`EPERM`, `ECONNREFUSED`, `ETIMEDOUT`).
    pub result: String,
}

impl Attempt {
    /// The kernel refused the connection: the socket hooks judge every TCP `connect` and refuse
    /// it with `EPERM`.
    #[must_use]
    pub fn denied(&self) -> bool {
        // ECONNABORTED: allowed by the policy before a flip, revoked by the one after it while
        // still connecting, and its socket aborted by the daemon.
        self.result == "EPERM" || self.result == "ECONNABORTED"
    }

    /// The connection left the host and was answered: accepted, or reset by a closed port.
    #[must_use]
    pub fn allowed(&self) -> bool {
        matches!(self.result.as_str(), "ok" | "ECONNREFUSED")
    }
}

/// A running `enforcer-probe tcp-loop`; killed if dropped before [`TightLoop::finish`].
#[derive(Debug)]
pub struct TightLoop {
    child: Option<Child>,
}

impl TightLoop {
    /// Starts connecting from `cgroup` in namespace `netns` to each of `ports` on `addr`, in
    /// turn, for `length`.
    #[must_use]
    pub fn start(
        cgroup: &Path,
        netns: &str,
        length: Duration,
        addr: IpAddr,
        ports: &[u16],
    ) -> Self {
        let mut command = Command::new(probe_bin());
        command
            .arg("--cgroup")
            .arg(cgroup)
            .arg("--netns")
            .arg(netns)
            .arg("tcp-loop")
            .arg(length.as_millis().to_string())
            .arg(addr.to_string());
        for port in ports {
            command.arg(port.to_string());
        }
        let child = command
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn enforcer-probe tcp-loop");
        Self { child: Some(child) }
    }

    /// Waits for the loop to end and returns every attempt, in order.
    #[must_use]
    pub fn finish(mut self) -> Vec<Attempt> {
        let child = self.child.take().expect("finished once");
        let output = child.wait_with_output().expect("wait for tcp-loop");
        let stdout = String::from_utf8_lossy(&output.stdout);
        assert!(
            output.status.success(),
            "tcp-loop failed: {stdout}\n{}",
            String::from_utf8_lossy(&output.stderr)
        );
        stdout
            .lines()
            .filter_map(|line| {
                let mut words = line.strip_prefix("attempt ")?.split_whitespace();
                Some(Attempt {
                    millis: words.next()?.parse().ok()?,
                    port: words.next()?.parse().ok()?,
                    result: words.next()?.to_owned(),
                })
            })
            .collect()
    }
}

impl Drop for TightLoop {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Attempts per port as (allowed, denied); panics on an attempt that is neither (a timeout, say),
/// which no verdict explains.
#[must_use]
pub fn tally(attempts: &[Attempt]) -> BTreeMap<u16, (usize, usize)> {
    let mut counts: BTreeMap<u16, (usize, usize)> = BTreeMap::new();
    for attempt in attempts {
        let entry = counts.entry(attempt.port).or_default();
        if attempt.denied() {
            entry.1 += 1;
        } else {
            assert!(attempt.allowed(), "an attempt with no verdict: {attempt:?}");
            entry.0 += 1;
        }
    }
    counts
}
