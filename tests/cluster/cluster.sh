#!/usr/bin/env bash
# The local cluster for tests and `make run`: a real one-node Kubernetes cluster. etcd,
# kube-apiserver, kube-controller-manager, kube-scheduler, and a node (containerd + runc + the
# CNI bridge, kubelet, kube-proxy), all inside a network namespace this script creates, so that
# pods, their bridge and Service IPs have no route off the machine. The host reaches the API
# server over loopback only, through a socat pair joined by a unix socket.
#
#   cluster.sh up      start it (harmless when already up; a half-dead one is restarted)
#   cluster.sh down    stop exactly what `up` started, unmount, remove the namespace and state,
#                      restore the host-wide settings the kubelet changes
#   cluster.sh env     print the `export KUBECONFIG=...` line
#   cluster.sh status  exit 0 when it is up and healthy
#   cluster.sh containerd-address   the node's containerd socket (for tests/cluster/images.sh)
#   cluster.sh netns   the control plane's network namespace (the bench runs its operator there)
#   cluster.sh restart apiserver|kubelet   stop that one process and start it again with the same
#                      command line (a fault for `make chaos`); returns once it serves again
#
# Beside the real node `nightshift-node`, kwok plays a fake node, `kwok-node` (label type=kwok,
# taint kwok.x-k8s.io/node=fake:NoSchedule), and the pods kube-scheduler binds to it: pods reach it
# with a node selector (type: kwok) and a toleration of the taint, so no other pod ever lands there
# (`kubectl get nodes` lists both; the fake one runs nothing). kwok manages only nodes labelled
# type=kwok: the real node and its pods are the kubelet's. Its stages: tests/cluster/kwok.yaml (pods
# run at once, as the benchmark wants) and tests/cluster/kwok-steered.yaml (pods a test steers
# through annotations: the integration tests' node, tests/integration/support/node.rs).
#
# NIGHTSHIFT_NODE=0 starts the control plane and the fake node alone, without the real node: the
# benchmark's cluster. NIGHTSHIFT_CLUSTER_DIR names another state folder (default .cluster/ of
# the clone), so two clusters can run side by side (at most one with a real node).
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO="$(cd "$HERE/../.." && pwd)"
STATE="${NIGHTSHIFT_CLUSTER_DIR:-$REPO/.cluster}"
mkdir -p "$(dirname "$STATE")"
STATE="$(cd "$(dirname "$STATE")" && pwd)/$(basename "$STATE")"
ID="$(printf '%s' "$STATE" | sha256sum | cut -c1-8)"
NETNS="nightshift-$ID"
RUN="/run/nightshift-$ID" # sockets: unix socket paths must stay short
NODE_NAME=nightshift-node
NODE_IP=10.200.0.1
POD_CIDR=10.244.0.0/24
SERVICE_CIDR=10.96.0.0/24
SERVICE_IP=10.96.0.1
# Host-wide settings the kubelet changes (it sets the values it needs for its OOM policy).
SYSCTLS=(vm/overcommit_memory vm/panic_on_oom kernel/panic kernel/panic_on_oops
  kernel/keys/root_maxkeys kernel/keys/root_maxbytes)

log() { echo "cluster: $*" >&2; }

# shellcheck source=tests/cluster/pki.sh
source "$HERE/pki.sh"
# shellcheck source=tests/cluster/nodes.sh
source "$HERE/nodes.sh"

with_node() {
  if [[ -f "$STATE/mode" ]]; then [[ "$(cat "$STATE/mode")" == node ]]; else [[ "${NIGHTSHIFT_NODE:-1}" != 0 ]]; fi
}
components() {
  echo etcd kube-apiserver socat-inside socat-host kube-controller-manager
  echo kube-scheduler kwok
  if with_node; then echo containerd kubelet kube-proxy; fi
}

pid_of() { cat "$STATE/$1.pid" 2>/dev/null || true; }
comm_of() { case "$1" in socat-*) echo socat ;; *) echo "${1:0:15}" ;; esac; }

