#!/usr/bin/env bash
# `make run`: the local control plane, the CRD, the operator and the pod simulator, and an
# example job, watched with `kubectl get backgroundjobs -w` until it succeeds. The operator keeps
# running afterwards (apply more examples from another shell) until Ctrl-C.
set -euo pipefail
cd "$(dirname "$0")/.."
EXAMPLE="${EXAMPLE:-examples/bulk-import.yaml}"

tests/cluster/cluster.sh up
eval "$(tests/cluster/cluster.sh env)"
export PATH="$(tests/cluster/build-binaries.sh):$PATH"
STATE="$(dirname "$KUBECONFIG")"

kubectl apply -f crds/
kubectl wait --for condition=established --timeout=60s crd/backgroundjobs.nightshift.dev
kubectl -n default wait --for=create --timeout=60s serviceaccount/default >/dev/null

cargo build --quiet
pids=()
cleanup() { kill "${pids[@]}" 2>/dev/null || true; }
trap cleanup EXIT
# Heartbeats reach the status every 3 s here (default 15 s), so progress moves between shards.
target/debug/nightshift run --status-fold-seconds 3 --metrics-address "127.0.0.1:${METRICS_PORT:-8080}" >"$STATE/operator.log" 2>&1 &
pids+=($!)
target/debug/nightshift simulate >"$STATE/simulator.log" 2>&1 &
pids+=($!)
echo "operator and pod simulator running; logs in $STATE/operator.log and $STATE/simulator.log"

job="$(kubectl create --dry-run=client -o name -f "$EXAMPLE")"
kubectl delete --ignore-not-found --wait -f "$EXAMPLE" >/dev/null
kubectl apply -f "$EXAMPLE"
kubectl get backgroundjobs -w &
pids+=($!)
kubectl wait --for=jsonpath='{.status.phase}'=Succeeded --timeout=300s "$job" >/dev/null
sleep 1 # let the watch print the last line
kill "${pids[-1]}" 2>/dev/null || true
echo
kubectl get backgroundjobs -o wide
echo
echo "$job succeeded. The operator keeps running: in another shell,"
echo "  eval \"\$(make cluster-env)\"; kubectl apply -f examples/flaky-shards.yaml; kubectl get bgj -w"
echo "Ctrl-C stops the operator; 'make cluster-down' stops the control plane."
wait "${pids[0]}"
