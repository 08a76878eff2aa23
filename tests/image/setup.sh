#!/usr/bin/env bash
# Installs what `make image` and `make test-image` need, when it is missing: buildah (builds the
# image without a Docker daemon) and podman with runc (runs it). The node's installer does it.
exec "$(dirname "$0")/../cluster/setup.sh" podman
