//! Local addresses: every address the kernel holds on an interface of a namespace, and a watcher
//! that follows them.

use std::{collections::BTreeSet, io, net::IpAddr, time::Duration};

use netlink_packet_route::{
    RouteNetlinkMessage,
    address::{AddressAttribute, AddressMessage},
};
use netlink_sys::{Socket, protocols::NETLINK_ROUTE};
use tokio::io::{Interest, unix::AsyncFd};

use super::{
    HostError,
    netlink::{self, RECV_BUFFER},
    netns::{NetNs, in_netns, new_socket},
};

/// Bound on a blocking dump: the kernel produces a dump while it is read, so this only matters if
/// an answer is lost.
const DUMP_TIMEOUT: Duration = Duration::from_secs(2);

const OP_DUMP: &str = "RTM_GETADDR dump";
const OP_EVENTS: &str = "address events";

/// Every address the kernel holds on any interface of `ns`: IPv4 and IPv6, primary and secondary,
/// loopback, link-local, bridges, and IPv6 addresses still in duplicate address detection.
///
/// # Examples
///
/// ```no_run
/// use enforcer::host::{NetNs, local_addresses};
///
/// let own = local_addresses(&NetNs::own()?)?;
/// assert!(own.contains(&std::net::Ipv4Addr::LOCALHOST.into()));
/// # Ok::<(), enforcer::host::HostError>(())
/// ```
pub fn local_addresses(ns: &NetNs) -> Result<BTreeSet<IpAddr>, HostError> {
    let socket = in_netns(ns, dump_socket)?;
    read_addresses(&socket)
}

/// A blocking socket for dumps, in the calling thread's namespace.
fn dump_socket() -> Result<Socket, HostError> {
    let mut socket = new_socket(NETLINK_ROUTE)?;
    netlink::bind(&mut socket, 0)?;
    netlink::set_receive_timeout(&socket, DUMP_TIMEOUT)?;
    Ok(socket)
}

/// Dumps the addresses of the namespace `socket` lives in.
fn read_addresses(socket: &Socket) -> Result<BTreeSet<IpAddr>, HostError> {
    // A zeroed header (AF_UNSPEC, index 0) asks for every family on every interface.
    let request = RouteNetlinkMessage::GetAddress(AddressMessage::default());
    let mut out = BTreeSet::new();
    for message in netlink::dump(socket, &request, OP_DUMP)? {
        if let RouteNetlinkMessage::NewAddress(address) = message {
            out.extend(own_address(&address));
        }
    }
    Ok(out)
}

/// The interface's own address in an address message. `IFA_LOCAL` is the local address whenever
/// it is present; `IFA_ADDRESS` is then the *peer* of a point-to-point link (`ip addr add A peer
/// B`), which is not local. IPv6 without a peer sends `IFA_ADDRESS` alone.
fn own_address(message: &AddressMessage) -> Option<IpAddr> {
    let mut address = None;
    for attribute in &message.attributes {
        match attribute {
            AddressAttribute::Local(ip) => return Some(*ip),
            AddressAttribute::Address(ip) => address = Some(*ip),
            _ => {}
        }
    }
    address
}

/// Follows the local addresses of a namespace: subscribed to the kernel's IPv4 and IPv6 address
/// events, it re-reads the whole set on every event, so a missed or coalesced message never leaves
/// the set stale.
///
/// Needs a tokio runtime with I/O enabled, for [`AsyncFd`]; dropping it unsubscribes.
#[derive(Debug)]
pub struct AddressWatcher {
    /// Non-blocking, subscribed to `RTMGRP_IPV4_IFADDR | RTMGRP_IPV6_IFADDR | RTMGRP_LINK`. Only
    /// an event's arrival and kind matter, never its content.
    events: AsyncFd<Socket>,
    /// Blocking, for the re-reads: a dump on the subscribed socket would interleave with events.
    dump: Socket,
    /// Scratch space for draining events.
    buffer: Vec<u8>,
    /// The set last returned (or read at start).
    current: BTreeSet<IpAddr>,
    /// An event was consumed but the re-read failed: the next call re-reads before it waits.
    reread: bool,
    /// A link appeared, changed or went since the last return (or events were lost).
    links_changed: bool,
}

