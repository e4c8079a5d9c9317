//! `status` and `check` over a long fleet log: the summary they keep in
//! `.rbdelta/summary/` spares them the part it covers and changes nothing
//! they report. Needs no cluster: both read the archive alone.

mod common;

use std::io::Write;
use std::path::Path;

use common::cli::Env;
use rbdelta::archive::oplog::LogRecord;
use time::format_description::well_known::Rfc3339;

/// Appends backup end records to the fleet log of `env`: `(volume, ok)`
/// pairs, a second apart from `t0` on (in one write: the log's own
/// appender fsyncs each record).
fn append(env: &Env, t0: i64, jobs: &[(&str, bool)]) {
    let dir = env.dir.path().join("archive/.rbdelta");
    std::fs::create_dir_all(&dir).unwrap();
    let mut text = String::new();
    for (i, (volume, ok)) in jobs.iter().enumerate() {
        let t = time::OffsetDateTime::from_unix_timestamp(t0 + i as i64).unwrap();
        let r = LogRecord {
            time: t.format(&Rfc3339).unwrap(),
            op: "backup".into(),
            event: "end".into(),
            volume: Some(volume.to_string()),
            outcome: Some(if *ok { "ok" } else { "error" }.into()),
            kind: ok.then(|| "delta".into()),
            error: (!ok).then(|| format!("{volume}: image not found")),
            transient: (!ok).then_some(false),
            bytes_read: Some(1),
            bytes_written: Some(1),
            duration_ms: Some(1),
            detail: Some(format!("rbd/{volume}")),
            in_volume_log: Some(true),
            ..LogRecord::default()
        };
        text += &serde_json::to_string(&r).unwrap();
        text.push('\n');
    }
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.join("log.jsonl"))
        .unwrap();
    f.write_all(text.as_bytes()).unwrap();
}

fn status(env: &Env) -> serde_json::Value {
    serde_json::from_str(&env.ok(&["status", "--json"])).unwrap()
}

fn of<'a>(s: &'a serde_json::Value, volume: &str) -> &'a serde_json::Value {
    s.as_array()
        .unwrap()
        .iter()
        .find(|v| v["volume"] == volume)
        .unwrap()
}

#[test]
fn status_reads_a_long_fleet_log_through_its_summary_and_reports_the_same() {
    let env = Env::with_yaml(
        Path::new("/dev/null"),
        "volumes:\n  - name: a\n    pool: rbd\n    image: a\n  - name: b\n    pool: rbd\n    image: b\n",
    );
    // 6000 nights of two volumes: a fails every 7th night, b every 5th
    // and its last four
    let mut jobs = Vec::new();
    for night in 0..6000 {
        jobs.push(("a", night % 7 != 3));
        jobs.push(("b", night % 5 != 1 && night < 5997));
    }
    append(&env, 1_700_000_000, &jobs);
    let fails = |v: &str| jobs.iter().filter(|j| j.0 == v && !j.1).count();
    let since = |v: &str| {
        let mine = jobs.iter().filter(|j| j.0 == v);
        mine.rev().take_while(|j| !j.1).count()
    };
    assert_eq!((since("a"), since("b")), (0, 4));

    let first = status(&env);
    let summary = env
        .dir
        .path()
        .join("archive/.rbdelta/summary/log.jsonl.json");
    assert!(summary.exists(), "no summary of a 2 MB log");
    assert_eq!(of(&first, "a")["failures_total"], fails("a"));
    assert_eq!(of(&first, "a")["consecutive_failures"], since("a"));
    assert_eq!(of(&first, "b")["failures_total"], fails("b"));
    assert_eq!(of(&first, "b")["consecutive_failures"], since("b"));

    // more nights after the summary: b succeeds once and fails again, a
    // fails twice
    append(
        &env,
        1_800_000_000,
        &[("a", false), ("b", true), ("a", false), ("b", false)],
    );
    let second = status(&env);
    assert_eq!(of(&second, "a")["failures_total"], fails("a") + 2);
    assert_eq!(of(&second, "a")["consecutive_failures"], 2);
    assert_eq!(of(&second, "b")["failures_total"], fails("b") + 1);
    assert_eq!(of(&second, "b")["consecutive_failures"], 1);
    let check = env.cmd().arg("check").output().unwrap();

    // the same without the summary, parsing the log whole
    std::fs::remove_dir_all(summary.parent().unwrap()).unwrap();
    assert_eq!(status(&env), second);
    let whole = env.cmd().arg("check").output().unwrap();
    assert_eq!(check.stdout, whole.stdout);
    assert_eq!(check.status.code(), whole.status.code());
}
