//! Policy directories on disk, and the example policy of the repository.

use std::{fs, net::IpAddr, os::unix::fs::symlink, path::Path};

use tempfile::TempDir;

use super::*;

fn write(dir: &Path, rel: &str, text: &str) {
    let path = dir.join(rel);
    fs::create_dir_all(path.parent().unwrap()).unwrap();
    fs::write(path, text).unwrap();
}

fn error_lines(errors: &PolicyErrors) -> Vec<String> {
    errors.iter().map(ToString::to_string).collect()
}

#[test]
fn reads_every_toml_file_below_the_directory_in_path_order() {
    let dir = TempDir::new().unwrap();
    write(
        dir.path(),
        "z.toml",
        "[[segment]]\nname = \"z\"\nselect = { s = \"z\" }\n",
    );
    write(
        dir.path(),
        "a/b/c.toml",
        "[[segment]]\nname = \"c\"\nselect = { s = \"c\" }\n",
    );
    write(
        dir.path(),
        "a.toml",
        "[[segment]]\nname = \"a\"\nselect = { s = \"a\" }\n",
    );
    write(dir.path(), "README.md", "not policy");
    write(dir.path(), "notes.toml.bak", "not policy");
    // Hidden entries are skipped: editor lock files, config-map `..data` mounts.
    write(dir.path(), ".hidden.toml", "not = \"policy\"");
    write(
        dir.path(),
        "..data/a.toml",
        "[[segment]]\nname = \"a\"\nselect = { s = \"a\" }\n",
    );
    let policy = load_dir(dir.path()).unwrap_or_else(|e| panic!("{e}"));
    let seen: Vec<(String, String)> = policy
        .segments
        .iter()
        .map(|s| (s.name.clone(), s.location.file.display().to_string()))
        .collect();
    assert_eq!(
        seen,
        [
            ("a".into(), "a.toml".into()),
            ("c".into(), "a/b/c.toml".into()),
            ("z".into(), "z.toml".into()),
        ]
    );
}

#[test]
fn follows_symbolic_links_and_reports_loops() {
    let dir = TempDir::new().unwrap();
    let elsewhere = TempDir::new().unwrap();
    write(elsewhere.path(), "shared.toml", "[[node]]\nname = \"n\"\n");
    symlink(
        elsewhere.path().join("shared.toml"),
        dir.path().join("linked.toml"),
    )
    .unwrap();
    let policy = load_dir(dir.path()).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(policy.nodes[0].location.file, Path::new("linked.toml"));

    fs::create_dir(dir.path().join("sub")).unwrap();
    symlink("..", dir.path().join("sub/up")).unwrap();
    let errors = load_dir(dir.path()).unwrap_err();
    assert_eq!(
        error_lines(&errors),
        ["sub/up: symbolic link back into its own parent directory"]
    );
}

#[test]
fn an_empty_directory_is_an_error() {
    let dir = TempDir::new().unwrap();
    write(dir.path(), "README.md", "");
    let errors = load_dir(dir.path()).unwrap_err();
    assert_eq!(
        error_lines(&errors),
        [format!(
            "{}: no *.toml file below this directory",
            dir.path().display()
        )]
    );
    assert!(errors.as_slice()[0].location().is_none());
}

#[test]
fn a_missing_directory_is_an_error() {
    let dir = TempDir::new().unwrap();
    let missing = dir.path().join("missing");
    let errors = load_dir(&missing).unwrap_err();
    let [error] = errors.as_slice() else {
        panic!("{errors}")
    };
    assert!(
        matches!(error.kind(), PolicyErrorKind::Read { .. }),
        "{error}"
    );
    assert_eq!(error.file(), Some(missing.as_path()));
    assert!(
        error
            .to_string()
            .starts_with(&format!("{}: cannot read: ", missing.display()))
    );
}

#[test]
fn unreadable_files_are_named_and_the_rest_still_checked() {
    let dir = TempDir::new().unwrap();
    symlink("nowhere.toml", dir.path().join("dangling.toml")).unwrap();
    fs::write(dir.path().join("latin1.toml"), b"# caf\xe9\n").unwrap();
    write(
        dir.path(),
        "rules.toml",
        "[[allow]]\nfrom = \"web\"\nto = \"@any\"\nports = [\"tcp/0\"]\n",
    );
    let errors = load_dir(dir.path()).unwrap_err();
    let lines = error_lines(&errors);
    assert_eq!(lines.len(), 3, "{lines:#?}");
    assert!(
        lines[0].starts_with("dangling.toml: cannot read: "),
        "{lines:#?}"
    );
    assert!(
        lines[1].starts_with("latin1.toml: cannot read: "),
        "{lines:#?}"
    );
    assert_eq!(errors.as_slice()[0].location(), None);
    assert_eq!(errors.as_slice()[1].file(), Some(Path::new("latin1.toml")));
    // `web` may be defined in an unreadable file: not reported as undefined; the port still is.
    assert!(
        lines[2].starts_with("rules.toml:4:10: bad port term"),
        "{lines:#?}"
    );
}

