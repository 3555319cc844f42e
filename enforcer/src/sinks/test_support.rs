//! The reports and parsers of the sink tests, shared with the integration tests through
//! `tests/support/` (one copy of each, included here).

pub mod reports {
    use crate::{
        events::{
            AlertTarget, FlowEndpoint, FlowNode, FlowProcess, FlowRecord, FlowRule, FlowWorkload,
            LateralMovementAlert, Layer, NETWORK_SERVICE_DISCOVERY, PatternKind, PolicyRejection,
            Report, Verdict,
        },
        policy::{Labels, Mode},
    };

    include!("../../tests/support/reports.rs");
}

pub mod parse {
    include!("../../tests/support/parse.rs");
}
