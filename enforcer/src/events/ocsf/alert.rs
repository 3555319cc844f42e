//! Lateral-movement alerts in OCSF (placeholder until detection lands: renders the bare class).

use serde_json::{Value, json};

use super::{CATEGORY_UID, CLASS_UID, Product, metadata, millis};
use crate::events::LateralMovementAlert;

/// Renders one alert as an OCSF Network Activity event of severity 4.
#[must_use]
pub fn render_alert(alert: &LateralMovementAlert, product: &Product) -> Value {
    json!({
        "class_uid": CLASS_UID,
        "category_uid": CATEGORY_UID,
        "time": millis(alert.time),
        "severity_id": 4,
        "metadata": metadata(product, &super::PROFILES),
    })
}
