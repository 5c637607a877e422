"""The MLflow model registry: the quality gate, aliases, and resolving a model URI
(alias, version or local folder) to a local servable bundle.

MLflow is imported inside the functions, so importing this module costs nothing; the
serving process only needs the light ``mlflow-skinny`` client, and only to resolve a
registry URI.
"""

from __future__ import annotations

import re
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mnistops.bundle import BUNDLE_FILES, METADATA_FILE, OPTIONAL_FILES, ModelBundle, load_bundle
from mnistops.config import CHALLENGER, CHAMPION, Settings
from mnistops.errors import MnistopsError
from mnistops.tracking import SERVER_SCHEMES, existing, registry_uri, setup_mlflow, tracking

TAG_DECISION = "gate.decision"
TAG_REASON = "gate.reason"
TAG_ACCURACY = "test_accuracy"
TAG_PREVIOUS = "previous_champion"
_MODELS_URI = re.compile(r"^models:/(?P<name>[^/@]+)(?:@(?P<alias>[\w-]+)|/(?P<version>\d+))$")


class RegistryError(MnistopsError):
    """A model URI cannot be resolved, or a registry operation is refused."""


@dataclass(frozen=True)
class GateDecision:
    """What the quality gate decided for a new version, and why."""

    alias: str
    reason: str

    @property
    def promoted(self) -> bool:
        return self.alias == CHAMPION


def ensure_experiment(settings: Settings, name: str) -> str:
    """The experiment's id, created (with artifacts under the state folder) if new."""
    import mlflow

    client = setup_mlflow(settings)
    with tracking(settings.mlflow_tracking_uri):
        experiment = client.get_experiment_by_name(name)
        if experiment is not None:
            return str(experiment.experiment_id)
        # A tracking server chooses its own artifact store; with a database URI the client
        # would default to ./mlruns in whatever folder it runs from, so use the state folder.
        served = settings.mlflow_tracking_uri.startswith(SERVER_SCHEMES)
        location = None if served else settings.mlflow_artifact_root
        return str(mlflow.create_experiment(name, artifact_location=location))


def decide(accuracy: float, floor: float, champion_accuracy: float | None) -> GateDecision:
    """The quality gate, a pure function: champion only if above the floor and no worse."""
    if accuracy < floor:
        return GateDecision(
            CHALLENGER, f"test accuracy {accuracy:.4f} is below the floor {floor:.4f}"
        )
    if champion_accuracy is not None and accuracy < champion_accuracy:
        return GateDecision(
            CHALLENGER,
            f"test accuracy {accuracy:.4f} is below the champion's {champion_accuracy:.4f}",
        )
    against = (
        "no champion yet"
        if champion_accuracy is None
        else (f"champion had {champion_accuracy:.4f}")
    )
    return GateDecision(
        CHAMPION, f"test accuracy {accuracy:.4f} clears the floor {floor:.4f} ({against})"
    )


def _alias_target(settings: Settings, client: Any, name: str, alias: str) -> Any | None:
    """The model version an alias points at, or None when the alias is not set."""
    return existing(settings, lambda: client.get_model_version_by_alias(name, alias))


def champion_accuracy(settings: Settings, client: Any) -> float | None:
    """The current champion's test accuracy, or None when there is no champion."""
    champion = _alias_target(settings, client, settings.registered_model, CHAMPION)
    value = None if champion is None else champion.tags.get(TAG_ACCURACY)
    return float(value) if value is not None else None


def gate(settings: Settings, version: str, accuracy: float) -> GateDecision:
    """Run the quality gate on a registered version: set its alias and decision tags."""
    client = setup_mlflow(settings)
    name = settings.registered_model
    with tracking(registry_uri(settings)):
        client.set_model_version_tag(name, version, TAG_ACCURACY, f"{accuracy:.6f}")
        decision = decide(accuracy, settings.accuracy_floor, champion_accuracy(settings, client))
        client.set_model_version_tag(name, version, TAG_DECISION, decision.alias)
        client.set_model_version_tag(name, version, TAG_REASON, decision.reason)
        if decision.promoted:
            _move_champion(settings, client, version)
        else:
            client.set_registered_model_alias(name, CHALLENGER, version)
    return decision


def _move_champion(settings: Settings, client: Any, version: str) -> None:
    name = settings.registered_model
    previous = _alias_target(settings, client, name, CHAMPION)
    with tracking(registry_uri(settings)):
        if previous is not None and str(previous.version) != str(version):
            client.set_model_version_tag(name, version, TAG_PREVIOUS, str(previous.version))
        client.set_registered_model_alias(name, CHAMPION, version)


def promote(settings: Settings, version: str) -> str:
    """Move ``champion`` to ``version`` by hand; returns a sentence saying what happened."""
    client = setup_mlflow(settings)
    name = settings.registered_model
    if existing(settings, lambda: client.get_model_version(name, version)) is None:
        raise RegistryError(f"{name} has no version {version}; `mnistops models` lists them")
    _move_champion(settings, client, version)
    return f"{name} version {version} is now {CHAMPION}"


