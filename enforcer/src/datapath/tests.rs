//! The slot logic over the in-memory datapath: swaps, label syncs, adoption and drift repair,
//! without root.

use std::collections::BTreeMap;

use enforcer_common::{AddrValue, CgroupLabel, IdentityInfo};

use super::{
    Datapath, DatapathError, EntryKey, EntryValue, MemoryDatapath, PolicySlots, SlotImage,
};
use crate::{
    compile::{self, DesiredState},
    identity::{Identities, IdentityAllocator},
    policy::{Source, parse_sources},
};

const BASE: &str = r#"
[[node]]
name = "local"
addresses = ["10.0.0.1"]

[[workload]]
name = "web"
cgroup = "web/*"
labels = { tier = "web" }

[[workload]]
name = "db"
cgroup = "db/*"
labels = { tier = "db" }

[[segment]]
name = "web-tier"
select = { tier = "web" }

[[segment]]
name = "db-tier"
select = { tier = "db" }
"#;

fn state(extra: &str) -> DesiredState {
    let policy = parse_sources(&[Source {
        path: "p.toml".into(),
        text: format!("{BASE}{extra}"),
    }])
    .expect("valid policy");
    let identities =
        Identities::build(&policy, "local", &mut IdentityAllocator::default()).expect("identities");
    compile::compile(&policy, &identities)
        .expect("compiles")
        .state
}

fn allow_db() -> DesiredState {
    state("\n[[allow]]\nfrom = \"web-tier\"\nto = \"db-tier\"\nports = [\"tcp/5432\"]\n")
}

fn allow_web() -> DesiredState {
    state("\n[[allow]]\nfrom = \"db-tier\"\nto = \"web-tier\"\nports = [\"tcp/80\"]\n")
}

fn labels(ids: &[(u64, u32)]) -> BTreeMap<u64, CgroupLabel> {
    ids.iter()
        .map(|(cgroup, identity)| {
            (
                *cgroup,
                CgroupLabel {
                    identity: *identity,
                    flags: 0,
                },
            )
        })
        .collect()
}

fn slots() -> PolicySlots<MemoryDatapath> {
    PolicySlots::adopt(MemoryDatapath::default(), 8).expect("adopt")
}

/// What the kernel would decide with: the slot `ACTIVE_SLOT` names.
fn in_force(slots: &PolicySlots<MemoryDatapath>) -> SlotImage {
    let store = slots.store();
    store
        .read_slot(store.active_slot().expect("active"))
        .expect("read")
}

#[test]
fn apply_flips_to_a_verified_slot_and_keeps_the_last_good_one() {
    let mut slots = slots();
    let cgroups = labels(&[(10, 256)]);
    let first = slots.apply(&allow_db(), &cgroups).expect("apply");
    assert_eq!(first.generation, 1);
    let want_first = SlotImage::new(&allow_db(), &cgroups);
    assert_eq!(in_force(&slots).entries, want_first.entries);

    let second = slots.apply(&allow_web(), &cgroups).expect("apply");
    assert_eq!(second.generation, 2);
    assert_eq!(
        in_force(&slots).entries,
        SlotImage::new(&allow_web(), &cgroups).entries
    );
    // The slot that was in force is untouched: the last-known-good policy.
    let store = slots.store();
    let standby = store
        .read_slot(1 - store.active_slot().expect("active"))
        .expect("read");
    assert_eq!(standby.entries, want_first.entries);
    assert_eq!(standby.config.generation, 1);
    assert_eq!(slots.standby_generation(), 1);
}

#[test]
fn alternating_two_policies_writes_nothing_after_the_first_two() {
    let mut slots = slots();
    let cgroups = labels(&[(10, 256), (11, 257)]);
    slots.apply(&allow_db(), &cgroups).expect("apply");
    slots.apply(&allow_web(), &cgroups).expect("apply");
    for round in 0..10 {
        let state = if round % 2 == 0 {
            allow_db()
        } else {
            allow_web()
        };
        let applied = slots.apply(&state, &cgroups).expect("apply");
        assert_eq!(applied.written, 0, "round {round}");
        assert_eq!(
            in_force(&slots).entries,
            SlotImage::new(&state, &cgroups).entries
        );
    }
}

