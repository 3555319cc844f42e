//! Kernel events: decoded from the ring buffer, enriched with the context of the policy that
//! decided, rendered for sinks.

mod aggregate;
pub mod ecs;
mod enrich;
pub mod ocsf;
mod record;

pub use self::{
    aggregate::Aggregator,
    enrich::{DecodeError, Enricher, PolicyContext, decode},
    record::*,
};
