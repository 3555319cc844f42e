//! Loading and attaching the kernel programs, layer by layer.

use std::{fs, fs::File, io, path::Path};

use std::os::fd::AsFd as _;

use aya::{
    Btf, Ebpf,
    programs::{
        CgroupSkb, CgroupSock, CgroupSockAddr, CgroupSockopt, Lsm, Program, ProgramError,
        links::FdLink,
    },
};
use nix::mount::{MntFlags, MsFlags, mount, umount2};

use super::{
    DatapathError,
    pins::{self, PinDir},
};

/// What records sockets for the judges (`cgroup_sock`); attached first, so that sockets made
/// while the judges are being attached are already known.
pub(super) const OBSERVERS: [&str; 4] = ["sock_create", "post_bind4", "post_bind6", "sock_release"];
/// The fast path (`cgroup_sock_addr`).
pub(super) const JUDGES: [&str; 4] = ["connect4", "connect6", "sendmsg4", "sendmsg6"];
/// The packet layer (`cgroup_skb`), both ways.
pub(super) const PACKET: [&str; 2] = ["egress", "ingress"];
/// Source-routing options (`cgroup/setsockopt`).
pub(super) const SOCKOPT: &str = "setsockopt";
/// BPF LSM programs, by hook name.
pub(super) const LSM_HOOKS: [&str; 3] = ["socket_create", "socket_connect", "socket_sendmsg"];

/// The loaded program `name` as its concrete type.
pub(super) fn program<'a, P>(
    ebpf: &'a mut Ebpf,
    name: &'static str,
) -> Result<&'a mut P, DatapathError>
where
    &'a mut P: TryFrom<&'a mut Program, Error = ProgramError>,
{
    ebpf.program_mut(name)
        .ok_or(DatapathError::MissingProgram(name))?
        .try_into()
        .map_err(|source| DatapathError::Program {
            program: name,
            source,
        })
}

fn failed(program: &'static str) -> impl Fn(ProgramError) -> DatapathError {
    move |source| DatapathError::Program { program, source }
}

/// Loads every cgroup program (verifier included), then the LSM programs when `lsm` is given.
/// Returns the kernel's refusal of an LSM program, if any: some kernels run BPF LSM but a
/// security policy forbids loading LSM programs, and the rest of the datapath works without them.
pub(super) fn load(
    ebpf: &mut Ebpf,
    lsm: Option<&Btf>,
) -> Result<Option<DatapathError>, DatapathError> {
    for name in OBSERVERS {
        program::<CgroupSock>(ebpf, name)?
            .load()
            .map_err(failed(name))?;
    }
    for name in JUDGES {
        program::<CgroupSockAddr>(ebpf, name)?
            .load()
            .map_err(failed(name))?;
    }
    for name in PACKET {
        program::<CgroupSkb>(ebpf, name)?
            .load()
            .map_err(failed(name))?;
    }
    program::<CgroupSockopt>(ebpf, SOCKOPT)?
        .load()
        .map_err(failed(SOCKOPT))?;
    if let Some(btf) = lsm {
        for hook in LSM_HOOKS {
            if let Err(error) = program::<Lsm>(ebpf, hook)?.load(hook, btf) {
                return Ok(Some(failed(hook)(error)));
            }
        }
    }
    Ok(None)
}

/// The cgroup programs in the order they are attached, with their `bpf_attach_type`
/// (`include/uapi/linux/bpf.h`). Observers first, so that sockets made while the judges are
/// being attached are already known; the fast-path judges last.
const CGROUP_ATTACH: [(&str, u32); 11] = [
    ("sock_create", 2),
    ("post_bind4", 12),
    ("post_bind6", 13),
    ("sock_release", 34),
    (PACKET[0], 1),
    (PACKET[1], 0),
    (SOCKOPT, 22),
    ("connect4", 10),
    ("connect6", 11),
    ("sendmsg4", 14),
    ("sendmsg6", 15),
];

/// What attaching did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Attached {
    /// Links made (and pinned) now.
    pub created: usize,
    /// Pinned links that now run this daemon's programs.
    pub replaced: usize,
}

