#!/usr/bin/env bash
# A real local control plane for tests and `make run`: etcd, kube-apiserver and
# kube-controller-manager as processes on 127.0.0.1, with TLS, RBAC and service-account tokens.
#
#   cluster.sh up      start it (harmless when already up; a half-dead one is restarted)
#   cluster.sh down    stop exactly the processes `up` started, remove the state
#   cluster.sh env     print the `export KUBECONFIG=...` line
#   cluster.sh status  exit 0 when it is up and healthy
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO="$(cd "$HERE/../.." && pwd)"
STATE="${NIGHTSHIFT_CLUSTER_DIR:-$REPO/.cluster}"
COMPONENTS=(etcd kube-apiserver kube-controller-manager)

log() { echo "cluster: $*" >&2; }

pid_of() { cat "$STATE/$1.pid" 2>/dev/null || true; }

# A recorded pid counts only while it is still that binary: pids get reused.
alive() {
  local pid
  pid="$(pid_of "$1")"
  [[ -n "$pid" ]] && [[ "$(cat "/proc/$pid/comm" 2>/dev/null)" == "${1:0:15}" ]]
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

kubectl_() { "$BIN/kubectl" --kubeconfig "$STATE/admin.kubeconfig" "$@"; }

healthy() {
  [[ -f "$STATE/admin.kubeconfig" && -f "$STATE/bin" ]] || return 1
  BIN="$(cat "$STATE/bin")"
  local c
  for c in "${COMPONENTS[@]}"; do alive "$c" || return 1; done
  [[ "$(kubectl_ get --raw /readyz 2>/dev/null)" == ok ]]
}

stop() {
  local c pid
  for c in kube-controller-manager kube-apiserver etcd; do
    if alive "$c"; then
      pid="$(pid_of "$c")"
      kill "$pid" 2>/dev/null || true
      for _ in $(seq 1 100); do alive "$c" || break; sleep 0.1; done
      alive "$c" && kill -9 "$pid" 2>/dev/null || true
    fi
  done
  rm -rf "$STATE"
}

# ---- certificates -----------------------------------------------------------------------------

make_certs() {
  local d="$STATE/pki"
  mkdir -p "$d"
  openssl req -x509 -newkey rsa:2048 -nodes -days 3650 -subj "/CN=nightshift-test-ca" \
    -keyout "$d/ca.key" -out "$d/ca.crt" 2>/dev/null
  # name, subject, extensions
  issue() {
    openssl req -newkey rsa:2048 -nodes -subj "$2" -keyout "$d/$1.key" -out "$d/$1.csr" 2>/dev/null
    printf '%s\n' "$3" >"$d/$1.ext"
    openssl x509 -req -in "$d/$1.csr" -CA "$d/ca.crt" -CAkey "$d/ca.key" -CAcreateserial \
      -days 3650 -extfile "$d/$1.ext" -out "$d/$1.crt" 2>/dev/null
  }
  issue apiserver "/CN=kube-apiserver" "subjectAltName=IP:127.0.0.1,IP:10.0.0.1,DNS:localhost,DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc,DNS:kubernetes.default.svc.cluster.local
extendedKeyUsage=serverAuth"
  issue admin "/O=system:masters/CN=nightshift-admin" "extendedKeyUsage=clientAuth"
  issue controller-manager "/CN=system:kube-controller-manager" "extendedKeyUsage=clientAuth"
  # Service-account token signing (TokenRequest) and verification.
  openssl genrsa -out "$d/sa.key" 2048 2>/dev/null
  openssl rsa -in "$d/sa.key" -pubout -out "$d/sa.pub" 2>/dev/null
}

kubeconfig() { # file, user cert name
  cat >"$1" <<KC
apiVersion: v1
kind: Config
clusters:
- name: nightshift-test
  cluster:
    server: https://127.0.0.1:$API_PORT
    certificate-authority-data: $(base64 -w0 "$STATE/pki/ca.crt")
users:
- name: $2
  user:
    client-certificate-data: $(base64 -w0 "$STATE/pki/$2.crt")
    client-key-data: $(base64 -w0 "$STATE/pki/$2.key")
contexts:
- name: nightshift-test
  context: {cluster: nightshift-test, user: $2}
current-context: nightshift-test
KC
}

# ---- start ------------------------------------------------------------------------------------

spawn() { # name, args...
  local name="$1"; shift
  setsid "$BIN/$name" "$@" >"$STATE/$name.log" 2>&1 </dev/null &
  echo $! >"$STATE/$name.pid"
}

wait_for() { # what, seconds, command...
  local what="$1" secs="$2"; shift 2
  local deadline=$(( $(date +%s) + secs ))
  until "$@" >/dev/null 2>&1; do
    if (( $(date +%s) >= deadline )); then
      log "timed out after ${secs}s waiting for $what; logs in $STATE"
      tail -n 20 "$STATE"/*.log >&2 || true
      exit 1
    fi
    for c in "${COMPONENTS[@]}"; do
      if [[ -f "$STATE/$c.pid" ]] && ! alive "$c"; then
        log "$c exited while waiting for $what:"; tail -n 30 "$STATE/$c.log" >&2; exit 1
      fi
    done
    sleep 0.2
  done
}

start() {
  local t0; t0=$(date +%s%N)
  BIN="$("$HERE/build-binaries.sh")"
  mkdir -p "$STATE"
  echo "$BIN" >"$STATE/bin"
  make_certs
  ETCD_PORT=$(free_port); ETCD_PEER_PORT=$(free_port); API_PORT=$(free_port)
  kubeconfig "$STATE/admin.kubeconfig" admin
  kubeconfig "$STATE/controller-manager.kubeconfig" controller-manager
  printf 'ETCD_PORT=%s\nAPI_PORT=%s\n' "$ETCD_PORT" "$API_PORT" >"$STATE/ports"

  spawn etcd --name default --data-dir "$STATE/etcd" \
    --listen-client-urls "http://127.0.0.1:$ETCD_PORT" --advertise-client-urls "http://127.0.0.1:$ETCD_PORT" \
    --listen-peer-urls "http://127.0.0.1:$ETCD_PEER_PORT" \
    --initial-advertise-peer-urls "http://127.0.0.1:$ETCD_PEER_PORT" \
    --initial-cluster "default=http://127.0.0.1:$ETCD_PEER_PORT" \
    --unsafe-no-fsync --quota-backend-bytes 8589934592 --log-level warn
  wait_for "etcd" 30 curl -fsS "http://127.0.0.1:$ETCD_PORT/health"

  local p="$STATE/pki"
  spawn kube-apiserver --etcd-servers "http://127.0.0.1:$ETCD_PORT" \
    --bind-address 127.0.0.1 --advertise-address 127.0.0.1 --secure-port "$API_PORT" \
    --tls-cert-file "$p/apiserver.crt" --tls-private-key-file "$p/apiserver.key" \
    --client-ca-file "$p/ca.crt" --authorization-mode RBAC \
    --service-account-issuer https://kubernetes.default.svc.cluster.local \
    --service-account-key-file "$p/sa.pub" --service-account-signing-key-file "$p/sa.key" \
    --api-audiences https://kubernetes.default.svc.cluster.local \
    --service-cluster-ip-range 10.0.0.0/24 --allow-privileged=true --endpoint-reconciler-type none \
    --cert-dir "$STATE/apiserver-certs" ${NIGHTSHIFT_APISERVER_FLAGS:-}
  wait_for "kube-apiserver /readyz" 90 bash -c "[[ \"\$('$BIN/kubectl' --kubeconfig '$STATE/admin.kubeconfig' get --raw /readyz)\" == ok ]]"

  # The default controller set: garbage collector, namespace, service accounts and their tokens,
  # job, ttl-after-finished, deployment, replicaset, ... (everything a kubelet-less cluster can run).
  spawn kube-controller-manager --kubeconfig "$STATE/controller-manager.kubeconfig" \
    --authentication-kubeconfig "$STATE/controller-manager.kubeconfig" \
    --authorization-kubeconfig "$STATE/controller-manager.kubeconfig" \
    --bind-address 127.0.0.1 --secure-port 0 --leader-elect=false \
    --use-service-account-credentials --controllers '*' \
    --service-account-private-key-file "$p/sa.key" --root-ca-file "$p/ca.crt" \
    --cluster-signing-cert-file "$p/ca.crt" --cluster-signing-key-file "$p/ca.key" \
    --concurrent-gc-syncs 10 ${NIGHTSHIFT_CONTROLLER_MANAGER_FLAGS:-}
  # The service-account controller creating `default` proves the controller manager works.
  wait_for "kube-controller-manager (the default ServiceAccount)" 60 kubectl_ -n default get serviceaccount default
  local ms=$(( ($(date +%s%N) - t0) / 1000000 ))
  log "up in $((ms / 1000)).$(printf '%03d' $((ms % 1000)))s; $(env_line)"
}

env_line() { echo "export KUBECONFIG=$STATE/admin.kubeconfig"; }

case "${1:-}" in
  up)
    if healthy; then log "already up; $(env_line)"; exit 0; fi
    if [[ -d "$STATE" ]]; then log "found a half-dead cluster in $STATE; restarting it"; stop; fi
    start
    ;;
  down) stop; log "down" ;;
  env)
    [[ -f "$STATE/admin.kubeconfig" ]] || { log "no cluster: run 'make cluster-up'"; exit 1; }
    env_line
    ;;
  status) healthy ;;
  *) echo "usage: $0 up|down|env|status" >&2; exit 2 ;;
esac
