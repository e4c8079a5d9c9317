use super::*;
use crate::config::Config;

const H: i64 = 3600;

fn volumes(yaml_volumes: &str) -> Vec<Volume> {
    let c = Config::parse(&format!("archive: /a\nvolumes:\n{yaml_volumes}"), "t").unwrap();
    c.listed().cloned().collect()
}

fn nightly(extra: &str) -> Vec<Volume> {
    volumes(&format!("  - pool: p\n    image: a\n    schedule: \"0 1 * * *\"\n    retry-delay: 10m\n    retries: 2\n{extra}"))
}

/// 12:00 local time on some day, and that day's 01:00.
fn noon() -> (i64, i64) {
    let s: Schedule = "0 1 * * *".parse().unwrap();
    let one = s.next_after(1_780_000_000).unwrap();
    (one + 11 * H, one)
}

fn outcome(ok: bool, transient: bool) -> Outcome {
    Outcome {
        volume: "a".into(),
        op: "backup".into(),
        ok,
        kind: None,
        revision: None,
        size: None,
        bytes_read: 0,
        bytes_written: 0,
        duration: Duration::ZERO,
        error: (!ok).then(|| "boom".to_string()),
        transient,
        cluster_silent: false,
    }
}

#[test]
fn catch_up_runs_a_missed_backup_at_once() {
    let (now, one) = noon();
    let mut p = Planner::new(true);
    p.update(nightly(""), true, now, &|_| None);
    assert_eq!(
        p.plans["a"].next_backup,
        Some(now),
        "never backed up: due now"
    );
    p.update(Vec::new(), true, now, &|_| None);
    p.update(nightly(""), true, now, &|_| Some(one - H));
    assert_eq!(
        p.plans["a"].next_backup,
        Some(now),
        "last attempt before today's 01:00"
    );
    p.update(Vec::new(), true, now, &|_| None);
    p.update(nightly(""), true, now, &|_| Some(one + 60));
    assert_eq!(
        p.plans["a"].next_backup,
        Some(one + 24 * H),
        "today's run happened"
    );
    let mut p = Planner::new(false);
    p.update(nightly(""), false, now, &|_| None);
    assert_eq!(p.plans["a"].next_backup, Some(one + 24 * H), "no catch-up");
}

#[test]
fn spread_shifts_runs_by_a_fixed_offset() {
    let (now, one) = noon();
    let mut p = Planner::new(false);
    p.update(nightly("    spread: 2h\n"), false, now, &|_| None);
    let offset = spread_offset("a", Duration::from_secs(2 * H as u64)).as_secs() as i64;
    assert!(offset > 0 && offset < 2 * H);
    assert_eq!(p.plans["a"].next_backup, Some(one + 24 * H + offset));
}

#[test]
fn transient_failures_retry_with_backoff_permanent_ones_wait() {
    let (now, one) = noon();
    let tomorrow = one + 24 * H;
    let mut p = Planner::new(true);
    p.update(nightly(""), true, now, &|_| None);
    let (v, k, _) = p.take_due(now).unwrap();
    assert_eq!((v.name.as_str(), k), ("a", JobKind::Backup));
    assert!(p.take_due(now).is_none(), "one job per volume");
    assert_eq!(p.next_due(), None, "the running volume is not due");
    p.finished("a", k, &outcome(false, true), now);
    assert_eq!(p.plans["a"].next_backup, Some(now + 600));
    p.take_due(now + 600).unwrap();
    p.finished("a", k, &outcome(false, true), now + 600);
    assert_eq!(p.plans["a"].next_backup, Some(now + 600 + 1200));
    p.take_due(now + 1800).unwrap();
    p.finished("a", k, &outcome(false, true), now + 1800);
    assert_eq!(p.plans["a"].next_backup, Some(tomorrow), "retries used up");
    p.take_due(tomorrow).unwrap();
    p.finished("a", k, &outcome(false, false), tomorrow);
    assert_eq!(
        p.plans["a"].next_backup,
        Some(tomorrow + 24 * H),
        "permanent: no retry"
    );
    p.take_due(tomorrow + 24 * H).unwrap();
    p.finished("a", k, &outcome(true, false), tomorrow + 24 * H + 5);
    assert_eq!(p.plans["a"].retries, 0);
    assert_eq!(
        retry_delay(Duration::from_secs(600), 20),
        Duration::from_secs(86_400)
    );
}

