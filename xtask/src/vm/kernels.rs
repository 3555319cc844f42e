//! What the VMs boot and what boots them: host packages, virtme-ng, and Debian kernel packages
//! unpacked below `target/vm/kernels`.

use std::{
    fs,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, bail};

use crate::{exec, output, say, setup::installed};

/// The apt source for bookworm-backports: its `qemu-system-x86` matches the preinstalled
/// `qemu-utils` (bookworm's own 7.2 conflicts with it), and it carries the newest 6.12 kernels.
const BACKPORTS_SOURCE: &str = "/etc/apt/sources.list.d/bookworm-backports.sources";
const BACKPORTS: &str = "Types: deb
URIs: http://deb.debian.org/debian
Suites: bookworm-backports
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
";
/// virtme-ng needs `kmod` (module dependencies), `udev` (without it the guest cannot find its
/// script's I/O ports and exits 255) and busybox (its initramfs, which loads the 9p modules
/// Debian builds as modules).
const GUEST_TOOLS: [&str; 3] = ["kmod", "udev", "busybox-static"];
const VIRTME_NG: &str = "virtme-ng==1.42";

/// A kernel package unpacked for booting.
pub struct Kernel {
    pub package: String,
    /// `uname -r` of the kernel.
    pub release: String,
    /// The compressed kernel image; its modules are in `../lib/modules/RELEASE`, where
    /// virtme-ng looks for them.
    pub image: PathBuf,
}

/// `apt-get install` of `packages`, from `release` when given (such as bookworm-backports).
///
/// # Errors
/// When apt fails.
pub(crate) fn apt_install(packages: &[&str], release: Option<&str>) -> anyhow::Result<()> {
    let mut apt = Command::new("apt-get");
    apt.args(["install", "-y", "-qq", "--no-install-recommends"])
        .env("DEBIAN_FRONTEND", "noninteractive");
    if let Some(release) = release {
        apt.args(["-t", release]);
    }
    exec("apt-get install", apt.args(packages))
}

/// qemu from bookworm-backports (whose source is added first when missing), and the tools
/// virtme-ng needs, each only when missing.
///
/// # Errors
/// When the packages cannot be installed.
pub fn host_packages() -> anyhow::Result<()> {
    backports_qemu()?;
    let missing: Vec<&str> = GUEST_TOOLS
        .iter()
        .copied()
        .filter(|p| !installed(p))
        .collect();
    if missing.is_empty() {
        say("vm: kmod, udev and busybox-static present");
        return Ok(());
    }
    say(&format!("vm: installing {}", missing.join(" ")));
    apt_install(&missing, None)
}

/// `qemu-system-x86` from bookworm-backports, adding that apt source when it is missing. The VM
/// matrix and the Vagrant lab both need it.
///
/// # Errors
/// When the source cannot be written or apt fails.
pub(crate) fn backports_qemu() -> anyhow::Result<()> {
    if !Path::new(BACKPORTS_SOURCE).exists() {
        say("vm: adding the bookworm-backports apt source (qemu-system-x86, 6.12 kernels)");
        fs::write(BACKPORTS_SOURCE, BACKPORTS)
            .with_context(|| format!("writing {BACKPORTS_SOURCE}"))?;
    } else if installed("qemu-system-x86") {
        say("vm: qemu-system-x86 present");
        return Ok(());
    }
    exec(
        "apt-get update",
        Command::new("apt-get").args(["update", "-qq"]),
    )?;
    if installed("qemu-system-x86") {
        return Ok(());
    }
    say("vm: installing qemu-system-x86 from bookworm-backports");
    apt_install(&["qemu-system-x86"], Some("bookworm-backports"))
}

/// virtme-ng in a venv of its own; returns its `vng`.
///
/// # Errors
/// When the venv cannot be made or pip fails.
pub fn virtme_ng(dir: &Path) -> anyhow::Result<PathBuf> {
    let venv = dir.join("venv");
    let vng = venv.join("bin/vng");
    let stamp = venv.join("virtme-ng.installed");
    if vng.exists() && fs::read_to_string(&stamp).is_ok_and(|s| s == VIRTME_NG) {
        say(&format!("vm: {VIRTME_NG} present (target/vm/venv)"));
        return Ok(vng);
    }
    say(&format!(
        "vm: installing {VIRTME_NG} into target/vm/venv (PyPI)"
    ));
    exec(
        "python3 -m venv",
        Command::new("python3").args(["-m", "venv"]).arg(&venv),
    )?;
    exec(
        "pip install virtme-ng",
        Command::new(venv.join("bin/python")).args([
            "-m",
            "pip",
            "install",
            "--quiet",
            "--disable-pip-version-check",
            VIRTME_NG,
        ]),
    )?;
    fs::write(&stamp, VIRTME_NG).context("writing the virtme-ng stamp")?;
    Ok(vng)
}

