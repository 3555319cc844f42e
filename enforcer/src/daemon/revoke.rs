//! Aborting the TCP sockets of revoked flows, so that applications learn at once that the policy
//! took their connection back instead of waiting for a timeout.
//!
//! The kernel drops a revoked flow's packets from its first packet under the new policy and
//! reports it with [`EVENT_REVOKED`] and the socket's cookie. The daemon then asks the kernel to
//! abort that socket (sock_diag `SOCK_DESTROY`, as `ss -K` does) in the socket's own network
//! namespace: the node's, or the one the socket's creator lives in. The cookie makes sure that
//! only that socket is aborted, never another that reuses its addresses.

use std::{
    net::{IpAddr, Ipv6Addr, SocketAddr},
    sync::mpsc::{Receiver, SyncSender, TrySendError, sync_channel},
    thread::JoinHandle,
};

use enforcer_common::{EVENT_REVOKED, FlowEvent, hook, protocol};
use tracing::{debug, info, warn};

use crate::host::{Aborted, NetNs, TcpSocketId, abort_tcp, netns_cookie};

/// Revocations waiting for the aborting thread; more are dropped (the packets stay dropped).
const QUEUE: usize = 1024;

/// One socket to abort.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Revocation {
    pub socket: TcpSocketId,
    pub netns_cookie: u64,
    /// The socket's creator, whose namespace holds the socket when it is not the node's.
    pub pid: u32,
}

impl Revocation {
    /// The revocation `event` reports, if it is one of a TCP socket.
    #[must_use]
    pub fn of(event: &FlowEvent) -> Option<Self> {
        if event.flags & EVENT_REVOKED == 0
            || event.protocol != protocol::TCP
            || event.socket_cookie == 0
        {
            return None;
        }
        let src = SocketAddr::new(ip_from(event.src_addr), event.src_port);
        let dst = SocketAddr::new(ip_from(event.dst_addr), event.dst_port);
        // An arriving flow's local end is its destination.
        let (local, remote) = if event.hook == hook::SKB_INGRESS {
            (dst, src)
        } else {
            (src, dst)
        };
        Some(Self {
            socket: TcpSocketId {
                local,
                remote,
                cookie: event.socket_cookie,
            },
            netns_cookie: event.netns_cookie,
            pid: event.pid,
        })
    }
}

fn ip_from(addr: [u8; 16]) -> IpAddr {
    let v6 = Ipv6Addr::from(addr);
    v6.to_ipv4_mapped().map_or(IpAddr::V6(v6), IpAddr::V4)
}

/// The queue of revocations, feeding one thread that aborts their sockets.
pub struct Revoker {
    queue: SyncSender<Revocation>,
    dropped: u64,
}

impl Revoker {
    /// Starts the aborting thread for sockets in `node` (whose cookie is `node_cookie`) or in
    /// their creators' namespaces. It ends when the revoker is dropped.
    ///
    /// # Errors
    /// When the thread cannot be started.
    pub fn spawn(node: NetNs, node_cookie: u64) -> std::io::Result<(Self, JoinHandle<()>)> {
        let (queue, incoming) = sync_channel(QUEUE);
        let thread = std::thread::Builder::new()
            .name("revoker".into())
            .spawn(move || abort_all(&incoming, &node, node_cookie))?;
        Ok((Self { queue, dropped: 0 }, thread))
    }

    /// Queues `revocation` without waiting; a full queue drops it, counted and logged.
    pub fn revoke(&mut self, revocation: Revocation) {
        match self.queue.try_send(revocation) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) => {
                self.dropped += 1;
                warn!(
                    dropped = self.dropped,
                    "too many revoked sockets at once: this one is not aborted (its packets stay dropped)"
                );
            }
            Err(TrySendError::Disconnected(_)) => {}
        }
    }
}

fn abort_all(incoming: &Receiver<Revocation>, node: &NetNs, node_cookie: u64) {
    while let Ok(revocation) = incoming.recv() {
        let owned;
        let ns = if revocation.netns_cookie == node_cookie || revocation.netns_cookie == 0 {
            node
        } else {
            match creator_namespace(&revocation) {
                Some(ns) => {
                    owned = ns;
                    &owned
                }
                None => {
                    debug!(
                        ?revocation,
                        "the namespace of a revoked socket is gone or unknown"
                    );
                    continue;
                }
            }
        };
        let socket = revocation.socket;
        match abort_tcp(ns, &socket) {
            Ok(Aborted::Aborted) => {
                info!(local = %socket.local, remote = %socket.remote, "aborted the socket of a revoked flow");
            }
            Ok(Aborted::Gone) => {
                debug!(local = %socket.local, remote = %socket.remote, "the socket of a revoked flow is gone");
            }
            Err(error) => {
                warn!(%error, local = %socket.local, remote = %socket.remote, "could not abort the socket of a revoked flow");
            }
        }
    }
}

/// The namespace of the revoked socket's creator, if it still is the socket's.
fn creator_namespace(revocation: &Revocation) -> Option<NetNs> {
    if revocation.pid == 0 {
        return None;
    }
    let ns = NetNs::of_pid(revocation.pid).ok()?;
    (netns_cookie(&ns).ok()? == revocation.netns_cookie).then_some(ns)
}
