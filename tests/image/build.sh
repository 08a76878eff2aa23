#!/usr/bin/env bash
# `make image`: a statically linked nightshift binary, then the image nightshift:VERSION built from
# the Dockerfile with buildah (no Docker daemon, no base image: FROM scratch).
#
#   IMAGE=name:tag   the image name (default nightshift:<version in Cargo.toml>)
set -euo pipefail
cd "$(dirname "$0")/../.."

TARGET=x86_64-unknown-linux-gnu
BINARY="target/$TARGET/release/nightshift"
VERSION="$(sed -n 's/^version *= *"\(.*\)"/\1/p' Cargo.toml | head -n 1)"
IMAGE="${IMAGE:-nightshift:$VERSION}"
# vfs works everywhere (no overlay mounts, no fuse); podman in tests/image/test.sh uses the same store.
STORAGE=(--storage-driver "${NIGHTSHIFT_STORAGE_DRIVER:-vfs}")

command -v buildah >/dev/null || { echo "image: buildah is missing; run tests/image/setup.sh" >&2; exit 1; }

# glibc, linked statically: the musl target is not available here, and the binary only needs
# libc for threads, sockets and time (it connects to the API server by IP in a cluster).
RUSTFLAGS="${RUSTFLAGS:-} -C target-feature=+crt-static" cargo build --release --locked --target "$TARGET"
# The Dockerfile copies it from target/; a CARGO_TARGET_DIR elsewhere is copied there first.
built="${CARGO_TARGET_DIR:-target}/$TARGET/release/nightshift"
if [[ "$(realpath "$built")" != "$(realpath -m "$BINARY")" ]]; then
  mkdir -p "$(dirname "$BINARY")" && cp "$built" "$BINARY"
fi

# A dynamically linked binary would fail in a scratch image with a baffling "no such file".
if ! file -L "$BINARY" | grep -Eq 'static(ally|-pie) linked'; then
  echo "image: $BINARY is not statically linked:" >&2
  file -L "$BINARY" >&2
  exit 1
fi

buildah "${STORAGE[@]}" build --quiet --layers=false --build-arg "VERSION=$VERSION" \
  --tag "$IMAGE" --file Dockerfile . >/dev/null
echo "image: built $IMAGE ($(buildah "${STORAGE[@]}" images --format '{{.Size}}' "$IMAGE"))" >&2