#[test]
fn a_write_failing_half_way_changes_nothing_in_force_and_restores_the_standby() {
    let mut slots = slots();
    let cgroups = labels(&[(10, 256)]);
    slots.apply(&allow_db(), &cgroups).expect("apply");
    slots.apply(&allow_web(), &cgroups).expect("apply");
    let before_force = in_force(&slots);
    let store = slots.store();
    let standby_slot = 1 - store.active_slot().expect("active");
    let before_standby = store.read_slot(standby_slot).expect("read");

    let third =
        state("\n[[allow]]\nfrom = \"web-tier\"\nto = \"db-tier\"\nports = [\"tcp/1-1000\"]\n");
    // Room for a couple of writes only, then every put fails (as a full map would); the
    // restore that follows needs no new room beyond what it deletes.
    slots.store_mut_for_tests().puts_left = Some(2);
    let error = slots.apply(&third, &cgroups).expect_err("must fail");
    assert!(matches!(error, DatapathError::Full { .. }), "{error}");
    assert_eq!(in_force(&slots), before_force);
    slots.store_mut_for_tests().puts_left = None;
    // Whatever the failed write left behind, a reconcile brings the standby back to the policy
    // it held, so a rollback still lands on a whole policy.
    slots.reconcile().expect("reconcile");
    assert_eq!(
        slots.store().read_slot(standby_slot).expect("read"),
        before_standby
    );
    let back = slots.rollback().expect("rollback");
    assert_eq!(back.generation, 1);
    assert_eq!(in_force(&slots), before_standby);
}

#[test]
fn rollback_needs_a_previous_policy() {
    let mut slots = slots();
    assert!(matches!(slots.rollback(), Err(DatapathError::NoStandby)));
    slots.apply(&allow_db(), &labels(&[])).expect("apply");
    assert!(matches!(slots.rollback(), Err(DatapathError::NoStandby)));
}

#[test]
fn adoption_keeps_what_the_store_holds_and_generations_keep_growing() {
    let mut slots = slots();
    let cgroups = labels(&[(10, 256)]);
    slots.apply(&allow_db(), &cgroups).expect("apply");
    slots.apply(&allow_web(), &cgroups).expect("apply");
    let store = slots.store().clone();
    let held = in_force(&slots);

    // A new daemon over the same (pinned) store.
    let mut adopted = PolicySlots::adopt(store, 8).expect("adopt");
    assert_eq!(in_force(&adopted), held);
    assert_eq!(adopted.generation(), 2);
    assert_eq!(adopted.standby_generation(), 1);
    assert_eq!(adopted.reconcile().expect("reconcile").total(), 0);
    let next = adopted.apply(&allow_db(), &cgroups).expect("apply");
    assert_eq!(next.generation, 3);
    assert_eq!(next.written, 0, "the standby already held this policy");
}

#[test]
fn label_sync_writes_only_the_difference_and_respects_capacity() {
    let mut slots = PolicySlots::adopt(MemoryDatapath::default(), 3).expect("adopt");
    slots
        .apply(&allow_db(), &labels(&[(10, 256), (11, 257)]))
        .expect("apply");
    let (changed, removed) = slots
        .label_cgroups(false, &labels(&[(10, 256), (12, 257)]))
        .expect("sync");
    assert_eq!((changed, removed), (1, 1));
    let error = slots
        .label_cgroups(
            false,
            &labels(&[(10, 256), (12, 257), (13, 256), (14, 256)]),
        )
        .expect_err("one does not fit");
    assert!(
        matches!(error, DatapathError::Full { unwritten: 1, flag, .. } if flag == "--max-cgroups")
    );
    assert_eq!(in_force(&slots).cgroup_count(), 3);
}

