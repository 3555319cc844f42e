//! The shared decision over compiled images: real policies (the repository's `policies/` and
//! small inline ones), judged as the kernel judges them.
//!
//! Here the fixtures: a policy compiled for one node ([`Case`]) and the inline policies' shared
//! tables. `rules` judges single flows, `reference` compares the image with the policy as
//! POLICY.md states it and the lookups with a plain scan.

mod reference;
mod rules;

use std::{net::IpAddr, path::Path};

use enforcer_common::{
    VERDICT_ALLOW, VERDICT_DENY, counter,
    decide::{Decision, Destination, destination},
    reason,
};

use super::decide_flow;
use crate::{
    compile::{CompiledPolicy, DesiredState, compile},
    identity::{Identities, IdentityAllocator},
    policy::{Policy, Source, load_dir, parse_sources},
};

const UDPLITE: u8 = 136;
const SCTP: u8 = 132;

/// The tables most inline policies start with: the local node, a `finance` node `db` at 10.0.0.2
/// and a `web` workload, each the only member of its segment (`finance`, `web-tier`), with
/// `settings` holding `$settings` after an empty failsafe.
macro_rules! finance_and_web {
    ($settings:literal) => {
        concat!(
            r#"
[settings]
failsafe_inbound = []
"#,
            $settings,
            r#"
[[node]]
name = "local"

[[node]]
name = "db"
addresses = ["10.0.0.2"]
labels = { segment = "finance" }

[[workload]]
name = "web"
cgroup = "web"
labels = { segment = "web" }

[[segment]]
name = "finance"
select = { segment = "finance" }

[[segment]]
name = "web-tier"
select = { segment = "web" }
"#
        )
    };
}
use finance_and_web;

/// A policy compiled for one node, with what names its ids.
struct Case {
    policy: Policy,
    ids: Identities,
    compiled: CompiledPolicy,
}

impl Case {
    fn new(policy: Policy, node: &str) -> Self {
        let ids = Identities::build(&policy, node, &mut IdentityAllocator::default())
            .expect("identities");
        let compiled = compile(&policy, &ids).expect("compiles");
        Self {
            policy,
            ids,
            compiled,
        }
    }

    /// The repository's example policy, `policies/`, as `node` compiles it.
    fn example(node: &str) -> Self {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../policies");
        let policy = load_dir(&dir).unwrap_or_else(|errors| panic!("policies/: {errors}"));
        Self::new(policy, node)
    }

    fn inline(text: &str, node: &str) -> Self {
        let policy = parse_sources(&[Source {
            path: "p.toml".into(),
            text: text.to_owned(),
        }])
        .unwrap_or_else(|errors| panic!("{errors}\n{text}"));
        Self::new(policy, node)
    }

    fn state(&self) -> &DesiredState {
        &self.compiled.state
    }

    fn id(&self, name: &str) -> u32 {
        self.ids
            .iter()
            .find(|i| i.name == name)
            .unwrap_or_else(|| panic!("no identity {name}"))
            .id
    }

    /// The position of the first of `names` that is `name`, as a `rule_id`.
    fn index_of<'a>(names: impl IntoIterator<Item = &'a str>, what: &str, name: &str) -> u32 {
        let index = names
            .into_iter()
            .position(|n| n == name)
            .unwrap_or_else(|| panic!("no {what} {name}"));
        u32::try_from(index).expect("small")
    }

    /// The `rule_id` of the rule called `name`.
    fn rule(&self, name: &str) -> u32 {
        let names = self.compiled.rules.iter().map(|r| r.name.as_str());
        Self::index_of(names, "rule", name)
    }

    /// The `rule_id` of a default deny by the segment called `name`.
    fn segment(&self, name: &str) -> u32 {
        let names = self.compiled.segments.iter().map(String::as_str);
        Self::index_of(names, "segment", name)
    }

    /// A connection from the identity `src` to the address `dst`, a local destination being
    /// received by a socket of `owner`.
    fn flow(&self, src: &str, dst: &str, owner: Option<&str>, proto: u8, port: u16) -> Decision {
        let addr: IpAddr = dst.parse().expect("address");
        decide_flow(
            self.state(),
            self.id(src),
            addr,
            owner.map(|o| self.id(o)),
            proto,
            port,
        )
    }

    /// [`Case::flow`] with no receiving socket: to a remote address, or to the node itself.
    fn to(&self, src: &str, dst: &str, proto: u8, port: u16) -> Decision {
        self.flow(src, dst, None, proto, port)
    }

    fn resolve(&self, addr: &str) -> Destination {
        let addr: IpAddr = addr.parse().expect("address");
        destination(self.state(), &super::mapped(addr))
    }

    #[track_caller]
    fn decided(decision: Decision, expected: (u8, u8, u32)) {
        assert_eq!(
            (decision.verdict, decision.reason, decision.rule_id),
            expected,
            "{decision:?}"
        );
    }

    #[track_caller]
    fn allowed_by(&self, decision: Decision, rule: &str) {
        Self::decided(decision, (VERDICT_ALLOW, reason::RULE, self.rule(rule)));
    }

    #[track_caller]
    fn denied_by(&self, decision: Decision, rule: &str) {
        Self::decided(decision, (VERDICT_DENY, reason::RULE, self.rule(rule)));
    }

    #[track_caller]
    fn isolated_by(&self, decision: Decision, verdict: u8, segment: &str) {
        let expected = (verdict, reason::DEFAULT_DENY, self.segment(segment));
        Self::decided(decision, expected);
    }

    /// [`Case::isolated_by`], denied.
    #[track_caller]
    fn isolated(&self, decision: Decision, segment: &str) {
        self.isolated_by(decision, VERDICT_DENY, segment);
    }
}

/// Allowed at step 5: neither end is segmented.
#[track_caller]
fn out_of_scope(decision: Decision) {
    Case::decided(decision, (VERDICT_ALLOW, reason::RULE, 0));
    assert_eq!(decision.extra_counter, counter::COUNT);
}