/// Makes every loaded program run: a program whose link is pinned is swapped into it
/// (`BPF_LINK_UPDATE`, no moment without a program); any other gets a new link, pinned. The cgroup
/// programs go on `cgroup` (and so on every cgroup below it), the LSM ones on their hooks (they
/// filter on the managed root themselves). The programs are pinned too, for inspection.
pub(super) fn attach(
    ebpf: &mut Ebpf,
    cgroup: &File,
    lsm: bool,
    pins: &PinDir,
) -> Result<Attached, DatapathError> {
    let mut attached = Attached::default();
    for (name, attach_type) in CGROUP_ATTACH {
        let link = pins.link(name);
        let program = ebpf
            .program(name)
            .ok_or(DatapathError::MissingProgram(name))?;
        let fd = program.fd().map_err(failed(name))?.as_fd();
        if link.exists() {
            let pinned = pins::open_pin(&link)?;
            pins::update_link(pinned.as_fd(), fd).map_err(link_error(name))?;
            attached.replaced += 1;
        } else {
            let created = pins::create_cgroup_link(fd, cgroup.as_fd(), attach_type)
                .map_err(link_error(name))?;
            pins::pin(created.as_fd(), &link)?;
            attached.created += 1;
        }
    }
    if lsm {
        for hook in LSM_HOOKS {
            let link = pins.link(hook);
            // The kernel cannot swap the program of an LSM link (`BPF_LINK_UPDATE` is refused
            // with `EINVAL`), so a pinned one is replaced: the new link is made while the old one
            // is held open, then takes its pin, and the old one goes when it is dropped. Both
            // judge for that moment; the hook is never without a program.
            let previous = if link.exists() {
                Some(pins::open_pin(&link)?)
            } else {
                None
            };
            let program = program::<Lsm>(ebpf, hook)?;
            let id = program.attach().map_err(failed(hook))?;
            let owned = program.take_link(id).map_err(failed(hook))?;
            if previous.is_some() {
                fs::remove_file(&link).map_err(|source| DatapathError::Pin {
                    path: link.clone(),
                    source,
                })?;
            }
            FdLink::from(owned)
                .pin(&link)
                .map_err(|source| DatapathError::PinLink {
                    program: hook,
                    source,
                })?;
            if previous.is_some() {
                attached.replaced += 1;
            } else {
                attached.created += 1;
            }
            drop(previous);
        }
    }
    pin_programs(ebpf, pins, lsm)?;
    Ok(attached)
}

/// Pins every attached program under `programs/`, replacing the pins of the programs it
/// replaced (which the kernel then frees).
fn pin_programs(ebpf: &mut Ebpf, pins: &PinDir, lsm: bool) -> Result<(), DatapathError> {
    let lsm_hooks: &[&'static str] = if lsm { &LSM_HOOKS } else { &[] };
    let names = CGROUP_ATTACH
        .iter()
        .map(|(name, _)| *name)
        .chain(lsm_hooks.iter().copied());
    for name in names {
        let path = pins.programs().join(name);
        match fs::remove_file(&path) {
            Ok(()) => {}
            Err(error) if error.kind() == io::ErrorKind::NotFound => {}
            Err(source) => return Err(DatapathError::Pin { path, source }),
        }
        ebpf.program_mut(name)
            .ok_or(DatapathError::MissingProgram(name))?
            .pin(&path)
            .map_err(|source| DatapathError::PinLink {
                program: name,
                source,
            })?;
    }
    Ok(())
}

fn link_error(program: &'static str) -> impl Fn(io::Error) -> DatapathError {
    move |source| DatapathError::Link { program, source }
}

/// Whether the kernel runs BPF LSM: `bpf` among the active LSMs. securityfs is read where it is
/// mounted, else mounted privately for the read and unmounted again.
///
/// # Errors
/// When securityfs can be neither found nor mounted.
pub fn bpf_lsm_active() -> Result<bool, io::Error> {
    let listed = |text: &str| text.trim().split(',').any(|lsm| lsm == "bpf");
    if let Ok(text) = fs::read_to_string("/sys/kernel/security/lsm") {
        return Ok(listed(&text));
    }
    let dir = tempfile_dir()?;
    mount(
        Some("securityfs"),
        dir.as_path(),
        Some("securityfs"),
        MsFlags::MS_RDONLY | MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
        None::<&str>,
    )
    .map_err(io::Error::from)?;
    let text = fs::read_to_string(dir.join("lsm"));
    let unmounted = umount2(dir.as_path(), MntFlags::MNT_DETACH).map_err(io::Error::from);
    let _ = fs::remove_dir(&dir);
    unmounted?;
    Ok(listed(&text?))
}

fn tempfile_dir() -> Result<std::path::PathBuf, io::Error> {
    let dir = std::env::temp_dir().join(format!("enforcer-securityfs-{}", std::process::id()));
    match fs::create_dir(&dir) {
        Ok(()) => Ok(dir),
        Err(error) if error.kind() == io::ErrorKind::AlreadyExists => Ok(dir),
        Err(error) => Err(error),
    }
}

/// Opens a cgroup directory for attaching.
pub(super) fn open_cgroup(path: &Path) -> Result<File, DatapathError> {
    File::open(path).map_err(|source| DatapathError::Cgroup {
        path: path.display().to_string(),
        source,
    })
}
