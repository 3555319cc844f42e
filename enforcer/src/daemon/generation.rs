//! A policy as the reconciler handles it: compiled for this node ([`Candidate`]), then applied as
//! a generation it can explain ([`Loaded`]).

use std::{
    net::IpAddr,
    sync::Arc,
    time::{SystemTime, UNIX_EPOCH},
};

use super::{DaemonError, RunConfig};
use crate::{
    compile::{self, CompiledPolicy},
    events::PolicyContext,
    identity::{Identities, IdentityAllocator},
    policy::{Policy, Source},
};

/// A policy generation the daemon can explain: what compiled into a slot.
#[derive(Debug)]
pub struct Loaded {
    pub generation: u32,
    pub applied_at: u64,
    /// The compiled policy and its identities, shared with the event pipeline.
    pub context: Arc<PolicyContext>,
    /// This node's addresses as the policy declares them: the last-resort source of an event.
    pub node_addresses: Vec<IpAddr>,
}

/// A policy parsed, numbered and compiled, not yet applied.
pub struct Candidate {
    pub sources: Vec<Source>,
    pub identities: Identities,
    pub compiled: CompiledPolicy,
    pub allocator: IdentityAllocator,
    node_addresses: Vec<IpAddr>,
}

pub fn now_seconds() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// Numbers and compiles `policy` for this node, checking it fits the maps.
///
/// # Errors
/// When the policy does not fit, or numbering runs out.
pub fn candidate(
    policy: &Policy,
    sources: Vec<Source>,
    config: &RunConfig,
    allocator: &IdentityAllocator,
) -> Result<Candidate, DaemonError> {
    let mut allocator = allocator.clone();
    let identities = Identities::build(policy, &config.node, &mut allocator)?;
    let compiled = compile::compile(policy, &identities)?;
    compiled.state.check_fits(&config.limits)?;
    let node_addresses = policy
        .nodes
        .iter()
        .find(|n| n.name == config.node)
        .map(|n| n.addresses.clone())
        .unwrap_or_default();
    Ok(Candidate {
        sources,
        identities,
        compiled,
        allocator,
        node_addresses,
    })
}

impl Candidate {
    /// The generation record and explanation of this policy once applied as `generation`.
    pub fn loaded(self, generation: u32, applied_at: u64) -> Loaded {
        let context = Arc::new(PolicyContext {
            compiled: self.compiled,
            identities: self.identities,
        });
        Loaded {
            generation,
            applied_at,
            context,
            node_addresses: self.node_addresses,
        }
    }
}
