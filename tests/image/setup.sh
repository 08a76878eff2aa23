#!/usr/bin/env bash
# Installs what `make image` and `make test-image` need, when it is missing: buildah (builds the
# image without a Docker daemon) and podman with runc (runs it). Idempotent and quiet.
set -euo pipefail

need=()
command -v buildah >/dev/null || need+=(buildah)
command -v podman >/dev/null || need+=(podman)
command -v runc >/dev/null || need+=(runc)
command -v file >/dev/null || need+=(file)
((${#need[@]} == 0)) && exit 0

if [[ $(id -u) != 0 ]]; then
  echo "image setup: missing ${need[*]}; install them (apt-get install ${need[*]}) or run this as root" >&2
  exit 1
fi
echo "image setup: installing ${need[*]}" >&2
export DEBIAN_FRONTEND=noninteractive
log="$(mktemp)"
trap 'rm -f "$log"' EXIT
if ! { apt-get update -qq && apt-get install -y -qq --no-install-recommends "${need[@]}"; } >"$log" 2>&1; then
  cat "$log" >&2
  echo "image setup: installing ${need[*]} failed" >&2
  exit 1
fi
