use super::*;

fn parse(text: &str) -> Config {
    Config::parse(text, "c.yaml").unwrap()
}

fn err(text: &str) -> String {
    Config::parse(text, "c.yaml").unwrap_err().to_string()
}

fn vol<'a>(c: &'a Config, name: &str) -> &'a Volume {
    c.listed().find(|v| v.name == name).unwrap()
}

#[test]
fn minimal_config_with_defaults() {
    let c = parse("archive: /srv/x\nvolumes:\n  - pool: rbd\n    image: vm1\n  - name: other\n    pool: rbd\n    image: vm2\n");
    assert_eq!(c.ceph.id, "admin");
    assert_eq!(c.ceph.conf, PathBuf::from("/etc/ceph/ceph.conf"));
    assert_eq!(c.fleet.parallel, 2);
    assert!(c.fleet.catch_up);
    let v = vol(&c, "vm1");
    assert!(v.settings.schedule.is_none());
    assert_eq!(v.settings.retries, 3);
    assert_eq!(v.settings.hooks.timeout, DEFAULT_HOOK_TIMEOUT);
    assert_eq!(vol(&c, "other").source_name(), "rbd/vm2");
}

#[test]
fn volumes_inherit_and_override_defaults() {
    let c = parse(
        r#"archive: /a
defaults:
  schedule: "0 1 * * *"
  spread: 2h
  parallel: 4
  bandwidth: 100MiB
  total-bandwidth: 1GiB
  full-every: 30d
  hooks:
    pre: "echo freeze"
    post: "echo thaw"
    timeout: 30s
volumes:
  - pool: rbd
    image: vm1
  - pool: rbd
    image: vm2
    schedule: "30 3 * * 0"
    bandwidth: 10MiB
    full-every: "50%"
    whole-object: true
    hooks: {}
  - pool: ssd
    include: ["db-*"]
    exclude: ["*-tmp"]
    name: "{pool}-{image}"
    full-every: 14
"#,
    );
    assert_eq!(c.fleet.parallel, 4);
    assert_eq!(c.fleet.total_bandwidth, Some(1 << 30));
    let a = &vol(&c, "vm1").settings;
    assert_eq!(a.schedule.as_ref().unwrap().pattern(), "0 1 * * *");
    assert_eq!(a.spread.as_secs(), 7200);
    assert_eq!(a.bandwidth, Some(100 << 20));
    assert_eq!(
        a.full_every,
        Some(FullEvery::Age(Duration::from_secs(30 * 86_400)))
    );
    assert_eq!(a.hooks.pre.as_deref(), Some("echo freeze"));
    assert_eq!(a.hooks.timeout.as_secs(), 30);
    let b = &vol(&c, "vm2").settings;
    assert_eq!(b.schedule.as_ref().unwrap().pattern(), "30 3 * * 0");
    assert_eq!(b.bandwidth, Some(10 << 20));
    assert_eq!(b.full_every, Some(FullEvery::Ratio(0.5)));
    assert!(b.whole_object);
    assert_eq!(b.hooks.pre, None, "hooks: {{}} replaces the default hooks");
    let Entry::Pool(sel) = &c.entries[2] else {
        panic!("selection expected")
    };
    assert_eq!(sel.settings.full_every, Some(FullEvery::Deltas(14)));
    assert_eq!(sel.settings.spread.as_secs(), 7200);
}

