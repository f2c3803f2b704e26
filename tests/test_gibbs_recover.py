"""Gibbs runs are recoverable like NUTS's: Ctrl-C, extend, checkpoints, init_params, save/load.

Gibbs runs through :mod:`inference.chains` (its chain target is
:mod:`inference.mcmc.gibbs_chains`). Every run here has the shapes of the module's base run
(20 warmup + 20 sweeps, 2 chains), so the compiled programs are shared. Interruptions and
crashes are raised from the progress bar's update, which the host loop calls after every
chunk (no real signals), as in ``tests/test_recoverable.py``.
"""

from __future__ import annotations

import dataclasses
import functools

import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
import pytest

import inference
from draws_equal import assert_same_draws
from inference import chains
from inference.mcmc import langevin
from ppl.errors import ModelError
from test_recoverable import StopAt, infer_with

W, S, C = 20, 20, 2
Y = jnp.array([1.0, 2.5, 3.0])
METHOD = inference.Gibbs({"z": inference.Enumerate(),
                          ("mu", "s"): functools.partial(langevin.mala, step_size=0.3)})


def model(y=None):
    mu = numpyro.sample("mu", dist.Normal(0.0, 3.0))
    s = numpyro.sample("s", dist.HalfNormal(2.0))
    z = numpyro.sample("z", dist.Bernoulli(0.5))
    with numpyro.plate("data", 3):
        numpyro.sample("y", dist.Normal(mu + 2.0 * z, s), obs=y)


def run(**options):
    return infer_with(model, {"y": Y}, **{"method": METHOD, "num_warmup": W, "num_samples": S,
                                          **options})


@pytest.fixture(scope="module")
def base():
    return run()


def test_extend_equals_a_longer_run(base):
    ext = base.extend(S, progress=False, diagnostics=False)
    assert ext.samples["z"].shape == (C, 2 * S) and ext.samples["z"].dtype == np.int32
    np.testing.assert_array_equal(ext.samples["mu"][:, :S], base.samples["mu"])
    # No new warmup: the tuned step sizes are kept (tuning reports the same values) and the
    # draws are, bit for bit, those of a run S sweeps longer.
    np.testing.assert_array_equal(ext.tuning["step_size"]["mu+s"],
                                  base.tuning["step_size"]["mu+s"])
    assert ext.tuning["blocks"] == [["z"], ["mu", "s"]]
    assert_same_draws(ext, run(num_samples=2 * S))


def test_ctrl_c_returns_the_draws_so_far_and_extend_finishes_the_run(base, monkeypatch):
    monkeypatch.setattr(chains, "ProgressBar", StopAt(W + 10, KeyboardInterrupt()))
    with pytest.warns(UserWarning, match=r"Gibbs: interrupted \(KeyboardInterrupt\) after 10 of 20"):
        partial = run()
    monkeypatch.undo()
    assert partial.samples["mu"].shape == (C, 10) and partial.state.interrupted
    np.testing.assert_array_equal(partial.samples["z"], base.samples["z"][:, :10])
    assert_same_draws(partial.extend(10, progress=False, diagnostics=False), base)


def test_a_crashed_run_resumes_from_its_checkpoint_bit_identically(base, tmp_path, monkeypatch):
    path = tmp_path / "gibbs.npz"
    monkeypatch.setattr(chains, "ProgressBar", StopAt(W + 12, RuntimeError("simulated crash")))
    with pytest.raises(RuntimeError, match="simulated crash"):
        run(checkpoint=path, checkpoint_every=5)
    monkeypatch.undo()
    assert path.exists()
    assert_same_draws(run(checkpoint=path, checkpoint_every=5), base)


def test_a_checkpoint_survives_a_new_method_object_with_other_function_addresses(base, tmp_path):
    # A resumed run (after a crash, in a new process) builds its blocks' factories anew:
    # functools.partial objects whose repr holds another address. The checkpoint's
    # fingerprint must not depend on that address.
    path = tmp_path / "g.npz"
    run(checkpoint=path)
    again = inference.Gibbs({"z": inference.Enumerate(),
                             ("mu", "s"): functools.partial(langevin.mala, step_size=0.3)})
    assert_same_draws(run(method=again, checkpoint=path), base)
    # A block factory that prints the same (<lambda>) but runs other code is another run.
    other = inference.Gibbs({"z": inference.Enumerate(),
                             ("mu", "s"): lambda ld: langevin.mala(ld, step_size=0.31)})
    lam = inference.Gibbs({"z": inference.Enumerate(),
                           ("mu", "s"): lambda ld: langevin.mala(ld, step_size=0.3)})
    path2 = tmp_path / "g2.npz"
    run(method=lam, checkpoint=path2)
    with pytest.raises(ValueError, match="differs in method_code"):
        run(method=other, checkpoint=path2)


@pytest.mark.slow  # slow suite (a 5-minute default suite): three more compiled runs; the init_params checks are test_recoverable's, shared
def test_init_params_start_every_chain_there_and_are_checked():
    # mu = 40 is far outside the random starting box ([-2, 2]): after one sweep from it
    # (no warmup; MALA at step 0.3 moves mu by about step^2 / 2 * |grad| ~ 0.05 * 40 / 9
    # plus noise of sd 0.3), every chain is still near 40.
    r = run(num_warmup=0, num_samples=1, init_params={"mu": 40.0, "s": 1.0, "z": 1})
    assert np.all(np.asarray(r.samples["mu"][:, 0]) > 35.0)
    with pytest.raises(ModelError, match=r"init_params\['z'\] must hold whole numbers"):
        run(init_params={"mu": 0.0, "s": 1.0, "z": 0.5})
    with pytest.raises(ModelError, match=r"init_params\['s'\].*outside the support"):
        run(init_params={"mu": 0.0, "s": -1.0, "z": 1})
    with pytest.raises(ModelError, match=r"no value for latent site\(s\) \['z'\]"):
        run(init_params={"mu": 0.0, "s": 1.0})


def test_save_load_and_extend(base, tmp_path):
    # Gibbs's blocks (kernel factories) cannot be written to the file: the loaded Result
    # needs its method set again, then extends as the original does.
    base.save(tmp_path / "r.npz")
    loaded = inference.load_result(tmp_path / "r.npz", model, y=Y)
    assert_same_draws(loaded, base)
    with pytest.raises(ValueError, match="method could not be rebuilt"):
        loaded.extend(S)
    loaded = dataclasses.replace(loaded, method=METHOD)
    assert_same_draws(loaded.extend(S, progress=False, diagnostics=False),
                      base.extend(S, progress=False, diagnostics=False))
