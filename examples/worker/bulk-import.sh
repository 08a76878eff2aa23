#!/bin/sh
# The example worker (image nightshift-example, built by tests/cluster/images.sh): "imports" its
# shard of a CSV of customers, batch by batch, and reports through `nightshift agent`.
#
# From the operator (every worker pod gets them):
#   NIGHTSHIFT_SHARD     this pod's shard, 0 to NIGHTSHIFT_SHARDS-1
#   NIGHTSHIFT_SHARDS    how many shards the rows are split into (evenly, in file order)
#   NIGHTSHIFT_ATTEMPT   1 on the first try of this shard, 2 on the first retry...
#   NIGHTSHIFT_JOB       the BackgroundJob's name
#   NIGHTSHIFT_CHECKPOINT  the checkpoint the shard's last attempt saved, if any: where to resume
# Options, set in the pod template's env (BATCH_SIZE and BATCH_SECONDS also as the job's
# spec.parameters, which arrive as NIGHTSHIFT_PARAM_BATCH_SIZE and NIGHTSHIFT_PARAM_BATCH_SECONDS):
#   ROWS_FILE       the CSV, a header line then one row a line (default /customers.csv)
#   BATCH_SIZE      rows per batch (default 50)
#   BATCH_SECONDS   pause after each batch, the pretend cost of a write; fractions work (default 0.5)
#   FAIL_EXIT_CODE  when set, exit with this code after the first batch (to try out retries)
#
# Lines starting with `::nightshift::` are directives for the agent that wraps this command
# (crates/worker/src/directive.rs); it puts them on the shard's heartbeat Lease:
#   ::nightshift:: progress DONE/TOTAL message     after each batch
#   ::nightshift:: checkpoint done=D imported=I        after each batch: rows committed so far
#   ::nightshift:: result {"imported": N, "shard": S}   once, at the end
# A retried shard (its pod was evicted, or failed) resumes after the last row it committed, from
# NIGHTSHIFT_CHECKPOINT, instead of importing its rows again.
# SIGTERM (the pod is deleted, or the shard timed out) stops it within a moment, exit code 143.
#
# Run it outside a cluster (it reads the file once a batch, so a file, not a pipe):
#   examples/worker/generate-customers.sh >/tmp/customers.csv
#   ROWS_FILE=/tmp/customers.csv NIGHTSHIFT_SHARD=3 NIGHTSHIFT_SHARDS=14 examples/worker/bulk-import.sh
set -eu

fail() {
  echo "bulk-import: $*" >&2
  exit 2
}
# A whole number, else a clear message rather than an arithmetic error halfway through.
number() {
  case "$2" in '' | *[!0-9]*) fail "$1 must be a whole number, got '$2'" ;; esac
}

rows_file="${ROWS_FILE:-/customers.csv}"
# A job's spec.parameters (NIGHTSHIFT_PARAM_<key>) win over the template's env.
batch_size="${NIGHTSHIFT_PARAM_BATCH_SIZE:-${BATCH_SIZE:-50}}"
batch_seconds="${NIGHTSHIFT_PARAM_BATCH_SECONDS:-${BATCH_SECONDS:-0.5}}"
fail_exit_code="${FAIL_EXIT_CODE:-}"
shard="${NIGHTSHIFT_SHARD:-0}"
shards="${NIGHTSHIFT_SHARDS:-1}"
attempt="${NIGHTSHIFT_ATTEMPT:-1}"
job="${NIGHTSHIFT_JOB:-(no job)}"

number NIGHTSHIFT_SHARD "$shard"
number NIGHTSHIFT_SHARDS "$shards"
number BATCH_SIZE "$batch_size"
[ -z "$fail_exit_code" ] || number FAIL_EXIT_CODE "$fail_exit_code"
[ "$shards" -ge 1 ] || fail "NIGHTSHIFT_SHARDS must be at least 1"
[ "$shard" -lt "$shards" ] || fail "NIGHTSHIFT_SHARD ($shard) must be less than NIGHTSHIFT_SHARDS ($shards)"
[ "$batch_size" -ge 1 ] || fail "BATCH_SIZE must be at least 1"
[ -r "$rows_file" ] || fail "cannot read ROWS_FILE $rows_file"

# The shard's rows, numbered from 1 after the header: (first, last], split as evenly as possible.
rows=$(($(wc -l <"$rows_file") - 1))
[ "$rows" -ge 0 ] || rows=0
first=$((shard * rows / shards))
last=$(((shard + 1) * rows / shards))
total=$((last - first))

done_rows=0
imported=0
sleeper=

# Resume where the last attempt left off: "done=D imported=I", as this script checkpoints.
checkpoint="${NIGHTSHIFT_CHECKPOINT:-}"
if [ -n "$checkpoint" ]; then
  for field in $checkpoint; do
    case "$field" in
      done=*) done_rows="${field#done=}" ;;
      imported=*) imported="${field#imported=}" ;;
    esac
  done
  number "done in NIGHTSHIFT_CHECKPOINT" "$done_rows"
  number "imported in NIGHTSHIFT_CHECKPOINT" "$imported"
  [ "$done_rows" -le "$total" ] || fail "NIGHTSHIFT_CHECKPOINT says $done_rows rows done of $total"
fi

# A trap runs only once the foreground command ends, so the pause is a background `sleep` and a
# `wait`, which a trapped signal interrupts at once.
on_term() {
  [ -z "$sleeper" ] || kill "$sleeper" 2>/dev/null || true
  echo "shard $shard: SIGTERM received after $done_rows rows; stopping cleanly"
  exit 143
}
trap on_term TERM
trap 'echo "shard $shard: SIGINT received after $done_rows rows; stopping"; exit 130' INT

echo "shard $shard: job $job, attempt $attempt: importing rows $((first + 1))-$last of $rows ($total rows, $batch_size a batch)"
if [ "$done_rows" -gt 0 ]; then
  echo "shard $shard: resuming from checkpoint after row $((first + done_rows)) ($done_rows/$total done)"
  echo "::nightshift:: progress $done_rows/$total resuming after row $((first + done_rows))"
else
  echo "::nightshift:: progress 0/$total starting"
fi
start=$(date +%s)

while [ "$done_rows" -lt "$total" ]; do
  from=$((first + done_rows + 1))
  to=$((from + batch_size - 1))
  [ "$to" -le "$last" ] || to=$last
  # The "import": every well-formed row of the batch counts (4 fields, an email with an @).
  # File line = row + 1 (the header).
  ok=$(sed -n "$((from + 1)),$((to + 1))p" "$rows_file" | awk -F, 'NF == 4 && $3 ~ /@/ { n++ } END { print n + 0 }')
  sleep "$batch_seconds" &
  sleeper=$!
  wait "$sleeper"
  sleeper=
  imported=$((imported + ok))
  done_rows=$((to - first))
  echo "shard $shard: imported rows $from-$to ($done_rows/$total)"
  echo "::nightshift:: progress $done_rows/$total imported rows $from-$to"
  echo "::nightshift:: checkpoint done=$done_rows imported=$imported"
  if [ -n "$fail_exit_code" ]; then
    echo "shard $shard: failing on purpose after the first batch (FAIL_EXIT_CODE=$fail_exit_code)" >&2
    exit "$fail_exit_code"
  fi
done

echo "shard $shard: done, $imported of $total rows imported (this attempt took $(($(date +%s) - start))s)"
echo "::nightshift:: result {\"imported\": $imported, \"shard\": $shard}"
