//! Kernel events: read from the ring buffer, decode, enrich with policy context.

pub mod ocsf;
mod record;

pub use record::*;
