//! The `enforcer/debian12` box, built here when Vagrant lacks it: debootstrap into an ext4 file
//! system inside a partitioned disk image, GRUB written into the image by hand (this machine's
//! kernel has no partition-table support, so the partition is reached through a loop device at an
//! offset and `grub-install` cannot be used), then packaged as a libvirt box.

use std::{
    env, fs,
    io::Write as _,
    path::{Path, PathBuf},
    process::{Command, Stdio},
};

use anyhow::{Context as _, bail};

use crate::{exec, output, say};

/// Where the box and its build stay between runs.
const CACHE: &str = "/var/cache/enforcer-lab";
/// The partition starts at 1 MiB; GRUB's core image lives in the gap before it.
const PARTITION_OFFSET: u64 = 1 << 20;
const DISK_BYTES: u64 = 4 << 30;
/// Everything the lab's guests use, so that they need no network beyond the lab's.
const GUEST_PACKAGES: &[&str] = &[
    "systemd-sysv",
    "udev",
    "dbus",
    "openssh-server",
    "sudo",
    "ifupdown",
    "isc-dhcp-client",
    "iproute2",
    "procps",
    "kmod",
    "initramfs-tools",
    "ca-certificates",
    "socat",
    "netcat-openbsd",
    "nmap",
    "rsyslog",
];
const MIRROR: &str = "http://deb.debian.org/debian";
/// libvirt stores the box's disk in its pool under this name and reuses it while it exists.
const POOL_VOLUME_PREFIX: &str =
    "/var/lib/libvirt/images/enforcer-VAGRANTSLASH-debian12_vagrant_box_image_";

/// The guests' kernel package: Debian 12's own unless `ENFORCER_LAB_KERNEL` names another (such as
/// `linux-image-6.12.57+deb12-amd64` from bookworm-backports).
pub fn kernel_package() -> String {
    env::var("ENFORCER_LAB_KERNEL").unwrap_or_else(|_| "linux-image-amd64".to_owned())
}

/// Makes `vagrant box list` hold `name` with `kernel`, building the box when the cache lacks it.
pub fn ensure_box(name: &str, kernel: &str) -> anyhow::Result<()> {
    let dir = Path::new(CACHE).join(format!("box-{kernel}"));
    let box_file = dir.join("enforcer-debian12.box");
    let added_marker = Path::new(CACHE).join("added-kernel");
    let listed = output(Command::new("vagrant").args(["box", "list"])).is_some_and(|list| {
        list.lines()
            .any(|line| line.split_whitespace().next() == Some(name))
    });
    let added_kernel = fs::read_to_string(&added_marker).unwrap_or_default();
    if listed && added_kernel.trim() == kernel {
        say(&format!("box {name} ({kernel}) is already in Vagrant"));
        return Ok(());
    }
    if box_file.exists() {
        say(&format!(
            "box {name}: reusing the cached build {}",
            box_file.display()
        ));
    } else {
        build(&dir, &box_file, kernel)?;
    }
    remove_pool_volumes()?;
    say(&format!("adding box {name} to Vagrant"));
    exec(
        "vagrant box add",
        Command::new("vagrant")
            .args(["box", "add", "--force", "--name", name])
            .arg(&box_file),
    )?;
    fs::write(&added_marker, kernel).context("recording the box's kernel")?;
    Ok(())
}

/// An older box's disk in libvirt's pool would be reused in place of the new box.
fn remove_pool_volumes() -> anyhow::Result<()> {
    let Some(dir) = Path::new(POOL_VOLUME_PREFIX).parent() else {
        return Ok(());
    };
    let Ok(entries) = fs::read_dir(dir) else {
        return Ok(());
    };
    for entry in entries.flatten() {
        if entry
            .path()
            .to_string_lossy()
            .starts_with(POOL_VOLUME_PREFIX)
        {
            say(&format!(
                "removing the old box volume {}",
                entry.path().display()
            ));
            fs::remove_file(entry.path()).context("removing an old box volume")?;
        }
    }
    Ok(())
}

