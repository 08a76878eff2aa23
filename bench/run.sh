#!/usr/bin/env bash
# `make bench`: builds nightshift in release mode, runs the harness (bench/main.rs) against a
# control plane of its own in NIGHTSHIFT_CLUSTER_DIR (default /tmp/nightshift-bench-cluster),
# writes BENCHMARKS.md, and stops that control plane however the run ends.
#
#   make bench                      N = 100 and 1000 at client QPS 20, 100 and no limit; heartbeats of 1,000
#                                   workers and 10,000 every 60 s; the memory run; the big job of 10,000 shards
#   make bench N=10000              the scale run: N = 10000 with no client limit (written to BENCHMARKS-10000.md)
#                                   (also: N="100 1000 10000", or BENCH_N=...)
#   make bench BIG=100000           one job of 100,000 shards alone (48 minutes here; BENCHMARKS-big.md)
#   BENCH_QPS=0 make bench          only the run with no client limit
#   BENCH_N=0 make bench            no comparison runs (the heartbeat and memory runs only)
#   BENCH_REPEATS=3 make bench      more pairs (Job controller, nightshift) with no client limit at the
#                                   largest N, nightshift first in every other one; judged on the median
#   BENCH_STOP_AT=01:05 make bench  start no run after 01:05 UTC, the next one (what finished is reported)
#   BENCH_HEARTBEATS=1000,10000@60 make bench  heartbeat runs: workers[@interval s] (0: none)
#   BENCH_MEMORY_JOBS=0 make bench  skip the memory run (BENCH_MEMORY_PODS=0: only its 100,000-pod part)
#   BENCH_BIG_JOB=0 make bench      skip the big-job run (one job of 10,000 shards on each side)
set -euo pipefail
cd "$(dirname "$0")/.."
export NIGHTSHIFT_CLUSTER_DIR="${NIGHTSHIFT_CLUSTER_DIR:-/tmp/nightshift-bench-cluster}"
# The control plane with a fake node: kwok plays it and its pods, thousands of them.
export NIGHTSHIFT_NODE=0
CARGO="${CARGO:-cargo}"

if [[ -n "${N:-}" ]]; then export BENCH_N="${N// /,}"; fi
if [[ -n "${BENCH_STOP_AT:-}" ]]; then
  BENCH_DEADLINE="$(date -u -d "$BENCH_STOP_AT" +%s)"
  # A time of day already past is the next one: started at 23:00, BENCH_STOP_AT=00:45 is after midnight.
  if (( BENCH_DEADLINE <= $(date +%s) )) && [[ "$BENCH_STOP_AT" =~ ^[0-9]{1,2}:[0-9]{2}$ ]]; then
    BENCH_DEADLINE=$((BENCH_DEADLINE + 86400))
  fi
  export BENCH_DEADLINE
fi
cmd="make bench"
[[ -n "${N:-}" ]] && cmd="make bench N=\"$N\""
[[ -n "${BIG:-}" ]] && cmd="$cmd BIG=$BIG"
for v in BENCH_N BENCH_QPS BENCH_REPEATS BENCH_HEARTBEATS BENCH_MEMORY_JOBS BENCH_MEMORY_PODS BENCH_BIG_JOB BENCH_STOP_AT BENCH_RUN_TIMEOUT; do
  if [[ -n "${!v:-}" && ! ( "$v" == BENCH_N && -n "${N:-}" ) ]]; then cmd="$v=${!v} $cmd"; fi
done
export BENCH_COMMAND="${BENCH_COMMAND:-$cmd}"
# The scale run (N=10000): the comparison with no client limit only (at QPS 20 one side of 30,000
# pods alone takes 25 minutes); the heartbeat, memory and big-job runs are the quick run's. The
# largest BackgroundJob there may be (100,000 shards) is a run of its own, `BIG=100000`: it takes
# the API server here 48 minutes, longer than a wait's default 30; the two together would not fit
# in CI's 90. Each writes a file of its own beside the quick run's BENCHMARKS.md.
if [[ ",${BENCH_N:-}," == *",10000,"* ]]; then
  export BENCH_QPS="${BENCH_QPS:-0}" BENCH_BIG_JOB="${BENCH_BIG_JOB:-0}" BENCH_REPEATS="${BENCH_REPEATS:-0}"
  export BENCH_HEARTBEATS="${BENCH_HEARTBEATS:-0}" BENCH_MEMORY_JOBS="${BENCH_MEMORY_JOBS:-0}"
  export BENCH_OUT="${BENCH_OUT:-BENCHMARKS-10000.md}"
fi
if [[ -n "${BIG:-}" ]]; then
  export BENCH_N="${BENCH_N:-0}" BENCH_BIG_JOB="$BIG" BENCH_HEARTBEATS="${BENCH_HEARTBEATS:-0}"
  export BENCH_MEMORY_JOBS="${BENCH_MEMORY_JOBS:-0}" BENCH_RUN_TIMEOUT="${BENCH_RUN_TIMEOUT:-5400}"
  export BENCH_OUT="${BENCH_OUT:-BENCHMARKS-big.md}"
fi

trap 'tests/cluster/cluster.sh down >/dev/null 2>&1 || true' EXIT
$CARGO build --release --bin nightshift
# A whole bench is bounded: runs * sides * BENCH_RUN_TIMEOUT at worst; `timeout` caps it anyway.
timeout --signal=INT --kill-after=60 "${BENCH_TOTAL_TIMEOUT:-14400}" \
  $CARGO bench -p nightshift-bench --bench bench -- "$@"
