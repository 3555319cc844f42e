//! Policy rejections as failed ECS configuration changes.

use serde_json::{Map, Value, json};

use super::{MODULE, Product, Related, base_document};
use crate::events::PolicyRejection;

/// OCSF's severity of a rejection (Medium): the node keeps enforcing, but not the policy its
/// operator wrote.
const REJECTION_SEVERITY: u32 = 3;

/// Renders a rejection: `event.category` ["configuration"], `event.type` ["change"] with
/// `event.outcome` "failure" (the policy on disk did not take effect). Every problem is in
/// `error.message`, one a line, and as a list under `enforcer.policy.errors`.
pub(super) fn render_rejection(rejection: &PolicyRejection, product: &Product) -> Value {
    let mut policy = Map::new();
    policy.insert("dir".to_owned(), json!(rejection.policy_dir));
    policy.insert("origin".to_owned(), json!(rejection.origin));
    policy.insert("errors".to_owned(), json!(rejection.errors));
    if let Some(version) = &rejection.in_force_version {
        policy.insert("in_force_version".to_owned(), json!(version));
    }
    policy.insert(
        "in_force_generation".to_owned(),
        json!(rejection.in_force_generation),
    );

    let mut document = base_document(rejection.time, message(rejection), &rejection.node, product);
    document.insert(
        "event".to_owned(),
        json!({
            "kind": "event",
            "category": ["configuration"],
            "type": ["change"],
            "action": "policy-rejected",
            "outcome": "failure",
            "severity": REJECTION_SEVERITY,
            "dataset": "enforcer.policy",
            "module": MODULE,
        }),
    );
    if !rejection.errors.is_empty() {
        document.insert(
            "error".to_owned(),
            json!({ "message": rejection.errors.join("\n") }),
        );
    }
    document.insert(
        "related".to_owned(),
        Related::new(&rejection.node).into_value(),
    );
    document.insert("enforcer".to_owned(), json!({ "policy": policy }));
    Value::Object(document)
}

/// `policy in DIR rejected (ORIGIN): N errors; ` and what stays in force.
fn message(rejection: &PolicyRejection) -> String {
    let count = rejection.errors.len();
    let errors = if count == 1 { "error" } else { "errors" };
    let in_force = match (&rejection.in_force_version, rejection.in_force_generation) {
        (Some(version), generation) => {
            format!("version {version} (generation {generation}) stays in force")
        }
        (None, 0) => "no policy is in force".to_owned(),
        (None, generation) => format!("generation {generation} stays in force, version unknown"),
    };
    format!(
        "policy in {} rejected ({}): {count} {errors}; {in_force}",
        rejection.policy_dir, rejection.origin
    )
}
