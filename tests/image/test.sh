#!/usr/bin/env bash
# `make test-image`: builds the image (`make image`) and runs it with podman the way the chart's
# pod runs it (user 65532, read-only root filesystem, no capabilities, no new privileges):
# `nightshift --version` prints the crate version, `nightshift crd` prints crds/nightshift.yaml
# byte for byte, and `nightshift install-agent` (the agent injection's init container) copies the
# binary into a volume. Needs buildah and podman: tests/image/setup.sh installs them.
set -euo pipefail
cd "$(dirname "$0")/../.."

VERSION="$(sed -n 's/^version *= *"\(.*\)"/\1/p' Cargo.toml | head -n 1)"
IMAGE="nightshift:$VERSION"
DRIVER="${NIGHTSHIFT_STORAGE_DRIVER:-vfs}"
failures=0
fail() { echo "test-image: FAIL: $*" >&2; failures=$((failures + 1)); }

command -v podman >/dev/null || { echo "test-image: podman is missing; run tests/image/setup.sh" >&2; exit 1; }

IMAGE="$IMAGE" tests/image/build.sh

run() {
  podman --storage-driver "$DRIVER" run --rm --runtime runc --network none \
    --ulimit nofile=1024:1024 --ulimit nproc=1024:1024 \
    --read-only --cap-drop ALL --security-opt no-new-privileges "$@"
}

user="$(podman --storage-driver "$DRIVER" image inspect --format '{{.Config.User}}' "$IMAGE")"
[[ "$user" == "65532:65532" ]] || fail "the image's user is '$user', want 65532:65532"

version="$(run "$IMAGE" --version)" || fail "nightshift --version exited with $?"
[[ "$version" == "nightshift $VERSION" ]] || fail "nightshift --version printed '$version', want 'nightshift $VERSION'"

out="$(mktemp)"
trap 'rm -f "$out"' EXIT
if run "$IMAGE" crd >"$out"; then
  cmp -s "$out" crds/nightshift.yaml || fail "nightshift crd in the image differs from crds/nightshift.yaml: $(diff "$out" crds/nightshift.yaml | head -n 5)"
else
  fail "nightshift crd exited with an error"
fi

installed="$(run --mount type=tmpfs,destination=/agent,tmpfs-mode=1777 "$IMAGE" install-agent /agent)" \
  || fail "nightshift install-agent exited with an error"
[[ "$installed" == "installed /agent/nightshift" ]] || fail "install-agent printed '$installed'"

if ((failures)); then
  echo "test-image: $((4 - failures < 0 ? 0 : 4 - failures)) passed, $failures failed" >&2
  exit 1
fi
echo "test-image: $IMAGE ($(podman --storage-driver "$DRIVER" image inspect --format '{{.Size}}' "$IMAGE") bytes): version, crd and install-agent checked"
echo "test-image: 4 passed, 0 failed"
