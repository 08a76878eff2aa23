//! The big-job run: one job of many shards (BENCH_BIG_JOB, 10,000; 100,000 with `BIG=100000`), a
//! thousand at once, on each side: an Indexed Job (completions, parallelism) and a BackgroundJob
//! (shards, workers.max). What a big job costs the controller (memory, requests) and how large
//! its object grows while it runs.

use std::fmt::Write as _;

use crate::*;

/// The Job side runs up to this many shards: its 10,000 take over 4 minutes on a 2-core machine,
/// 100,000 would take the better part of an hour beside nightshift's.
pub(crate) const JOB_SIDE_MAX_SHARDS: usize = 10_000;

pub(crate) async fn big_job_run(s: &Settings, shape: Shape) -> Res<RunResult> {
    let sides: &[Side] =
        if shape.shards <= JOB_SIDE_MAX_SHARDS { &[Side::Job, Side::Nightshift] } else { &[Side::Nightshift] };
    run_sides(s, 0, 1, shape, sides, "").await
}

pub(crate) fn render_big_jobs(w: &mut String, runs: &[RunResult]) {
    if runs.is_empty() {
        return;
    }
    let _ = writeln!(
        w,
        "## One big job\n\nOne job of many shards, with no client limit, its shards run a thousand at once at most: an \
         Indexed Job (`completions`, `parallelism`; up to {JOB_SIDE_MAX_SHARDS} shards) against a BackgroundJob \
         (`shards`, `workers.max`). kwok runs each pod to Succeeded at once. *Largest object* is the job as the API server served it at its largest during the \
         run (JSON, managedFields included; the object size limit is {} MiB), and its status alone. Requests are the \
         controller's mutating requests (events excluded), from the audit log.\n",
        OBJECT_LIMIT_KIB / 1024.0
    );
    let _ = writeln!(
        w,
        "| shards (at once) | side | pods | finished | requests | status writes | controller CPU s | peak RSS MiB | \
         apiserver CPU s | largest object / status KiB |\n|---|---|---|---|---|---|---|---|---|---|"
    );
    for run in runs {
        for r in &run.sides {
            let Some(side) = r.side else { continue };
            let audit = r.audit.as_ref();
            let _ = writeln!(
                w,
                "| {} ({}) | {} | {} | {} | {} | {} | {:.1} | {:.0} | {:.1} | {:.1} / {:.1} |",
                r.shape.shards,
                r.shape.workers,
                side.title(),
                f(r.all_pods_secs),
                f(r.all_finished_secs),
                audit.map_or("—".into(), |a| a.mutating().to_string()),
                audit.map_or("—".into(), |a| a.status_writes().to_string()),
                r.controller_cpu,
                r.controller_hwm_mib,
                r.apiserver_cpu,
                r.max_object_bytes as f64 / 1024.0,
                r.max_status_bytes as f64 / 1024.0,
            );
        }
        if let (Some(j), Some(n)) = (run.side(Side::Job), run.side(Side::Nightshift)) {
            let requests = |r: &SideResult| r.audit.as_ref().map(|a| a.mutating() as f64);
            let _ = writeln!(
                w,
                "\nnightshift / Job controller, {} shards: finished {}, requests {}, controller CPU {}, peak RSS {}.\n",
                j.shape.shards,
                r2(ratio(n.all_finished_secs, j.all_finished_secs)),
                r2(ratio(requests(n), requests(j))),
                r2(ratio(Some(n.controller_cpu), Some(j.controller_cpu))),
                r2(ratio(Some(n.controller_hwm_mib), Some(j.controller_hwm_mib))),
            );
        } else {
            let _ = writeln!(w, "\n(No Job side above {JOB_SIDE_MAX_SHARDS} shards.)\n");
        }
    }
}
