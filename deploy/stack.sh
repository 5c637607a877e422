#!/usr/bin/env bash
# Bring the full stack up or down: docker compose when a Docker engine answers, else podman-compose.
#   deploy/stack.sh up | down | ps | logs
set -euo pipefail
cd "$(dirname "$0")/.."
mkdir -p build/model  # the api image resolves its model from MLflow; nothing to bake
if command -v docker >/dev/null 2>&1 && docker info >/dev/null 2>&1; then
  COMPOSE=(docker compose -f deploy/compose.yaml)
else
  # shellcheck source=deploy/podman-env.sh
  source deploy/podman-env.sh
  COMPOSE=(podman-compose -f deploy/compose.yaml)
fi
case "${1:-up}" in
  up)   "${COMPOSE[@]}" up -d --build
        echo "api http://127.0.0.1:8000  mlflow http://127.0.0.1:5000  prometheus http://127.0.0.1:9090"
        echo "alertmanager http://127.0.0.1:9093  grafana http://127.0.0.1:3000" ;;
  down) "${COMPOSE[@]}" down ;;
  *)    "${COMPOSE[@]}" "$@" ;;
esac
