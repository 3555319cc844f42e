//! Kernel events: decoded from the ring buffer, enriched with the context of the policy that
//! decided, rendered for sinks.

mod aggregate;
mod detect;
pub mod ecs;
mod enrich;
pub mod ocsf;
mod process;
mod record;

pub use self::{
    aggregate::Aggregator,
    detect::{Detector, DetectorConfig},
    enrich::{DecodeError, Enricher, PolicyContext, decode},
    record::*,
};
