//! A throw-away lab on this machine: network namespaces joined by veth, a cgroup subtree, and the
//! processes started in them. Everything is removed on drop, also after an error or Ctrl-C.

use std::{
    fs,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::atomic::{AtomicBool, Ordering},
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};

use crate::{cgroup2_mount, exec, say};

static INTERRUPTED: AtomicBool = AtomicBool::new(false);

extern "C" fn on_interrupt(_signal: libc::c_int) {
    INTERRUPTED.store(true, Ordering::SeqCst);
}

/// Makes Ctrl-C set a flag instead of killing xtask, so the lab is still cleaned up.
pub fn catch_interrupt() {
    let handler: extern "C" fn(libc::c_int) = on_interrupt;
    // SAFETY: the handler only stores to an atomic, which is async-signal-safe.
    unsafe {
        libc::signal(libc::SIGINT, handler as libc::sighandler_t);
    }
}

/// Fails once Ctrl-C was pressed, so the caller unwinds into the lab's cleanup.
///
/// # Errors
/// After an interrupt.
pub fn check_interrupt() -> anyhow::Result<()> {
    if INTERRUPTED.load(Ordering::SeqCst) {
        bail!("interrupted");
    }
    Ok(())
}

/// The lab and everything in it.
pub struct Lab {
    /// The managed cgroup root of the lab.
    pub cgroup_root: PathBuf,
    cgroups: Vec<PathBuf>,
    netns: Vec<String>,
    children: Vec<(String, Child)>,
}

impl Lab {
    /// Creates the lab's cgroup root below the cgroup2 mount.
    ///
    /// # Errors
    /// When cgroup2 is not mounted or the directory cannot be made.
    pub fn new(tag: &str) -> anyhow::Result<Self> {
        let cgroup_root = cgroup2_mount()?.join(tag);
        fs::create_dir(&cgroup_root)
            .with_context(|| format!("creating cgroup {}", cgroup_root.display()))?;
        Ok(Self {
            cgroups: vec![cgroup_root.clone()],
            cgroup_root,
            netns: Vec::new(),
            children: Vec::new(),
        })
    }

    /// Creates `rel` (and its parents) below the lab's cgroup root.
    ///
    /// # Errors
    /// When a directory cannot be made.
    pub fn cgroup(&mut self, rel: &str) -> anyhow::Result<PathBuf> {
        let mut dir = self.cgroup_root.clone();
        for part in rel.split('/') {
            dir.push(part);
            if !dir.exists() {
                fs::create_dir(&dir).with_context(|| format!("creating {}", dir.display()))?;
                self.cgroups.push(dir.clone());
            }
        }
        Ok(dir)
    }

    /// Creates a network namespace with loopback up.
    ///
    /// # Errors
    /// When `ip` fails.
    pub fn netns(&mut self, name: &str) -> anyhow::Result<()> {
        exec(
            "ip netns add",
            Command::new("ip").args(["netns", "add", name]),
        )?;
        self.netns.push(name.to_owned());
        ip(name, &["link", "set", "lo", "up"])
    }

    /// Joins two namespaces with a veth pair named `veth_a`/`veth_b`, addresses both ends, and
    /// routes each side's networks to the other over the link.
    ///
    /// # Errors
    /// When `ip` fails.
    pub fn link(&self, a: (&str, &str, &[&str]), b: (&str, &str, &[&str])) -> anyhow::Result<()> {
        let (ns_a, veth_a, addrs_a) = a;
        let (ns_b, veth_b, addrs_b) = b;
        exec(
            "ip link add veth",
            Command::new("ip").args([
                "link", "add", veth_a, "netns", ns_a, "type", "veth", "peer", "name", veth_b,
                "netns", ns_b,
            ]),
        )?;
        for (ns, veth, addrs, peer_addrs) in [
            (ns_a, veth_a, addrs_a, addrs_b),
            (ns_b, veth_b, addrs_b, addrs_a),
        ] {
            for addr in addrs {
                let mut args = vec!["addr", "add", addr, "dev", veth];
                if addr.contains(':') {
                    args.push("nodad");
                }
                ip(ns, &args)?;
            }
            ip(ns, &["link", "set", veth, "up"])?;
            for peer in peer_addrs {
                let network = network_of(peer);
                ip(ns, &["route", "add", &network, "dev", veth])?;
            }
        }
        Ok(())
    }

    /// Starts a process that the lab stops on drop; its output goes to `log`.
    ///
    /// # Errors
    /// When it cannot start.
    pub fn spawn(&mut self, name: &str, cmd: &mut Command, log: &Path) -> anyhow::Result<u32> {
        let out = fs::File::create(log).with_context(|| format!("creating {}", log.display()))?;
        let err = out.try_clone().context("duplicating a log handle")?;
        let child = cmd
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .with_context(|| format!("starting {name}"))?;
        let pid = child.id();
        self.children.push((name.to_owned(), child));
        Ok(pid)
    }

    /// Sends SIGTERM to the process started as `name` and waits up to 5 s for it to exit.
    ///
    /// # Errors
    /// When it does not exit in time (it is killed on drop then).
    pub fn stop(&mut self, name: &str) -> anyhow::Result<()> {
        let Some((_, child)) = self.children.iter_mut().find(|(n, _)| n == name) else {
            bail!("no process {name}");
        };
        terminate(child, Duration::from_secs(5))
            .then_some(())
            .with_context(|| format!("{name} did not stop within 5 s of SIGTERM"))
    }
}

/// SIGTERM, wait, then SIGKILL; true when it exited on SIGTERM.
fn terminate(child: &mut Child, grace: Duration) -> bool {
    if let Ok(pid) = libc::pid_t::try_from(child.id()) {
        // SAFETY: signalling our own child by pid.
        unsafe { libc::kill(pid, libc::SIGTERM) };
    }
    let deadline = Instant::now() + grace;
    while Instant::now() < deadline {
        if let Ok(Some(_)) = child.try_wait() {
            return true;
        }
        thread::sleep(Duration::from_millis(50));
    }
    let _ = child.kill();
    let _ = child.wait();
    false
}

fn ip(ns: &str, args: &[&str]) -> anyhow::Result<()> {
    exec(
        &format!("ip -n {ns} {}", args.join(" ")),
        Command::new("ip").args(["-n", ns]).args(args),
    )
}

/// `10.10.1.11/24` → `10.10.1.0/24`; `fd00:10:1::11/64` → `fd00:10:1::/64` (the lab only uses
/// /24 and /64).
fn network_of(addr: &str) -> String {
    let (ip, len) = addr.split_once('/').unwrap_or((addr, "32"));
    if ip.contains(':') {
        let prefix: Vec<&str> = ip.split(':').take(3).collect();
        format!("{}::/{len}", prefix.join(":"))
    } else {
        let octets: Vec<&str> = ip.split('.').take(3).collect();
        format!("{}.0/{len}", octets.join("."))
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        for (_, child) in &mut self.children {
            if let Ok(None) = child.try_wait() {
                terminate(child, Duration::from_secs(3));
            }
        }
        for dir in self.cgroups.iter().rev() {
            // cgroup.kill ends any straggler so the directory can go.
            let _ = fs::write(dir.join("cgroup.kill"), "1");
            for _ in 0..50 {
                if fs::remove_dir(dir).is_ok() || !dir.exists() {
                    break;
                }
                thread::sleep(Duration::from_millis(20));
            }
        }
        for ns in &self.netns {
            let _ = Command::new("ip").args(["netns", "del", ns]).status();
        }
        say("lab removed: processes stopped, cgroups and network namespaces deleted");
    }
}
