//! BENCHMARKS.md's comparison sections: nightshift, the Job controller and the raw limit side by
//! side, per (N, QPS) run: time and cost, ratios, requests by resource.

use std::fmt::Write as _;

use crate::*;

pub(crate) fn render_sides(w: &mut String, rep: &Report) {
    let _ = writeln!(w, "## Time and cost per side\n");
    let _ = writeln!(
        w,
        "Times are seconds from the first create of the N objects (the controller already running). *Create* is \
         the admin creating the N objects (3N pods for the limit), 64 requests in flight. *Pods* is until all 3N \
         pods exist (seen by a watch), *finished* until all N jobs are finished (Job: condition Complete; \
         BackgroundJob: phase Succeeded), *settled* until every pod is Succeeded without finalizers (for \
         nightshift, in brackets: until its last event was sent; it sends events behind its other requests). Requests are \
         the controller's own mutating requests per job from the audit log (events excluded, then events alone). \
         CPU is the controller process's utime+stime during the side (kube-controller-manager: all its \
         controllers); RSS is its peak (VmHWM; kube-controller-manager's since it started, nightshift's for this \
         side alone). The API server's CPU during the side is shown for scale.\n"
    );
    let _ = writeln!(
        w,
        "| N | client QPS | side | create | pods | finished | settled | requests/job (no events) | events/job | \
         status writes/job | controller CPU s | peak RSS MiB | apiserver CPU s | load |\n|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"
    );
    for run in &rep.runs {
        for r in &run.sides {
            let side = r.side.unwrap_or(Side::Raw);
            let a = r.audit.clone().unwrap_or_default();
            let (req, ev, st, cpu, rss) = if side == Side::Raw {
                ("—".into(), "—".into(), "—".into(), "—".into(), "—".into())
            } else {
                (
                    format!("{:.2}", per_job(a.mutating(), r.n)),
                    format!("{:.2}", per_job(a.events(), r.n)),
                    format!("{:.2}", per_job(a.status_writes(), r.n)),
                    format!("{:.1}", r.controller_cpu),
                    format!("{:.0}", r.controller_hwm_mib),
                )
            };
            let _ = writeln!(
                w,
                "| {} | {} | {} | {:.1}{} | {} | {} | {} | {req} | {ev} | {st} | {cpu} | {rss} | {:.1} | {:.1} |",
                r.n,
                qps_label(run.qps),
                side.title(),
                r.create_secs,
                if r.create_failures > 0 { format!(" ({} failed)", r.create_failures) } else { String::new() },
                f(r.all_pods_secs),
                f(r.all_finished_secs),
                match r.events_sent_secs {
                    Some(e) => format!("{} (events {e:.1})", f(r.settled_secs)),
                    None => f(r.settled_secs),
                },
                r.apiserver_cpu,
                r.load
            );
        }
    }
    let _ = writeln!(w);
}

pub(crate) fn render_ratios(w: &mut String, rep: &Report) {
    let _ = writeln!(w, "## Ratios\n");
    let _ = writeln!(
        w,
        "nightshift / Job controller at the same QPS, and nightshift / the limit (3N raw pod creates in the same \
         run). Below 1 is better for nightshift.\n"
    );
    let _ = writeln!(
        w,
        "| N | client QPS | requests/job (no events) | events/job | status writes/job | pods | finished | controller CPU | \
         pods / limit | finished / limit | Job finished / limit |\n|---|---|---|---|---|---|---|---|---|---|---|"
    );
    for run in &rep.runs {
        let (Some(j), Some(nsr), Some(raw)) = (run.side(Side::Job), run.side(Side::Nightshift), run.side(Side::Raw))
        else {
            continue;
        };
        let (ja, na) = (j.audit.clone().unwrap_or_default(), nsr.audit.clone().unwrap_or_default());
        let rq = |a: u64, b: u64| ratio(Some(a as f64), Some(b as f64));
        let _ = writeln!(
            w,
            "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
            run.n,
            qps_label(run.qps),
            r2(rq(na.mutating(), ja.mutating())),
            r2(rq(na.events(), ja.events())),
            r2(rq(na.status_writes(), ja.status_writes())),
            r2(ratio(nsr.all_pods_secs, j.all_pods_secs)),
            r2(ratio(nsr.all_finished_secs, j.all_finished_secs)),
            r2(ratio(Some(nsr.controller_cpu), Some(j.controller_cpu))),
            r2(ratio(nsr.all_pods_secs, raw.all_pods_secs)),
            r2(ratio(nsr.all_finished_secs, raw.all_pods_secs)),
            r2(ratio(j.all_finished_secs, raw.all_pods_secs)),
        );
    }
    let _ = writeln!(w);
}

pub(crate) fn render_requests(w: &mut String, rep: &Report) {
    let _ = writeln!(w, "## Requests by resource\n");
    let _ = writeln!(
        w,
        "Each controller's mutating requests per job, by verb and resource/subresource (from the audit log), \
         and its requests answered with an error. Events are listed but not in the headline count.\n"
    );
    for run in &rep.runs {
        let _ = writeln!(w, "### N = {}, client QPS {}\n", run.n, qps_label(run.qps));
        let mut keys: Vec<String> = Vec::new();
        for side in [Side::Job, Side::Nightshift] {
            if let Some(a) = run.side(side).and_then(|r| r.audit.as_ref()) {
                for k in a.controller.keys() {
                    if !keys.contains(k) {
                        keys.push(k.clone());
                    }
                }
            }
        }
        keys.sort();
        let _ = writeln!(w, "| request | Job controller | nightshift |\n|---|---|---|");
        for k in &keys {
            let cell = |side: Side| {
                run.side(side)
                    .and_then(|r| Some(per_job(*r.audit.as_ref()?.controller.get(k)?, r.n)))
                    .map_or("—".into(), |v| format!("{v:.2}"))
            };
            let _ = writeln!(w, "| `{k}` | {} | {} |", cell(Side::Job), cell(Side::Nightshift));
        }
        let errors = |side: Side| {
            run.side(side)
                .and_then(|r| r.audit.as_ref())
                .map(|a| a.controller_errors.iter().map(|(k, v)| format!("{v}× `{k}`")).collect::<Vec<_>>().join(", "))
                .filter(|s| !s.is_empty())
                .unwrap_or_else(|| "none".into())
        };
        let _ = writeln!(w, "| errors (total) | {} | {} |", errors(Side::Job), errors(Side::Nightshift));
        let others = |side: Side| {
            run.side(side)
                .and_then(|r| {
                    Some(
                        r.audit
                            .as_ref()?
                            .by_user
                            .iter()
                            .map(|(u, v)| format!("{u} {:.2}", per_job(*v, r.n)))
                            .collect::<Vec<_>>()
                            .join(", "),
                    )
                })
                .unwrap_or_default()
        };
        let _ = writeln!(
            w,
            "| all clients in the namespace, per job | {} | {} |\n",
            others(Side::Job),
            others(Side::Nightshift)
        );
        if run.audit_dropped {
            let _ = writeln!(w, "**The API server dropped audit events in this run: counts are low.**\n");
        }
    }
}
