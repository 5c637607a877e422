# Source me: podman settings for hosts without a Docker daemon or systemd (runc runtime,
# file-descriptor limits the host allows).
PODMAN_CONF_DIR=${PODMAN_CONF_DIR:-${XDG_RUNTIME_DIR:-/tmp}/mnistops-podman}
mkdir -p "$PODMAN_CONF_DIR"
cat > "$PODMAN_CONF_DIR/containers.conf" <<'CONF'
[containers]
default_ulimits = ["nofile=20000:20000", "nproc=32768:32768"]
[engine]
runtime = "runc"
cgroup_manager = "cgroupfs"
events_logger = "file"
CONF
export CONTAINERS_CONF="$PODMAN_CONF_DIR/containers.conf"
