//! The example policy in `policies/` compiles to the checked-in map image. A change to the
//! compiler or to the examples shows up here as a readable diff; regenerate deliberately with
//! `UPDATE_GOLDEN=1 cargo test -p enforcer --test golden`.

use std::{fs, path::PathBuf};

use enforcer::{
    compile::compile,
    identity::{Identities, IdentityAllocator},
    policy::load_dir,
};

fn workspace() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the enforcer crate sits in the workspace")
        .to_owned()
}

#[test]
fn example_policy_compiles_to_the_checked_in_image() {
    let dir = workspace().join("policies");
    let policy = load_dir(&dir).unwrap_or_else(|errors| panic!("policies/ is invalid:\n{errors}"));
    for node in ["app-1", "db-1"] {
        let identities = Identities::build(&policy, node, &mut IdentityAllocator::default())
            .expect("identities");
        let compiled = compile(&policy, &identities).expect("compiles");
        let image = compiled.render(&identities);
        let golden = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("tests/golden")
            .join(format!("policies-{node}.txt"));
        if std::env::var_os("UPDATE_GOLDEN").is_some() {
            fs::write(&golden, &image).expect("write golden image");
            continue;
        }
        let expected = fs::read_to_string(&golden)
            .unwrap_or_else(|e| panic!("{}: {e} (run with UPDATE_GOLDEN=1)", golden.display()));
        if image != expected {
            let first = image
                .lines()
                .zip(expected.lines())
                .position(|(a, b)| a != b)
                .unwrap_or_else(|| image.lines().count().min(expected.lines().count()));
            panic!(
                "{} differs from the compiled image first at line {}:\n  compiled: {:?}\n  golden:   {:?}\n(regenerate with UPDATE_GOLDEN=1 if the change is intended)",
                golden.display(),
                first + 1,
                image.lines().nth(first),
                expected.lines().nth(first)
            );
        }
    }
}
