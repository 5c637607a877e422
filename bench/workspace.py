"""The benchmarks' working folder: paths, commands and their environment, the lab's venv."""

from __future__ import annotations

import functools
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

BENCH = Path(__file__).resolve().parent
WORK = BENCH / ".work"
LAB = BENCH / "lab"
LABENV = WORK / "labenv"
HOME = WORK / "home"
LAB_MODEL = WORK / "lab_model.keras"
VENV_BIN = Path(sys.executable).parent
MODEL_NAME = "mnist-classifier"
FAILURE_TAIL_CHARS = 4000


def log(message: str) -> None:
    """One timestamped progress line."""
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", flush=True)


def slug(name: str) -> str:
    """``name`` as a file name."""
    return name.replace(" ", "_").replace("/", "_")


def base_env(**extra: str) -> dict[str, str]:
    """This environment without any MNISTOPS_/MLFLOW_ setting, pointed at the bench's state."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MNISTOPS_", "MLFLOW_"))}
    env["PATH"] = f"{VENV_BIN}{os.pathsep}{env.get('PATH', '')}"
    env.update(
        MNISTOPS_HOME=str(HOME),
        MLFLOW_TRACKING_URI=f"sqlite:///{HOME / 'mlflow.db'}",
        KERAS_BACKEND="jax",
        PYTHONUNBUFFERED="1",
        TF_CPP_MIN_LOG_LEVEL="2",
    )
    env.update(extra)
    return env


def lab_env(**extra: str) -> dict[str, str]:
    """:func:`base_env` as the lab runs: TensorFlow as the Keras backend, on the CPU."""
    return base_env(CUDA_VISIBLE_DEVICES="", KERAS_BACKEND="tensorflow", **extra)


def mnistops(*args: str) -> list[str]:
    """The command line of ``mnistops ARGS`` from this venv."""
    return [str(VENV_BIN / "mnistops"), *args]


def run(argv: list[str], env: dict[str, str] | None = None) -> str:
    """Run a command and return its stdout; on failure raise with the end of its output."""
    proc = subprocess.run(argv, env=env or base_env(), capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        tail = (proc.stdout + proc.stderr)[-FAILURE_TAIL_CHARS:]
        raise RuntimeError(f"{' '.join(argv[:3])} failed with {proc.returncode}:\n{tail}")
    return proc.stdout


def ensure_labenv() -> Path:
    """A separate venv with the lab's requirements (TensorFlow CPU, Flask); its python."""
    python = LABENV / "bin" / "python"
    stamp = LABENV / ".installed"
    requirements = LAB / "requirements.txt"
    if stamp.is_file() and stamp.read_text() == requirements.read_text():
        return python
    log("building the lab's environment (tensorflow-cpu, flask) in bench/.work/labenv")
    shutil.rmtree(LABENV, ignore_errors=True)
    subprocess.run([sys.executable, "-m", "venv", str(LABENV)], check=True)
    subprocess.run([str(python), "-m", "pip", "install", "-q", "--upgrade", "pip"], check=True)
    subprocess.run([str(python), "-m", "pip", "install", "-q", "-r", str(requirements)], check=True)
    stamp.write_text(requirements.read_text())
    return python


def mnist_npz() -> Path:
    """The verified MNIST cache in the bench's state folder, fetched if missing."""
    subprocess.run(mnistops("data", "fetch"), env=base_env(), check=True)
    return HOME / "data" / "mnist.npz"


def train_mlp(seed: int, model: str = "mlp") -> str:
    """``mnistops train --model mlp`` (or another recipe); its output."""
    return run(mnistops("train", "--model", model, "--seed", str(seed)))


def ensure_champion() -> None:
    """Train a champion into the bench's registry unless it has one."""
    import mlflow

    client = mlflow.MlflowClient(tracking_uri=base_env()["MLFLOW_TRACKING_URI"])
    try:
        client.get_model_version_by_alias(MODEL_NAME, "champion")
    except mlflow.exceptions.MlflowException:
        log("no champion in the benchmark's registry yet: training one")
        train_mlp(seed=0)


def export_champion() -> Path:
    """The champion, trained first if need be, exported as a local model folder."""
    ensure_champion()
    folder = WORK / "model"
    shutil.rmtree(folder, ignore_errors=True)
    subprocess.run(mnistops("export", "--out", str(folder)), env=base_env(), check=True)
    return folder


@functools.cache
def sample_image() -> tuple[float, ...]:
    """The first test digit as 784 values in [0, 1], rounded as a client would send them."""
    from mnistops.config import load_settings
    from mnistops.data import load_mnist

    mnist = load_mnist(load_settings(home=HOME))
    return tuple(round(float(v) / 255.0, 4) for v in mnist.x_test[0].reshape(-1))
