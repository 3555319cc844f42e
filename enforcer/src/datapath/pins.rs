//! An instance's pins on bpffs, which keep its programs attached and its maps alive whatever
//! happens to the daemon:
//!
//! ```text
//! <bpffs dir>/maps-v<ABI>-<sizes>/<MAP>   every map; the name changes with the layout
//! <bpffs dir>/links/<program>             one bpf_link per attached program
//! <bpffs dir>/programs/<program>          the programs the links run now
//! ```
//!
//! A daemon that finds the pins adopts them: it loads its programs against the pinned maps and
//! swaps them into the pinned links with `BPF_LINK_UPDATE`, which replaces the program a link
//! runs in one step, so nothing is ever detached. A daemon built for another map layout finds no
//! maps under its own name, creates fresh ones beside the old, fills them, swaps its programs in
//! and only then removes the old maps.

use std::{
    ffi::CString,
    fs, io,
    os::{
        fd::{AsRawFd as _, BorrowedFd, FromRawFd as _, OwnedFd},
        unix::ffi::OsStrExt as _,
    },
    path::{Path, PathBuf},
};

use nix::{
    mount::{MsFlags, mount},
    sys::statfs::{BPF_FS_MAGIC, statfs},
};

use super::DatapathError;

/// Where bpffs is mounted on a usual system.
const SYSTEM_BPFFS: &str = "/sys/fs/bpf";

/// The directory layout of one instance's pins.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PinDir {
    root: PathBuf,
}

fn pin_error(path: &Path) -> impl Fn(io::Error) -> DatapathError + '_ {
    move |source| DatapathError::Pin {
        path: path.to_owned(),
        source,
    }
}

impl PinDir {
    #[must_use]
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self { root: root.into() }
    }

    #[must_use]
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The map directory for a layout (see [`layout_name`]).
    #[must_use]
    pub fn maps(&self, layout: &str) -> PathBuf {
        self.root.join(layout)
    }

    #[must_use]
    pub fn links(&self) -> PathBuf {
        self.root.join("links")
    }

    #[must_use]
    pub fn programs(&self) -> PathBuf {
        self.root.join("programs")
    }

    /// The pinned link of `program`, if there is one.
    #[must_use]
    pub fn link(&self, program: &str) -> PathBuf {
        self.links().join(program)
    }

    /// Every map directory, whatever its layout.
    ///
    /// # Errors
    /// When the directory cannot be read.
    pub fn layouts(&self) -> Result<Vec<PathBuf>, DatapathError> {
        let entries = match fs::read_dir(&self.root) {
            Ok(entries) => entries,
            Err(error) if error.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(error) => return Err(pin_error(&self.root)(error)),
        };
        let mut found = Vec::new();
        for entry in entries {
            let entry = entry.map_err(pin_error(&self.root))?;
            if entry.file_name().to_string_lossy().starts_with("maps-") {
                found.push(entry.path());
            }
        }
        Ok(found)
    }

    /// Map directories of other layouts than `layout`: what an upgrade leaves behind.
    ///
    /// # Errors
    /// When the directory cannot be read.
    pub fn other_layouts(&self, layout: &str) -> Result<Vec<PathBuf>, DatapathError> {
        let mut found = self.layouts()?;
        found.retain(|dir| !dir.ends_with(layout));
        Ok(found)
    }

    /// Whether any link is pinned: an earlier daemon of this instance is (or was) enforcing.
    #[must_use]
    pub fn has_links(&self) -> bool {
        fs::read_dir(self.links()).is_ok_and(|mut entries| entries.next().is_some())
    }

    /// Mounts bpffs where needed and creates the directories.
    ///
    /// Returns where bpffs was mounted, if it was not already.
    ///
    /// # Errors
    /// When a directory cannot be created or bpffs cannot be mounted.
    pub fn prepare(&self, layout: &str) -> Result<Option<PathBuf>, DatapathError> {
        let mounted = ensure_bpffs(&self.root)?;
        for dir in [self.maps(layout), self.links(), self.programs()] {
            fs::create_dir_all(&dir).map_err(pin_error(&dir))?;
        }
        Ok(mounted)
    }

    /// Removes every pin of the instance, and so all its enforcement: links go first, which
    /// detaches the programs, then programs and maps.
    ///
    /// # Errors
    /// When a pin cannot be removed.
    pub fn remove_all(&self) -> Result<(), DatapathError> {
        let links = self.links();
        if links.exists() {
            fs::remove_dir_all(&links).map_err(pin_error(&links))?;
        }
        let entries = match fs::read_dir(&self.root) {
            Ok(entries) => entries,
            Err(error) if error.kind() == io::ErrorKind::NotFound => return Ok(()),
            Err(error) => return Err(pin_error(&self.root)(error)),
        };
        // The directory itself stays (it may be a bpffs mount point), and so does what the kernel
        // puts in a fresh bpffs (`maps.debug`, `progs.debug`): only the instance's own pins go.
        for entry in entries {
            let entry = entry.map_err(pin_error(&self.root))?;
            let name = entry.file_name();
            let name = name.to_string_lossy();
            if !(name.starts_with("maps-") || name == "programs") {
                continue;
            }
            let path = entry.path();
            let removed = if path.is_dir() {
                fs::remove_dir_all(&path)
            } else {
                fs::remove_file(&path)
            };
            removed.map_err(pin_error(&path))?;
        }
        Ok(())
    }
}

