//! The Prometheus text exposition of the status, for node_exporter's
//! textfile collector (write it to `*.prom` atomically, e.g. from cron).

use std::fmt::Write;

use super::VolumeStatus;

/// Renders every metric for every volume.
pub fn render(statuses: &[VolumeStatus]) -> String {
    type Get = fn(&VolumeStatus) -> Option<f64>;
    let metrics: [(&str, &str, Get); 12] = [
        (
            "rbdelta_last_success_timestamp_seconds",
            "Unix time of the last successful backup.",
            |s| s.last_success.as_ref().map(|x| x.unix as f64),
        ),
        (
            "rbdelta_last_success_duration_seconds",
            "Duration of the last successful backup.",
            |s| s.last_success.as_ref().map(|x| x.duration_seconds),
        ),
        (
            "rbdelta_last_success_read_bytes",
            "Bytes read from Ceph by the last successful backup.",
            |s| s.last_success.as_ref().map(|x| x.bytes_read as f64),
        ),
        (
            "rbdelta_last_success_written_bytes",
            "Bytes stored by the last successful backup.",
            |s| s.last_success.as_ref().map(|x| x.bytes_written as f64),
        ),
        (
            "rbdelta_last_failure_timestamp_seconds",
            "Unix time of the last failed backup.",
            |s| s.last_failure.as_ref().map(|x| x.unix as f64),
        ),
        (
            "rbdelta_consecutive_failures",
            "Failed backups since the last success.",
            |s| Some(s.consecutive_failures as f64),
        ),
        (
            "rbdelta_failures_total",
            "Failed backups recorded in the log.",
            |s| Some(s.failures_total as f64),
        ),
        ("rbdelta_revisions", "Revisions kept in the archive.", |s| {
            Some(s.revisions as f64)
        }),
        (
            "rbdelta_archive_bytes",
            "Bytes allocated by the volume's archive.",
            |s| Some(s.archive_bytes as f64),
        ),
        (
            "rbdelta_last_verify_ok",
            "1 if the last full verify found no problem, 0 if it did.",
            |s| s.last_verify.as_ref().map(|v| if v.ok { 1.0 } else { 0.0 }),
        ),
        (
            "rbdelta_last_fsck_ok",
            "1 if the last fsck found every filesystem sound, 0 if not.",
            |s| s.last_fsck.as_ref().map(|v| if v.ok { 1.0 } else { 0.0 }),
        ),
        (
            "rbdelta_distrusted_revisions",
            "Revisions marked distrusted.",
            |s| Some(s.distrusted as f64),
        ),
    ];
    let mut out = String::new();
    for (name, help, get) in metrics {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} gauge");
        for s in statuses {
            if let Some(v) = get(s) {
                let _ = writeln!(out, "{name}{{volume=\"{}\"}} {v}", escape(&s.volume));
            }
        }
    }
    out
}

/// Label value escaping (volume names are safe, but be exact anyway).
fn escape(s: &str) -> String {
    s.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}
