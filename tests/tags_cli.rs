//! Tags protect revisions from pruning, also against a prune that is
//! already running: a revision tagged before its removal is committed is
//! kept, and a revision whose removal is committed can no longer be tagged
//! (the prune and the tag command meet under `state.lock`). The prune is
//! held at known points with the test-only pause hook.

mod common;

use common::cli::{stderr, Env, Paused};
use common::{pattern, test_conf, test_ioctx, ScratchImage};

const MIB: u64 = 1 << 20;

/// Volume `v` with three revisions (a full and two deltas) and retention
/// `keep-last: 1`, so a prune removes the two older ones, oldest first.
fn three_revisions(prefix: &str) -> (Env, ScratchImage, Vec<String>) {
    let (conf, io) = (test_conf(), test_ioctx());
    let src = ScratchImage::create(&io, prefix, 8 * MIB);
    let img = io.open_image(&src.name).unwrap();
    let env = Env::keeping_last(&conf, &src.name, 1);
    for i in 0..3u64 {
        img.write(i * 2 * MIB, &pattern(MIB as usize, 60 + i))
            .unwrap();
        env.ok(&["backup", "v"]);
    }
    let ids = env.revision_ids("v");
    assert_eq!(ids.len(), 3);
    (env, src, ids)
}

#[test]
#[ignore = "needs the Ceph test cluster (ci/test.sh runs it)"]
fn a_revision_tagged_while_a_prune_runs_is_kept() {
    common::require_fault_injection();
    let (env, _src, ids) = three_revisions("tag-during-prune");
    // The prune has planned both removals and staged the first (the oldest
    // revision's successor merged) when the operator tags that revision.
    let prune = Paused::start(&env, &["-v", "prune", "v"], "remove: staged");
    env.ok(&["tag", "v", &ids[0], "keep"]);
    let out = prune.finish();
    assert!(out.status.success(), "{}", stderr(&out));
    let err = stderr(&out);
    assert!(
        err.contains("tagged keep since the prune was planned"),
        "{err}"
    );
    assert_eq!(env.revision_ids("v"), vec![ids[0].clone(), ids[2].clone()]);
    let tags = &env.revisions("v")[0]["tags"];
    assert_eq!(tags, &serde_json::json!(["keep"]), "{tags}");
    env.ok(&["verify", "v"]);
    // Nothing of the called-off removal is left behind.
    let tmp = env.archive().join("v/tmp");
    assert_eq!(std::fs::read_dir(&tmp).unwrap().count(), 0);
}

#[test]
#[ignore = "needs the Ceph test cluster (ci/test.sh runs it)"]
fn a_revision_whose_removal_is_under_way_cannot_be_tagged() {
    common::require_fault_injection();
    let (env, _src, ids) = three_revisions("tag-after-commit");
    let prune = Paused::start(&env, &["prune", "v"], "remove: intent written");
    let refused = env.fails(&["tag", "v", &ids[0], "keep"]);
    let err = stderr(&refused);
    assert!(
        err.contains("is being removed (a prune that is under way)"),
        "{err}"
    );
    assert_eq!(err.trim().lines().count(), 1, "one line: {err}");
    let out = prune.finish();
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(env.revision_ids("v"), vec![ids[2].clone()]);
    env.ok(&["verify", "v"]);
}

#[test]
#[ignore = "needs the Ceph test cluster (ci/test.sh runs it)"]
fn a_merge_stops_on_a_revision_tagged_after_it_began_and_then_refuses_new_tags() {
    common::require_fault_injection();
    let (env, _src, ids) = three_revisions("tag-during-merge");
    // Merging revisions 0 and 1 into 2: revision 1 is tagged after the
    // merge checked the range, before its first record.
    let merge = Paused::start(&env, &["merge", "v", &ids[0], &ids[2]], "remove: staged");
    env.ok(&["tag", "v", &ids[1], "keep"]);
    let out = merge.finish();
    assert!(!out.status.success(), "the merge went on");
    let err = stderr(&out);
    assert!(
        err.contains("was tagged after the merge began: stopped (untag it or use --force)"),
        "{err}"
    );
    assert_eq!(env.revision_ids("v"), ids, "nothing may be removed");
    assert_eq!(
        std::fs::read_dir(env.archive().join("v/tmp"))
            .unwrap()
            .count(),
        0
    );
    env.ok(&["verify", "v"]);

    // Once a merge has written its first record, the revisions it names
    // can no longer be tagged: it removes them all (with --force here).
    let merge = Paused::start(
        &env,
        &["merge", "v", &ids[0], &ids[2], "--force"],
        "remove: intent written",
    );
    let refused = env.fails(&["tag", "v", &ids[1], "late"]);
    let err = stderr(&refused);
    assert!(
        err.contains("is being removed (a merge that is under way)"),
        "{err}"
    );
    let out = merge.finish();
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(env.revision_ids("v"), vec![ids[2].clone()]);
    env.ok(&["verify", "v"]);
}
