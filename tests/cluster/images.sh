#!/usr/bin/env bash
# The images the local cluster's node runs, built here: no registry is reachable, so the node's
# containerd gets them from archives instead of pulling.
#
#   images.sh build            build the archives that are missing or out of date (stdout: nothing)
#   images.sh import ADDRESS   build as above, then import them into the containerd listening on
#                              unix socket ADDRESS, namespace k8s.io (the CRI plugin's)
#   images.sh digest NAME      print the manifest digest (sha256:...) of the archive NAME: pause,
#                              nightshift-example or nightshift, as containerd lists it once imported
#
# The images, and the names the kubelet finds them under in containerd:
#   registry.k8s.io/pause:3.10                 the pod sandbox (containerd's sandbox_image): a
#                                              static build of kubernetes' build/pause/linux/pause.c
#   docker.io/library/nightshift-example:VER   the example worker, examples/worker/bulk-import.sh
#                                              on busybox-static, with 7,000 sample rows
#   docker.io/library/nightshift:VER           the operator, from tests/image/build.sh (`make image`)
# VER is Cargo.toml's version. The archives (OCI archives) live in
# ${NIGHTSHIFT_CACHE:-${XDG_CACHE_HOME:-~/.cache}/nightshift}/images, each with a stamp: the sha256
# of its inputs (the files that go into it and this script), the image ID it was exported from and
# its own sha256. An image is rebuilt unless all three still match, i.e. unless its inputs are
# unchanged and the buildah store (vfs, shared with `make image`) still holds exactly the image the
# archive was made from. The operator's release build takes minutes; the other two seconds.
set -euo pipefail
cd "$(dirname "$0")/../.."

SELF=tests/cluster/images.sh
VERSION="$(sed -n 's/^version *= *"\(.*\)"/\1/p' Cargo.toml | head -n 1)"
K8S_VERSION="${K8S_VERSION:-v1.37.2}"
PAUSE_IMAGE=registry.k8s.io/pause:3.10
EXAMPLE_IMAGE="nightshift-example:$VERSION"
OPERATOR_IMAGE="nightshift:$VERSION"
# name in the cache → image. The order is the import order.
NAMES=(pause nightshift-example nightshift)
declare -A IMAGE_OF=([pause]="$PAUSE_IMAGE" [nightshift-example]="$EXAMPLE_IMAGE" [nightshift]="$OPERATOR_IMAGE")
CACHE="${NIGHTSHIFT_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/nightshift}"
OUT="$CACHE/images"
# The same store as tests/image/build.sh, which builds the operator image.
STORAGE=(--storage-driver "${NIGHTSHIFT_STORAGE_DRIVER:-vfs}")
# containerd's CRI plugin runs containers from snapshots of its own snapshotter (overlayfs unless
# its config says otherwise); the images must be unpacked for that one.
SNAPSHOTTER="${NIGHTSHIFT_SNAPSHOTTER:-overlayfs}"

log() { echo "images: $*" >&2; }
die() { log "$*"; exit 1; }
usage() { sed -n '5,9s/^# \{0,1\}//p' "$0" >&2; exit 2; }

