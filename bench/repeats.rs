//! The comparison with no client limit, repeated: BENCH_REPEATS more pairs of the Job controller
//! and nightshift alone at the largest N, each on a fresh control plane, nightshift first in every
//! other one (the main run always has it last). One pair's ratio moves by a tenth from run to run
//! here (every component shares the machine's two CPUs), so the target is judged on the median
//! over all the pairs, the main run's included.

use std::fmt::Write as _;

use crate::*;

/// The repeated pairs; false when one failed or was skipped past the deadline.
pub(crate) async fn repeat_runs(s: &Settings, rep: &mut Report) -> bool {
    let Some(&n) = s.ns.iter().max() else { return true };
    if !s.qps.contains(&0) {
        return true;
    }
    let mut ok = true;
    for k in 1..=s.repeats {
        if s.past_deadline() {
            rep.notes.push(format!("Skipped (past the deadline): repeat {k} of N = {n} with no client limit."));
            ok = false;
            continue;
        }
        let sides = if k % 2 == 1 { [Side::Nightshift, Side::Job] } else { [Side::Job, Side::Nightshift] };
        match run_sides(s, 0, n, Shape::SMALL, &sides, &format!("-r{k}")).await {
            Ok(r) => rep.repeats.push(r),
            Err(e) => {
                rep.notes.push(format!("Repeat {k} of N = {n} with no client limit failed: {e}"));
                ok = false;
            }
        }
        save(s, rep);
    }
    ok
}

/// The largest N run with no client limit: the one repeated.
fn repeated_n(rep: &Report) -> Option<usize> {
    rep.runs.iter().filter(|r| r.qps == 0).map(|r| r.n).max()
}

/// Every pair at no client limit and N jobs (the main run's first): its order, its two sides.
fn pairs(rep: &Report, n: usize) -> Vec<(&'static str, &SideResult, &SideResult)> {
    let main = rep.runs.iter().filter(|r| r.qps == 0 && r.n == n);
    main.chain(rep.repeats.iter().filter(|r| r.n == n))
        .filter_map(|run| {
            let (j, ns) = (run.side(Side::Job)?, run.side(Side::Nightshift)?);
            let first = run.sides.iter().find(|r| r.side != Some(Side::Raw))?.side;
            Some((if first == Some(Side::Nightshift) { "nightshift first" } else { "Job controller first" }, j, ns))
        })
        .collect()
}

/// The median of the pairs' finish ratios (nightshift / Job controller) at N jobs and the ratios
/// in run order; None without a pair where both sides finished.
pub(crate) fn median_ratio(rep: &Report, n: usize) -> Option<(f64, Vec<f64>)> {
    let ratios: Vec<f64> =
        pairs(rep, n).iter().filter_map(|(_, j, ns)| ratio(ns.all_finished_secs, j.all_finished_secs)).collect();
    let mut sorted = ratios.clone();
    sorted.sort_by(f64::total_cmp);
    let mid = sorted.len() / 2;
    let median = match sorted.len() {
        0 => return None,
        len if len % 2 == 1 => sorted[mid],
        _ => (sorted[mid - 1] + sorted[mid]) / 2.0,
    };
    Some((median, ratios))
}

pub(crate) fn render_repeats(w: &mut String, rep: &Report) {
    let Some(n) = repeated_n(rep) else { return };
    let pairs = pairs(rep, n);
    if pairs.len() < 2 {
        return;
    }
    let _ = writeln!(w, "## No client limit, repeated\n");
    let _ = writeln!(
        w,
        "The comparison with no client limit at N = {}, the main run's pair first and then {} more, each on a \
         fresh control plane, the Job controller and nightshift alone, nightshift first in every other one. \
         Seconds as above.\n",
        n,
        pairs.len() - 1
    );
    let _ = writeln!(
        w,
        "| pair | order | pods Job / nightshift | finished Job / nightshift | finished ratio | apiserver CPU s Job / nightshift |\n|---|---|---|---|---|---|"
    );
    for (i, (order, j, ns)) in pairs.iter().enumerate() {
        let _ = writeln!(
            w,
            "| {} | {order} | {} / {} | {} / {} | {} | {:.1} / {:.1} |",
            i + 1,
            f(j.all_pods_secs),
            f(ns.all_pods_secs),
            f(j.all_finished_secs),
            f(ns.all_finished_secs),
            r2(ratio(ns.all_finished_secs, j.all_finished_secs)),
            j.apiserver_cpu,
            ns.apiserver_cpu
        );
    }
    if let Some((median, _)) = median_ratio(rep, n) {
        let _ = writeln!(w, "\nMedian finished ratio: **{median:.2}×**.\n");
    }
}
