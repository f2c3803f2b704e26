"""NeuTra's chains are recoverable like its kernel's: extend, Ctrl-C, init_params.

NeuTra fits a flow by VI, then runs its kernel (NUTS here) in the flow's base space through
:mod:`inference.chains`. The fit is deterministic for a key, so runs with the same key run
their kernels in the same space and compare bit for bit.
"""

from __future__ import annotations

import numpy as np
import pytest

import inference
from draws_equal import assert_same_draws
from inference import chains
from ppl.errors import ModelError
from test_recoverable import StopAt, Y, infer_with, model

W, S = 20, 20

# Slow suite (a 5-minute default suite): each test fits a flow and runs NUTS (~5-18 s). The
# machinery they exercise (chains' extend, Ctrl-C, checkpoints, init_params) is tested in the
# default suite by test_recoverable.py; NeuTra itself by test_neutra.py.
pytestmark = pytest.mark.slow

METHOD = inference.NeuTra(vi_steps=30, flow_options={"layers": 1, "width": 4})


def run(**options):
    # test_recoverable's model (mu, s; five points) with 20 warmup + 20 draws.
    return infer_with(model, {"y": Y}, **{"method": METHOD, "num_warmup": W, "num_samples": S,
                                          **options})


@pytest.fixture(scope="module")
def base():
    return run()


def test_extend_equals_a_longer_run_and_ctrl_c_then_extend_the_whole_run(base, monkeypatch):
    ext = base.extend(S, progress=False, diagnostics=False)
    assert set(ext.samples) == {"mu", "s"}  # the base-space site stays hidden
    assert_same_draws(ext, run(num_samples=2 * S))
    monkeypatch.setattr(chains, "ProgressBar", StopAt(W + 8, KeyboardInterrupt()))
    with pytest.warns(UserWarning, match=r"NUTS: interrupted \(KeyboardInterrupt\) after 8 of 20"):
        partial = run()
    monkeypatch.undo()
    assert_same_draws(partial.extend(12, progress=False, diagnostics=False), base)


def test_init_params_start_the_kernel_at_those_values():
    # The values go to the base space through the fitted flow's inverse, and come back
    # through its forward pass: MALA (step 0.01, no mode search, no warmup) moves mu by at
    # most a few tenths in 3 steps from 30, far from where a random start could be.
    kernel = inference.MALA(step_size=0.01, find_mode=0)
    method = inference.NeuTra(vi_steps=30, kernel=kernel, flow_options={"layers": 1, "width": 4})
    r = run(method=method, num_warmup=0, num_samples=3, init_params={"mu": 30.0, "s": 1.0})
    mu = np.asarray(r.samples["mu"])
    assert np.all(np.abs(mu - 30.0) < 3.0), mu
    with pytest.raises(ModelError, match=r"init_params\['s'\].*outside the support"):
        run(init_params={"mu": 0.0, "s": -1.0})


def test_a_crashed_kernel_run_resumes_from_its_checkpoint(base, tmp_path, monkeypatch):
    # The rerun fits the same flow (same key) and resumes the kernel from the file; a flow
    # fitted with other settings is another transported model, refused by the fingerprint.
    path = tmp_path / "neutra.npz"
    monkeypatch.setattr(chains, "ProgressBar", StopAt(W + 10, RuntimeError("crash")))
    with pytest.raises(RuntimeError, match="crash"):
        run(checkpoint=path, checkpoint_every=5)
    monkeypatch.undo()
    other = inference.NeuTra(vi_steps=31, flow_options={"layers": 1, "width": 4})
    with pytest.raises(ValueError, match="differs in .*model"):
        run(method=other, checkpoint=path, checkpoint_every=5)
    assert_same_draws(run(checkpoint=path, checkpoint_every=5), base)