fn build(dir: &Path, box_file: &Path, kernel: &str) -> anyhow::Result<()> {
    say(&format!(
        "building the box with debootstrap in {} ({kernel})",
        dir.display()
    ));
    fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let raw = dir.join("disk.raw");
    let root = dir.join("root");
    fs::create_dir_all(&root).context("creating the mount point")?;
    let disk = fs::File::create(&raw).context("creating the disk image")?;
    disk.set_len(DISK_BYTES).context("sizing the disk image")?;
    drop(disk);
    partition(&raw)?;
    {
        let partition = LoopDevice::attach(&raw, PARTITION_OFFSET, DISK_BYTES - PARTITION_OFFSET)?;
        exec(
            "mkfs.ext4",
            Command::new("mkfs.ext4")
                .args(["-q", "-L", "enforcer-root"])
                .arg(&partition.device),
        )?;
        let uuid = output(
            Command::new("blkid")
                .args(["-s", "UUID", "-o", "value"])
                .arg(&partition.device),
        )
        .map(|uuid| uuid.trim().to_owned())
        .filter(|uuid| !uuid.is_empty())
        .context("reading the file system's UUID")?;
        let mounted = Mounted::mount(&partition.device, &root)?;
        bootstrap(&mounted.target, kernel)?;
        configure(&mounted.target, &uuid)?;
    }
    write_grub(&raw)?;
    package(dir, &raw, box_file)?;
    fs::remove_file(&raw).context("removing the raw disk image")?;
    Ok(())
}

fn partition(raw: &Path) -> anyhow::Result<()> {
    let mut sfdisk = Command::new("sfdisk")
        .args(["--quiet", "--no-reread", "--no-tell-kernel"])
        .arg(raw)
        .stdin(Stdio::piped())
        .spawn()
        .context("starting sfdisk")?;
    sfdisk
        .stdin
        .take()
        .context("sfdisk's standard input")?
        .write_all(
            format!(
                "label: dos\nstart={}, type=83, bootable\n",
                PARTITION_OFFSET / 512
            )
            .as_bytes(),
        )
        .context("writing the partition table")?;
    let status = sfdisk.wait().context("waiting for sfdisk")?;
    if !status.success() {
        bail!("sfdisk failed ({status})");
    }
    Ok(())
}

fn bootstrap(root: &Path, kernel: &str) -> anyhow::Result<()> {
    let from_main = kernel == "linux-image-amd64";
    let mut include = GUEST_PACKAGES.join(",");
    if from_main {
        include.push_str(",linux-image-amd64");
    }
    exec(
        "debootstrap",
        Command::new("debootstrap")
            .args([
                "--variant=minbase",
                &format!("--include={include}"),
                "bookworm",
            ])
            .arg(root)
            .arg(MIRROR),
    )?;
    if !from_main {
        fs::write(
            root.join("etc/apt/sources.list.d/bookworm-backports.list"),
            format!("deb {MIRROR} bookworm-backports main\n"),
        )
        .context("adding bookworm-backports to the guest")?;
        let _proc = Mounted::bind_proc(root)?;
        in_chroot(root, &["apt-get", "update", "-q"])?;
        in_chroot(root, &["apt-get", "install", "-y", "-q", kernel])?;
    }
    in_chroot(root, &["apt-get", "clean"])
}

fn in_chroot(root: &Path, args: &[&str]) -> anyhow::Result<()> {
    exec(
        &format!("{} in the guest", args.join(" ")),
        Command::new("chroot")
            .arg(root)
            .args(args)
            .env("DEBIAN_FRONTEND", "noninteractive"),
    )
}

