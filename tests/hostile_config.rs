//! Hostile config files, as a property test: the shipped examples with
//! bytes flipped, cut short, or garbage inserted. Loading never panics or
//! hangs, and every rejection is one line that names the file.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::Path;

use proptest::prelude::*;
use rbdelta::config::Config;

fn examples() -> Vec<String> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples");
    let mut v: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .flatten()
        .map(|e| std::fs::read_to_string(e.path()).unwrap())
        .collect();
    v.sort();
    v
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, .. ProptestConfig::default() })]

    #[test]
    fn a_damaged_config_is_refused_in_one_line_naming_the_file(
        which in 0usize..100,
        at in 0usize..10_000,
        how in 0u8..3,
        junk in prop::collection::vec(any::<u8>(), 1..40),
    ) {
        let all = examples();
        let mut bytes = all[which % all.len()].clone().into_bytes();
        let i = at % bytes.len().max(1);
        match how {
            0 => bytes[i] ^= junk[0] | 1,
            1 => bytes.truncate(i),
            _ => { bytes.splice(i..i, junk.iter().copied()); }
        }
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("config.yaml");
        std::fs::write(&path, &bytes).unwrap();
        let loaded = catch_unwind(AssertUnwindSafe(|| Config::load(&path)));
        prop_assert!(loaded.is_ok(), "a panic loading {:?}", String::from_utf8_lossy(&bytes));
        if let Err(e) = loaded.unwrap() {
            let msg = e.to_string();
            prop_assert!(msg.contains(&path.display().to_string()), "{}", msg);
            prop_assert_eq!(msg.lines().count(), 1, "{}", msg);
        }
    }
}