# A recorded pid counts only while it is still that binary: pids get reused.
alive() {
  local pid
  pid="$(pid_of "$1")"
  [[ -n "$pid" ]] && [[ "$(cat "/proc/$pid/comm" 2>/dev/null)" == "$(comm_of "$1")" ]]
}

port_free() { ! (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

free_port() {
  local p
  for _ in $(seq 1 200); do
    p=$(( 20000 + RANDOM % 30000 ))
    if port_free "$p"; then echo "$p"; return; fi
  done
  log "no free port found"; exit 1
}

inside() { nsenter --net="/run/netns/$NETNS" -- "$@"; }
kubectl_() { "$BIN/kubectl" --kubeconfig "$STATE/admin.kubeconfig" "$@"; }

node_ready() { # name
  [[ "$(kubectl_ get node "$1" -o jsonpath='{.status.conditions[?(@.type=="Ready")].status}' 2>/dev/null)" == True ]]
}

healthy() {
  [[ -f "$STATE/admin.kubeconfig" && -f "$STATE/bin" ]] || return 1
  BIN="$(cat "$STATE/bin")"
  local c
  for c in $(components); do alive "$c" || return 1; done
  [[ "$(kubectl_ get --raw /readyz 2>/dev/null)" == ok ]] || return 1
  node_ready kwok-node || return 1
  if with_node; then node_ready "$NODE_NAME"; fi
}

need_root() {
  if [[ $(id -u) != 0 ]]; then
    log "the local cluster runs a real node (containerd, a network namespace, iptables), which needs root: run this as root (sudo make ...), or use NIGHTSHIFT_NODE=0 for the control plane alone"
    exit 1
  fi
}

# ---- stop -------------------------------------------------------------------------------------

stop_component() {
  local c="$1" pid
  alive "$c" || return 0
  pid="$(pid_of "$c")"
  kill "$pid" 2>/dev/null || true
  for _ in $(seq 1 100); do alive "$c" || return 0; sleep 0.1; done
  kill -9 "$pid" 2>/dev/null || true
}

# Every process in the kubelet's pod cgroups, in every hierarchy (cgroup v1) or the one (v2).
kill_pods() {
  local d
  for _ in 1 2 3; do
    for d in /sys/fs/cgroup/kubepods /sys/fs/cgroup/*/kubepods; do
      [[ -d "$d" ]] || continue
      find "$d" -name cgroup.procs -exec cat {} + 2>/dev/null | xargs -r kill -9 2>/dev/null || true
    done
    sleep 0.2
  done
  # The shims of this containerd (their pod processes are gone now).
  pgrep -f "containerd-shim.*-address $RUN/containerd.sock" | xargs -r kill -9 2>/dev/null || true
  for d in /sys/fs/cgroup/kubepods /sys/fs/cgroup/*/kubepods; do
    [[ -d "$d" ]] && find "$d" -depth -type d -exec rmdir {} + 2>/dev/null || true
  done
}

unmount_ours() {
  local m
  # Deepest first; /run/netns/cni-* are the pods' network namespaces, made by this containerd.
  while read -r m; do umount -l "$m" 2>/dev/null || true; done < <(
    awk '{print $2}' /proc/mounts | grep -E "^($STATE|$RUN)/" | sort -r
  )
  if [[ -f "$STATE/netns.before" ]]; then
    for m in /run/netns/cni-*; do
      [[ -e "$m" ]] || continue
      grep -qxF "$m" "$STATE/netns.before" && continue
      umount -l "$m" 2>/dev/null || true
      rm -f "$m"
    done
  fi
}

restore_host() {
  local s
  if [[ -f "$STATE/sysctl.saved" ]]; then
    while read -r s v; do echo "$v" >"/proc/sys/$s" 2>/dev/null || true; done <"$STATE/sysctl.saved"
  fi
  # What the kubelet and CNI write outside the state folder.
  rm -f /var/lib/cni/results/"nightshift-$ID"-* 2>/dev/null || true
  rmdir /var/lib/cni/results /var/lib/cni 2>/dev/null || true
  if [[ -d /var/log/containers ]]; then
    find /var/log/containers -maxdepth 1 -type l -lname "$STATE/*" -delete 2>/dev/null || true
    rmdir /var/log/containers 2>/dev/null || true
  fi
  # Folders the node's tools make on the host: gone again when `up` made them (and they are empty).
  local d
  for d in /run/containerd /run/netns; do
    [[ -d "$d" ]] || continue
    grep -qxF "$d" "$STATE/host.before" 2>/dev/null && continue
    [[ "$d" == /run/netns ]] && { umount "$d" 2>/dev/null || true; }
    find "$d" -depth -type d -empty -delete 2>/dev/null || true
  done
}

stop() {
  local c
  if with_node; then
    stop_component kube-proxy
    stop_component kubelet
    kill_pods
    stop_component containerd
  fi
  for c in kwok kube-scheduler kube-controller-manager socat-host socat-inside kube-apiserver etcd; do
    stop_component "$c"
  done
  unmount_ours
  if [[ -e "/run/netns/$NETNS" ]]; then
    # Anything still inside (a shim that outlived its containerd) goes with it.
    ip netns pids "$NETNS" 2>/dev/null | xargs -r kill -9 2>/dev/null || true
    ip netns delete "$NETNS" 2>/dev/null || true
  fi
  restore_host
  rm -rf "$STATE" "$RUN"
}

# ---- start ------------------------------------------------------------------------------------

spawn() { # name, command... (run inside the namespace)
  local name="$1"; shift
  setsid nsenter --net="/run/netns/$NETNS" -- "$@" >"$STATE/$name.log" 2>&1 </dev/null &
  recorded "$name" $!
}

# Records a launched component's pid once the launcher (bash, setsid, nsenter) has become the
# binary: alive() goes by the binary's name, and a check in between read a starting component as
# one that had exited (CI saw "containerd exited" with an empty log). Bounded: a launcher that
# fails exits, one that never becomes the binary is taken as it is after 10 s.
recorded() { # name, pid
  local want; want="$(comm_of "$1")"
  for _ in $(seq 1 200); do
    [[ "$(cat "/proc/$2/comm" 2>/dev/null || echo gone)" =~ ^($want|gone)$ ]] && break
    sleep 0.05
  done
  echo "$2" >"$STATE/$1.pid"
}

wait_for() { # what, seconds, command...
  local what="$1" secs="$2"; shift 2
  local deadline=$(( $(date +%s) + secs )) c
  until "$@" >/dev/null 2>&1; do
    if (( $(date +%s) >= deadline )); then
      log "timed out after ${secs}s waiting for $what; logs in $STATE"
      for c in $(components); do [[ -f "$STATE/$c.log" ]] && { echo "--- $c" >&2; tail -n 8 "$STATE/$c.log" >&2; }; done
      exit 1
    fi
    for c in $(components); do
      if [[ -f "$STATE/$c.pid" ]] && ! alive "$c"; then
        log "$c exited while waiting for $what:"; tail -n 30 "$STATE/$c.log" >&2; exit 1
      fi
    done
    sleep 0.2
  done
}

make_netns() {
  ip netns add "$NETNS"
  inside ip link set lo up
  # The node's address: on lo (no dummy interface on these kernels; the kubelet only refuses
  # loopback addresses, not loopback interfaces).
  inside ip addr add "$NODE_IP/32" dev lo
  if with_node; then
    inside sysctl -qw net.ipv4.ip_forward=1
    inside sysctl -qw net.bridge.bridge-nf-call-iptables=1
  fi
}

# kube-scheduler, for both nodes. Its client limit is raised from 50 requests/s: thousands of
# pods are bound at once to the fake node.
start_scheduler() {
  kubeconfig "$STATE/scheduler.kubeconfig" "https://127.0.0.1:6443" scheduler
  spawn kube-scheduler "$BIN/kube-scheduler" --kubeconfig "$STATE/scheduler.kubeconfig" \
    --authentication-kubeconfig "$STATE/scheduler.kubeconfig" --authorization-kubeconfig "$STATE/scheduler.kubeconfig" \
    --bind-address 127.0.0.1 --secure-port 10259 --leader-elect=false --kube-api-qps 1000 --kube-api-burst 2000
}

start() {
  local t0; t0=$(date +%s%N)
  need_root
  BIN="$("$HERE/build-binaries.sh")"
  # The control plane alone needs socat of the node's packages (its way to the API server).
  if [[ "${NIGHTSHIFT_NODE:-1}" != 0 ]] || ! command -v socat >/dev/null; then "$HERE/setup.sh"; fi
  mkdir -p "$STATE"
  echo "$BIN" >"$STATE/bin"
  if [[ "${NIGHTSHIFT_NODE:-1}" != 0 ]]; then echo node >"$STATE/mode"; else echo control-plane >"$STATE/mode"; fi
  ls -d /run/netns/cni-* 2>/dev/null >"$STATE/netns.before" || true
  ls -d /run/containerd /run/netns 2>/dev/null >"$STATE/host.before" || true
  make_netns
  make_certs
  API_PORT=$(free_port)
  local images_pid=""
  if with_node; then
    start_node_runtime
    # Images are imported while the control plane starts.
    ( wait_for "containerd" 30 test -S "$RUN/containerd.sock"
      "$HERE/images.sh" import "$RUN/containerd.sock" ) >"$STATE/images.log" 2>&1 &
    images_pid=$!
  fi
  kubeconfig "$STATE/admin.kubeconfig" "https://127.0.0.1:$API_PORT" admin
  kubeconfig "$STATE/controller-manager.kubeconfig" "https://127.0.0.1:6443" controller-manager
  printf 'API_PORT=%s\n' "$API_PORT" >"$STATE/ports"

  spawn etcd "$BIN/etcd" --name default --data-dir "$STATE/etcd" \
    --listen-client-urls http://127.0.0.1:2379 --advertise-client-urls http://127.0.0.1:2379 \
    --listen-peer-urls http://127.0.0.1:2380 --initial-advertise-peer-urls http://127.0.0.1:2380 \
    --initial-cluster default=http://127.0.0.1:2380 \
    --unsafe-no-fsync --quota-backend-bytes 8589934592 --log-level warn

  # The host's way in: 127.0.0.1:API_PORT -> unix socket -> 127.0.0.1:6443 in the namespace.
  mkdir -p "$RUN"
  spawn socat-inside socat "UNIX-LISTEN:$RUN/apiserver.sock,fork,unlink-early" TCP:127.0.0.1:6443
  setsid socat "TCP-LISTEN:$API_PORT,bind=127.0.0.1,fork,reuseaddr" "UNIX-CONNECT:$RUN/apiserver.sock" \
    >"$STATE/socat-host.log" 2>&1 </dev/null &
  recorded socat-host $!

  wait_for "etcd" 30 inside curl -fsS http://127.0.0.1:2379/health
  local p="$STATE/pki" node_flags=(--endpoint-reconciler-type none)
  if with_node; then
    # The default endpoint reconciler publishes `kubernetes` = NODE_IP:6443, which kube-proxy
    # makes reachable from pods as SERVICE_IP:443: in-cluster config works as anywhere.
    node_flags=(--kubelet-client-certificate "$p/apiserver-kubelet-client.crt"
      --kubelet-client-key "$p/apiserver-kubelet-client.key"
      --kubelet-certificate-authority "$p/ca.crt" --kubelet-preferred-address-types InternalIP)
  fi
  spawn kube-apiserver "$BIN/kube-apiserver" --etcd-servers http://127.0.0.1:2379 \
    --bind-address 0.0.0.0 --advertise-address "$NODE_IP" --secure-port 6443 \
    --tls-cert-file "$p/apiserver.crt" --tls-private-key-file "$p/apiserver.key" \
    --client-ca-file "$p/ca.crt" --authorization-mode Node,RBAC --enable-admission-plugins NodeRestriction \
    --service-account-issuer https://kubernetes.default.svc.cluster.local \
    --service-account-key-file "$p/sa.pub" --service-account-signing-key-file "$p/sa.key" \
    --api-audiences https://kubernetes.default.svc.cluster.local \
    --service-cluster-ip-range "$SERVICE_CIDR" --allow-privileged=true "${node_flags[@]}" \
    --cert-dir "$STATE/apiserver-certs" ${NIGHTSHIFT_APISERVER_FLAGS:-}
  wait_for "kube-apiserver /readyz" 90 bash -c "[[ \"\$('$BIN/kubectl' --kubeconfig '$STATE/admin.kubeconfig' get --raw /readyz)\" == ok ]]"

  # The default controller set: garbage collector, namespaces, service accounts and their tokens,
  # job, ttl-after-finished, deployment, replicaset, endpoints, node lifecycle ...
  spawn kube-controller-manager "$BIN/kube-controller-manager" --kubeconfig "$STATE/controller-manager.kubeconfig" \
    --authentication-kubeconfig "$STATE/controller-manager.kubeconfig" \
    --authorization-kubeconfig "$STATE/controller-manager.kubeconfig" \
    --bind-address 127.0.0.1 --secure-port 0 --leader-elect=false \
    --use-service-account-credentials --controllers '*' \
    --service-account-private-key-file "$p/sa.key" --root-ca-file "$p/ca.crt" \
    --cluster-signing-cert-file "$p/ca.crt" --cluster-signing-key-file "$p/ca.key" \
    --service-cluster-ip-range "$SERVICE_CIDR" \
    --concurrent-gc-syncs 10 ${NIGHTSHIFT_CONTROLLER_MANAGER_FLAGS:-}

  start_scheduler
  if with_node; then
    if ! wait "$images_pid"; then
      log "importing the images into the node failed:"; cat "$STATE/images.log" >&2; exit 1
    fi
    start_kubelet
    wait_for "the node to be Ready" 60 node_ready "$NODE_NAME"
    # After the node exists: kube-proxy exits when it sees the node's IPs change.
    start_kube_proxy
  fi
  start_fake_node
  # The service-account controller creating `default` proves the controller manager works.
  wait_for "kube-controller-manager (the default ServiceAccount)" 60 kubectl_ -n default get serviceaccount default
  local ms=$(( ($(date +%s%N) - t0) / 1000000 ))
  log "up in $((ms / 1000)).$(printf '%03d' $((ms % 1000)))s ($(cat "$STATE/mode")); $(env_line)"
}

# Stops a running component and starts it again with the command line it runs with now (read
# from /proc), its log appended to; then waits until the cluster is healthy again.
restart() {
  local c="$1" pid args
  need_root
  BIN="$(cat "$STATE/bin")"
  alive "$c" || { log "$c is not running"; exit 1; }
  pid="$(pid_of "$c")"
  mapfile -d '' args <"/proc/$pid/cmdline"
  stop_component "$c"
  echo "--- restarted by cluster.sh restart at $(date -u +%FT%TZ)" >>"$STATE/$c.log"
  setsid nsenter --net="/run/netns/$NETNS" -- "${args[@]}" >>"$STATE/$c.log" 2>&1 </dev/null &
  recorded "$c" $!
  wait_for "$c to serve again" 90 healthy
  log "$c restarted (pid $pid -> $(pid_of "$c"))"
}

env_line() { echo "export KUBECONFIG=$STATE/admin.kubeconfig"; }

case "${1:-}" in
  up)
    if healthy; then log "already up; $(env_line)"; exit 0; fi
    need_root
    if [[ -d "$STATE" || -e "/run/netns/$NETNS" ]]; then log "found a half-dead cluster in $STATE; restarting it"; stop; fi
    start
    ;;
  down)
    [[ -d "$STATE" || -e "/run/netns/$NETNS" ]] || { log "not running"; exit 0; }
    need_root
    stop; log "down"
    ;;
  env)
    [[ -f "$STATE/admin.kubeconfig" ]] || { log "no cluster: run 'make cluster-up'"; exit 1; }
    env_line
    ;;
  status) healthy ;;
  containerd-address) echo "$RUN/containerd.sock" ;;
  netns) echo "/run/netns/$NETNS" ;;
  restart)
    case "${2:-}" in
      apiserver) restart kube-apiserver ;;
      kubelet) restart kubelet ;;
      *) echo "usage: $0 restart apiserver|kubelet" >&2; exit 2 ;;
    esac
    ;;
  *) echo "usage: $0 up|down|env|status|containerd-address|netns|restart apiserver|kubelet" >&2; exit 2 ;;
esac