/// The name of the map directory for this build's map layout: the ABI version and the sizes
/// chosen at start, so that a daemon never adopts maps it would misread or that are sized
/// differently from what it was asked for.
#[must_use]
pub fn layout_name(sizes: &[(&str, u32)]) -> String {
    use sha2::{Digest as _, Sha256};
    let mut hasher = Sha256::new();
    for (map, size) in sizes {
        hasher.update(map.as_bytes());
        hasher.update(size.to_le_bytes());
    }
    let digest = hasher.finalize();
    format!(
        "maps-v{}-{}",
        enforcer_common::ABI_VERSION,
        hex::encode(&digest[..4])
    )
}

fn is_bpffs(path: &Path) -> bool {
    statfs(path).is_ok_and(|fs| fs.filesystem_type() == BPF_FS_MAGIC)
}

/// Makes sure `dir` is on bpffs. Under `/sys/fs/bpf` that mount point is mounted if it is not;
/// elsewhere bpffs is mounted at `dir` itself (for a per-instance or per-test tree).
fn ensure_bpffs(dir: &Path) -> Result<Option<PathBuf>, DatapathError> {
    let mut existing = dir;
    while !existing.exists() {
        match existing.parent() {
            Some(parent) => existing = parent,
            None => break,
        }
    }
    if is_bpffs(existing) {
        return Ok(None);
    }
    let system = Path::new(SYSTEM_BPFFS);
    let target = if dir.starts_with(system) && system.is_dir() {
        system
    } else {
        fs::create_dir_all(dir).map_err(pin_error(dir))?;
        dir
    };
    mount(
        Some("bpf"),
        target,
        Some("bpf"),
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
        Some("mode=0700"),
    )
    .map_err(|errno| DatapathError::Mount {
        path: target.to_owned(),
        source: io::Error::from(errno),
    })?;
    Ok(Some(target.to_owned()))
}

const BPF_OBJ_PIN: libc::c_long = 6;
const BPF_OBJ_GET: libc::c_long = 7;
const BPF_LINK_CREATE: libc::c_long = 28;
const BPF_LINK_UPDATE: libc::c_long = 29;

/// `union bpf_attr` as `BPF_OBJ_GET` and `BPF_OBJ_PIN` read it.
#[repr(C)]
struct ObjGetAttr {
    pathname: u64,
    bpf_fd: u32,
    file_flags: u32,
    path_fd: i32,
    _pad: u32,
}

/// `union bpf_attr` as `BPF_LINK_CREATE` reads it for a cgroup.
#[repr(C)]
struct LinkCreateAttr {
    prog_fd: u32,
    target_fd: u32,
    attach_type: u32,
    flags: u32,
}

/// `union bpf_attr` as `BPF_LINK_UPDATE` reads it.
#[repr(C)]
struct LinkUpdateAttr {
    link_fd: u32,
    new_prog_fd: u32,
    flags: u32,
    old_prog_fd: u32,
}

/// # Safety
/// `attr` must be the `bpf_attr` layout `cmd` reads, with every unused byte zero.
unsafe fn sys_bpf<T>(cmd: libc::c_long, attr: &mut T) -> io::Result<libc::c_long> {
    // SAFETY: the caller vouches for the layout; the kernel reads at most size_of::<T>() bytes.
    let result = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            cmd,
            std::ptr::from_mut(attr).cast::<libc::c_void>(),
            size_of::<T>(),
        )
    };
    if result < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(result)
    }
}

fn c_path(path: &Path) -> Result<CString, DatapathError> {
    CString::new(path.as_os_str().as_bytes()).map_err(|_| DatapathError::Pin {
        path: path.to_owned(),
        source: io::Error::from(io::ErrorKind::InvalidInput),
    })
}

