#!/usr/bin/env bash
# Installs the Debian packages the local node needs, when one is missing: containerd and runc
# (the container runtime), the CNI plugins (the pods' bridge), socat (the host's way to the API
# server), iptables (kube-proxy), buildah (builds the images the node runs, without a registry),
# busybox-static (the example worker image), gcc (the pause binary), chromium with
# chromium-driver (the dashboard's browser test) and python3-kubernetes (the app example's
# test). Idempotent and quiet.
#
#   setup.sh [PACKAGE...]   also these packages, each checked by the command of its name
#                           (tests/image/setup.sh asks for podman this way)
set -euo pipefail

need=()
have() { command -v "$1" >/dev/null; }
have containerd || need+=(containerd)
have ctr || need+=(containerd)
have runc || need+=(runc)
[[ -x /usr/lib/cni/bridge && -x /usr/lib/cni/host-local && -x /usr/lib/cni/loopback ]] || need+=(containernetworking-plugins)
have socat || need+=(socat)
have iptables || need+=(iptables)
have buildah || need+=(buildah)
have file || need+=(file)
have gcc || need+=(gcc libc6-dev)
have nsenter || need+=(util-linux)
have ip || need+=(iproute2)
have openssl || need+=(openssl)
have curl || need+=(curl)
dpkg -s busybox-static >/dev/null 2>&1 || need+=(busybox-static)
# The app example's test runs examples/app/start_import.py with the official Python client.
dpkg -s python3-kubernetes >/dev/null 2>&1 || need+=(python3-kubernetes)
# The dashboard's test drives a real browser: headless Chromium through chromedriver.
have chromium || need+=(chromium)
have chromedriver || need+=(chromium-driver)
for extra in "$@"; do have "$extra" || need+=("$extra"); done
((${#need[@]} == 0)) && exit 0
mapfile -t need < <(printf '%s\n' "${need[@]}" | sort -u)

if [[ $(id -u) != 0 ]]; then
  echo "setup: missing ${need[*]}; install them (apt-get install ${need[*]}) or run this as root" >&2
  exit 1
fi
echo "setup: installing ${need[*]}" >&2
export DEBIAN_FRONTEND=noninteractive
log="$(mktemp)"
trap 'rm -f "$log"' EXIT
if ! { apt-get update -qq && apt-get install -y -qq --no-install-recommends "${need[@]}"; } >"$log" 2>&1; then
  cat "$log" >&2
  echo "setup: installing ${need[*]} failed" >&2
  exit 1
fi
