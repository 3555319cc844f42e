//! The fleet harness: several enforcing nodes and a peer on one bridge, each node with its own
//! daemon, cgroup tree, instance and copy of the policy.

use std::net::IpAddr;

use enforcer_tests::{
    EVENT_TIMEOUT, Fleet, Proto, events, fleet::NODES_FILE, netns::list_netns, require_privileges,
};

const POLICY: &str = r#"
[[workload]]
name = "web"
cgroup = "web"
labels = { segment = "web" }

[[segment]]
name = "web-seg"
select = { segment = "web" }

[[allow]]
from = "web-seg"
to = "web-seg"
ports = ["tcp/8080"]

# A workload on another node is seen as that node (its address is in the node's table), so web on
# one node reaching web on another takes both halves: out of web-seg to the nodes at the source,
# and from the nodes into web-seg at the destination.
[[allow]]
from = "web-seg"
to = { role = "node" }
ports = ["tcp/8080"]

[[allow]]
from = { role = "node" }
to = "web-seg"
ports = ["tcp/8080"]
"#;

#[test]
fn three_nodes_enforce_their_own_policy_on_one_bridge() {
    if !require_privileges() {
        return;
    }
    let (names, cgroups);
    {
        let fleet = Fleet::builder()
            .nodes(3)
            .workload("web")
            .policy("main.toml", POLICY)
            .start();
        names = fleet
            .nodes()
            .iter()
            .map(|n| n.netns().name().to_owned())
            .chain([fleet.peer_ns().name().to_owned()])
            .collect::<Vec<_>>();
        cgroups = fleet
            .nodes()
            .iter()
            .map(|n| n.cgroups().path().to_path_buf())
            .collect::<Vec<_>>();

        for (i, node) in fleet.nodes().iter().enumerate() {
            assert_eq!(node.name(), format!("node-{}", i + 1));
            let pid = node.daemon().pid().expect("the daemon runs");
            let status = node.instance().status();
            assert_eq!(status["daemon_attached"], true, "{status:#}");
            assert_eq!(status["enforcing"], true, "{status:#}");
            assert_eq!(status["daemon"]["status"]["pid"], pid, "{status:#}");
            assert_eq!(
                status["daemon"]["status"]["node"],
                node.name(),
                "{status:#}"
            );
            let nodes_file = std::fs::read_to_string(node.policy_dir().path().join(NODES_FILE))
                .expect("the nodes file");
            assert_eq!(nodes_file.matches("[[node]]").count(), 3, "{nodes_file}");
        }

        let (one, two, three) = (fleet.node(1), fleet.node(2), fleet.node(3));
        let open = two.listen("web", Proto::Tcp, two.ip4(), 8080);
        let closed = two.listen("web", Proto::Tcp, two.ip4(), 8081);
        let client = one.probe("web").tcp_connect(two.ip4(), 8080);
        client.assert_ok();
        open.wait_for_peers(1, EVENT_TIMEOUT);
        let denied = one.probe("web").tcp_connect(two.ip4(), 8081);
        denied.assert_denied();
        let ev = one
            .daemon()
            .wait_for_event(EVENT_TIMEOUT, |e| events::is_to(e, two.ip4(), Some(8081)));
        events::assert_rule(&ev, "default-deny:web-seg");
        events::assert_names(&ev, "web", two.name());
        assert!(closed.peers().is_empty(), "{:?}", closed.peers());

        // The bridge carries the peer's SYN to node 3, whose kernel answers it with a reset.
        fleet
            .peer_probe()
            .tcp_connect(three.ip4(), 9)
            .assert_errno("ECONNREFUSED");
        let peer: IpAddr = fleet.expand("${PEER4}").parse().expect("an address");
        assert_eq!(peer, fleet.peer4());
    }
    let left = list_netns();
    for name in &names {
        assert!(!left.contains(name), "netns {name} outlived its fleet");
    }
    for cgroup in &cgroups {
        assert!(!cgroup.exists(), "{} outlived its fleet", cgroup.display());
    }
}

const INBOUND: &str = r#"
[[workload]]
name = "web"
cgroup = "web"
labels = { segment = "web" }

[[segment]]
name = "web-seg"
select = { segment = "web" }

[[segment]]
name = "nodes"
select = { role = "node" }

[[allow]]
from = "@world"
to = "web-seg"
ports = ["tcp/8080", "udp/5353"]

[[allow]]
from = "@world"
to = "nodes"
ports = ["icmp"]

# A workload on another node is seen as that node.
[[allow]]
from = "web-seg"
to = "nodes"
ports = ["tcp/8080"]

[[allow]]
from = "nodes"
to = "web-seg"
ports = ["tcp/8080"]
"#;

