# nightshift: build, test and run against a real local control plane.
# `make help` lists the targets.

CARGO   ?= cargo
CLUSTER := tests/cluster/cluster.sh

.DEFAULT_GOAL := help
.PHONY: help root run build plugin crd chart-crd lint unit integration test chaos binaries cluster-up cluster-down cluster-env image test-image bench

help: ## list the targets
	@grep -hE '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-14s %s\n", $$1, $$2}'

run: ## a one-node cluster, the chart installed, an example job run on real pods and watched (root)
	tests/run-local.sh

build: ## build the nightshift and kubectl-nightshift binaries
	$(CARGO) build --workspace

plugin: ## install kubectl-nightshift into ~/.cargo/bin, so that `kubectl nightshift` works
	$(CARGO) install --locked --path crates/plugin

crd: ## regenerate crds/nightshift.yaml (the CRDs) from the code (and the chart's copy)
	$(CARGO) run -q -- crd > crds/nightshift.yaml
	cp crds/nightshift.yaml charts/nightshift/crds/nightshift.yaml

chart-crd: ## copy crds/nightshift.yaml into the Helm chart
	cp crds/nightshift.yaml charts/nightshift/crds/nightshift.yaml

lint: ## cargo fmt --check and clippy with warnings denied
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings

unit: ## unit and property tests (no cluster)
	$(CARGO) test --workspace --lib --bins --test chart

integration: ## integration tests; starts the control plane if it is not up, and stops what it started
	tests/run-integration.sh

test: root lint unit integration ## everything CI runs (root: the cluster has a real node)

chaos: root ## the fault matrix on the running local cluster: SEED=1[,2,...] DURATION=0 (short) or seconds (long, with a schedule); CHAOS_FAULTS=evict,... (restart-apiserver and restart-kubelet only when named)
	@$(CLUSTER) status || { echo "make chaos: the local cluster is not up: make cluster-up" >&2; exit 1; }
	PATH="$$(tests/cluster/build-binaries.sh):$$PATH" NIGHTSHIFT_CHAOS=1 NIGHTSHIFT_TEST_KUBECONFIG="$${NIGHTSHIFT_TEST_KUBECONFIG:-$$($(CLUSTER) env | sed 's/^export KUBECONFIG=//')}" \
	  CHAOS_SEEDS="$(SEED)" CHAOS_DURATION="$(DURATION)" $(CARGO) test --test chaos

root:
	@[ "$$(id -u)" = 0 ] || { echo "make: the local cluster runs a real node (containerd, a network namespace, iptables), which needs root: run 'sudo make $(MAKECMDGOALS)'" >&2; exit 1; }

binaries: ## build etcd, the Kubernetes control plane and node, kubectl and helm into the cache; prints the folder
	@tests/cluster/build-binaries.sh

cluster-up: ## start the local one-node cluster (builds the binaries and images on first use; root)
	@$(CLUSTER) up

cluster-down: ## stop the local cluster and remove all of it (processes, namespace, mounts, state)
	@$(CLUSTER) down

image: ## build a static binary and the nightshift:VERSION image with buildah (no Docker daemon)
	tests/image/build.sh

test-image: ## build the image, then run `nightshift --version` and `nightshift crd` in it with podman
	tests/image/test.sh

cluster-env: ## print the export KUBECONFIG=... line for the local cluster
	@$(CLUSTER) env

bench: ## nightshift vs the Job controller vs raw pod creation; writes BENCHMARKS.md (N=10000, BIG=100000: the scale runs)
	N="$(N)" BIG="$(BIG)" bench/run.sh
