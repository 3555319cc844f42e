//! The rtnetlink request/answer exchange shared by the address and route code: framing, sequence
//! numbers, errors and interrupted dumps.

use std::{
    sync::atomic::{AtomicU32, Ordering},
    time::Duration,
};

use netlink_packet_core::{
    NLM_F_DUMP, NLM_F_DUMP_INTR, NLM_F_REQUEST, NetlinkBuffer, NetlinkHeader, NetlinkMessage,
    NetlinkPayload,
};
use netlink_packet_route::RouteNetlinkMessage;
use netlink_sys::{Socket, SocketAddr};
use nix::sys::{
    socket::{setsockopt, sockopt::ReceiveTimeout},
    time::TimeVal,
};

use super::HostError;

/// Receive buffer for one datagram. The kernel sizes dump datagrams by the reader's past buffer
/// sizes, capped at 32 KiB; twice that leaves room and is still cheap.
pub(super) const RECV_BUFFER: usize = 64 * 1024;

/// How often a dump is retried when the kernel flags it as interrupted by a concurrent change.
const DUMP_ATTEMPTS: u32 = 5;

/// Sequence numbers shared by every socket: an answer is matched to its request by number, so a
/// late answer to an abandoned request is never taken for the current one.
static SEQUENCE: AtomicU32 = AtomicU32::new(1);

/// Binds `socket` with a kernel-chosen port id, joining the legacy `RTMGRP_*` bitmask `groups`.
pub(super) fn bind(socket: &mut Socket, groups: u32) -> Result<(), HostError> {
    socket
        .bind(&SocketAddr::new(0, groups))
        .map_err(|source| HostError::Netlink { op: "bind", source })
}

/// Bounds every blocking receive on `socket`: the kernel answers rtnetlink requests while it
/// handles them, so a missing answer means a lost one, never a slow one worth waiting for.
pub(super) fn set_receive_timeout(socket: &Socket, timeout: Duration) -> Result<(), HostError> {
    setsockopt(
        socket,
        ReceiveTimeout,
        &TimeVal::from(libc::timeval {
            tv_sec: timeout.as_secs().try_into().unwrap_or(libc::time_t::MAX),
            tv_usec: timeout.subsec_micros().into(),
        }),
    )
    .map_err(|errno| HostError::Netlink {
        op: "setsockopt(SO_RCVTIMEO)",
        source: errno.into(),
    })
}

/// Sends `message` as a request (with `extra_flags`, e.g. `NLM_F_DUMP`) and returns its sequence
/// number.
fn send(
    socket: &Socket,
    message: RouteNetlinkMessage,
    extra_flags: u16,
    op: &'static str,
) -> Result<u32, HostError> {
    let sequence = SEQUENCE.fetch_add(1, Ordering::Relaxed);
    let mut header = NetlinkHeader::default();
    header.flags = NLM_F_REQUEST | extra_flags;
    header.sequence_number = sequence;
    let mut packet = NetlinkMessage::new(header, NetlinkPayload::InnerMessage(message));
    packet.finalize();
    let mut buffer = vec![0; packet.buffer_len()];
    packet.serialize(&mut buffer);
    socket
        .send(&buffer, 0)
        .map_err(|source| HostError::Netlink { op, source })?;
    Ok(sequence)
}

/// Receives one datagram into `buffer` (cleared first). `MSG_TRUNC` makes the kernel report the
/// datagram's full length, so a datagram larger than the buffer is an error, not a silent loss.
pub(super) fn recv(
    socket: &Socket,
    buffer: &mut Vec<u8>,
    op: &'static str,
) -> Result<(), HostError> {
    buffer.clear();
    let capacity = buffer.capacity();
    let len = socket
        .recv(buffer, libc::MSG_TRUNC)
        .map_err(|source| HostError::Netlink { op, source })?;
    if len > capacity {
        return Err(HostError::Truncated { op, len, capacity });
    }
    Ok(())
}

