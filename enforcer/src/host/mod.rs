//! Which network namespace is which ([`NetNs`], [`netns_cookie`]), which addresses are local
//! ([`local_addresses`], [`AddressWatcher`]) and which source address a process's namespace would
//! route from ([`SourceResolver`]), all asked of the kernel's own tables.
//!
//! Nothing here opens an `AF_INET`/`AF_INET6` socket. The daemon's own eBPF programs judge inet
//! sockets, and a daemon that asked the kernel a question through one (a UDP `connect` to learn a
//! route) could be denied by its own policy and report that denial as a new event, feeding itself.
//! Netlink sockets are not judged, and they answer the same questions from the kernel's own tables.
//!
//! A netlink socket stays bound to the network namespace it was created in, so a question about
//! another namespace needs only a socket created there: [`socket_in`] enters the namespace in a
//! short-lived scratch thread, never in one of the daemon's own threads.
//!
//! # Minimum kernel version
//!
//! 5.14 for [`netns_cookie`] (`SO_NETNS_COOKIE`); everything else works on any kernel the datapath
//! supports.
//!
// Spelled from the crate root: rustdoc resolves these docs from lib.rs, where `pub mod host`
// carries a doc line of its own.
//! [`NetNs`]: crate::host::NetNs
//! [`netns_cookie`]: crate::host::netns_cookie
//! [`local_addresses`]: crate::host::local_addresses
//! [`AddressWatcher`]: crate::host::AddressWatcher
//! [`SourceResolver`]: crate::host::SourceResolver
//! [`socket_in`]: crate::host::socket_in

mod addresses;
mod links;
mod netlink;
mod netns;
mod sockets;
mod source;
#[cfg(test)]
mod tests;

use std::{io, path::PathBuf};

pub use self::{
    addresses::{AddressWatcher, local_addresses},
    links::{Interface, interfaces},
    netns::{NetNs, in_netns, netns_cookie, socket_in},
    sockets::{Aborted, TcpSocketId, abort_tcp},
    source::{ResolverConfig, SourceResolver},
};

/// Errors learning facts about the host from the kernel.
#[derive(Debug, thiserror::Error)]
pub enum HostError {
    /// The namespace file does not exist (the process is gone, the name is unknown) or cannot be
    /// read.
    #[error("cannot open network namespace {path}")]
    OpenNamespace {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    /// `setns(CLONE_NEWNET)` refused: not a network namespace, or no `CAP_SYS_ADMIN` over it.
    #[error("cannot enter network namespace {path}")]
    EnterNamespace {
        path: PathBuf,
        #[source]
        source: nix::Error,
    },
    /// The thread could not be started (task or memory limits).
    #[error("cannot spawn the {thread} thread")]
    SpawnThread {
        thread: &'static str,
        #[source]
        source: io::Error,
    },
    /// A scratch thread panicked; its work is lost, the daemon is not.
    #[error("the {thread} thread panicked")]
    ThreadPanicked { thread: &'static str },
    /// A socket operation (create, bind, send, receive, option) failed locally.
    #[error("netlink {op} failed")]
    Netlink {
        op: &'static str,
        #[source]
        source: io::Error,
    },
    /// The kernel answered a request with an error (`NLMSG_ERROR` carrying an errno).
    #[error("the kernel refused {op}")]
    Kernel {
        op: &'static str,
        #[source]
        source: io::Error,
    },
    /// The kernel's answer is not a netlink message the codec understands.
    #[error("cannot decode the kernel's answer to {op}")]
    Decode {
        op: &'static str,
        #[source]
        source: netlink_packet_core::DecodeError,
    },
    /// A datagram was larger than the receive buffer, so part of the answer was lost.
    #[error("{op}: a {len}-byte netlink datagram does not fit the {capacity}-byte buffer")]
    Truncated {
        op: &'static str,
        len: usize,
        capacity: usize,
    },
    /// An [`AddressWatcher`] was made outside a tokio runtime.
    #[error("watching addresses needs a tokio runtime")]
    NoRuntime,
    /// The table changed during every attempt to dump it (`NLM_F_DUMP_INTR`).
    #[error("{op}: the dump was interrupted by concurrent changes {attempts} times in a row")]
    DumpInterrupted { op: &'static str, attempts: u32 },
}