def rollback(settings: Settings) -> str:
    """Move ``champion`` back to the version it replaced."""
    client = setup_mlflow(settings)
    name = settings.registered_model
    current = _alias_target(settings, client, name, CHAMPION)
    if current is None:
        raise RegistryError(
            f"{name} has no {CHAMPION} to roll back; `mnistops promote VERSION` sets one"
        )
    previous = current.tags.get(TAG_PREVIOUS)
    if not previous:
        raise RegistryError(
            f"{name} version {current.version} replaced no earlier {CHAMPION}; "
            "use `mnistops promote VERSION` to choose one"
        )
    with tracking(registry_uri(settings)):
        client.set_registered_model_alias(name, CHAMPION, previous)
    return f"{CHAMPION} rolled back from version {current.version} to version {previous}"


def current_version(uri: str, settings: Settings) -> str | None:
    """The version a ``models:/`` URI points at now; None for a local folder. Cheap.

    Raises:
        RegistryError: the alias is not set.
        TrackingUnavailableError: the registry cannot be asked.
    """
    match = _MODELS_URI.match(uri)
    if match is None:
        return None
    if match["version"]:
        return match["version"]
    name, alias = match["name"], match["alias"]
    target = _alias_target(settings, setup_mlflow(settings), name, alias)
    if target is None:
        raise RegistryError(
            f"{name} has no alias @{alias}; `mnistops train` registers a version, "
            "`mnistops models` lists them"
        )
    return str(target.version)


def unset_alias(uri: str, settings: Settings) -> bool:
    """True when ``uri`` is ``models:/NAME@ALIAS`` and the alias points at no version yet."""
    match = _MODELS_URI.match(uri)
    if match is None or not match["alias"]:
        return False
    client = setup_mlflow(settings)
    return _alias_target(settings, client, match["name"], match["alias"]) is None


def resolve(uri_or_path: str, settings: Settings) -> ModelBundle:
    """Turn ``models:/NAME@ALIAS``, ``models:/NAME/VERSION`` or a folder into a local bundle.

    Registry versions are downloaded once into ``settings.models_dir/NAME/VERSION``.

    Raises:
        RegistryError: the URI names nothing, or the version holds no servable files.
    """
    match = _MODELS_URI.match(uri_or_path)
    if match is None:
        if uri_or_path.startswith("models:/"):
            raise RegistryError(
                f"cannot parse {uri_or_path!r}: expected models:/NAME@ALIAS or models:/NAME/VERSION"
            )
        return load_bundle(Path(uri_or_path))
    name = match["name"]
    version = current_version(uri_or_path, settings)
    assert version is not None
    target = settings.models_dir / name / version
    if not target.is_dir():
        _download_version(settings, name, version, target)
    return load_bundle(target)


def _download_version(settings: Settings, name: str, version: str, target: Path) -> None:
    import json

    import mlflow

    setup_mlflow(settings)
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent) as tmp:
        uri = f"models:/{name}/{version}"
        downloaded = existing(
            settings, lambda: mlflow.artifacts.download_artifacts(uri, dst_path=tmp)
        )
        if downloaded is None:
            raise RegistryError(f"{name} has no version {version}; `mnistops models` lists them")
        local = Path(downloaded)
        missing = [f for f in BUNDLE_FILES if not (local / f).is_file()]
        if missing:
            raise RegistryError(
                f"{uri} holds no servable files (missing {', '.join(missing)}); "
                "register one with `mnistops train`"
            )
        staged = Path(tmp) / "bundle"
        staged.mkdir()
        for file in BUNDLE_FILES + tuple(f for f in OPTIONAL_FILES if (local / f).is_file()):
            shutil.copy2(local / file, staged / file)
        metadata = json.loads((staged / METADATA_FILE).read_text())
        metadata.update(name=name, version=version)
        (staged / METADATA_FILE).write_text(json.dumps(metadata, indent=2, sort_keys=True))
        staged.replace(target)


def export_bundle(uri_or_path: str, settings: Settings, out: Path) -> ModelBundle:
    """Write a servable folder (model.onnx, reference.npz, metadata.json) to ``out``; a
    version registered before drift thresholds were stored gets its calibration here, so
    that the folder's server does not calibrate at every start."""
    import dataclasses

    bundle = resolve(uri_or_path, settings)
    out.mkdir(parents=True, exist_ok=True)
    for file in BUNDLE_FILES + tuple(f for f in OPTIONAL_FILES if (bundle.path / f).is_file()):
        shutil.copy2(bundle.path / file, out / file)
    exported = load_bundle(out)
    reference = exported.reference()
    if reference.drift is None:
        _, calibration = exported.drift_reference()
        dataclasses.replace(reference, drift=calibration).save(exported.reference_path)
    return exported


def list_versions(settings: Settings) -> list[str]:
    """One line per registered version: number, aliases, accuracy, gate decision."""
    client = setup_mlflow(settings)
    name = settings.registered_model
    with tracking(registry_uri(settings)):
        versions = client.search_model_versions(f"name='{name}'")
        # search results omit aliases: fetch each version
        detailed = [client.get_model_version(name, v.version) for v in versions]
    lines = []
    for v in sorted(detailed, key=lambda v: int(v.version)):
        aliases = ",".join(f"@{a}" for a in getattr(v, "aliases", []) or []) or "-"
        lines.append(
            f"{name} v{v.version}  {aliases:24}  test_accuracy="
            f"{v.tags.get(TAG_ACCURACY, '?')}  {v.tags.get(TAG_REASON, '')}"
        )
    return lines or [f"no versions of {name}"]