impl AddressWatcher {
    /// Subscribes to the address events of `ns` and reads its current addresses. The subscription
    /// comes first, so a change between the two is seen as an event rather than lost.
    ///
    /// Fails with [`HostError::NoRuntime`] outside a tokio runtime.
    ///
    /// # Panics
    ///
    /// Inside a tokio runtime built without I/O (`enable_io`), as [`AsyncFd`] does.
    pub fn new(ns: &NetNs) -> Result<Self, HostError> {
        if tokio::runtime::Handle::try_current().is_err() {
            return Err(HostError::NoRuntime);
        }
        let (events, dump) = in_netns(ns, || {
            let mut events = new_socket(NETLINK_ROUTE)?;
            let groups = libc::RTMGRP_IPV4_IFADDR | libc::RTMGRP_IPV6_IFADDR | libc::RTMGRP_LINK;
            netlink::bind(&mut events, groups.cast_unsigned())?;
            Ok((events, dump_socket()?))
        })?;
        events
            .set_non_blocking(true)
            .map_err(|source| HostError::Netlink {
                op: "set O_NONBLOCK",
                source,
            })?;
        // SAFETY: the socket owns its fd and the AsyncFd owns the socket, so the fd stays open and
        // the same for the AsyncFd's whole life.
        let events = unsafe { AsyncFd::register_with_interest(events, Interest::READABLE) }
            .map_err(|error| HostError::Netlink {
                op: "register with tokio",
                source: error.into_parts().1,
            })?;
        let current = read_addresses(&dump)?;
        Ok(Self {
            events,
            dump,
            buffer: Vec::with_capacity(RECV_BUFFER),
            current,
            reread: false,
            links_changed: false,
        })
    }

    /// The addresses as last read.
    pub fn current(&self) -> &BTreeSet<IpAddr> {
        &self.current
    }

    /// Waits until the set of local addresses differs from [`current`](Self::current), or a link
    /// appeared, changed or went (an interface without addresses coming up, as a container's veth
    /// does: the interface layer covers it then), and returns the set. Other events that leave the
    /// set as it was (an IPv6 address finishing duplicate address detection, an address re-added)
    /// are absorbed.
    ///
    /// Cancel safe: it only awaits before it has consumed any event. The re-read is a blocking
    /// netlink dump, which the kernel answers at once; when it fails, the error is returned and the
    /// next call re-reads at once, so the consumed event is not lost.
    pub async fn changed(&mut self) -> Result<BTreeSet<IpAddr>, HostError> {
        loop {
            if !self.reread {
                self.next_event().await?;
                self.reread = true;
            }
            let now = read_addresses(&self.dump)?;
            self.reread = false;
            if now != self.current || self.links_changed {
                self.links_changed = false;
                self.current.clone_from(&now);
                return Ok(now);
            }
        }
    }

    /// Waits for at least one event, then drains every pending one.
    async fn next_event(&mut self) -> Result<(), HostError> {
        loop {
            let mut guard = self
                .events
                .readable()
                .await
                .map_err(|source| HostError::Netlink {
                    op: OP_EVENTS,
                    source,
                })?;
            let mut seen = false;
            loop {
                let buffer = &mut self.buffer;
                match guard.try_io(|socket| {
                    buffer.clear();
                    socket.get_ref().recv(buffer, 0)
                }) {
                    Ok(Ok(_)) => {
                        seen = true;
                        self.links_changed |= is_link_event(&self.buffer);
                    }
                    // The receive queue overflowed and events were dropped: the re-read covers them.
                    Ok(Err(error)) if error.raw_os_error() == Some(libc::ENOBUFS) => {
                        seen = true;
                        self.links_changed = true;
                    }
                    Ok(Err(error)) if error.kind() == io::ErrorKind::Interrupted => {}
                    Ok(Err(source)) => {
                        return Err(HostError::Netlink {
                            op: OP_EVENTS,
                            source,
                        });
                    }
                    // Drained: `try_io` has cleared the readiness.
                    Err(_would_block) => break,
                }
            }
            if seen {
                return Ok(());
            }
        }
    }
}

/// Whether a received netlink message is `RTM_NEWLINK` or `RTM_DELLINK` (its header's type, a
/// native-endian `u16` at offset 4; the kernel sends one message per multicast datagram).
fn is_link_event(message: &[u8]) -> bool {
    message.get(4..6).is_some_and(|kind| {
        let kind = u16::from_ne_bytes([kind[0], kind[1]]);
        kind == libc::RTM_NEWLINK || kind == libc::RTM_DELLINK
    })
}
