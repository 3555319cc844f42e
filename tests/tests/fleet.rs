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
