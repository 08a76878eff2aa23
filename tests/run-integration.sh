#!/usr/bin/env bash
# Runs the integration tests against the local control plane. Starts it when it is not up and
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
cargo test --test integration -- "$@"
