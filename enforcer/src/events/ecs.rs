//! Elastic Common Schema rendering (placeholder until the ECS sink lands).

use serde_json::{Value, json};

use super::{Report, ocsf::Product};

/// Renders any report as an ECS document.
#[must_use]
pub fn render_report(report: &Report, product: &Product) -> Value {
    let _ = (report, product);
    json!({})
}