/// The guest's own files: boot, network by DHCP on eth0, the vagrant user with Vagrant's insecure
/// key (Vagrant swaps it on first boot), and an empty machine-id so each VM gets its own (and its
/// own DHCP lease).
fn configure(root: &Path, uuid: &str) -> anyhow::Result<()> {
    let write = |path: &str, text: &str| {
        let path = root.join(path);
        if let Some(parent) = path.parent() {
            fs::create_dir_all(parent)?;
        }
        fs::write(&path, text).with_context(|| format!("writing {}", path.display()))
    };
    write(
        "etc/fstab",
        &format!("UUID={uuid} / ext4 errors=remount-ro 0 1\n"),
    )?;
    write("etc/hostname", "enforcer-lab\n")?;
    write("etc/hosts", "127.0.0.1 localhost\n127.0.1.1 enforcer-lab\n")?;
    write(
        "etc/network/interfaces",
        "auto lo\niface lo inet loopback\n\nauto eth0\niface eth0 inet dhcp\n\nsource /etc/network/interfaces.d/*\n",
    )?;
    write("etc/sudoers.d/vagrant", "vagrant ALL=(ALL) NOPASSWD:ALL\n")?;
    write(
        "etc/ssh/sshd_config.d/vagrant.conf",
        "UseDNS no\nPubkeyAcceptedAlgorithms +ssh-rsa\n",
    )?;
    write("etc/machine-id", "")?;
    let dbus_id = root.join("var/lib/dbus/machine-id");
    if dbus_id.exists() {
        fs::remove_file(&dbus_id).context("removing the D-Bus machine-id")?;
    }
    in_chroot(
        root,
        &[
            "useradd",
            "--create-home",
            "--shell",
            "/bin/bash",
            "vagrant",
        ],
    )?;
    let key =
        fs::read_to_string(insecure_key()?).context("reading Vagrant's insecure public key")?;
    write("home/vagrant/.ssh/authorized_keys", &key)?;
    in_chroot(
        root,
        &["chown", "-R", "vagrant:vagrant", "/home/vagrant/.ssh"],
    )?;
    in_chroot(root, &["chmod", "-R", "go-rwx", "/home/vagrant/.ssh"])?;
    in_chroot(root, &["sh", "-c", "echo vagrant:vagrant | chpasswd"])?;
    let (kernel, initrd) = boot_files(root)?;
    write(
        "boot/grub/grub.cfg",
        &format!(
            "set timeout=0\nset root=(hd0,msdos1)\nlinux /boot/{kernel} root=UUID={uuid} ro console=ttyS0,115200 net.ifnames=0 biosdevname=0\ninitrd /boot/{initrd}\nboot\n"
        ),
    )?;
    exec(
        "copying GRUB's modules",
        Command::new("cp")
            .args(["-r", "/usr/lib/grub/i386-pc"])
            .arg(root.join("boot/grub/")),
    )
}

/// The newest kernel and its initrd in the guest's /boot.
fn boot_files(root: &Path) -> anyhow::Result<(String, String)> {
    let mut kernels: Vec<String> = fs::read_dir(root.join("boot"))
        .context("listing the guest's /boot")?
        .flatten()
        .filter_map(|entry| entry.file_name().into_string().ok())
        .filter(|name| name.starts_with("vmlinuz-"))
        .collect();
    kernels.sort();
    let kernel = kernels.pop().context("the guest has no kernel in /boot")?;
    let initrd = kernel.replacen("vmlinuz-", "initrd.img-", 1);
    if !root.join("boot").join(&initrd).exists() {
        bail!("the guest's kernel {kernel} has no {initrd}");
    }
    Ok((kernel, initrd))
}

fn insecure_key() -> anyhow::Result<PathBuf> {
    let gems = Path::new("/usr/share/rubygems-integration/all/gems");
    fs::read_dir(gems)
        .context("listing the installed Ruby gems")?
        .flatten()
        .map(|entry| entry.path().join("keys/vagrant.pub"))
        .find(|key| key.exists())
        .context("Vagrant's insecure public key (keys/vagrant.pub) is not installed")
}