#[test]
fn selections_resolve_with_include_exclude_and_listed_images_win() {
    let c = parse(
        r#"archive: /a
volumes:
  - pool: rbd
    image: vm-2
    name: special
  - pool: rbd
    include: ["vm-*", "web"]
    exclude: ["*-tmp"]
  - pool: gone
    include: ["*"]
  - pool: other
    include: ["vm-1"]
"#,
    );
    let mut lister = |pool: &str| -> crate::error::Result<Vec<String>> {
        match pool {
            "rbd" => Ok(vec![
                "web".into(),
                "vm-1".into(),
                "vm-2".into(),
                "vm-3-tmp".into(),
                "db".into(),
            ]),
            "other" => Ok(vec!["vm-1".into()]),
            _ => Err(Error::Invalid("no such pool".into())),
        }
    };
    let r = c.resolve(&mut lister);
    let names: Vec<_> = r
        .volumes
        .iter()
        .map(|v| (v.name.as_str(), v.source_name()))
        .collect();
    assert_eq!(
        names,
        [
            ("special", "rbd/vm-2".to_string()),
            ("vm-1", "rbd/vm-1".into()),
            ("web", "rbd/web".into())
        ]
    );
    assert_eq!(r.unresolved.len(), 2, "{:?}", r.unresolved);
    assert!(r.unresolved[0].error.contains("cannot list pool gone"));
    assert_eq!(r.unresolved[1].name, "vm-1");
    assert!(
        r.unresolved[1].error.contains("same volume name"),
        "{}",
        r.unresolved[1].error
    );
}

#[test]
fn errors_name_file_line_and_key() {
    let e = err("archive: /a\nvolumes:\n  - pool: rbd\n    image: vm1\n    colour: red\n");
    assert!(e.starts_with("c.yaml:5:"), "{e}");
    assert!(e.contains("colour"), "{e}");
    let e = err("archive: /a\nvolumes:\n  - pool: rbd\n");
    assert!(e.starts_with("c.yaml:3:") && e.contains("image"), "{e}");
    let e = err("volumes: []\n");
    assert!(e.contains("archive"), "{e}");
    let e = err("archive: /a\nvolumes:\n  - pool: rbd\n    image: a\n  - pool: rbd\n    image: b\n    name: a\n");
    assert!(
        e.starts_with("c.yaml:7:") && e.contains("duplicate volume name"),
        "{e}"
    );
    let e = err("archive: /a\nvolumes:\n  - pool: rbd\n    image: a\n    name: ../x\n");
    assert!(
        e.starts_with("c.yaml:5:") && e.contains("volumes[0].name"),
        "{e}"
    );
    let e = err("archive: /a\nvolumes:\n  - pool: rbd\n    image: a\n  - pool: rbd\n    image: a\n    name: b\n");
    assert!(e.contains("already listed"), "{e}");
}

#[test]
fn bad_values_are_reported_at_their_line() {
    let cases = [
        (
            "defaults:\n  schedule: \"0 25 * * *\"\n",
            3,
            "defaults.schedule",
        ),
        ("defaults:\n  spread: 2 hours\n", 3, "defaults.spread"),
        ("defaults:\n  parallel: 0\n", 3, "defaults.parallel"),
        (
            "defaults:\n  total-bandwidth: fast\n",
            3,
            "defaults.total-bandwidth",
        ),
        (
            "defaults:\n  full-every: sometimes\n",
            3,
            "defaults.full-every",
        ),
        (
            "defaults:\n  hooks:\n    pre: x\n    timeout: 5\n",
            5,
            "defaults.hooks.timeout",
        ),
        // Ranges: limits added up in the worker must never overflow.
        (
            "defaults:\n  hooks:\n    pre: x\n    timeout: 0s\n",
            5,
            "defaults.hooks.timeout",
        ),
        (
            "defaults:\n  hooks:\n    pre: x\n    timeout: 99999999999w\n",
            5,
            "defaults.hooks.timeout",
        ),
        (
            "defaults:\n  stall-timeout: 8d\n",
            3,
            "defaults.stall-timeout",
        ),
        ("ceph:\n  timeout: 0\n", 3, "ceph.timeout"),
        (
            "ceph:\n  timeout: 18446744073709551615\n",
            3,
            "ceph.timeout",
        ),
    ];
    for (defaults, line, key) in cases {
        let e = err(&format!(
            "archive: /a\n{defaults}volumes:\n  - pool: rbd\n    image: a\n"
        ));
        assert!(
            e.starts_with(&format!("c.yaml:{line}: {key}:")),
            "{key}: {e}"
        );
    }
    let c = parse("ceph:\n  timeout: 3600\narchive: /a\ndefaults:\n  stall-timeout: 7d\n  hooks:\n    pre: x\n    timeout: 24h\nvolumes:\n  - pool: rbd\n    image: a\n");
    assert_eq!(c.ceph.timeout, 3600);
    let e = err("archive: /a\nvolumes:\n  - pool: rbd\n    image: a\n    schedule: often\n");
    assert!(e.starts_with("c.yaml:5: volumes[0].schedule:"), "{e}");
    let e = err("archive: /a\nvolumes:\n  - pool: rbd\n    include: [\"vm-[\"]\n");
    assert!(e.starts_with("c.yaml:4: volumes[0].include:"), "{e}");
    let e = err("archive: /a\nvolumes:\n  - pool: rbd\n    include: [\"*\"]\n    name: fixed\n");
    assert!(
        e.starts_with("c.yaml:5: volumes[0].name:") && e.contains("{image}"),
        "{e}"
    );
    let e = err("archive: /a\nvolumes:\n  - pool: rbd\n    image: a\n    include: [\"*\"]\n");
    assert!(e.contains("not both"), "{e}");
    let e = err("archive: /a\nvolumes:\n  - pool: rbd\n    exclude: [\"*\"]\n");
    assert!(e.contains("at least one include"), "{e}");
}