# The docker.io/library/ form containerd (and the kubelet) use for a short name.
full_name() {
  local domain="${1%%/*}"
  if [[ "$1" != */* ]]; then
    echo "docker.io/library/$1"
  elif [[ "$domain" == *.* || "$domain" == *:* || "$domain" == localhost ]]; then
    echo "$1"
  else
    echo "docker.io/$1"
  fi
}

# One sha256 over the names and contents of the files under the given paths.
hash_paths() {
  find "$@" -type f -print0 | LC_ALL=C sort -z | xargs -0 sha256sum | sha256sum | cut -d' ' -f1
}

# The inputs hash of an image: its name, the given files and this script.
inputs_hash() {
  local image="$1"
  shift
  { echo "$image"; hash_paths "$@" "$SELF"; } | sha256sum | cut -d' ' -f1
}

# The ID of the image in the buildah store, empty when it has none.
store_id() {
  buildah "${STORAGE[@]}" images --no-trunc --quiet "$1" 2>/dev/null | head -n 1 || true
}

# Whether the archive NAME is up to date: see the header.
fresh() {
  local name="$1" inputs="$2" archive="$OUT/$1.tar" stamp="$OUT/$1.stamp" s_inputs s_id s_sum id
  [[ -f "$archive" && -f "$stamp" ]] || return 1
  read -r s_inputs s_id s_sum <"$stamp" || return 1
  if [[ "$s_inputs" != "$inputs" ]]; then
    log "$name: inputs changed"
    return 1
  fi
  id="$(store_id "${IMAGE_OF[$name]}")"
  if [[ "$id" != "$s_id" ]]; then
    log "$name: the buildah store has ${id:-no image} for ${IMAGE_OF[$name]}, the archive was made from $s_id"
    return 1
  fi
  if [[ "$(sha256sum <"$archive" | cut -d' ' -f1)" != "$s_sum" ]]; then
    log "$name: $archive was changed since it was written"
    return 1
  fi
}

# The manifest digest of the archive NAME's one image.
archive_digest() {
  tar -xOf "$OUT/$1.tar" index.json | sed -n 's/.*"digest":"\(sha256:[0-9a-f]\{64\}\)".*/\1/p' | head -n 1
}

# Removes an image the store no longer names (an earlier build): vfs keeps full copies.
drop_old() {
  local old="$1" image="$2"
  [[ -n "$old" && "$old" != "$(store_id "$image")" ]] || return 0
  buildah "${STORAGE[@]}" rmi "$old" >/dev/null 2>&1 || true
}

# Exports IMAGE to the archive NAME and writes its stamp. An OCI archive whose one image is
# named in full (docker.io/library/...): `ctr images import` names it exactly that. (It keeps a
# short name like nightshift:0.1.0 as is, which the kubelet would not find; and a docker-archive
# also carries buildah's localhost/ name, which would show up in containerd as a second image.)
# Its layers are gzipped: buildah ignores --disable-compression for oci-archive.
export_image() {
  local name="$1" inputs="$2" image="${IMAGE_OF[$1]}" tmp="$OUT/.$1.tar.tmp" id previous=""
  id="$(store_id "$image")"
  [[ -n "$id" ]] || die "$name: $image is not in the buildah store after building it"
  [[ ! -f "$OUT/$name.stamp" ]] || read -r _ previous _ <"$OUT/$name.stamp" || true
  rm -f "$tmp" "$OUT/$name.stamp"
  buildah "${STORAGE[@]}" push --quiet "$image" "oci-archive:$tmp:$(full_name "$image")" >/dev/null
  mv -f "$tmp" "$OUT/$name.tar"
  echo "$inputs $id $(sha256sum <"$OUT/$name.tar" | cut -d' ' -f1)" >"$OUT/$name.stamp"
  log "$name: wrote $OUT/$name.tar ($(du -h "$OUT/$name.tar" | cut -f1), $image)"
  # The image the previous archive was made from, if a build since (`make image`) untagged it.
  drop_old "$previous" "$image"
}

# Commits the working container CTR as IMAGE, dropping the image it replaces.
commit() {
  local ctr="$1" image="$2" old
  old="$(store_id "$image")"
  buildah "${STORAGE[@]}" commit --quiet --rm "$ctr" "$image" >/dev/null
  drop_old "$old" "$image"
}

build_pause() {
  local dir src inputs ctr
  dir="$(go env GOMODCACHE)/k8s.io/kubernetes@$K8S_VERSION"
  src="$dir/build/pause/linux/pause.c"
  if [[ ! -f "$src" ]]; then
    log "pause: fetching k8s.io/kubernetes@$K8S_VERSION for $src"
    (cd "$WORK" && GOFLAGS=-mod=mod GOSUMDB=off GOTOOLCHAIN=local \
      go mod download -json "k8s.io/kubernetes@$K8S_VERSION" >/dev/null)
    [[ -f "$src" ]] || die "pause: no $src after downloading k8s.io/kubernetes@$K8S_VERSION"
  fi
  inputs="$(inputs_hash "$PAUSE_IMAGE $(gcc --version | head -n 1)" "$src")"
  fresh pause "$inputs" && return 0
  log "pause: building $PAUSE_IMAGE"
  # VERSION is what `pause -v` prints; upstream's Makefile passes v$(TAG)-$(REV).
  gcc -static -O2 -s -Wall -DVERSION="v3.10-nightshift" -o "$WORK/pause" "$src"
  ctr="$(buildah "${STORAGE[@]}" from --quiet scratch)"
  buildah "${STORAGE[@]}" copy --quiet --chmod 0755 "$ctr" "$WORK/pause" /pause >/dev/null
  # As upstream's Dockerfile: nobody, and only /pause.
  buildah "${STORAGE[@]}" config --user 65535:65535 --entrypoint '["/pause"]' \
    --os linux --arch amd64 \
    --label "org.opencontainers.image.description=pause.c from k8s.io/kubernetes@$K8S_VERSION, built by $SELF" \
    "$ctr"
  commit "$ctr" "$PAUSE_IMAGE"
  export_image pause "$inputs"
}

build_example() {
  local worker=examples/worker/bulk-import.sh generator=examples/worker/generate-customers.sh
  local inputs root ctr applet
  inputs="$(inputs_hash "$EXAMPLE_IMAGE" /bin/busybox "$worker" "$generator")"
  fresh nightshift-example "$inputs" && return 0
  log "nightshift-example: building $EXAMPLE_IMAGE"
  file -L /bin/busybox | grep -q 'statically linked' \
    || die "nightshift-example: /bin/busybox is not statically linked; install busybox-static"
  # The whole file system as one tar with fixed owners, modes and times.
  root="$WORK/example-root"
  mkdir -p "$root/bin" "$root/etc" "$root/tmp"
  cp /bin/busybox "$root/bin/busybox"
  for applet in $(/bin/busybox --list); do
    [[ "$applet" == busybox || "$applet" == */* ]] || ln -s busybox "$root/bin/$applet"
  done
  cp "$worker" "$root/bulk-import.sh"
  sh "$generator" 7000 >"$root/customers.csv"
  printf '%s\n' 'root:x:0:0:root:/:/bin/sh' 'nonroot:x:65532:65532:nonroot:/:/bin/false' \
    'nobody:x:65534:65534:nobody:/:/bin/false' >"$root/etc/passwd"
  printf '%s\n' 'root:x:0:' 'nonroot:x:65532:' 'nogroup:x:65534:' >"$root/etc/group"
  chmod 0755 "$root" "$root/bin" "$root/etc" "$root/bin/busybox" "$root/bulk-import.sh"
  chmod 0644 "$root/customers.csv" "$root/etc/passwd" "$root/etc/group"
  chmod 1777 "$root/tmp"
  tar -C "$root" --sort=name --owner=0 --group=0 --numeric-owner --mtime=@0 -cf "$WORK/example.tar" .
  ctr="$(buildah "${STORAGE[@]}" from --quiet scratch)"
  buildah "${STORAGE[@]}" add --quiet "$ctr" "$WORK/example.tar" / >/dev/null
  buildah "${STORAGE[@]}" config --user 65532:65532 --workingdir / --env PATH=/bin \
    --cmd '["/bulk-import.sh"]' --os linux --arch amd64 \
    --label org.opencontainers.image.title=nightshift-example \
    --label "org.opencontainers.image.description=The nightshift example worker: examples/worker/bulk-import.sh on busybox" \
    --label "org.opencontainers.image.version=$VERSION" \
    --label org.opencontainers.image.licenses=Apache-2.0 \
    "$ctr"
  commit "$ctr" "$EXAMPLE_IMAGE"
  export_image nightshift-example "$inputs"
}

build_operator() {
  local inputs old
  inputs="$(inputs_hash "$OPERATOR_IMAGE" src crates/api crates/core crates/worker Cargo.toml Cargo.lock Dockerfile tests/image/build.sh)"
  fresh nightshift "$inputs" && return 0
  log "nightshift: building $OPERATOR_IMAGE with tests/image/build.sh (a release build: minutes when the operator's code changed)"
  old="$(store_id "$OPERATOR_IMAGE")"
  IMAGE="$OPERATOR_IMAGE" tests/image/build.sh >&2
  drop_old "$old" "$OPERATOR_IMAGE"
  export_image nightshift "$inputs"
}

build() {
  command -v buildah >/dev/null || die "buildah is missing; run tests/image/setup.sh"
  local tool
  for tool in gcc go file; do
    command -v "$tool" >/dev/null || die "$tool is missing"
  done
  mkdir -p "$OUT"
  # One build at a time: `import` builds too, and may start while a `build` still runs. Outside
  # $OUT, which one may delete to start afresh.
  exec 8>"$CACHE/images.lock"
  flock 8
  WORK="$(mktemp -d "$OUT/.work.XXXXXX")"
  trap 'rm -rf "$WORK"' EXIT
  local start=$SECONDS
  build_pause
  build_example
  build_operator
  log "archives up to date in $OUT ($((SECONDS - start))s)"
  rm -rf "$WORK"
  trap - EXIT
  exec 8>&-
}

import() {
  local address="$1" name ref start ms listed wrong=()
  local ctr_=(ctr --address "$address" --namespace k8s.io)
  command -v ctr >/dev/null || die "ctr (containerd's client) is missing"
  [[ -S "$address" ]] || die "no containerd socket at $address"
  build
  # Shared: no build replaces an archive while it is imported and checked.
  exec 8>"$CACHE/images.lock"
  flock -s 8
  start=$(date +%s%N)
  for name in "${NAMES[@]}"; do
    # Unpacked for CRI's snapshotter, so the first pod starts without unpacking. The archives
    # hold one platform, linux/amd64.
    "${ctr_[@]}" images import --snapshotter "$SNAPSHOTTER" "$OUT/$name.tar" >/dev/null
  done
  # Each name now stands for the image in its archive: no stale one kept under it.
  listed="$("${ctr_[@]}" images list | awk 'NR > 1 { print $1, $3 }')"
  for name in "${NAMES[@]}"; do
    ref="$(full_name "${IMAGE_OF[$name]}")"
    grep -qxF "$ref $(archive_digest "$name")" <<<"$listed" || wrong+=("$ref")
  done
  ((${#wrong[@]} == 0)) || die "after the import, containerd at $address lacks ${wrong[*]} (or has another digest):"$'\n'"$listed"
  ms=$((($(date +%s%N) - start) / 1000000))
  log "imported $(for name in "${NAMES[@]}"; do printf '%s ' "$(full_name "${IMAGE_OF[$name]}")"; done)into $address" \
    "in $((ms / 1000)).$((ms % 1000 / 100))s"
}

digest() {
  [[ -n "${IMAGE_OF[$1]:-}" ]] || die "no image $1; the images: ${NAMES[*]}"
  [[ -f "$OUT/$1.tar" ]] || die "no archive $OUT/$1.tar; run $SELF build"
  archive_digest "$1"
}

case "${1:-}" in
  build) (($# == 1)) || usage; build ;;
  import) (($# == 2)) || usage; import "$2" ;;
  digest) (($# == 2)) || usage; digest "$2" ;;
  *) usage ;;
esac
