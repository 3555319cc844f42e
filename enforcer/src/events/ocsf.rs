//! OCSF 1.1.0 Network Activity rendering of [`FlowRecord`](super::FlowRecord)s.