fn raw(fd: BorrowedFd<'_>) -> io::Result<u32> {
    u32::try_from(fd.as_raw_fd()).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))
}

fn owned(fd: libc::c_long) -> io::Result<OwnedFd> {
    let fd = i32::try_from(fd).map_err(|_| io::Error::from(io::ErrorKind::InvalidData))?;
    // SAFETY: the kernel just returned this descriptor, and nothing else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Opens the object (a link) pinned at `path`.
///
/// aya opens pins too, but keeps a link's descriptor to itself, and `BPF_LINK_UPDATE` needs it.
///
/// # Errors
/// When nothing is pinned there.
pub fn open_pin(path: &Path) -> Result<OwnedFd, DatapathError> {
    let name = c_path(path)?;
    let mut attr = ObjGetAttr {
        pathname: name.as_ptr() as u64,
        bpf_fd: 0,
        file_flags: 0,
        path_fd: 0,
        _pad: 0,
    };
    // SAFETY: the layout of BPF_OBJ_GET's attributes; `name` outlives the call.
    let fd = unsafe { sys_bpf(BPF_OBJ_GET, &mut attr) }.map_err(pin_error(path))?;
    owned(fd).map_err(pin_error(path))
}

/// Pins `object` (a link) at `path`.
///
/// # Errors
/// When the kernel refuses (the path exists, or is not on bpffs).
pub fn pin(object: BorrowedFd<'_>, path: &Path) -> Result<(), DatapathError> {
    let name = c_path(path)?;
    let mut attr = ObjGetAttr {
        pathname: name.as_ptr() as u64,
        bpf_fd: raw(object).map_err(pin_error(path))?,
        file_flags: 0,
        path_fd: 0,
        _pad: 0,
    };
    // SAFETY: the layout of BPF_OBJ_PIN's attributes; `name` outlives the call.
    unsafe { sys_bpf(BPF_OBJ_PIN, &mut attr) }
        .map(drop)
        .map_err(pin_error(path))
}

/// Attaches `program` to `cgroup` (and every cgroup below it) through a new bpf_link, which
/// coexists with whatever else is attached there.
///
/// aya makes such links too, but cannot hand every kind of them out (a `cgroup/setsockopt`
/// link stays inside aya), and a link that outlives the daemon must be pinned.
///
/// # Errors
/// When the kernel refuses.
pub fn create_cgroup_link(
    program: BorrowedFd<'_>,
    cgroup: BorrowedFd<'_>,
    attach_type: u32,
) -> io::Result<OwnedFd> {
    let mut attr = LinkCreateAttr {
        prog_fd: raw(program)?,
        target_fd: raw(cgroup)?,
        attach_type,
        flags: 0,
    };
    // SAFETY: the layout of BPF_LINK_CREATE's attributes for a cgroup target.
    owned(unsafe { sys_bpf(BPF_LINK_CREATE, &mut attr) }?)
}

/// Attaches `program` to the interface `ifindex` of the calling thread's network namespace with a
/// new tcx link (`BPF_TCX_INGRESS` or `BPF_TCX_EGRESS`), appended after the programs already
/// there; returns the link.
///
/// # Errors
/// When the kernel refuses (no such interface, no tcx support).
pub fn create_tcx_link(
    program: BorrowedFd<'_>,
    ifindex: u32,
    attach_type: u32,
) -> io::Result<OwnedFd> {
    let mut attr = LinkCreateAttr {
        prog_fd: raw(program)?,
        target_fd: ifindex,
        attach_type,
        flags: 0,
    };
    // SAFETY: the layout of BPF_LINK_CREATE's attributes; for tcx the target is an ifindex in the
    // same place, and the zeroed rest means "after every program, any revision".
    owned(unsafe { sys_bpf(BPF_LINK_CREATE, &mut attr) }?)
}

/// Makes `link` run `program` from now on, in one step: the kernel swaps the program under the
/// link, so the hook is never without one.
///
/// # Errors
/// When the kernel refuses (a program of another type or attach type, say).
pub fn update_link(link: BorrowedFd<'_>, program: BorrowedFd<'_>) -> io::Result<()> {
    let mut attr = LinkUpdateAttr {
        link_fd: raw(link)?,
        new_prog_fd: raw(program)?,
        flags: 0,
        old_prog_fd: 0,
    };
    // SAFETY: the layout of BPF_LINK_UPDATE's attributes.
    unsafe { sys_bpf(BPF_LINK_UPDATE, &mut attr) }.map(drop)
}
