//! The interfaces of a namespace, as the kernel lists them (`RTM_GETLINK`).

use netlink_packet_route::{
    RouteNetlinkMessage,
    link::{LinkAttribute, LinkFlags, LinkMessage},
};
use netlink_sys::protocols::NETLINK_ROUTE;

use super::{
    HostError,
    netlink::{self},
    netns::{NetNs, in_netns, new_socket},
};

const OP_DUMP: &str = "RTM_GETLINK dump";

/// One network interface.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Interface {
    pub index: u32,
    pub name: String,
    /// Administratively up (`IFF_UP`).
    pub up: bool,
    pub loopback: bool,
}

/// Every interface of `ns`, of every kind: physical, VLAN, bond, bridge, veth, tunnel.
///
/// # Errors
/// When the namespace cannot be entered or the dump fails.
pub fn interfaces(ns: &NetNs) -> Result<Vec<Interface>, HostError> {
    let socket = in_netns(ns, || {
        let mut socket = new_socket(NETLINK_ROUTE)?;
        netlink::bind(&mut socket, 0)?;
        netlink::set_receive_timeout(&socket, std::time::Duration::from_secs(2))?;
        Ok(socket)
    })?;
    let request = RouteNetlinkMessage::GetLink(LinkMessage::default());
    let mut out = Vec::new();
    for message in netlink::dump(&socket, &request, OP_DUMP)? {
        if let RouteNetlinkMessage::NewLink(link) = message {
            let name = link
                .attributes
                .iter()
                .find_map(|attribute| match attribute {
                    LinkAttribute::IfName(name) => Some(name.clone()),
                    _ => None,
                });
            if let Some(name) = name {
                out.push(Interface {
                    index: link.header.index,
                    name,
                    up: link.header.flags.contains(LinkFlags::Up),
                    loopback: link.header.flags.contains(LinkFlags::Loopback),
                });
            }
        }
    }
    out.sort();
    Ok(out)
}
