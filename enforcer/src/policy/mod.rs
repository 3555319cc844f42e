//! Segment policy: the model of POLICY.md and its parser. Pure: reads files, never touches the kernel.
#![forbid(unsafe_code)]

mod model;

pub use model::*;
