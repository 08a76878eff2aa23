#!/usr/bin/env bash
# Runs the integration tests against the local cluster. Starts it when it is not up and
# then stops it afterwards, also when a test fails; a cluster that was already up is left alone.
set -euo pipefail
cd "$(dirname "$0")/.."
CLUSTER=tests/cluster/cluster.sh

if $CLUSTER status; then
  echo "integration: using the running control plane" >&2
else
  trap '$CLUSTER down' EXIT
  $CLUSTER up
fi
KUBECONFIG_PATH="$($CLUSTER env | sed 's/^export KUBECONFIG=//')"
export NIGHTSHIFT_TEST_KUBECONFIG="$KUBECONFIG_PATH"
export PATH="$(tests/cluster/build-binaries.sh):$PATH"
# The operator `make run` installed watches every namespace: it would act on the tests' jobs
# beside their own operators. It sleeps (0 replicas) while the tests run, and wakes afterwards.
replicas="$(kubectl --kubeconfig "$KUBECONFIG_PATH" -n nightshift get deployment nightshift \
  -o jsonpath='{.spec.replicas}' 2>/dev/null || true)"
if [[ -n "$replicas" && "$replicas" != 0 ]]; then
  echo "integration: scaling make run's operator (nightshift/nightshift) to 0 while the tests run" >&2
  kubectl --kubeconfig "$KUBECONFIG_PATH" -n nightshift scale deployment nightshift --replicas 0 >/dev/null
  kubectl --kubeconfig "$KUBECONFIG_PATH" -n nightshift wait --for=delete pod -l app.kubernetes.io/instance=nightshift --timeout 60s >/dev/null || true
  # (Only on a cluster that was already up, so no other EXIT trap is set.)
  trap 'kubectl --kubeconfig "$KUBECONFIG_PATH" -n nightshift scale deployment nightshift --replicas "$replicas" >/dev/null || true' EXIT
fi
# The plugin's tests run kubectl-nightshift as built: it is another crate's binary (crates/plugin).
cargo build -p nightshift-plugin
if (($# > 0)); then
  cargo test --test integration -- "$@"
else
  # The 5,000-shard test writes 5,000 pods and their failures: beside the others it starves the
  # API server for minutes on two cores (their operators' first LISTs wait). It runs after them.
  heavy=bounds::five_thousand_failing_shards_keep_the_status_small_and_the_job_ends_failed
  cargo test --test integration -- --skip "$heavy"
  cargo test --test integration -- --exact "$heavy"
  # The fault matrix's short form (tests/chaos): per seed, the chart in a namespace of its own
  # and one bulk-import job on the real node meeting three faults the seed picks (seeds 1-3:
  # evict, force-delete, freeze, SIGKILL, leader delete, force-delete and SIGSTOP); invariants
  # from the event log. `make chaos` runs any seed, longer, and the API server and kubelet restarts.
  NIGHTSHIFT_CHAOS=1 CHAOS_SEEDS="${CHAOS_SEEDS:-1,2,3}" CHAOS_DURATION=0 cargo test --test chaos
fi