#[test]
fn shipped_examples_parse() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples");
    let mut n = 0;
    for e in std::fs::read_dir(&dir).unwrap() {
        let p = e.unwrap().path();
        if p.extension().is_some_and(|x| x == "yaml") {
            Config::load(&p).unwrap_or_else(|e| panic!("{e}"));
            n += 1;
        }
    }
    assert!(n >= 3, "only {n} example configs in {}", dir.display());
}

#[test]
fn nodes_name_a_lease_pool_and_a_lease_within_range() {
    let base = "archive: /a\nvolumes: []\n";
    assert!(
        parse(base).nodes.is_none(),
        "one host unless nodes: is given"
    );
    let c = parse(&format!("{base}nodes:\n  lease-pool: rbd\n"));
    let n = c.nodes.unwrap();
    assert_eq!(
        (n.lease_pool.as_str(), n.lease, n.config_digest.len()),
        ("rbd", DEFAULT_LEASE, crate::format::CONFIG_DIGEST_HEX)
    );
    let c = parse(&format!("{base}nodes:\n  lease-pool: meta\n  lease: 2m\n"));
    assert_eq!(c.nodes.unwrap().lease, Duration::from_secs(120));
    let e = err(&format!("{base}nodes:\n  lease-pool: rbd\n  lease: 1s\n"));
    assert!(
        e.contains("c.yaml:5: nodes.lease: must be 3s to 10m"),
        "{e}"
    );
    let e = err(&format!("{base}nodes:\n  lease-pool: \"\"\n"));
    assert!(
        e.contains("c.yaml:4: nodes.lease-pool: must not be empty"),
        "{e}"
    );
    let e = err(&format!("{base}nodes:\n  lease: 30s\n"));
    assert!(e.contains("lease-pool"), "{e}");
    // a lease renewal waits at most ceph.timeout: two must fit in a lease
    let c = parse(&format!("{base}nodes:\n  lease-pool: rbd\n  lease: 30s\n"));
    assert_eq!(c.ceph.timeout, 10, "the default timeout fits the lease");
    let e = err(&format!(
        "ceph:\n  timeout: 15\n{base}nodes:\n  lease-pool: rbd\n  lease: 30s\n"
    ));
    assert!(
        e.contains("c.yaml:2: ceph.timeout: 15s must be under half of nodes.lease (30s)"),
        "{e}"
    );
    let c = parse(&format!(
        "ceph:\n  timeout: 14\n{base}nodes:\n  lease-pool: rbd\n  lease: 30s\n"
    ));
    assert_eq!(c.ceph.timeout, 14);
}
