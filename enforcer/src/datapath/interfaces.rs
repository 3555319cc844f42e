//! The interface layer on the node's interfaces: one tcx link each way per interface, pinned so
//! that it outlives the daemon.
//!
//! A restarted daemon swaps its programs into the pinned links (`BPF_LINK_UPDATE`), so an
//! interface is never without a program. A pinned link whose interface is gone (or was made
//! again under the same name) refuses the swap; a new link then replaces it.

use std::{
    fs, io,
    os::fd::{AsFd as _, AsRawFd as _, BorrowedFd, OwnedFd},
};

use aya::{Ebpf, programs::SchedClassifier};

use super::{
    DatapathError,
    pins::{self, PinDir},
    programs::{self},
};
use crate::host::{HostError, Interface, NetNs, in_netns};

/// tcx ingress: arrivals no socket of the subtree receives.
pub(super) const ARRIVALS: &str = "arrivals";
/// tcx egress: the flows processes of the node outside the subtree open.
pub(super) const DEPARTURES: &str = "departures";
/// `BPF_TCX_INGRESS`, `BPF_TCX_EGRESS` (`include/uapi/linux/bpf.h`).
const TCX: [(&str, u32); 2] = [(ARRIVALS, 46), (DEPARTURES, 47)];
/// Separates a program's name from its interface's in a link pin.
const AT: char = '@';

/// Loads both programs (the verifier runs here).
pub(super) fn load(ebpf: &mut Ebpf) -> Result<(), DatapathError> {
    for (name, _) in TCX {
        programs::program::<SchedClassifier>(ebpf, name)?
            .load()
            .map_err(|source| DatapathError::Program {
                program: name,
                source,
            })?;
    }
    Ok(())
}

/// Whether the kernel has tcx links (6.6+), asked without attaching anything: a tcx link to
/// interface index 0 is refused with `ENODEV` (no such device) where tcx exists, and with
/// `EINVAL` (an attach type a classifier cannot take) where it does not.
pub(super) fn tcx_supported(ebpf: &Ebpf) -> Result<bool, DatapathError> {
    let program = ebpf
        .program(ARRIVALS)
        .ok_or(DatapathError::MissingProgram(ARRIVALS))?;
    let fd = program.fd().map_err(|source| DatapathError::Program {
        program: ARRIVALS,
        source,
    })?;
    // A link (which ifindex 0 cannot give) would be dropped, and so detached, at once.
    let unknown_attach_type = matches!(
        pins::create_tcx_link(fd.as_fd(), 0, TCX[0].1),
        Err(error) if error.raw_os_error() == Some(libc::EINVAL)
    );
    Ok(!unknown_attach_type)
}

/// Puts both programs on every interface of `interfaces` (which live in `ns`) but those in
/// `current` (already running this daemon's programs), and takes them off every interface that
/// pins say they were on but that is not in the list any more. Returns the number of interfaces
/// now covered.
pub(super) fn attach(
    ebpf: &Ebpf,
    pins: &PinDir,
    ns: &NetNs,
    interfaces: &[Interface],
    current: &[String],
) -> Result<usize, DatapathError> {
    let mut fds = Vec::new();
    for (name, attach_type) in TCX {
        let program = ebpf
            .program(name)
            .ok_or(DatapathError::MissingProgram(name))?;
        let fd = program
            .fd()
            .map_err(|source| DatapathError::Program {
                program: name,
                source,
            })?
            .as_fd()
            .as_raw_fd();
        fds.push((name, attach_type, fd));
    }
    for interface in interfaces.iter().filter(|i| !current.contains(&i.name)) {
        if swapped_into_pins(pins, &fds, &interface.name) {
            continue;
        }
        let index = interface.index;
        let targets = fds.clone();
        // Interface indexes are per namespace: the links are made from inside it.
        let links = in_netns(ns, move || {
            targets
                .iter()
                .map(|&(name, attach_type, fd)| {
                    // SAFETY: `fd` is a program descriptor of `ebpf`, which outlives this call
                    // (the scratch thread is joined before `in_netns` returns).
                    let program = unsafe { BorrowedFd::borrow_raw(fd) };
                    pins::create_tcx_link(program, index, attach_type)
                        .map(|link| (name, link))
                        .map_err(|source| HostError::Kernel {
                            op: "BPF_LINK_CREATE (tcx)",
                            source,
                        })
                })
                .collect::<Result<Vec<(&'static str, OwnedFd)>, HostError>>()
        })
        .map_err(|source| DatapathError::Interface {
            interface: interface.name.clone(),
            source,
        })?;
        for (name, link) in links {
            let path = pins.link(&format!("{name}{AT}{}", interface.name));
            remove_pin(&path)?;
            pins::pin(link.as_fd(), &path)?;
        }
    }
    for stale in pinned_interfaces(pins)? {
        if !interfaces.iter().any(|i| i.name == stale) {
            for (name, _) in TCX {
                remove_pin(&pins.link(&format!("{name}{AT}{stale}")))?;
            }
        }
    }
    Ok(interfaces.len())
}

/// Swaps this daemon's programs into the interface's pinned links; `false` when either is not
/// pinned or refuses (its interface is gone), and new links are needed.
fn swapped_into_pins(pins: &PinDir, fds: &[(&'static str, u32, i32)], interface: &str) -> bool {
    fds.iter().all(|&(name, _, fd)| {
        let Ok(link) = pins::open_pin(&pins.link(&format!("{name}{AT}{interface}"))) else {
            return false;
        };
        // SAFETY: `fd` is a program descriptor of the daemon's `Ebpf`, alive for this call.
        let program = unsafe { BorrowedFd::borrow_raw(fd) };
        pins::update_link(link.as_fd(), program).is_ok()
    })
}

/// The interfaces whose links are pinned.
fn pinned_interfaces(pins: &PinDir) -> Result<Vec<String>, DatapathError> {
    let dir = pins.links();
    let entries = match fs::read_dir(&dir) {
        Ok(entries) => entries,
        Err(error) if error.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(source) => return Err(DatapathError::Pin { path: dir, source }),
    };
    let mut found = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|source| DatapathError::Pin {
            path: dir.clone(),
            source,
        })?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if let Some(interface) = name
            .strip_prefix(ARRIVALS)
            .and_then(|rest| rest.strip_prefix(AT))
        {
            found.push(interface.to_owned());
        }
    }
    Ok(found)
}

fn remove_pin(path: &std::path::Path) -> Result<(), DatapathError> {
    match fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(error) if error.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(source) => Err(DatapathError::Pin {
            path: path.to_owned(),
            source,
        }),
    }
}

/// The interfaces the layer covers: those named (every one must exist), else every interface
/// that is up, loopback excepted (nothing arrives on it from outside the node).
///
/// # Errors
/// When a named interface does not exist in the namespace.
pub fn select(all: &[Interface], named: &[String]) -> Result<Vec<Interface>, DatapathError> {
    if named.is_empty() {
        return Ok(all
            .iter()
            .filter(|i| i.up && !i.loopback)
            .cloned()
            .collect());
    }
    named
        .iter()
        .map(|name| {
            all.iter()
                .find(|i| &i.name == name)
                .cloned()
                .ok_or_else(|| DatapathError::NoInterface(name.clone()))
        })
        .collect()
}
