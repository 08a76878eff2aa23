# shellcheck shell=bash
# The local cluster's certificates and kubeconfigs; sourced by cluster.sh, whose settings
# (STATE, NODE_IP, SERVICE_IP, NODE_NAME) and helpers (with_node) it uses.

make_certs() {
  local d="$STATE/pki"
  mkdir -p "$d"
  openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 3650 \
    -subj "/CN=nightshift-test-ca" -keyout "$d/ca.key" -out "$d/ca.crt" 2>/dev/null
  # name, subject, extensions
  issue() {
    openssl req -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -subj "$2" \
      -keyout "$d/$1.key" -out "$d/$1.csr" 2>/dev/null
    printf '%s\n' "$3" >"$d/$1.ext"
    openssl x509 -req -in "$d/$1.csr" -CA "$d/ca.crt" -CAkey "$d/ca.key" -CAcreateserial \
      -days 3650 -extfile "$d/$1.ext" -out "$d/$1.crt" 2>/dev/null
  }
  local client="extendedKeyUsage=clientAuth"
  issue apiserver "/CN=kube-apiserver" "subjectAltName=IP:127.0.0.1,IP:$NODE_IP,IP:$SERVICE_IP,DNS:localhost,DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc,DNS:kubernetes.default.svc.cluster.local
extendedKeyUsage=serverAuth"
  issue admin "/O=system:masters/CN=nightshift-admin" "$client"
  issue controller-manager "/CN=system:kube-controller-manager" "$client"
  issue scheduler "/CN=system:kube-scheduler" "$client"
  # kwok writes the fake node's and its pods' status: a cluster admin, by a name of its own.
  issue kwok "/O=system:masters/CN=kwok" "$client"
  if with_node; then
    issue kubelet "/O=system:nodes/CN=system:node:$NODE_NAME" "$client"
    issue kube-proxy "/CN=system:kube-proxy" "$client"
    issue apiserver-kubelet-client "/O=system:masters/CN=kube-apiserver-kubelet-client" "$client"
    issue kubelet-serving "/O=system:nodes/CN=system:node:$NODE_NAME" "subjectAltName=IP:$NODE_IP,DNS:$NODE_NAME
extendedKeyUsage=serverAuth"
  fi
  # Service-account token signing (TokenRequest) and verification.
  openssl genrsa -out "$d/sa.key" 2048 2>/dev/null
  openssl rsa -in "$d/sa.key" -pubout -out "$d/sa.pub" 2>/dev/null
}

kubeconfig() { # file, server, user cert name
  cat >"$1" <<KC
apiVersion: v1
kind: Config
clusters:
- name: nightshift-test
  cluster:
    server: $2
    certificate-authority-data: $(base64 -w0 "$STATE/pki/ca.crt")
users:
- name: $3
  user:
    client-certificate-data: $(base64 -w0 "$STATE/pki/$3.crt")
    client-key-data: $(base64 -w0 "$STATE/pki/$3.key")
contexts:
- name: nightshift-test
  context: {cluster: nightshift-test, user: $3}
current-context: nightshift-test
KC
}
