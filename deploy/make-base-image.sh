#!/usr/bin/env bash
# Build a python:3.11-slim equivalent from Debian bookworm with debootstrap, for hosts that
# reach Debian's mirror but no container registry. Tags it as the name given ($1).
set -euo pipefail
TAG=${1:-docker.io/library/python:3.11-slim}
MIRROR=${MIRROR:-$(sed -n 's/^URIs: *\(http[^ ]*debian\)$/\1/p' /etc/apt/sources.list.d/debian.sources 2>/dev/null | head -1)}
MIRROR=${MIRROR:-http://deb.debian.org/debian}
# shellcheck source=deploy/podman-env.sh
source "$(dirname "$0")/podman-env.sh"
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
debootstrap --variant=minbase --include=python3,python3-venv,ca-certificates \
  bookworm "$WORK/rootfs" "$MIRROR" >/dev/null
rm -f "$WORK"/rootfs/usr/lib/python3.*/EXTERNALLY-MANAGED
ln -sf /usr/bin/python3 "$WORK/rootfs/usr/bin/python"
rm -rf "$WORK"/rootfs/var/lib/apt/lists/* "$WORK"/rootfs/var/cache/apt/* \
  "$WORK"/rootfs/usr/share/doc/* "$WORK"/rootfs/usr/share/man/* "$WORK"/rootfs/usr/share/locale/*
tar -C "$WORK/rootfs" -c . | podman import --change 'CMD ["python3"]' - "$TAG" >/dev/null
echo "base image $TAG built from Debian bookworm ($MIRROR)"