/// GRUB's boot sector in the MBR (its first 440 bytes; the partition table stays) and its core
/// image right after it, in the gap before the partition: what grub-install would write.
fn write_grub(raw: &Path) -> anyhow::Result<()> {
    say("writing GRUB into the disk image");
    let core = raw.with_file_name("core.img");
    exec(
        "grub-mkimage",
        Command::new("grub-mkimage")
            .args(["-O", "i386-pc", "-p", "(hd0,msdos1)/boot/grub", "-o"])
            .arg(&core)
            .args([
                "biosdisk",
                "part_msdos",
                "ext2",
                "normal",
                "linux",
                "configfile",
            ]),
    )?;
    let boot = fs::read("/usr/lib/grub/i386-pc/boot.img").context("reading GRUB's boot.img")?;
    let core_image = fs::read(&core).context("reading GRUB's core.img")?;
    if core_image.len() as u64 > PARTITION_OFFSET - 512 {
        bail!(
            "GRUB's core image ({} bytes) does not fit before the partition",
            core_image.len()
        );
    }
    let mut disk = fs::OpenOptions::new()
        .write(true)
        .open(raw)
        .context("opening the disk image")?;
    disk.write_all(
        boot.get(..440)
            .context("boot.img is shorter than 440 bytes")?,
    )
    .context("writing GRUB's boot sector")?;
    std::io::Seek::seek(&mut disk, std::io::SeekFrom::Start(512))
        .context("seeking past the MBR")?;
    disk.write_all(&core_image)
        .context("writing GRUB's core image")?;
    fs::remove_file(&core).context("removing core.img")?;
    Ok(())
}

/// A libvirt box: the disk as qcow2, its metadata and an (empty) embedded Vagrantfile.
fn package(dir: &Path, raw: &Path, box_file: &Path) -> anyhow::Result<()> {
    say("packaging the box");
    exec(
        "qemu-img convert",
        Command::new("qemu-img")
            .args(["convert", "-O", "qcow2"])
            .arg(raw)
            .arg(dir.join("box.img")),
    )?;
    fs::write(
        dir.join("metadata.json"),
        format!(
            r#"{{"provider":"libvirt","format":"qcow2","virtual_size":{}}}"#,
            DISK_BYTES >> 30
        ),
    )
    .context("writing metadata.json")?;
    fs::write(
        dir.join("Vagrantfile"),
        "Vagrant.configure(\"2\") do |config|\nend\n",
    )
    .context("writing the box's Vagrantfile")?;
    exec(
        "tar",
        Command::new("tar")
            .arg("-C")
            .arg(dir)
            .arg("-cf")
            .arg(box_file)
            .args(["metadata.json", "Vagrantfile", "box.img"]),
    )?;
    fs::remove_file(dir.join("box.img")).context("removing box.img")?;
    Ok(())
}

/// A loop device over part of a file, detached when dropped, even on an error path.
struct LoopDevice {
    device: String,
}

impl LoopDevice {
    fn attach(file: &Path, offset: u64, size: u64) -> anyhow::Result<Self> {
        let device = output(
            Command::new("losetup")
                .args(["--find", "--show", "--offset", &offset.to_string()])
                .args(["--sizelimit", &size.to_string()])
                .arg(file),
        )
        .map(|device| device.trim().to_owned())
        .filter(|device| !device.is_empty())
        .context("attaching a loop device to the disk image")?;
        Ok(Self { device })
    }
}

impl Drop for LoopDevice {
    fn drop(&mut self) {
        if let Err(error) = exec(
            "losetup -d",
            Command::new("losetup").args(["-d", &self.device]),
        ) {
            say(&format!("could not detach {}: {error:#}", self.device));
        }
    }
}

/// A mount (with everything mounted below it), unmounted when dropped.
struct Mounted {
    target: PathBuf,
}

impl Mounted {
    fn mount(device: &str, target: &Path) -> anyhow::Result<Self> {
        exec("mount", Command::new("mount").arg(device).arg(target))?;
        Ok(Self {
            target: target.to_owned(),
        })
    }

    fn bind_proc(root: &Path) -> anyhow::Result<Self> {
        let target = root.join("proc");
        exec(
            "mount proc",
            Command::new("mount")
                .args(["-t", "proc", "proc"])
                .arg(&target),
        )?;
        Ok(Self { target })
    }
}

impl Drop for Mounted {
    fn drop(&mut self) {
        if let Err(error) = exec("umount", Command::new("umount").arg("-R").arg(&self.target)) {
            say(&format!(
                "could not unmount {}: {error:#}",
                self.target.display()
            ));
        }
    }
}