/// Sends one IPv4 TCP SYN from the peer to `dst:port` on the bridge inside two VLAN tags (an
/// 802.1ad outer tag, which the receiving kernel moves out of the frame, and an 802.1Q inner one,
/// which stays in it), from a packet socket: the path a VLAN sub-interface's traffic takes.
fn tagged_syn(fleet: &Fleet, dst_mac: &str, dst: IpAddr, port: u16) {
    const SCRIPT: &str = r#"
import socket, struct, sys
ifname, dst_mac, src, dst, port = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4], int(sys.argv[5])
s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW)
s.bind((ifname, 0))
src_mac = s.getsockname()[4]
def csum(b):
    if len(b) % 2: b += b"\0"
    t = sum(struct.unpack("!%dH" % (len(b) // 2), b))
    while t >> 16: t = (t & 0xffff) + (t >> 16)
    return ~t & 0xffff
sa, da = socket.inet_aton(src), socket.inet_aton(dst)
tcp = struct.pack("!HHIIBBHHH", 40000, port, 1, 0, 5 << 4, 0x02, 64240, 0, 0)
pseudo = sa + da + struct.pack("!BBH", 0, 6, len(tcp))
tcp = tcp[:16] + struct.pack("!H", csum(pseudo + tcp)) + tcp[18:]
ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(tcp), 1, 0, 64, 6, 0, sa, da)
ip = ip[:10] + struct.pack("!H", csum(ip)) + ip[12:]
eth = bytes.fromhex(dst_mac.replace(":", "")) + src_mac
frame = eth + struct.pack("!HHHH", 0x88a8, 7, 0x8100, 42) + struct.pack("!H", 0x0800) + ip + tcp
s.send(frame)
"#;
    let output = std::process::Command::new("ip")
        .args([
            "netns",
            "exec",
            fleet.peer_ns().name(),
            "python3",
            "-c",
            SCRIPT,
        ])
        .args([
            enforcer_tests::netns::VETH_IFNAME,
            dst_mac,
            &fleet.peer4().to_string(),
            &dst.to_string(),
            &port.to_string(),
        ])
        .output()
        .expect("run python3 on the peer");
    assert!(output.status.success(), "{output:?}");
}

fn mac_of(node: &enforcer_tests::FleetNode) -> String {
    let output = std::process::Command::new("ip")
        .args(["netns", "exec", node.netns().name(), "cat"])
        .arg(format!(
            "/sys/class/net/{}/address",
            enforcer_tests::netns::VETH_IFNAME
        ))
        .output()
        .expect("read the node's MAC address");
    String::from_utf8_lossy(&output.stdout).trim().to_owned()
}

#[test]
fn each_node_judges_what_arrives_at_it_even_from_a_peer_without_an_enforcer() {
    if !require_privileges() {
        return;
    }
    let fleet = Fleet::builder()
        .nodes(3)
        .workload("web")
        .policy("main.toml", INBOUND)
        .start();
    let (one, two, three) = (fleet.node(1), fleet.node(2), fleet.node(3));
    let peer = fleet.peer_probe();
    let any6 = IpAddr::V6(std::net::Ipv6Addr::UNSPECIFIED);

    // TCP, both families, at node 2; the refusal is node 2's, not node 1's.
    let _open = two.listen("web", Proto::Tcp, any6, 8080);
    let shut = two.listen("web", Proto::Tcp, any6, 8081);
    for addr in [two.ip4(), two.ip6()] {
        peer.tcp_connect(addr, 8080).assert_ok();
        peer.tcp_connect(addr, 8081).assert_errno("ETIMEDOUT");
        let ev = two
            .daemon()
            .wait_for_event(EVENT_TIMEOUT, |e| events::is_to(e, addr, Some(8081)));
        events::assert_names(&ev, "@world", "web");
    }
    assert!(shut.peers().is_empty());
    assert!(
        !one.daemon()
            .events()
            .iter()
            .any(|e| events::is_to(e, two.ip4(), Some(8081))),
        "node 1 reported what arrived at node 2"
    );

    // UDP, both families, at node 3.
    let open_udp = three.listen("web", Proto::Udp, any6, 5353);
    let shut_udp = three.listen("web", Proto::Udp, any6, 5354);
    for (round, addr) in [three.ip4(), three.ip6()].into_iter().enumerate() {
        peer.udp_sendto(addr, 5353).assert_ok();
        open_udp.wait_for_peers(round + 1, EVENT_TIMEOUT);
        peer.udp_sendto(addr, 5354).assert_ok();
        three
            .daemon()
            .wait_for_event(EVENT_TIMEOUT, |e| events::is_to(e, addr, Some(5354)));
    }
    assert!(shut_udp.peers().is_empty());

    // ICMP echo, both families: the peer may ping the nodes; web may not ping anything.
    for addr in [one.ip4(), one.ip6()] {
        peer.ping(addr).assert_ok();
    }
    one.probe("web").ping(two.ip4()).assert_denied();

    // Between enforcing nodes: allowed at both ends, or refused at the source; a process of
    // node 1 outside its subtree is not judged there, and is stopped where it arrives.
    one.probe("web").tcp_connect(two.ip4(), 8080).assert_ok();
    one.probe("web")
        .tcp_connect(two.ip4(), 8081)
        .assert_denied();
    one.host_probe()
        .tcp_connect(two.ip4(), 8081)
        .assert_errno("ETIMEDOUT");
    let ev = two.daemon().wait_for_event(EVENT_TIMEOUT, |e| {
        events::is_to(e, two.ip4(), Some(8081))
            && events::try_field(e, "src_endpoint.name").and_then(serde_json::Value::as_str)
                == Some(one.name())
    });
    // Both ends are segment members; the default deny names the source's segment.
    events::assert_rule(&ev, "default-deny:nodes");

    // A double-tagged frame is judged like an untagged one.
    tagged_syn(&fleet, &mac_of(three), three.ip4(), 7777);
    let ev = three
        .daemon()
        .wait_for_event(EVENT_TIMEOUT, |e| events::is_to(e, three.ip4(), Some(7777)));
    assert_eq!(events::str_at(&ev, "unmapped.layer"), "interface");
    events::assert_names(&ev, "@world", three.name());
}