#[test]
fn load_dir_and_parse_sources_agree() {
    let dir = TempDir::new().unwrap();
    write(dir.path(), "b/x.toml", "[[node]]\nname = \"x\"\n");
    write(dir.path(), "a.toml", "[settings]\nmode = \"audit\"\n");
    let loaded = load_dir(dir.path()).unwrap();
    let parsed = parse_sources(&[
        source("a.toml", "[settings]\nmode = \"audit\"\n"),
        source("b/x.toml", "[[node]]\nname = \"x\"\n"),
    ])
    .unwrap();
    assert_eq!(loaded, parsed);
}

/// The repository's example policy: the demo and the golden tests rely on these names.
#[test]
fn the_example_policy_loads() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../policies");
    let policy = load_dir(&dir).unwrap_or_else(|errors| panic!("policies/ is invalid:\n{errors}"));

    assert_eq!(policy.settings.mode, Mode::Enforce);
    assert_eq!(policy.settings.failsafe_inbound, [tcp(22, 22)]);
    let names = |names: Vec<&str>| names.join(" ");
    assert_eq!(
        names(policy.nodes.iter().map(|n| n.name.as_str()).collect()),
        "app-1 db-1 jump-1 mon-1"
    );
    assert_eq!(
        names(policy.peers.iter().map(|n| n.name.as_str()).collect()),
        "corp-vpn vpn-admins payments-provider"
    );
    assert_eq!(
        names(policy.segments.iter().map(|n| n.name.as_str()).collect()),
        "web-tier api-tier finance dev jump monitoring"
    );
    let monitoring = policy
        .segments
        .iter()
        .find(|s| s.name == "monitoring")
        .unwrap();
    assert_eq!(monitoring.mode, Some(Mode::Audit));
    let db = policy.nodes.iter().find(|n| n.name == "db-1").unwrap();
    let addresses: Vec<IpAddr> = ["10.10.3.11", "fd00:10:3::11"]
        .iter()
        .map(|a| a.parse().unwrap())
        .collect();
    assert_eq!(db.addresses, addresses);
    assert_eq!(
        db.labels.get("segment").map(String::as_str),
        Some("finance")
    );

    let workloads: Vec<(&str, &str, &str)> = policy
        .workloads
        .iter()
        .map(|w| {
            let segment = w.labels.get("segment").map_or("", String::as_str);
            (w.name.as_str(), w.cgroup.as_str(), segment)
        })
        .collect();
    assert_eq!(
        workloads,
        [
            ("web", "system.slice/nginx.service", "web"),
            ("api", "system.slice/api.service", "api"),
            ("ledger", "system.slice/ledger.service", "finance"),
            ("dev-shell", "user.slice/**", "dev"),
            (
                "node-exporter",
                "system.slice/node-exporter.service",
                "monitoring"
            ),
        ]
    );

    let segment = |name: &str| {
        Endpoint::Segment(policy.segments.iter().position(|s| s.name == name).unwrap())
    };
    let rule = |name: &str| {
        policy
            .rules
            .iter()
            .find(|r| r.name.as_deref() == Some(name))
            .unwrap_or_else(|| panic!("no rule {name}"))
    };
    let web_never_finance = rule("web-never-finance");
    assert_eq!(web_never_finance.action, Action::Deny);
    assert_eq!(web_never_finance.from, segment("web-tier"));
    assert_eq!(web_never_finance.to, segment("finance"));
    assert_eq!(web_never_finance.ports, [PortTerm::Any]);
    assert_eq!(rule("dev-never-finance").from, segment("dev"));
    assert_eq!(rule("world-to-web").ports, [tcp(80, 80), tcp(443, 443)]);
    assert_eq!(
        rule("api-to-finance").ports,
        [tcp(5432, 5432), tcp(8443, 8443)]
    );
    assert_eq!(
        rule("api-to-payments").to,
        Endpoint::Selector(Selector([("zone".into(), vec!["partner".into()])].into()))
    );
    assert_eq!(
        rule("admins-to-jump").from,
        Endpoint::Selector(Selector([("role".into(), vec!["admin".into()])].into()))
    );
    assert_eq!(rule("dns").ports, [udp(53, 53)]);
    assert_eq!(rule("dns").from, Endpoint::Entity(Entity::Any));
    assert_eq!(rule("monitoring-scrape").ports, [tcp(9100, 9100)]);
    assert_eq!(rule("jump-ssh").to, Endpoint::Entity(Entity::Any));
    assert_eq!(rule("web-to-api").ports, [tcp(8080, 8080)]);
    assert!(
        policy
            .rules
            .iter()
            .all(|r| r.description.is_some() && r.name.is_some())
    );
    assert_eq!(policy.rules.len(), 10);
}
