//! The Debian packages the lab needs on this machine, and the choice of libvirt's CPU driver.

use std::{env, path::Path, process::Command};

use anyhow::Context as _;

use crate::{command, exec, say, setup::installed, vm::kernels};

/// What the lab runs here besides qemu: Vagrant with its libvirt provider, libvirtd, and what the
/// box build needs (debootstrap, sfdisk, mkfs.ext4, GRUB's BIOS images, qemu-img).
const PACKAGES: &[&str] = &[
    "vagrant",
    "vagrant-libvirt",
    "libvirt-daemon-system",
    "libvirt-clients",
    "qemu-utils",
    "dnsmasq-base",
    "ebtables",
    "iptables",
    "debootstrap",
    "fdisk",
    "e2fsprogs",
    "grub-pc-bin",
    "grub-common",
    "openssh-client",
    "iproute2",
];

/// Installs what is missing: qemu-system-x86 from bookworm-backports (as the VM matrix does),
/// then the rest from bookworm.
///
/// # Errors
/// When apt fails.
pub fn install() -> anyhow::Result<()> {
    kernels::backports_qemu()?;
    let missing: Vec<&str> = PACKAGES
        .iter()
        .copied()
        .filter(|package| !installed(package))
        .collect();
    if missing.is_empty() {
        say("lab packages: all installed");
        return Ok(());
    }
    say(&format!("lab packages: installing {}", missing.join(" ")));
    exec(
        "apt-get update",
        Command::new("apt-get").args(["update", "-qq"]),
    )?;
    kernels::apt_install(&missing, None)
}

/// libvirt's domain type: `kvm` when a KVM guest really runs here, `qemu` (emulation) otherwise.
/// `/dev/kvm` alone proves nothing: a paravirtual KVM (PVM) refuses stock kernels ("failed to set
/// MSR 0x10a"), so a tiny guest is started and must still be running after a few seconds.
/// `ENFORCER_LAB_LIBVIRT_DRIVER` overrides the probe.
pub fn libvirt_driver() -> anyhow::Result<&'static str> {
    if let Some(chosen) = env::var_os("ENFORCER_LAB_LIBVIRT_DRIVER") {
        let driver = match chosen.to_str() {
            Some("kvm") => "kvm",
            Some("qemu") => "qemu",
            _ => anyhow::bail!("ENFORCER_LAB_LIBVIRT_DRIVER must be kvm or qemu, not {chosen:?}"),
        };
        say(&format!(
            "libvirt driver {driver} (from ENFORCER_LAB_LIBVIRT_DRIVER)"
        ));
        return Ok(driver);
    }
    if !Path::new("/dev/kvm").exists() {
        say("libvirt driver qemu: no /dev/kvm, guests are emulated (TCG)");
        return Ok("qemu");
    }
    let status = command("timeout")
        .args([
            "5",
            "qemu-system-x86_64",
            "-accel",
            "kvm",
            "-machine",
            "q35",
        ])
        .args([
            "-cpu",
            "host",
            "-m",
            "64",
            "-display",
            "none",
            "-nodefaults",
        ])
        .args(["-serial", "none", "-monitor", "none"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .context("probing KVM with qemu-system-x86_64")?;
    // timeout(1) exits 124 when it had to stop the guest: the guest was still running.
    if status.code() == Some(124) {
        say("libvirt driver kvm: a KVM guest runs here");
        Ok("kvm")
    } else {
        say(&format!(
            "libvirt driver qemu: a KVM guest does not start here ({status}), guests are emulated (TCG)"
        ));
        Ok("qemu")
    }
}
