"""Smoke test of ``examples/vae_digits.py``: a few steps, finite metrics, the PNG written."""

import importlib.util
import math
from pathlib import Path

import pytest

pytest.importorskip("sklearn")
pytest.importorskip("matplotlib")

# Compiling the VAE's objectives takes ~30-50 s on 2 cores: run in CI's slow stage.
pytestmark = pytest.mark.slow

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "vae_digits.py"


def load_example():
    spec = importlib.util.spec_from_file_location("vae_digits_example_test", EXAMPLE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_vae_digits_main_runs_and_writes_png(tmp_path):
    example = load_example()
    out = tmp_path / "vae.png"
    # The IWAE run only, to stay well under 30 s (compiling dominates): it goes through the
    # per-image iwae objective, inference.fit with minibatches, both evaluations and the plot.
    metrics = example.main(steps=20, out=str(out), eval_particles=16, progress=False,
                           runs=("iwae(8)",))
    assert set(metrics) == {"iwae(8)"}
    for name, m in metrics.items():
        for key in ("train_elbo", "test_elbo", "test_iwae"):
            assert math.isfinite(m[key]), (name, key, m[key])
            # 64 binary pixels: log p(x) lies between -64 log 2 * (a few) and 0
            assert -400.0 < m[key] < 0.0, (name, key, m[key])
    assert out.exists() and out.stat().st_size > 1000
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
