//! The lab's own network namespace with a libvirtd inside it, Vagrant driven in it, and the
//! tear-down that leaves nothing behind (run explicitly, and again from `Drop` on any early exit).

use std::{
    collections::BTreeSet,
    fs,
    path::{Path, PathBuf},
    process::Command,
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};

use crate::{exec, output, say};

/// The namespace every VM address, bridge and DHCP server lives in.
const NETNS: &str = "enforcer-lab";
const LIBVIRTD_PID: &str = "/run/enforcer-lab-libvirtd.pid";
/// libvirt's qemu driver logs the guests' consoles through virtlogd; without systemd nothing
/// socket-activates it, so the lab starts its own.
const VIRTLOGD_PID: &str = "/run/enforcer-lab-virtlogd.pid";
/// vagrant-libvirt names the domains `<directory of the Vagrantfile>_<machine>`.
const DOMAIN_PREFIX: &str = "vagrant_";

pub struct Lab {
    vagrant_dir: PathBuf,
    state_dir: PathBuf,
    binary: PathBuf,
    driver: &'static str,
    /// libvirt networks and pools defined before the lab: tear-down keeps them.
    networks_before: BTreeSet<String>,
    pools_before: BTreeSet<String>,
    active: bool,
}

impl Lab {
    /// Creates the namespace and starts libvirtd in it.
    pub fn start(workspace: &Path, binary: &Path, driver: &'static str) -> anyhow::Result<Self> {
        if let Some(pid) = output(Command::new("pgrep").args(["-x", "libvirtd"]))
            && fs::read_to_string(LIBVIRTD_PID)
                .map(|p| p.trim().to_owned())
                .ok()
                != Some(pid.trim().to_owned())
        {
            bail!(
                "a libvirtd that is not the lab's runs here (pid {}): stop it first, the lab runs its own",
                pid.trim()
            );
        }
        let mut lab = Self {
            vagrant_dir: workspace.join("vagrant"),
            state_dir: workspace.join("target/vagrant-lab"),
            binary: binary.to_owned(),
            driver,
            networks_before: BTreeSet::new(),
            pools_before: BTreeSet::new(),
            active: true,
        };
        if Path::new("/run/netns").join(NETNS).exists() {
            say("a namespace of an earlier lab is left: tearing that lab down first");
            lab.tear_down()?;
            lab.active = true;
        }
        fs::create_dir_all(&lab.state_dir).context("creating target/vagrant-lab")?;
        say(&format!(
            "creating network namespace {NETNS} and starting libvirtd inside it"
        ));
        exec(
            "ip netns add",
            Command::new("ip").args(["netns", "add", NETNS]),
        )?;
        exec(
            "loopback up",
            in_netns("ip").args(["link", "set", "lo", "up"]),
        )?;
        exec(
            "virtlogd",
            in_netns("virtlogd").args(["--daemon", "--pid-file", VIRTLOGD_PID]),
        )?;
        exec(
            "libvirtd",
            in_netns("libvirtd").args(["--daemon", "--pid-file", LIBVIRTD_PID]),
        )?;
        wait_for("libvirtd to answer", Duration::from_secs(60), || {
            output(virsh().arg("version")).is_some()
        })?;
        lab.networks_before = names(&["net-list", "--all", "--name"]);
        lab.pools_before = names(&["pool-list", "--all", "--name"]);
        Ok(lab)
    }

    /// `vagrant up` of the three VMs, then the ssh config the checks use.
    pub fn up(&self) -> anyhow::Result<()> {
        say(&format!(
            "vagrant up: app-1, db-1, peer (libvirt driver {})",
            self.driver
        ));
        exec(
            "vagrant up",
            self.vagrant().args(["up", "--provider", "libvirt"]),
        )?;
        let config =
            output(self.vagrant().arg("ssh-config")).context("vagrant ssh-config failed")?;
        fs::write(self.ssh_config(), config).context("writing the lab's ssh config")
    }

