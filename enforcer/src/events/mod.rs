//! Kernel events: decoded from the ring buffer, enriched with the context of the policy that
//! decided, rendered for sinks.

mod enrich;
pub mod ocsf;
mod record;

pub use self::{
    enrich::{DecodeError, Enricher, PolicyContext, decode},
    record::*,
};
