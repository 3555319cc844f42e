//! Loading and attaching the kernel programs, layer by layer.

use std::{fs, fs::File, io, path::Path};

use aya::{
    Btf, Ebpf,
    programs::{
        CgroupAttachMode, CgroupSkb, CgroupSkbAttachType, CgroupSock, CgroupSockAddr,
        CgroupSockopt, Lsm, Program, ProgramError,
    },
};
use nix::mount::{MntFlags, MsFlags, mount, umount2};

use super::DatapathError;

/// What records sockets for the judges (`cgroup_sock`); attached first, so that sockets made
/// while the judges are being attached are already known.
pub(super) const OBSERVERS: [&str; 4] = ["sock_create", "post_bind4", "post_bind6", "sock_release"];
/// The fast path (`cgroup_sock_addr`).
pub(super) const JUDGES: [&str; 4] = ["connect4", "connect6", "sendmsg4", "sendmsg6"];
/// The packet layer (`cgroup_skb`).
pub(super) const PACKET: &str = "egress";
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
    program::<CgroupSkb>(ebpf, PACKET)?
        .load()
        .map_err(failed(PACKET))?;
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

/// Attaches every loaded program: the cgroup ones to `cgroup` (and so to all cgroups below it),
/// the LSM ones globally (they filter on the managed root themselves).
pub(super) fn attach(ebpf: &mut Ebpf, cgroup: &File, lsm: bool) -> Result<(), DatapathError> {
    // Through a bpf_link (kernel ≥ 5.7) "single" means flags 0, which is the only mode
    // link_create accepts for cgroups; links always coexist with other programs.
    let mode = CgroupAttachMode::Single;
    for name in OBSERVERS {
        program::<CgroupSock>(ebpf, name)?
            .attach(cgroup, mode)
            .map_err(failed(name))?;
    }
    program::<CgroupSkb>(ebpf, PACKET)?
        .attach(cgroup, CgroupSkbAttachType::Egress, mode)
        .map_err(failed(PACKET))?;
    program::<CgroupSockopt>(ebpf, SOCKOPT)?
        .attach(cgroup, mode)
        .map_err(failed(SOCKOPT))?;
    if lsm {
        for hook in LSM_HOOKS {
            program::<Lsm>(ebpf, hook)?.attach().map_err(failed(hook))?;
        }
    }
    for name in JUDGES {
        program::<CgroupSockAddr>(ebpf, name)?
            .attach(cgroup, mode)
            .map_err(failed(name))?;
    }
    Ok(())
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
