//! BENCHMARKS.md's memory section: the operator's memory with many jobs at rest, then with
//! worker pods cached beside them.

use std::{collections::BTreeMap, fmt::Write as _};

use crate::*;

pub(crate) fn render_memory(w: &mut String, m: &MemoryResult) {
    let _ = writeln!(w, "## Memory: {} BackgroundJobs at rest\n", m.jobs);
    let _ = writeln!(
        w,
        "{} suspended BackgroundJobs (created by the admin in {:.1}s, no operator running). The operator is \
         started twice, with no client limit: first it meets every job for the first time (it writes each \
         one's Suspended status), then, restarted, it finds them all at rest: nothing to write. Peak is \
         VmHWM, steady is VmRSS 15 s (first start) or 30 s (second start) after the jobs settled.\n",
        m.jobs, m.create_secs
    );
    let _ = writeln!(
        w,
        "| start | time until settled s (first start: all jobs listed as Suspended, polled every 2 s; second: RSS flat for 3 s) | peak RSS MiB | steady RSS MiB | its mutating requests |\n|---|---|---|---|---|"
    );
    let writes = |w: &BTreeMap<String, u64>| {
        if w.is_empty() {
            "none".to_string()
        } else {
            w.iter().map(|(k, v)| format!("{v}× `{k}`")).collect::<Vec<_>>().join(", ")
        }
    };
    let _ = writeln!(
        w,
        "| first (new jobs) | {} | {:.1} | {:.1} | {} |",
        f(m.first_settle_secs),
        m.first_peak_mib,
        m.first_steady_mib,
        writes(&m.first_writes)
    );
    let _ = writeln!(
        w,
        "| second (at rest) | {} (initial list) | {:.1} | {:.1} | {} |\n",
        f(m.second_list_secs),
        m.second_peak_mib,
        m.second_steady_mib,
        writes(&m.second_writes)
    );
    let _ = writeln!(w, "CPU of the second start over its 30+ s: {:.1} s.\n", m.second_cpu);
    if let Some(p) = &m.pods {
        let per_pod = (p.steady_mib - m.second_steady_mib) * 1024.0 * 1024.0 / p.pods as f64;
        let _ = writeln!(
            w,
            "### And {} worker pods\n\n{} worker pods beside the same jobs, each as the operator makes it for \
             `examples/bulk-import.yaml` (the agent injected; {} bytes of JSON as the API server serves one), owned by \
             no job and never scheduled, created by the admin in {:.1}s. The operator started a third time: its \
             pod cache held them all (its `nightshift_workers` gauge) after {} s; RSS peak {:.1} MiB, steady {:.1} MiB \
             30 s later: **{:.0} bytes per cached pod** over the second start's steady RSS (the operator keeps a \
             pod's metadata and status, not its spec).\n",
            p.pods,
            p.pods,
            p.served_bytes,
            p.create_secs,
            f(p.cached_secs),
            p.peak_mib,
            p.steady_mib,
            per_pod
        );
    }
}