    /// Runs `script` on `machine` through ssh (inside the namespace); its exit code, or an error
    /// when ssh itself fails (255).
    pub fn ssh(&self, machine: &str, script: &str) -> anyhow::Result<(i32, String)> {
        let out = in_netns("ssh")
            .arg("-F")
            .arg(self.ssh_config())
            .args([
                "-o",
                "BatchMode=yes",
                "-o",
                "ConnectTimeout=30",
                machine,
                script,
            ])
            .output()
            .with_context(|| format!("ssh to {machine}"))?;
        let code = out.status.code().unwrap_or(-1);
        if code == 255 {
            bail!(
                "ssh to {machine} failed: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        Ok((code, String::from_utf8_lossy(&out.stdout).into_owned()))
    }

    fn ssh_config(&self) -> PathBuf {
        self.state_dir.join("ssh_config")
    }

    fn vagrant(&self) -> Command {
        let mut cmd = in_netns("vagrant");
        cmd.current_dir(&self.vagrant_dir)
            .env("VAGRANT_DOTFILE_PATH", self.state_dir.join("dotfile"))
            .env("VAGRANT_DEFAULT_PROVIDER", "libvirt")
            .env("ENFORCER_LAB_LIBVIRT_DRIVER", self.driver)
            .env("ENFORCER_LAB_BIN", &self.binary);
        cmd
    }

    /// Destroys the VMs and everything libvirt made for them, stops libvirtd, deletes the
    /// namespace, then checks that nothing is left. The cached box stays.
    pub fn tear_down(&mut self) -> anyhow::Result<()> {
        self.active = false;
        say("tearing the lab down");
        let libvirtd_up = output(virsh().arg("version")).is_some();
        if libvirtd_up {
            if self.state_dir.join("dotfile").exists()
                && let Err(error) = exec("vagrant destroy", self.vagrant().args(["destroy", "-f"]))
            {
                say(&format!("{error:#}; removing the domains with virsh"));
            }
            for domain in names(&["list", "--all", "--name"]) {
                if domain.starts_with(DOMAIN_PREFIX) {
                    say(&format!("removing leftover domain {domain}"));
                    let _ = output(virsh().args(["destroy", &domain]));
                    let _ = output(virsh().args(["undefine", &domain, "--remove-all-storage"]));
                }
            }
            for network in names(&["net-list", "--name"]) {
                let _ = output(virsh().args(["net-destroy", &network]));
            }
            for network in names(&["net-list", "--all", "--name"]) {
                if !self.networks_before.contains(&network) {
                    let _ = output(virsh().args(["net-undefine", &network]));
                }
            }
            for pool in names(&["pool-list", "--all", "--name"]) {
                if !self.pools_before.contains(&pool) {
                    let _ = output(virsh().args(["pool-destroy", &pool]));
                    let _ = output(virsh().args(["pool-undefine", &pool]));
                }
            }
        }
        self.verify_libvirt_empty(libvirtd_up)?;
        stop_daemon("libvirtd", LIBVIRTD_PID)?;
        stop_daemon("virtlogd", VIRTLOGD_PID)?;
        if Path::new("/run/netns").join(NETNS).exists() {
            exec(
                "ip netns delete",
                Command::new("ip").args(["netns", "delete", NETNS]),
            )?;
        }
        let _ = fs::remove_dir_all(self.state_dir.join("dotfile"));
        verify_nothing_left()
    }

    fn verify_libvirt_empty(&self, libvirtd_up: bool) -> anyhow::Result<()> {
        if !libvirtd_up {
            return Ok(());
        }
        let domains: Vec<String> = names(&["list", "--all", "--name"]).into_iter().collect();
        let networks: Vec<String> = names(&["net-list", "--name"]).into_iter().collect();
        let extra: Vec<String> = names(&["net-list", "--all", "--name"])
            .difference(&self.networks_before)
            .cloned()
            .collect();
        if !domains.is_empty() || !networks.is_empty() || !extra.is_empty() {
            bail!(
                "tear-down left libvirt objects: domains {domains:?}, active networks {networks:?}, new networks {extra:?}"
            );
        }
        Ok(())
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        if self.active
            && let Err(error) = self.tear_down()
        {
            say(&format!("tear-down failed: {error:#}"));
        }
    }
}

fn in_netns(program: &str) -> Command {
    let mut cmd = Command::new("ip");
    cmd.args(["netns", "exec", NETNS, program]);
    cmd
}

fn virsh() -> Command {
    let mut cmd = in_netns("virsh");
    cmd.args(["-q", "-c", "qemu:///system"]);
    cmd
}

fn names(args: &[&str]) -> BTreeSet<String> {
    output(virsh().args(args))
        .unwrap_or_default()
        .lines()
        .map(str::trim)
        .filter(|name| !name.is_empty())
        .map(str::to_owned)
        .collect()
}

fn stop_daemon(name: &str, pid_file: &str) -> anyhow::Result<()> {
    let Ok(pid) = fs::read_to_string(pid_file) else {
        return Ok(());
    };
    let pid: libc::pid_t = pid
        .trim()
        .parse()
        .with_context(|| format!("the {name} pid file"))?;
    // SAFETY: kill has no memory preconditions; the pid is the one our libvirtd wrote.
    if unsafe { libc::kill(pid, libc::SIGTERM) } == 0 {
        // SAFETY: as above; signal 0 only asks whether the process still exists.
        wait_for(
            "libvirtd to exit",
            Duration::from_secs(30),
            || unsafe { libc::kill(pid, 0) } != 0,
        )?;
    }
    let _ = fs::remove_file(pid_file);
    Ok(())
}

/// No namespace, no qemu of a lab VM, no DHCP server of a lab network, no lab loop device.
fn verify_nothing_left() -> anyhow::Result<()> {
    let mut left = Vec::new();
    if Path::new("/run/netns").join(NETNS).exists() {
        left.push(format!("network namespace {NETNS}"));
    }
    if let Some(qemu) =
        output(Command::new("pgrep").args(["-f", &format!("guest={DOMAIN_PREFIX}")]))
    {
        left.push(format!(
            "qemu processes {}",
            qemu.split_whitespace().collect::<Vec<_>>().join(",")
        ));
    }
    if let Some(dnsmasq) = output(Command::new("pgrep").args(["-f", "dnsmasq/vagrant"])) {
        left.push(format!(
            "dnsmasq processes {}",
            dnsmasq.split_whitespace().collect::<Vec<_>>().join(",")
        ));
    }
    for daemon in ["libvirtd", "virtlogd"] {
        if output(Command::new("pgrep").args(["-x", daemon])).is_some() {
            left.push(daemon.to_owned());
        }
    }
    let loops = output(Command::new("losetup").arg("-a")).unwrap_or_default();
    left.extend(
        loops
            .lines()
            .filter(|line| line.contains("enforcer-lab"))
            .map(|line| format!("loop device {line}")),
    );
    if !left.is_empty() {
        bail!("tear-down left: {}", left.join("; "));
    }
    say(
        "tear-down verified: no VM, libvirt network, namespace, libvirtd or loop device is left (the box stays cached)",
    );
    Ok(())
}

fn wait_for(what: &str, limit: Duration, mut done: impl FnMut() -> bool) -> anyhow::Result<()> {
    let start = Instant::now();
    while !done() {
        if start.elapsed() > limit {
            bail!("timed out after {limit:?} waiting for {what}");
        }
        thread::sleep(Duration::from_millis(500));
    }
    Ok(())
}
