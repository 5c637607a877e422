"""Keras -> ONNX on the JAX backend: every recipe exports to one file that onnxruntime runs
with the same numbers, and nothing needs torch."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from mnistops.bundle import OUTPUT_NAME
from mnistops.data import Mnist
from mnistops.export import export_onnx, onnx_probabilities
from mnistops.model import MODELS, build_model
from mnistops.package import PARITY_TOLERANCE

pytestmark = pytest.mark.integration

PARITY_DIGITS = 1000


@pytest.mark.parametrize("name", MODELS)
def test_every_recipe_exports_with_parity(name: str, mnist: Mnist, tmp_path: Path) -> None:
    model = build_model(name)
    pixels = mnist.x_test[:PARITY_DIGITS].reshape(-1, 784).astype(np.float32) / 255.0
    keras_probs = np.asarray(model.predict(pixels, verbose=0))
    onnx_path = tmp_path / "model.onnx"

    export_onnx(model, onnx_path)

    assert [p.name for p in tmp_path.iterdir()] == ["model.onnx"], "weights left in a side file"
    import onnx

    assert [o.name for o in onnx.load(str(onnx_path)).graph.output] == [OUTPUT_NAME]
    onnx_probs = onnx_probabilities(onnx_path, pixels)
    assert onnx_probs.shape == (PARITY_DIGITS, 10)
    assert np.max(np.abs(onnx_probs - keras_probs)) <= PARITY_TOLERANCE


def test_pooling_is_two_dimensional_in_the_export(tmp_path: Path) -> None:
    import onnx

    export_onnx(build_model("cnn"), tmp_path / "model.onnx")

    pools = [
        n for n in onnx.load(str(tmp_path / "model.onnx")).graph.node if n.op_type == "MaxPool"
    ]
    assert len(pools) == 2
    for node in pools:
        kernel = next(a for a in node.attribute if a.name == "kernel_shape")
        assert list(kernel.ints) == [2, 2]


def test_export_refuses_another_backend(tmp_path: Path) -> None:
    code = (
        "import os; os.environ['KERAS_BACKEND'] = 'numpy'\n"
        "from pathlib import Path\n"
        "from mnistops.export import ExportError, export_onnx\n"
        "from mnistops.model import build_model\n"
        "try:\n"
        f"    export_onnx(build_model('mlp'), Path({str(tmp_path / 'm.onnx')!r}))\n"
        "except ExportError as exc:\n"
        "    print(exc)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert "KERAS_BACKEND=jax" in done.stdout, done.stderr[-2000:]
    assert not (tmp_path / "m.onnx").exists()


def test_export_never_imports_torch_or_tensorflow(tmp_path: Path) -> None:
    code = (
        "import sys\n"
        "from pathlib import Path\n"
        "from mnistops.export import export_onnx\n"
        "from mnistops.model import build_model\n"
        f"export_onnx(build_model('cnn'), Path({str(tmp_path / 'm.onnx')!r}))\n"
        "print('torch' in sys.modules, 'tensorflow' in sys.modules)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.stdout.split() == ["False", "False"], done.stderr[-2000:]
