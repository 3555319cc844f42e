//! Network namespaces as open handles, and netlink sockets created inside them.

use std::{
    fs::File,
    io,
    os::{
        fd::{AsFd, AsRawFd},
        unix::fs::MetadataExt,
    },
    path::{Path, PathBuf},
    thread,
};

use netlink_sys::{Socket, protocols::NETLINK_ROUTE};
use nix::sched::{CloneFlags, setns};

use super::HostError;

/// `SO_NETNS_COOKIE` from `asm-generic/socket.h` (libc exports it only in its raw uapi tables);
/// sparc numbers its socket options differently.
#[cfg(not(target_arch = "sparc64"))]
const SO_NETNS_COOKIE: libc::c_int = 71;
#[cfg(target_arch = "sparc64")]
const SO_NETNS_COOKIE: libc::c_int = 0x50;

/// A network namespace, held open.
///
/// Holding the namespace file open pins what the handle names: a `/proc/PID/ns/net` path may name
/// another namespace once the pid is reused, but the open file keeps naming the namespace it was
/// opened on, and keeps that namespace (and so its inode number) alive.
#[derive(Debug)]
pub struct NetNs {
    path: PathBuf,
    file: File,
    dev: u64,
    inode: u64,
}

impl NetNs {
    /// Opens the namespace at `path`: `/proc/PID/ns/net`, `/run/netns/NAME`, or a bind mount of
    /// either.
    pub fn open(path: impl Into<PathBuf>) -> Result<Self, HostError> {
        let path = path.into();
        let opened = File::open(&path).and_then(|file| {
            let meta = file.metadata()?;
            Ok((file, meta))
        });
        match opened {
            Ok((file, meta)) => Ok(Self {
                dev: meta.dev(),
                inode: meta.ino(),
                path,
                file,
            }),
            Err(source) => Err(HostError::OpenNamespace { path, source }),
        }
    }

    /// The daemon's own namespace (that of its main thread).
    pub fn own() -> Result<Self, HostError> {
        Self::open("/proc/self/ns/net")
    }

    /// The namespace process `pid` runs in. Fails with [`HostError::OpenNamespace`] once the process
    /// is gone.
    pub fn of_pid(pid: u32) -> Result<Self, HostError> {
        Self::open(format!("/proc/{pid}/ns/net"))
    }

    /// A namespace named by iproute2 (`ip netns add NAME`), under `/run/netns`.
    pub fn named(name: &str) -> Result<Self, HostError> {
        let path = Path::new("/run/netns").join(name);
        if name.is_empty() || name.contains('/') || name == "." || name == ".." {
            // A name must not climb out of /run/netns.
            return Err(HostError::OpenNamespace {
                path,
                source: io::Error::from(io::ErrorKind::InvalidInput),
            });
        }
        Self::open(path)
    }

    /// A second handle on the same namespace, for another thread.
    ///
    /// # Errors
    /// When the file descriptor cannot be duplicated.
    pub fn try_clone(&self) -> Result<Self, HostError> {
        match self.file.try_clone() {
            Ok(file) => Ok(Self {
                path: self.path.clone(),
                file,
                dev: self.dev,
                inode: self.inode,
            }),
            Err(source) => Err(HostError::OpenNamespace {
                path: self.path.clone(),
                source,
            }),
        }
    }

    /// The path this handle was opened from.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The namespace's inode number: a cheap identity for caches. It is unique among living
    /// namespaces (all live on the one `nsfs`), and may be reused once a namespace is gone, which
    /// an open handle or a socket inside the namespace prevents.
    pub fn inode(&self) -> u64 {
        self.inode
    }

    /// Whether the calling thread already runs in this namespace, so no `setns` is needed.
    fn is_current_thread(&self) -> bool {
        // thread-self, not self: a thread may have been moved while the main thread was not.
        std::fs::metadata("/proc/thread-self/ns/net")
            .is_ok_and(|meta| meta.dev() == self.dev && meta.ino() == self.inode)
    }
}

/// Runs `work` inside `ns` and returns its result, without moving any of the daemon's threads:
/// `setns` happens in a scratch thread that ends with `work`. What `work` creates there (sockets)
/// stays bound to `ns`.
pub fn in_netns<T, F>(ns: &NetNs, work: F) -> Result<T, HostError>
where
    T: Send,
    F: FnOnce() -> Result<T, HostError> + Send,
{
    if ns.is_current_thread() {
        return work();
    }
    const THREAD: &str = "netns scratch";
    thread::scope(|scope| {
        let handle = thread::Builder::new()
            .name("enforcer-netns".to_owned())
            .spawn_scoped(scope, || {
                setns(ns.file.as_fd(), CloneFlags::CLONE_NEWNET).map_err(|source| {
                    HostError::EnterNamespace {
                        path: ns.path.clone(),
                        source,
                    }
                })?;
                work()
            })
            .map_err(|source| HostError::SpawnThread {
                thread: THREAD,
                source,
            })?;
        // Joined explicitly, so a panic comes back here as an error instead of out of `scope`.
        handle
            .join()
            .map_err(|_| HostError::ThreadPanicked { thread: THREAD })?
    })
}

/// Creates a netlink socket of `protocol` (a `netlink_sys::protocols` constant) inside `ns`. The
/// socket is unbound; it answers for `ns` for as long as it lives.
pub fn socket_in(ns: &NetNs, protocol: isize) -> Result<Socket, HostError> {
    in_netns(ns, || new_socket(protocol))
}

/// Creates a netlink socket in the calling thread's namespace.
pub(super) fn new_socket(protocol: isize) -> Result<Socket, HostError> {
    Socket::new(protocol).map_err(|source| HostError::Netlink {
        op: "socket",
        source,
    })
}

/// The kernel's cookie for `ns`: the value `bpf_get_netns_cookie` returns for sockets and packets
/// of that namespace. Unlike the inode it is never reused while the system runs.
///
/// # Minimum kernel version
///
/// 5.14 (`SO_NETNS_COOKIE`); older kernels answer [`HostError::Netlink`] with `ENOPROTOOPT`.
#[doc(alias = "SO_NETNS_COOKIE")]
pub fn netns_cookie(ns: &NetNs) -> Result<u64, HostError> {
    let socket = socket_in(ns, NETLINK_ROUTE)?;
    socket_netns_cookie(&socket).map_err(|source| HostError::Netlink {
        op: "getsockopt(SO_NETNS_COOKIE)",
        source,
    })
}

/// Reads `SO_NETNS_COOKIE` of a socket: the cookie of the namespace it was created in.
fn socket_netns_cookie(socket: &impl AsRawFd) -> io::Result<u64> {
    let mut cookie: u64 = 0;
    let mut len = size_of::<u64>() as libc::socklen_t;
    // SAFETY: the fd is a live socket borrowed for the call; the kernel writes at most `len` bytes
    // into `cookie`, which is exactly `len` bytes long and outlives the call.
    let rc = unsafe {
        libc::getsockopt(
            socket.as_raw_fd(),
            libc::SOL_SOCKET,
            SO_NETNS_COOKIE,
            (&raw mut cookie).cast(),
            &raw mut len,
        )
    };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    if len as usize != size_of::<u64>() {
        return Err(io::Error::from(io::ErrorKind::InvalidData));
    }
    Ok(cookie)
}
