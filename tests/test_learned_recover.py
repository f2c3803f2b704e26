"""Learned's IRMH chains run like every MCMC method's: in chunks, Ctrl-C returns the draws so
far, ``result.extend(n)`` continues them with the same fitted proposal, ``checkpoint=``
resumes them after a crash; a Ctrl-C before there is a proposal (source run, flow fit)
stops the call, and a checkpointed source run resumes from its own file.

The proposal is fitted to fixed draws (an array source, 50 steps of a one-layer flow): the
fit is deterministic for a key, so two runs with the same key have the same proposal and
their IRMH chains can be compared bit for bit.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
import pytest

import inference
from inference import chains, training
from inference.learned.method import source_checkpoint
from test_recoverable import StopAt, infer_with

W, S, C = 10, 20, 2
Y = jnp.array([0.3, 1.1, 0.7])
DRAWS = 0.6 + 0.5 * jax.random.normal(jax.random.key(3), (300, 1))
METHOD = inference.Learned(source=DRAWS, flow="affine_coupling", steps=50,
                           flow_options={"layers": 1, "width": 4})


def model(y=None):
    mu = numpyro.sample("mu", dist.Normal(0.0, 2.0))
    with numpyro.plate("data", 3):
        numpyro.sample("y", dist.Normal(mu, 1.0), obs=y)


def run(**options):
    return infer_with(model, {"y": Y}, **{"method": METHOD, "num_warmup": W, "num_samples": S,
                                          **options})


def same_chains(a, b):
    for name in ("mu",):
        np.testing.assert_array_equal(np.asarray(a.samples[name]), np.asarray(b.samples[name]))
    for name in ("lp", "log_q", "is_accepted", "proposal_log_weight"):
        np.testing.assert_array_equal(np.asarray(a.stats[name]), np.asarray(b.stats[name]))


@pytest.fixture(scope="module")
def base():
    return run()


def test_extend_continues_the_chains_with_the_same_proposal(base):
    ext = base.extend(S, progress=False, diagnostics=False)
    assert ext.samples["mu"].shape == (C, 2 * S)
    # The draws a run S draws longer makes (same key: same fit, same chain keys), and the
    # importance diagnostics are recomputed over the new draws.
    same_chains(ext, run(num_samples=2 * S))
    assert np.isfinite(ext.tuning["pareto_k"])


def test_ctrl_c_during_irmh_returns_the_draws_so_far(base, monkeypatch):
    monkeypatch.setattr(chains, "ProgressBar", StopAt(W + 8, KeyboardInterrupt()))
    with pytest.warns(UserWarning, match=r"Learned: interrupted \(KeyboardInterrupt\) after 8 of 20"):
        partial = run()
    monkeypatch.undo()
    assert partial.samples["mu"].shape == (C, 8) and partial.state.interrupted
    same_chains(partial.extend(12, progress=False, diagnostics=False), base)


def test_a_loaded_result_says_how_to_draw_more(base, tmp_path):
    # The fitted proposal is not written to files: extending a loaded Result is refused
    # with the way to reuse the proposal instead.
    base.save(tmp_path / "r.npz")
    loaded = dataclasses.replace(inference.load_result(tmp_path / "r.npz", model, y=Y),
                                 method=METHOD)
    with pytest.raises(ValueError, match=r"Learned\(flow=result.tuning\['flow'\]"):
        loaded.extend(S)


@pytest.mark.slow  # slow suite (a 5-minute default suite): three fits and runs, ~9 s; the chains' checkpoints are checked by test_recoverable, the option's refusal without chains there too
def test_a_crashed_irmh_run_resumes_from_its_checkpoint(base, tmp_path, monkeypatch):
    # The rerun fits the same flow (same key, same draws) and resumes the chains from the
    # file: the draws of the uninterrupted run, bit for bit. A flow fitted otherwise is
    # another proposal, baked into the programs: refused by the file's fingerprint.
    path = tmp_path / "learned.npz"
    monkeypatch.setattr(chains, "ProgressBar", StopAt(W + 10, RuntimeError("crash")))
    with pytest.raises(RuntimeError, match="crash"):
        run(checkpoint=path, checkpoint_every=5)
    monkeypatch.undo()
    assert path.exists() and not (tmp_path / "learned.source.npz").exists()  # no source run
    other = dataclasses.replace(METHOD, steps=51)
    with pytest.raises(ValueError, match="differs in"):
        run(method=other, checkpoint=path, checkpoint_every=5)
    same_chains(run(checkpoint=path, checkpoint_every=5), base)


def test_ctrl_c_during_the_flow_fit_stops_the_call(monkeypatch):
    # A flow fitted part way is no proposal to draw with: the whole call stops, saying where.
    # A Ctrl-C that comes while the fit's third chunk runs (run_steps' chunk runner reports it).
    calls, run_chunk = [], training._to_the_end

    def ctrl_c_in_third_chunk(*args):
        calls.append(1)
        out, ctrl_c = run_chunk(*args)
        return out, ctrl_c or len(calls) == 3

    monkeypatch.setattr(training, "_to_the_end", ctrl_c_in_third_chunk)
    with pytest.raises(KeyboardInterrupt, match="during its flow fit: no proposal yet"):
        run()
    assert len(calls) == 3  # stopped there, not at the end of the fit


def test_checkpoint_file_of_the_source_run():
    assert source_checkpoint("runs/learned.npz") == "runs/learned.source.npz"
    assert source_checkpoint("learned") == "learned.source"


SOURCE = inference.Learned(source=inference.MALA(step_size=0.3, find_mode=0),
                           flow="affine_coupling", steps=50, source_samples=30,
                           source_warmup=0, source_chains=2,
                           flow_options={"layers": 1, "width": 4})


@pytest.mark.slow  # slow suite (a 5-minute default suite): source runs and fits; the IRMH checkpoint and the fit's Ctrl-C are checked above, the chains' checkpoints by test_recoverable
def test_a_source_run_resumes_from_its_own_checkpoint_and_its_ctrl_c_stops_the_call(
        tmp_path, monkeypatch):
    # MALA (fixed step, no warmup, no mode search) as the source, then the fit and IRMH.
    base = run(method=SOURCE)
    path = tmp_path / "learned.npz"
    # A crash in the source's chains (the first bar that reaches 12 steps is the source's):
    # its file is there, the chains' not yet; the same call again gives the same draws.
    monkeypatch.setattr(chains, "ProgressBar", StopAt(12, RuntimeError("crash")))
    with pytest.raises(RuntimeError, match="crash"):
        run(method=SOURCE, checkpoint=path, checkpoint_every=4)
    monkeypatch.undo()
    assert (tmp_path / "learned.source.npz").exists() and not path.exists()
    resumed = run(method=SOURCE, checkpoint=path, checkpoint_every=4)
    same_chains(resumed, base)
    np.testing.assert_array_equal(np.asarray(resumed.tuning["source"].samples["mu"]),
                                  np.asarray(base.tuning["source"].samples["mu"]))
    # Ctrl-C in the source run: no proposal, so the call stops (not a fit to part of it).
    monkeypatch.setattr(chains, "ProgressBar", StopAt(12, KeyboardInterrupt()))
    with pytest.raises(KeyboardInterrupt, match=r"during its source run \(MALA\)"):
        run(method=SOURCE)


@pytest.mark.slow  # slow suite (a 5-minute default suite): a source run and a fit; init_params themselves are checked by test_recoverable and test_gibbs_recover
def test_init_params_start_the_source_chains_and_are_refused_without_a_source_method():
    # MALA as the source (fixed step size h = 0.05, no mode search, no warmup), started at
    # mu = 30 (the posterior is N(~0.6, ~0.55^2)): a MALA step moves mu by h * grad / 2 plus
    # noise of sd sqrt(h) = 0.22, at most ~h * |grad| = 0.05 * 95 ~ 5 per step from there,
    # so after 3 draws every chain is still above 10; from the random starting box
    # ([-2, 2]) it would be within a few units of the posterior.
    method = inference.Learned(source=inference.MALA(step_size=0.05, find_mode=0), steps=20,
                               source_samples=3, source_warmup=0, source_chains=2,
                               flow_options={"layers": 1, "width": 4})
    with pytest.warns(UserWarning):  # a flow fitted to 6 draws: poor weights, said so
        r = run(method=method, init_params={"mu": 30.0})
    source = np.asarray(r.tuning["source"].samples["mu"])
    assert np.all(source > 10.0), source
    with pytest.raises(TypeError, match=r"init_params starts the chains of its source method"):
        run(init_params={"mu": 0.0})  # METHOD's source is an array of draws