#[test]
fn verify_runs_on_its_own_schedule_and_never_beside_a_backup() {
    let (now, _) = noon();
    let mut p = Planner::new(true);
    p.update(
        nightly("    verify-schedule: \"30 12 * * *\"\n"),
        true,
        now,
        &|_| None,
    );
    let verify_at = p.plans["a"].next_verify.unwrap();
    assert_eq!(verify_at, now + 1800);
    let (_, k, _) = p.take_due(verify_at).unwrap();
    assert_eq!(k, JobKind::Backup, "the backup was due first");
    assert!(
        p.take_due(verify_at).is_none(),
        "verify waits for the backup"
    );
    p.finished("a", k, &outcome(true, false), verify_at);
    let (_, k, _) = p.take_due(verify_at).unwrap();
    assert_eq!(k, JobKind::Verify);
    p.finished("a", k, &outcome(true, false), verify_at + 10);
    assert_eq!(p.plans["a"].next_verify, Some(verify_at + 24 * H));
}

#[test]
fn fsck_runs_on_its_own_schedule_after_a_verify_due_at_the_same_time() {
    let (now, _) = noon();
    let mut p = Planner::new(false);
    p.update(
        nightly("    verify-schedule: \"0 13 * * *\"\n    fsck-schedule: \"0 13 * * *\"\n"),
        false,
        now,
        &|_| None,
    );
    let at = p.plans["a"].next_fsck.unwrap();
    assert_eq!(at, now + H);
    assert_eq!(p.plans["a"].next_verify, Some(at));
    assert_eq!(p.next_due(), Some(at));
    let (_, k, _) = p.take_due(at).unwrap();
    assert_eq!(
        k,
        JobKind::Verify,
        "verify first, one job per volume at a time"
    );
    assert!(p.take_due(at).is_none());
    p.finished("a", k, &outcome(true, false), at + 5);
    let (_, k, _) = p.take_due(at + 5).unwrap();
    assert_eq!(k, JobKind::Fsck);
    let mut failed = outcome(false, false);
    failed.op = "fsck".into();
    p.finished("a", k, &failed, at + 60);
    assert_eq!(
        p.plans["a"].next_fsck,
        Some(at + 24 * H),
        "failed or not: tomorrow"
    );
}

#[test]
fn reload_keeps_state_adds_and_removes_volumes() {
    let (now, _) = noon();
    let two = |sched_b: &str| {
        volumes(&format!(
            "  - pool: p\n    image: a\n    schedule: \"0 1 * * *\"\n  - pool: p\n    image: b\n    schedule: \"{sched_b}\"\n"
        ))
    };
    let mut p = Planner::new(false);
    p.update(two("0 2 * * *"), false, now, &|_| None);
    let b_next = p.plans["b"].next_backup;
    p.plans.get_mut("a").unwrap().next_backup = Some(now - 1);
    let (v, _, _) = p.take_due(now).unwrap();
    assert_eq!(v.name, "a");
    // reload without a, with b rescheduled
    p.update(two("0 3 * * *")[1..].to_vec(), false, now, &|_| None);
    assert!(p.plans["a"].running.is_some(), "a stays while its job runs");
    assert_eq!(p.plans["a"].next_backup, None);
    assert_eq!(p.plans["b"].next_backup, b_next.map(|t| t + H));
    p.finished("a", JobKind::Backup, &outcome(true, false), now);
    p.update(two("0 3 * * *")[1..].to_vec(), false, now, &|_| None);
    assert!(!p.plans.contains_key("a"));
}

/// A job another node runs lets its slot pass: no retry, the next run at
/// the next slot, the volume idle again, and its retry count reset.
#[test]
fn a_passed_slot_plans_the_next_one() {
    let (now, one) = noon();
    let tomorrow = one + 24 * H;
    let mut p = Planner::new(false);
    p.update(nightly(""), false, now, &|_| None);
    assert_eq!(p.plans["a"].next_backup, Some(tomorrow));
    let (_, k, due) = p.take_due(tomorrow + 3).unwrap();
    assert_eq!(due, tomorrow, "the due time is the slot's");
    p.plans.get_mut("a").unwrap().retries = 1;
    p.pass("a", k, tomorrow + 3);
    assert_eq!(p.plans["a"].next_backup, Some(tomorrow + 24 * H));
    assert_eq!(p.plans["a"].retries, 0);
    assert_eq!(p.running(), 0);
}