/// Splits a datagram into the netlink messages it carries.
fn messages(
    datagram: &[u8],
    op: &'static str,
) -> Result<Vec<NetlinkMessage<RouteNetlinkMessage>>, HostError> {
    let mut out = Vec::new();
    let mut rest = datagram;
    while !rest.is_empty() {
        let len = NetlinkBuffer::new_checked(rest)
            .map_err(|source| HostError::Decode { op, source })?
            .length() as usize;
        // `new_checked` has bounded `len` by the datagram; `get` keeps that from being a panic.
        let message = NetlinkMessage::deserialize(rest.get(..len).unwrap_or_default())
            .map_err(|source| HostError::Decode { op, source })?;
        out.push(message);
        // Messages are 4-byte aligned within a datagram; the last may lack its padding.
        rest = rest.get(len.next_multiple_of(4)..).unwrap_or_default();
    }
    Ok(out)
}

/// What one answer message means for the exchange it belongs to.
enum Step {
    Message(RouteNetlinkMessage),
    Done,
}

/// Reads answers to `sequence` until `Done`, feeding every message it carries to `each`; `dump`
/// answers end with `NLMSG_DONE`, single answers with their one message (and an error ends
/// either). Returns whether the kernel flagged the dump as interrupted.
fn collect(
    socket: &Socket,
    sequence: u32,
    dump: bool,
    op: &'static str,
    each: &mut impl FnMut(RouteNetlinkMessage),
) -> Result<bool, HostError> {
    let mut buffer = Vec::with_capacity(RECV_BUFFER);
    let mut interrupted = false;
    loop {
        recv(socket, &mut buffer, op)?;
        for message in messages(&buffer, op)? {
            if message.header.sequence_number != sequence {
                // The late answer to a request that timed out: not ours.
                continue;
            }
            interrupted |= message.header.flags & NLM_F_DUMP_INTR != 0;
            let step = match message.payload {
                NetlinkPayload::InnerMessage(inner) => Step::Message(inner),
                NetlinkPayload::Done(_) => Step::Done,
                NetlinkPayload::Error(error) => match error.code {
                    Some(_) => {
                        return Err(HostError::Kernel {
                            op,
                            source: error.to_io(),
                        });
                    }
                    // An acknowledgement: nothing more will come.
                    None => Step::Done,
                },
                NetlinkPayload::Noop | NetlinkPayload::Overrun(_) => continue,
                // The payload enum is non-exhaustive: skip what a newer codec may add.
                _ => continue,
            };
            match step {
                Step::Message(inner) => {
                    each(inner);
                    if !dump {
                        return Ok(interrupted);
                    }
                }
                Step::Done => return Ok(interrupted),
            }
        }
    }
}

/// Dumps a table (`RTM_GET*` with `NLM_F_DUMP`) and returns every message of it. A dump the
/// kernel flags as interrupted (the table changed while it was read) is read again.
pub(super) fn dump(
    socket: &Socket,
    request: &RouteNetlinkMessage,
    op: &'static str,
) -> Result<Vec<RouteNetlinkMessage>, HostError> {
    for _ in 0..DUMP_ATTEMPTS {
        let sequence = send(socket, request.clone(), NLM_F_DUMP, op)?;
        let mut out = Vec::new();
        if !collect(socket, sequence, true, op, &mut |m| out.push(m))? {
            return Ok(out);
        }
    }
    Err(HostError::DumpInterrupted {
        op,
        attempts: DUMP_ATTEMPTS,
    })
}

/// Sends one request and returns the kernel's one answer (`None` for a bare acknowledgement).
pub(super) fn request(
    socket: &Socket,
    request: RouteNetlinkMessage,
    op: &'static str,
) -> Result<Option<RouteNetlinkMessage>, HostError> {
    let sequence = send(socket, request, 0, op)?;
    let mut answer = None;
    collect(socket, sequence, false, op, &mut |m| answer = Some(m))?;
    Ok(answer)
}
