"""Smoke tests of the Langevin examples: each script run with ``--quick`` as a user would."""

import math
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("matplotlib")

# Each script compiles a dozen samplers or a training step (~1 min each on 2 cores): these
# run in CI's slow stage, keeping the default suite to a few minutes.
pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples"
KERNELS = ("ULA", "MALA", "BAOAB", "OBABO", "RandMidpoint", "NUTS")
NUMBER = r"[-+]?(?:\d+\.?\d*(?:[eE][-+]?\d+)?|nan|inf)"


def _run(script: str, *args: str, timeout: int = 600) -> str:
    env = {**os.environ, "MPLBACKEND": "Agg",
           "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.run([sys.executable, str(EXAMPLES / script), *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, f"{script} failed:\n{proc.stdout}\n{proc.stderr[-4000:]}"
    return proc.stdout


def _is_png(path: Path) -> bool:
    return path.exists() and path.stat().st_size > 1000 and \
        path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def _table(text: str, title: str) -> dict[str, list[float]]:
    """The rows (kernel -> numbers) of the table printed under ``title``."""
    block = text.split(f"\n{title}:", 1)[1].split("\n\n", 1)[0]
    rows = {}
    for line in block.splitlines():
        parts = line.split()
        if parts and parts[0] in KERNELS:
            rows[parts[0]] = [float("nan") if p == "-" else float(p) for p in parts[1:]]
    return rows


def test_langevin_zoo_quick(tmp_path):
    out = tmp_path / "zoo.png"
    text = _run("langevin_zoo.py", "--quick", "--out", str(out))
    for title in ("gauss100", "funnel10"):
        rows = _table(text, title)
        assert set(rows) == set(KERNELS), (title, sorted(rows))
        for name, values in rows.items():
            ess, ess_x, ess_x2, err_mean, err_m2, step = values[:6]
            grads = values[7]
            for v in (ess, ess_x, ess_x2, err_mean, err_m2, step):
                assert math.isfinite(v), (title, name, values)
            assert ess > 0 and ess == min(ess_x, ess_x2), (title, name, values)
            assert grads > 0, (title, name, values)
    gauss = _table(text, "gauss100")
    # Even in the short smoke run, BAOAB beats MALA per gradient on the ill-conditioned
    # Gaussian by a wide margin (about 10x in the full run).
    assert gauss["BAOAB"][0] > 2.0 * gauss["MALA"][0], text
    assert re.search(r"BAOAB / MALA ESS per gradient = " + NUMBER + "x", text)
    assert _is_png(out)


def test_ebm_short_run_quick(tmp_path):
    out = tmp_path / "ebm.png"
    text = _run("ebm_short_run.py", "--quick", "--out", str(out))
    names = ("untrained model", "trained model", "data vs data")
    scores = {name: float(m.group(1)) for name in names
              for m in [re.search(r"^\s*" + name + r"\s*:\s*(" + NUMBER + ")", text, re.M)] if m}
    assert set(scores) == {"untrained model", "trained model", "data vs data"}, text
    assert all(math.isfinite(v) for v in scores.values()), scores
    # Training moves the short-run samples much closer to the data.
    assert scores["trained model"] < 0.5 * scores["untrained model"], scores
    assert _is_png(out)


if __name__ == "__main__":
    pytest.main([__file__, "-q"])
