#!/usr/bin/env bash
# Builds the test control plane from source, once, into a cache outside the repo:
# the control plane (kube-apiserver, kube-controller-manager, kube-scheduler), the node (kubelet,
# kube-proxy) and kubectl from k8s.io/kubernetes, etcd, helm, and kwok (fake nodes and the pods on
# them, for the control plane without a node: the benchmark's).
# Prints the folder holding them. With KUBEBUILDER_ASSETS set to a folder that already has
# them, builds nothing and prints that folder.
set -euo pipefail

K8S_VERSION="${K8S_VERSION:-v1.37.2}"
ETCD_VERSION="${ETCD_VERSION:-v3.6.16}"
HELM_VERSION="${HELM_VERSION:-v3.22.0}"
# kwok is not in the cache folder's name (that would rebuild everything for it): kwok.version says.
KWOK_VERSION="${KWOK_VERSION:-v0.8.0}"
KUBERNETES=(kube-apiserver kube-controller-manager kube-scheduler kubelet kube-proxy kubectl)
BINARIES=(etcd "${KUBERNETES[@]}" helm kwok)

log() { echo "build-binaries: $*" >&2; }

has_all() {
  local dir="$1" b
  for b in "${BINARIES[@]}"; do [[ -x "$dir/$b" ]] || return 1; done
  has_kwok "$dir"
}
has_kubernetes() {
  local b
  for b in "${KUBERNETES[@]}"; do [[ -x "$BIN/$b" ]] || return 1; done
}
has_kwok() { [[ -x "$1/kwok" && "$(cat "$1/kwok.version" 2>/dev/null)" == "$KWOK_VERSION" ]]; }

if [[ -n "${KUBEBUILDER_ASSETS:-}" ]]; then
  if has_all "$KUBEBUILDER_ASSETS"; then
    echo "$KUBEBUILDER_ASSETS"
    exit 0
  fi
  log "KUBEBUILDER_ASSETS=$KUBEBUILDER_ASSETS lacks one of: ${BINARIES[*]}; building instead"
fi

CACHE="${NIGHTSHIFT_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/nightshift}"
BIN="$CACHE/k8s-$K8S_VERSION-etcd-$ETCD_VERSION-helm-$HELM_VERSION/bin"
if has_all "$BIN"; then
  echo "$BIN"
  exit 0
fi

command -v go >/dev/null || { log "Go >= 1.26 is required to build the control plane"; exit 1; }
mkdir -p "$BIN"
# One build at a time, even when two `make` runs race.
exec 9>"$CACHE/build.lock"
flock 9
if has_all "$BIN"; then echo "$BIN"; exit 0; fi

# The proxy is the only source reachable here; the checksum database is not.
export GOTOOLCHAIN=local CGO_ENABLED=0 GOSUMDB=off GOFLAGS="-mod=mod -buildvcs=false"
GO_DIRECTIVE="$(go env GOVERSION | sed -E 's/^go([0-9]+\.[0-9]+).*/\1/').0"
WORK="$(mktemp -d "$CACHE/build.XXXXXX")"
trap 'rm -rf "$WORK"' EXIT
start=$(date +%s)

build_kubernetes() {
  local dir="$WORK/kubernetes" minor gomod
  mkdir -p "$dir"
  minor="$(echo "$K8S_VERSION" | cut -d. -f2)"
  log "fetching k8s.io/kubernetes $K8S_VERSION go.mod"
  gomod="$(cd "$dir" && go mod download -json "k8s.io/kubernetes@$K8S_VERSION" | sed -n 's/.*"GoMod": "\(.*\)",*/\1/p')"
  # Take kubernetes' own requirements; point each staging module (replaced by a path in its
  # go.mod) at its published v0.MINOR.PATCH version instead.
  {
    echo "module nightshift.local/k8s-build"
    echo
    echo "go $GO_DIRECTIVE"
    echo
    echo "require k8s.io/kubernetes $K8S_VERSION"
    sed -n '/^require (/,/^)/p' "$gomod"
    echo
    echo "replace ("
    grep -E '^\s*k8s\.io/[a-z0-9-]+ => \./staging/' "$gomod" \
      | sed -E "s#^\s*(k8s\.io/[a-z0-9-]+) => .*#\t\1 => \1 v0.${minor}.${K8S_VERSION##*.}#"
    echo ")"
  } >"$dir/go.mod"
  # godebug defaults the release was built with.
  sed -n '/^godebug/,/^)/p' "$gomod" >>"$dir/go.mod" || true
  local pkg=k8s.io/component-base/version
  local ldflags="-s -w -X $pkg.gitVersion=$K8S_VERSION -X $pkg.gitMajor=1 -X $pkg.gitMinor=$minor \
    -X $pkg.gitTreeState=clean -X $pkg.buildDate=1970-01-01T00:00:00Z \
    -X k8s.io/client-go/pkg/version.gitVersion=$K8S_VERSION"
  log "building kube-apiserver, kube-controller-manager, kube-scheduler, kubelet, kube-proxy, kubectl $K8S_VERSION (the long part)"
  (cd "$dir" && go build -trimpath -ldflags "$ldflags" -o "$BIN/" \
    k8s.io/kubernetes/cmd/kube-apiserver \
    k8s.io/kubernetes/cmd/kube-controller-manager \
    k8s.io/kubernetes/cmd/kube-scheduler \
    k8s.io/kubernetes/cmd/kubelet \
    k8s.io/kubernetes/cmd/kube-proxy \
    k8s.io/kubernetes/cmd/kubectl)
}

build_etcd() {
  local dir="$WORK/etcd"
  mkdir -p "$dir"
  cat >"$dir/go.mod" <<MOD
module nightshift.local/etcd-build

go $GO_DIRECTIVE

require go.etcd.io/etcd/server/v3 $ETCD_VERSION
MOD
  log "building etcd $ETCD_VERSION"
  (cd "$dir" && go build -trimpath \
    -ldflags "-s -w -X go.etcd.io/etcd/api/v3/version.GitSHA=release-$ETCD_VERSION" \
    -o "$BIN/etcd" go.etcd.io/etcd/server/v3)
}

build_helm() {
  log "building helm $HELM_VERSION"
  GOBIN="$WORK/helm-bin" GOFLAGS=-buildvcs=false go install -trimpath \
    -ldflags "-s -w -X helm.sh/helm/v3/internal/version.version=$HELM_VERSION" \
    "helm.sh/helm/v3/cmd/helm@$HELM_VERSION"
  mv "$WORK/helm-bin/helm" "$BIN/helm"
}

build_kwok() {
  log "building kwok $KWOK_VERSION"
  GOBIN="$WORK/kwok-bin" GOFLAGS=-buildvcs=false go install -trimpath -ldflags "-s -w" \
    "sigs.k8s.io/kwok/cmd/kwok@$KWOK_VERSION"
  mv "$WORK/kwok-bin/kwok" "$BIN/kwok"
  echo "$KWOK_VERSION" >"$BIN/kwok.version"
}

[[ -x "$BIN/etcd" ]] || build_etcd
[[ -x "$BIN/helm" ]] || build_helm
has_kwok "$BIN" || build_kwok
has_kubernetes || build_kubernetes
has_all "$BIN" || { log "build finished without all binaries in $BIN"; exit 1; }
log "built in $(( $(date +%s) - start ))s: $(du -sh "$BIN" | cut -f1) in $BIN"
echo "$BIN"
