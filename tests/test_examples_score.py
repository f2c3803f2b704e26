"""Smoke test of ``examples/score_posterior.py --quick``: it runs, prints its metrics (finite),
writes the PNG, and the score prior helps (denoised MSE below the noisy observation's)."""

import math
import os
import pathlib
import re
import subprocess
import sys

import pytest

pytestmark = pytest.mark.slow  # trains a network (~1 min on 2 cores)

ROOT = pathlib.Path(__file__).resolve().parents[1]


def _number(pattern, text):
    m = re.search(pattern, text)
    assert m, f"missing {pattern!r} in output:\n{text}"
    return [float(v) for v in m.groups()]


def test_score_posterior_quick(tmp_path):
    out = tmp_path / "score_posterior.png"
    env = {**os.environ, "MPLBACKEND": "Agg",  # the checkout first, whatever is installed
           "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.run([sys.executable, str(ROOT / "examples" / "score_posterior.py"), "--quick",
                           "--out", str(out)], cwd=ROOT, capture_output=True, text=True, env=env,
                          timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    text = proc.stdout
    assert "trained digits_net" in text
    (ed_prior, ed_ref) = _number(r"held-out digits ([\d.]+) \(training digits: ([\d.]+)\)", text)
    mse_in, base_in, seen = _number(
        r"posterior mean ([\d.naninf]+) \| training mean image ([\d.]+); seen pixels fit to ([\d.naninf]+)",
        text)
    mse_dn, noisy = _number(r"MSE posterior mean ([\d.naninf]+) \| clipped observation ([\d.]+)", text)
    assert all(math.isfinite(v) for v in (ed_prior, ed_ref, mse_in, base_in, seen, mse_dn, noisy))
    assert seen < 0.05  # the seen pixels follow the observation (noise variance 0.01)
    assert mse_dn < noisy  # even the quick prior denoises
    assert out.exists() and out.stat().st_size > 0
