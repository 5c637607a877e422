#!/usr/bin/env bash
# Build mnistops:latest serving the current champion.
# Uses docker when a Docker engine answers, podman otherwise. Without a local
# python:3.11-slim (no registry reachable), builds an equivalent base with debootstrap.
#   IMAGE=mnistops:latest MODEL_URI=models:/mnist-classifier@champion deploy/build-image.sh
set -euo pipefail
cd "$(dirname "$0")/.."
IMAGE=${IMAGE:-mnistops:latest}
MODEL_URI=${MODEL_URI:-models:/mnist-classifier@champion}
BASE_IMAGE=${BASE_IMAGE:-docker.io/library/python:3.11-slim}
MNISTOPS=${MNISTOPS:-.venv/bin/mnistops}
CA_BUNDLE=${CA_BUNDLE:-/etc/ssl/certs/ca-certificates.crt}

rm -rf build/model
"$MNISTOPS" export "$MODEL_URI" --out build/model

if command -v docker >/dev/null 2>&1 && docker info >/dev/null 2>&1; then
  ENGINE=(docker)
  BUILD_FLAGS=()
else
  command -v podman >/dev/null || { echo "neither a Docker engine nor podman is available" >&2; exit 1; }
  # shellcheck source=deploy/podman-env.sh
  source deploy/podman-env.sh
  ENGINE=(podman)
  BUILD_FLAGS=(--format docker)  # keep HEALTHCHECK in the image config
  podman image exists "$BASE_IMAGE" || bash deploy/make-base-image.sh "$BASE_IMAGE"
fi
SECRET=()
[ -s "$CA_BUNDLE" ] && SECRET=(--secret "id=hostca,src=$CA_BUNDLE")
"${ENGINE[@]}" build "${BUILD_FLAGS[@]}" "${SECRET[@]}" --build-arg "BASE_IMAGE=$BASE_IMAGE" \
  -f deploy/Dockerfile -t "$IMAGE" .
"${ENGINE[@]}" image inspect "$IMAGE" --format '{{.Size}}' | awk '{printf "image '"$IMAGE"': %.0f MB\n", $1/1e6}'