/// Debian's newest 6.1 kernel (bookworm) and newest 6.12 kernel (backports or security), by
/// package name.
///
/// # Errors
/// When the package index lists neither.
pub fn defaults() -> anyhow::Result<Vec<String>> {
    let names = output(Command::new("apt-cache").args([
        "search",
        "--names-only",
        r"^linux-image-6\.1(2\.[0-9]+\+deb12|\.0-[0-9]+)-amd64$",
    ]))
    .unwrap_or_default();
    let mut packages: Vec<String> = names
        .lines()
        .filter_map(|line| line.split_whitespace().next())
        .map(str::to_owned)
        .collect();
    packages.sort_by_key(|name| version_key(name));
    let newest = |series: &str| {
        packages
            .iter()
            .rev()
            .find(|name| name.starts_with(series))
            .cloned()
    };
    match (newest("linux-image-6.1.0-"), newest("linux-image-6.12.")) {
        (Some(old), Some(new)) => {
            say(&format!("vm: kernels {old} and {new} (the newest of each)"));
            Ok(vec![old, new])
        }
        _ => {
            bail!("apt-cache lists no linux-image-6.1.0-N-amd64 or linux-image-6.12.N+deb12-amd64")
        }
    }
}

/// The numbers in a package name, for ordering `6.1.0-9` before `6.1.0-57`.
fn version_key(name: &str) -> Vec<u64> {
    name.split(|c: char| !c.is_ascii_digit())
        .filter_map(|part| part.parse().ok())
        .collect()
}

/// Downloads and unpacks `package` below `target/vm/kernels` (once) and indexes its modules.
///
/// # Errors
/// When the package cannot be downloaded or holds no kernel.
pub fn unpack(dir: &Path, package: &str) -> anyhow::Result<Kernel> {
    let root = dir.join("kernels").join(package);
    let stamp = root.join(".unpacked");
    if stamp.exists() {
        say(&format!("vm: {package} present"));
    } else {
        say(&format!("vm: downloading and unpacking {package}"));
        let download = dir.join("downloads");
        fs::create_dir_all(&download)?;
        exec(
            "apt-get download",
            Command::new("apt-get")
                .args(["download", "-q", package])
                .current_dir(&download),
        )?;
        let deb = fs::read_dir(&download)?
            .filter_map(Result::ok)
            .map(|entry| entry.path())
            .find(|path| {
                path.file_name()
                    .and_then(|n| n.to_str())
                    .is_some_and(|n| n.starts_with(&format!("{package}_")))
            })
            .with_context(|| format!("apt-get download left no {package}_*.deb"))?;
        if root.exists() {
            fs::remove_dir_all(&root)?;
        }
        fs::create_dir_all(&root)?;
        exec(
            "dpkg-deb -x",
            Command::new("dpkg-deb").arg("-x").arg(&deb).arg(&root),
        )?;
        fs::remove_file(&deb)?;
    }
    let modules = root.join("lib/modules");
    let release = fs::read_dir(&modules)
        .with_context(|| format!("{} has no lib/modules", root.display()))?
        .filter_map(Result::ok)
        .find_map(|entry| entry.file_name().into_string().ok())
        .with_context(|| format!("{} holds no kernel release", modules.display()))?;
    if !stamp.exists() {
        exec(
            "depmod",
            Command::new("depmod").arg("-b").arg(&root).arg(&release),
        )?;
        fs::write(&stamp, &release)?;
    }
    Ok(Kernel {
        package: package.to_owned(),
        image: root.join("boot").join(format!("vmlinuz-{release}")),
        release,
    })
}

/// Whether KVM boots `kernel` here: one guest that runs `true`. A paravirtual `/dev/kvm` that
/// cannot run stock kernels fails at once.
#[must_use]
pub fn kvm_works(vng: &Path, kernel: &Kernel) -> bool {
    if !Path::new("/dev/kvm").exists() {
        return false;
    }
    say("vm: checking whether KVM boots a Debian kernel here");
    let dir = vng.parent().unwrap_or(Path::new("."));
    Command::new("timeout")
        .env("PATH", crate::path_with(&[dir]))
        .arg("120")
        .arg(vng)
        .arg("--run")
        .arg(&kernel.image)
        .args(["--memory", "1G", "--exec", "true"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .is_ok_and(|status| status.success())
}
