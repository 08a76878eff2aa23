# shellcheck shell=bash
# The local cluster's two nodes: the real one (containerd with the CNI bridge, the kubelet,
# kube-proxy) and the fake one kwok plays. Sourced by cluster.sh, whose settings (STATE, RUN, BIN,
# ID, NODE_NAME, NODE_IP, POD_CIDR, SYSCTLS) and helpers (spawn, kubeconfig, kubectl_, wait_for,
# node_ready) they use.

start_node_runtime() {
  mkdir -p "$STATE/cni" "$STATE/containerd" "$RUN"
  cat >"$STATE/cni/10-nightshift.conflist" <<CNI
{
  "cniVersion": "1.0.0",
  "name": "nightshift-$ID",
  "plugins": [{
    "type": "bridge", "bridge": "cni0", "isGateway": true, "ipMasq": false, "hairpinMode": true,
    "ipam": {"type": "host-local", "ranges": [[{"subnet": "$POD_CIDR"}]],
             "routes": [{"dst": "0.0.0.0/0"}], "dataDir": "$STATE/cni-ipam"}
  }]
}
CNI
  cat >"$STATE/containerd/config.toml" <<TOML
version = 2
root = "$STATE/containerd/root"
state = "$RUN/containerd"
disabled_plugins = ["io.containerd.snapshotter.v1.btrfs", "io.containerd.snapshotter.v1.zfs",
  "io.containerd.snapshotter.v1.devmapper", "io.containerd.snapshotter.v1.aufs"]
[grpc]
  address = "$RUN/containerd.sock"
[plugins."io.containerd.internal.v1.opt"]
  path = "$STATE/containerd/opt"
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "registry.k8s.io/pause:3.10"
  # Root here lacks CAP_SYS_RESOURCE: nobody may lower an oom_score_adj.
  restrict_oom_score_adj = true
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        SystemdCgroup = false
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "/usr/lib/cni"
    conf_dir = "$STATE/cni"
TOML
  spawn containerd containerd --config "$STATE/containerd/config.toml"
}

start_kubelet() {
  local s
  if [[ ! -f "$STATE/sysctl.saved" ]]; then
    for s in "${SYSCTLS[@]}"; do echo "$s $(cat "/proc/sys/$s")"; done >"$STATE/sysctl.saved"
  fi
  : >"$STATE/resolv.conf"
  mkdir -p "$STATE/kubelet" "$STATE/pod-logs"
  kubeconfig "$STATE/kubelet.kubeconfig" "https://$NODE_IP:6443" kubelet
  cat >"$STATE/kubelet.yaml" <<YAML
apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
address: $NODE_IP
readOnlyPort: 0
authentication:
  anonymous: {enabled: false}
  webhook: {enabled: true}
  x509: {clientCAFile: $STATE/pki/ca.crt}
authorization: {mode: Webhook}
tlsCertFile: $STATE/pki/kubelet-serving.crt
tlsPrivateKeyFile: $STATE/pki/kubelet-serving.key
containerRuntimeEndpoint: unix://$RUN/containerd.sock
# These hosts use cgroup v1, which kubelet >= 1.35 refuses unless told.
failCgroupV1: false
cgroupDriver: cgroupfs
failSwapOn: false
resolvConf: $STATE/resolv.conf
podLogsDir: $STATE/pod-logs
hairpinMode: hairpin-veth
serializeImagePulls: false
# Images are imported, never pulled: never collect them, never evict for a full disk.
imageGCHighThresholdPercent: 100
imageGCLowThresholdPercent: 99
evictionHard: {memory.available: 100Mi, nodefs.available: "1%", imagefs.available: "1%", nodefs.inodesFree: "1%"}
syncFrequency: 10s
fileCheckFrequency: 0s
YAML
  spawn kubelet "$BIN/kubelet" --config "$STATE/kubelet.yaml" --kubeconfig "$STATE/kubelet.kubeconfig" \
    --root-dir "$STATE/kubelet" --hostname-override "$NODE_NAME" --node-ip "$NODE_IP"
}

start_kube_proxy() {
  kubeconfig "$STATE/kube-proxy.kubeconfig" "https://$NODE_IP:6443" kube-proxy
  cat >"$STATE/kube-proxy.yaml" <<YAML
apiVersion: kubeproxy.config.k8s.io/v1alpha1
kind: KubeProxyConfiguration
clientConnection: {kubeconfig: $STATE/kube-proxy.kubeconfig}
mode: iptables
clusterCIDR: $POD_CIDR
hostnameOverride: $NODE_NAME
bindAddress: $NODE_IP
healthzBindAddress: 127.0.0.1:10256
metricsBindAddress: 127.0.0.1:10249
# Host-wide conntrack limits stay as they are.
conntrack: {maxPerCore: 0, min: 0, tcpEstablishedTimeout: 0s, tcpCloseWaitTimeout: 0s}
nodePortAddresses: [primary]
YAML
  spawn kube-proxy "$BIN/kube-proxy" --config "$STATE/kube-proxy.yaml"
}

# kwok plays `kwok-node` and the pods kube-scheduler binds to it; it manages no other node (the
# real one is the kubelet's). Its own ports (10247) are clear of the kubelet's and kube-proxy's.
start_fake_node() {
  kubeconfig "$STATE/kwok.kubeconfig" "https://127.0.0.1:6443" kwok
  kubectl_ apply -f - >/dev/null <<NODE
apiVersion: v1
kind: Node
metadata:
  name: kwok-node
  labels: {type: kwok, kubernetes.io/hostname: kwok-node, kubernetes.io/os: linux}
  annotations: {kwok.x-k8s.io/node: fake}
spec:
  taints: [{key: kwok.x-k8s.io/node, value: fake, effect: NoSchedule}]
NODE
  spawn kwok "$BIN/kwok" --kubeconfig "$STATE/kwok.kubeconfig" \
    --config "$HERE/kwok.yaml" --config "$HERE/kwok-steered.yaml" \
    --manage-nodes-with-label-selector type=kwok --node-lease-duration-seconds 40 \
    --server-address 127.0.0.1:10247 --v WARN
  wait_for "kwok to make kwok-node Ready" 60 node_ready kwok-node
}
