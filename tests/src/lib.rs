//! Privileged integration tests for the enforcer: real programs in the real kernel, hosts as
//! network namespaces, workloads as processes in cgroups.
//!
//! The tests in `tests/*.rs` treat the daemon as a black box. They build a [`Lab`] (two namespaces
//! joined by a veth, a managed cgroup root, a policy, a running daemon), run `enforcer-probe` in a
//! workload cgroup to attempt a connection, and assert the kernel's verdict and the OCSF event the
//! daemon reports. Every resource is an RAII guard that cleans up on drop, panics included.
//!
//! ```no_run
//! use enforcer_tests::{Lab, Proto, events, require_privileges};
//!
//! if !require_privileges() {
//!     return;
//! }
//! let lab = Lab::builder()
//!     .workload("web")
//!     .policy("main.toml", r#"
//! [[workload]]
//! name = "web"
//! cgroup = "web"
//! labels = { segment = "web" }
//!
//! [[segment]]
//! name = "web-seg"
//! select = { segment = "web" }
//! "#)
//!     .start();
//! let _server = lab.listen(Proto::Tcp, lab.server4(), 80);
//! let outcome = lab.probe("web").tcp_connect(lab.server4(), 80);
//! outcome.assert_denied();
//! let ev = lab.daemon().wait_for_events(1, enforcer_tests::EVENT_TIMEOUT).remove(0);
//! events::assert_rule(&ev, "default-deny:web-seg");
//! ```
//!
//! See `tests/README.md` for how to add a test.

pub mod cgroup;
pub mod collector;
pub mod daemon;
pub mod events;
pub mod fleet;
pub mod instance;
pub mod lab;
pub mod metrics;
pub mod netns;
pub mod ocsf;
pub mod patience;
pub mod policy;
pub mod privileges;
pub mod probe;
pub mod scenarios;
pub mod tight_loop;

pub use cgroup::CgroupDir;
pub use daemon::{Daemon, DaemonArgs, EVENT_TIMEOUT, EarlyExit};
pub use fleet::{Fleet, FleetNode};
pub use instance::Instance;
pub use lab::{CLIENT_NODE, Lab, LabBuilder};
pub use netns::{NetNs, VethEnd, VethPair};
pub use policy::PolicyDir;
pub use privileges::require_privileges;
pub use probe::{Listener, Probe, ProbeOutcome, Proto, Stream};

/// A real rsyslogd on loopback, shared with the enforcer crate's sink tests.
#[path = "../../enforcer/tests/support/rsyslog.rs"]
pub mod rsyslog;