#[test]
fn drift_is_repaired_and_counted() {
    let mut slots = slots();
    let cgroups = labels(&[(10, 256)]);
    slots.apply(&allow_db(), &cgroups).expect("apply");
    let want = in_force(&slots);
    let active = slots.store().active_slot().expect("active");
    let store = slots.store_mut_for_tests();
    // One entry deleted, one changed, one added by hand.
    let (deleted, _) = want
        .entries
        .iter()
        .find(|(key, _)| matches!(key, EntryKey::Rule { .. } | EntryKey::RulePort(_)))
        .expect("a rule");
    store.delete(active, deleted).expect("delete");
    store
        .put(
            active,
            &EntryKey::Cgroup(10),
            &EntryValue::Cgroup(CgroupLabel {
                identity: 999,
                flags: 0,
            }),
        )
        .expect("put");
    store
        .put(
            active,
            &EntryKey::AddrExact([7; 16]),
            &EntryValue::Addr(AddrValue {
                identity: 2,
                flags: 0,
            }),
        )
        .expect("put");
    store
        .put(
            active,
            &EntryKey::Identity(4242),
            &EntryValue::Identity(IdentityInfo::default()),
        )
        .expect("put");
    store.set_active_slot(1 - active).expect("flip");

    let repairs = slots.reconcile().expect("reconcile");
    assert_eq!(repairs.total(), 5, "{repairs:?}");
    assert_eq!(repairs.configs, 1);
    assert_eq!(in_force(&slots), want);
    assert_eq!(slots.reconcile().expect("reconcile").total(), 0);
}

#[test]
fn a_write_gone_astray_is_read_back_and_written_again() {
    let mut slots = slots();
    let cgroups = labels(&[(10, 256)]);
    slots.apply(&allow_db(), &cgroups).expect("apply");
    slots.store_mut_for_tests().puts_lost = 1;
    slots.apply(&allow_web(), &cgroups).expect("apply");
    assert_eq!(slots.store().puts_lost, 0, "the lost put was made");
    assert_eq!(
        in_force(&slots).entries,
        SlotImage::new(&allow_web(), &cgroups).entries
    );
}

#[test]
fn writes_that_never_land_refuse_the_apply_and_keep_the_policy_in_force() {
    let mut slots = slots();
    let cgroups = labels(&[(10, 256)]);
    slots.apply(&allow_db(), &cgroups).expect("apply");
    let before = in_force(&slots);
    slots.store_mut_for_tests().puts_lost = usize::MAX;
    let error = slots
        .apply(&allow_web(), &cgroups)
        .expect_err("nothing lands");
    assert!(matches!(error, DatapathError::Verify { .. }), "{error}");
    assert_eq!(in_force(&slots), before);
}

#[test]
fn a_single_port_rule_written_into_the_trie_by_hand_is_removed() {
    let mut slots = slots();
    slots
        .apply(&allow_db(), &labels(&[(10, 256)]))
        .expect("apply");
    let want = in_force(&slots);
    let (port_key, value) = want
        .entries
        .iter()
        .find_map(|(key, value)| match key {
            EntryKey::RulePort(data) => Some((*data, *value)),
            _ => None,
        })
        .expect("a single-port rule");
    let active = slots.store().active_slot().expect("active");
    // The kernel would find this in the trie whenever the hash misses: it is drift, not policy.
    let in_trie = EntryKey::Rule {
        bits: enforcer_common::RULE_EXACT_BITS,
        data: port_key,
    };
    slots
        .store_mut_for_tests()
        .put(active, &in_trie, &value)
        .expect("put");
    assert_eq!(slots.reconcile().expect("reconcile").total(), 1);
    assert_eq!(in_force(&slots), want);
}
