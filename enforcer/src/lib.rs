//! # enforcer
//!
//! An eBPF host microsegmentation enforcer. Segment policy on disk becomes BPF map entries; kernel
//! programs on cgroup hooks judge every connection a local process opens; denials and audits come
//! out as OCSF events.
//!
//! The modules read as the data flow:
//!
//! ```text
//! policies/*.toml ─► policy ─► identity ─► compile ─► DesiredState ─► datapath ─► kernel maps
//!                    (parse,   (labels →   (pure:      (plain keys     (aya: load,    │
//!                    validate)  numeric ids) no I/O)    and values)     attach, sync) ▼
//!                                                                    cgroup/connect4,6 sendmsg4,6
//!                                                                                  │ ring buffer
//!                                                   sinks ◄─ events (decode, enrich) ◄┘
//! ```
//!
//! `policy`, `identity` and `compile` are pure and never touch aya; `datapath` is the only module
//! that does. `cli` and `daemon` sit at the edge.

pub mod cli;
pub mod compile;
pub mod config;
/// The local control socket the CLI verbs (`reload`, `rollback`, `reconcile`, `status`) use.
pub mod control;
pub mod daemon;
pub mod datapath;
pub mod events;
/// Facts the kernel tells over netlink: network namespaces, local addresses, route sources.
pub mod host;
pub mod identity;
pub mod metrics;
pub mod policy;
pub mod sinks;
