#!/usr/bin/env bash
# `make run`: the path a user takes, on the local one-node cluster. Starts the cluster (control
# plane and a real node; builds what it needs on first use), installs the chart with the image
# built here, applies an example job, watches `kubectl get backgroundjobs -w` until it succeeds,
# and says how to read a worker's logs. The operator keeps running in the cluster afterwards.
#
#   EXAMPLE=examples/flaky-shards.yaml make run     another example
set -euo pipefail
cd "$(dirname "$0")/.."
EXAMPLE="${EXAMPLE:-examples/bulk-import.yaml}"
NAMESPACE=nightshift
t0=$(date +%s)

if [[ $(id -u) != 0 ]]; then
  echo "make run: the local cluster runs a real node (containerd, a network namespace, iptables), which needs root: run 'sudo make run'" >&2
  exit 1
fi

tests/cluster/cluster.sh up
eval "$(tests/cluster/cluster.sh env)"
export PATH="$(tests/cluster/build-binaries.sh):$PATH"

# The operator image the node runs: rebuilt and imported when the code changed since `up`.
tests/cluster/images.sh import "$(tests/cluster/cluster.sh containerd-address)"

echo "--- helm upgrade --install nightshift charts/nightshift -n $NAMESPACE"
# The image's digest as a pod annotation: a rebuilt image (same tag) rolls the operator pods.
helm upgrade --install nightshift charts/nightshift --namespace "$NAMESPACE" --create-namespace \
  --set statusFoldSeconds=3 --set-string "podAnnotations.nightshift\.dev/image-digest=$(tests/cluster/images.sh digest nightshift)" \
  --wait --timeout 180s
kubectl -n "$NAMESPACE" get pods -l app.kubernetes.io/instance=nightshift -o wide
echo "leader: $(kubectl -n "$NAMESPACE" get lease nightshift-leader -o jsonpath='{.spec.holderIdentity}')"

job="$(kubectl create --dry-run=client -o name -f "$EXAMPLE")"
kubectl delete --ignore-not-found --wait -f "$EXAMPLE" >/dev/null
echo "--- kubectl apply -f $EXAMPLE"
kubectl apply -f "$EXAMPLE"
kubectl get backgroundjobs -w &
watch_pid=$!
trap 'kill $watch_pid 2>/dev/null || true' EXIT
if ! kubectl wait --for=jsonpath='{.status.phase}'=Succeeded --timeout=600s "$job" >/dev/null; then
  kubectl get "$job" -o yaml >&2
  echo "make run: $job did not succeed within 10 minutes" >&2
  exit 1
fi
sleep 1 # let the watch print its last line
kill $watch_pid 2>/dev/null || true
echo
kubectl get backgroundjobs -o wide
name="${job#*/}"
pod="$(kubectl get pods -l "nightshift.dev/job=$name,nightshift.dev/shard=0" -o name | head -n 1)"
echo
echo "$job succeeded in $(( $(date +%s) - t0 ))s (from 'make run')."
echo "Its workers ran in real containers on the node; their output:"
echo "  eval \"\$(make cluster-env)\"; export PATH=\"\$(make -s binaries):\$PATH\""
echo "  kubectl logs ${pod:-pod/$name-0-1}"
echo "  kubectl logs -l nightshift.dev/job=$name --prefix"
echo "Or with the plugin (make plugin): kubectl nightshift logs $name, status $name, watch, dashboard."
echo "The operator keeps running (kubectl -n $NAMESPACE get pods); 'make cluster-down' stops everything."
