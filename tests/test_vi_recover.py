"""Long VI runs are recoverable (issue 14): Ctrl-C, continuing, checkpoints, initial values.

``inference.fit`` (and so every trainer on ``inference.training.run_steps``) and
``infer(method=VI(...))``. Ctrl-C is simulated by a progress bar that raises
``KeyboardInterrupt`` when the host reports the end of a chunk (where a real Ctrl-C is
answered); a crash by one that raises another exception there. Continuations are compared
bit for bit with uninterrupted runs (every step's key is ``fold_in(key, i)``, and the
optimizer state travels with the parameters).
"""

from __future__ import annotations

import warnings

import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
import optax
import pytest

import inference
import ppl
from inference.progress import ProgressBar
from inference.training import run_steps
from inference.vi import guides

Y = jnp.array([1.0, 2.0, 3.0, 0.5, 2.5])
# 140 steps run as 20 chunks of 7; the pieces below are chunked by 7 too, so that every run
# here reuses one compiled program (bit-identity across other chunkings holds as well: the
# steps' keys and arithmetic do not depend on it).
STEPS = 140


def model(y):
    mu = numpyro.sample("mu", dist.Normal(0.0, 5.0))
    s = numpyro.sample("s", dist.HalfNormal(2.0))
    with numpyro.plate("data", y.shape[0]):
        numpyro.sample("y", dist.Normal(mu, s), obs=y)


class StopAt(ProgressBar):
    """A bar that raises ``error`` at its ``at``-th report of finished steps."""

    def __init__(self, total, at, error=KeyboardInterrupt):
        super().__init__(total, enabled=True)
        self.at, self.error, self.reports = at, error, 0

    def update(self, done, postfix):
        if int(done) > 0:
            self.reports += 1
            if self.reports == self.at:
                raise self.error("simulated")

    def close(self):
        pass


def _setup():
    guide = guides.normal(model)
    objective = ppl.objectives.elbo(model, guide)
    return objective, ppl.init_params(guide, jax.random.key(0), Y)


def _same(a, b) -> bool:
    la, lb = jax.tree.leaves(a), jax.tree.leaves(b)
    return len(la) == len(lb) and all(bool(jnp.all(x == y)) for x, y in zip(la, lb))


def _state(r):
    return (r.params, r.opt_state, r.values)


# -- fit ---------------------------------------------------------------------------------
@pytest.mark.parametrize("x64", [False, True])
def test_fit_n_then_m_steps_equals_n_plus_m_bit_for_bit(x64):
    """A FitResult passed as params continues the run: params, optimizer state and the
    objective values of N then M steps equal those of N + M steps exactly, and the key of
    the first run is reused when none is given."""
    with jax.enable_x64(x64):
        objective, p0 = _setup()
        kw = dict(optimizer=optax.adam(0.05), progress=False)
        full = inference.fit(objective, p0, Y, steps=STEPS, key=3, **kw)
        first = inference.fit(objective, p0, Y, steps=42, key=3, updates=6, **kw)
        rest = inference.fit(objective, first, Y, steps=STEPS - 42, **kw)
        assert rest.step == STEPS and rest.values.shape == (STEPS,) and not rest.interrupted
        assert _same(_state(rest), _state(full))
        assert full.values.dtype == (jnp.float64 if x64 else jnp.float32)


def test_fit_ctrl_c_returns_the_parameters_reached_and_continues_exactly():
    """Ctrl-C at the third chunk boundary: fit returns (does not raise) a FitResult marked
    interrupted, with the steps done and a warning that says how many; continuing it
    finishes the same run bit for bit."""
    objective, p0 = _setup()
    kw = dict(optimizer=optax.adam(0.05))
    full = inference.fit(objective, p0, Y, steps=STEPS, key=3, progress=False, **kw)
    with pytest.warns(UserWarning, match=r"fit: interrupted \(KeyboardInterrupt\) after 21 of "
                                         r"140 steps.*steps=119\) finishes"):
        r = inference.fit(objective, p0, Y, steps=STEPS, key=3, progress=StopAt(STEPS, 3), **kw)
    assert r.interrupted and r.step == 21 and r.values.shape == (21,)
    assert _same(r.values, full.values[:21])
    rest = inference.fit(objective, r, Y, steps=STEPS - r.step, progress=False, **kw)
    assert _same(_state(rest), _state(full))


def test_ctrl_c_before_any_chunk_finished_propagates():
    """No chunk done yet: there is nothing to return, so the KeyboardInterrupt propagates."""

    class StopAtOnce(ProgressBar):
        def update(self, done, postfix):
            raise KeyboardInterrupt

    objective, p0 = _setup()
    with pytest.raises(KeyboardInterrupt):
        inference.fit(objective, p0, Y, steps=STEPS, progress=StopAtOnce(STEPS))


def test_run_steps_warns_for_every_trainer_and_can_propagate():
    """run_steps itself answers Ctrl-C (so every trainer on it does): the state after the
    chunks done, a warning naming the trainer's label; on_interrupt='raise' propagates."""

    def count(x, i, key, data, guard):
        return x + 1.0, x, jnp.isfinite(x)[None] if guard else None

    with pytest.warns(UserWarning, match=r"counter: interrupted .* after 10 of 40 steps"):
        t = run_steps(count, jnp.asarray(0.0), steps=40, key=jax.random.key(0), updates=4,
                      progress=StopAt(40, 1), label="counter")
    assert t.interrupted and float(t.state) == 10.0 and t.outputs.shape == (10,)
    with pytest.raises(KeyboardInterrupt):
        run_steps(count, jnp.asarray(0.0), steps=40, key=jax.random.key(0), updates=4,
                  progress=StopAt(40, 1), on_interrupt="raise")


def test_minimize_marks_its_result_interrupted():
    """minimize (flow matching's and score matching's trainer) returns the parameters
    reached, marked interrupted, with their optimizer state and a warning."""
    from inference.training import minimize

    loss = lambda p, key, data: jnp.sum((p - data) ** 2)  # noqa: E731
    with pytest.warns(UserWarning, match=r"train: interrupted .* after 10 of 40 steps"):
        r = minimize(loss, jnp.zeros(2), optimizer=optax.sgd(0.1), steps=40, updates=4,
                     key=jax.random.key(0), data=jnp.ones(2), progress=StopAt(40, 1))
    assert r.interrupted and r.step == 10 and r.opt_state is not None
    np.testing.assert_allclose(r.params, 1.0 - 0.8 ** 10, rtol=1e-5)  # x <- x + 0.2 (1 - x)


def test_fit_checkpoint_resumes_a_crashed_run_bit_for_bit(tmp_path):
    """A crash (an exception) at the fourth chunk boundary leaves the checkpoint of the
    steps done; the same call again resumes from it and ends exactly where an uninterrupted
    run does; once finished, the file gives the result back without running."""
    objective, p0 = _setup()
    path = tmp_path / "fit.npz"
    kw = dict(optimizer=optax.adam(0.05), steps=STEPS, key=3)
    full = inference.fit(objective, p0, Y, progress=False, **kw)
    with pytest.raises(RuntimeError, match="simulated"):
        inference.fit(objective, p0, Y, progress=StopAt(STEPS, 4, RuntimeError),
                      checkpoint=path, **kw)
    assert path.exists()
    resumed = inference.fit(objective, p0, Y, progress=False, checkpoint=path, **kw)
    assert _same(_state(resumed), _state(full)) and resumed.step == STEPS
    again = inference.fit(objective, p0, Y, progress=StopAt(STEPS, 1), checkpoint=path, **kw)
    assert _same(_state(again), _state(full))  # no step ran (the bar would have raised)


def test_fit_checkpoint_of_another_run_is_refused(tmp_path):
    objective, p0 = _setup()
    path = tmp_path / "fit.npz"
    inference.fit(objective, p0, Y, steps=STEPS, key=1, progress=False, checkpoint=path,
                  optimizer=optax.adam(0.05))
    with pytest.raises(ValueError, match=r"different run: it differs in steps"):
        inference.fit(objective, p0, Y, steps=STEPS + 7, key=1, progress=False,
                      checkpoint=path, optimizer=optax.adam(0.05))
    with pytest.raises(ValueError, match=r"different run: it differs in init"):
        inference.fit(objective, jax.tree.map(lambda x: x + 1.0, p0), Y, steps=STEPS, key=1,
                      progress=False, checkpoint=path, optimizer=optax.adam(0.05))
    with pytest.raises(ValueError, match="checkpoint_every is given but checkpoint is not"):
        inference.fit(objective, p0, Y, steps=30, progress=False, checkpoint_every=5)
    from inference.checkpoint import write_archive

    saved = tmp_path / "result.npz"
    write_archive(saved, {}, {"kind": "result"})  # what Result.save marks its files with
    with pytest.raises(ValueError, match=r"is not a fit's checkpoint \(it holds a saved Result"):
        inference.fit(objective, p0, Y, steps=STEPS, progress=False, checkpoint=saved)


def test_fit_refuses_to_continue_with_another_optimizer():
    objective, p0 = _setup()
    r = inference.fit(objective, p0, Y, steps=10, optimizer=optax.adam(0.05), progress=False)
    with pytest.raises(ValueError, match="state of another optimizer"):
        inference.fit(objective, r, Y, steps=10, optimizer=optax.sgd(0.05), progress=False)


# -- infer(method=VI(...)) -------------------------------------------------------------------
VI_STEPS = 140


def _vi(**kw):
    return inference.VI(steps=VI_STEPS, optimizer=optax.adam(0.05), **kw)


def _infer(**kw):
    kw = {"num_samples": 50, "num_chains": 2, "key": 4, "diagnostics": False,
          "progress": False, **kw}
    return inference.infer(model, Y, method=kw.pop("method", _vi()), **kw)


class _BarAt:
    """Replace run_steps' progress bar by one that raises at its ``at``-th report."""

    def __init__(self, monkeypatch, at, error=KeyboardInterrupt):
        import inference.training as training

        class Bar(StopAt):
            def __init__(self, total, desc="", enabled=True, phases=None):
                super().__init__(total, at, error)

        monkeypatch.setattr(training, "ProgressBar", Bar)


def test_infer_vi_ctrl_c_draws_from_the_guide_fitted_so_far(monkeypatch):
    """Ctrl-C during VI's fit: infer returns a Result whose draws come from the guide
    fitted so far (its params are those of a fit of that many steps), with a warning."""
    _BarAt(monkeypatch, 3)
    with pytest.warns(UserWarning, match=r"VI: interrupted \(KeyboardInterrupt\) after 21 of "
                                         r"140 fit steps; drawing from the guide fitted so far"):
        r = _infer(progress=True)
    assert r.tuning["fit_steps"] == 21 and r.tuning["objective"].shape == (21,)
    assert r.samples["mu"].shape == (2, 50)
    monkeypatch.undo()
    short = _infer(method=inference.VI(steps=21, optimizer=optax.adam(0.05)))
    assert _same(r.tuning["unconstrained_params"], short.tuning["unconstrained_params"])


def test_infer_vi_checkpoint_resumes_a_crashed_fit_with_the_same_draws(tmp_path, monkeypatch):
    """A crash during the fit leaves the checkpoint; the same infer call again resumes the
    fit and gives the draws of an uninterrupted run, bit for bit."""
    path = tmp_path / "vi.npz"
    full = _infer()
    _BarAt(monkeypatch, 4, RuntimeError)
    with pytest.raises(RuntimeError, match="simulated"):
        _infer(progress=True, checkpoint=path, checkpoint_every=14)
    monkeypatch.undo()
    resumed = _infer(checkpoint=path, checkpoint_every=14)
    assert _same(resumed.samples, full.samples) and _same(resumed.stats, full.stats)
    assert _same(resumed.tuning["objective"], full.tuning["objective"])


def test_infer_vi_init_params_are_constrained_param_values():
    """init_params: constrained values of param sites by name. A previous result's
    tuning['params'] starts the fit where it ended (with a zero learning rate the params
    stay there, up to the constrain/unconstrain round trip); a latent site's name is
    refused with the names that are accepted."""
    r = _infer()
    still = _infer(method=inference.VI(steps=VI_STEPS, optimizer=optax.sgd(0.0)),
                   init_params=r.tuning["params"])
    for name, value in r.tuning["params"].items():
        np.testing.assert_allclose(still.tuning["params"][name], value, rtol=1e-5)
    with pytest.raises(ppl.ModelError, match=r"init_params has entries \['mu'\].*guide.mu.loc"):
        _infer(init_params={"mu": 1.0})


def test_vi_result_extend_draws_more_from_the_fitted_guide(tmp_path):
    """result.extend(n): n more independent draws per chain from the fitted guide (new
    ones, not repeats), appended with their stats; a saved and loaded result extends too."""
    r = _infer()
    more = r.extend(30, progress=False, diagnostics=False)
    assert more.samples["mu"].shape == (2, 80) and more.stats["lp"].shape == (2, 80)
    assert _same(more.samples["mu"][:, :50], r.samples["mu"])
    assert not np.any(np.isin(np.asarray(more.samples["mu"][:, 50:]), np.asarray(r.samples["mu"])))
    again = more.extend(30, progress=False, diagnostics=False)
    assert not np.any(np.isin(np.asarray(again.samples["mu"][:, 80:]),
                              np.asarray(more.samples["mu"][:, 50:])))
    path = tmp_path / "r.npz"
    r.save(path)
    loaded = inference.load_result(path, model, Y)
    # Its optimizer (an optax object) is not stored, so the method is set again, as the
    # error says.
    with pytest.raises(ValueError, match="set result.method"):
        loaded.extend(30, progress=False)
    loaded.method = r.method
    assert _same(loaded.extend(30, progress=False, diagnostics=False).samples["mu"],
                 more.samples["mu"])


def test_a_real_sigint_during_a_chunk_keeps_that_chunk():
    """A real SIGINT, sent from inside chunk 1 of 4 (by a host callback at step 14):
    run_steps lets the chunk finish, keeps it (the chunk runs in a worker thread, so its
    result is not lost with an interrupted call) and returns the state after it."""
    import os
    import signal

    def count(x, i, key, data, guard):
        jax.lax.cond(i == 14, lambda: jax.debug.callback(
            lambda: os.kill(os.getpid(), signal.SIGINT)), lambda: None)
        return x + 1.0, x, jnp.isfinite(x)[None] if guard else None

    with pytest.warns(UserWarning, match=r"interrupted .* after 20 of 40 steps"):
        t = run_steps(count, jnp.asarray(0.0), steps=40, key=jax.random.key(0), updates=4)
    assert t.interrupted and float(t.state) == 20.0 and t.outputs.shape == (20,)


def test_neutra_interrupted_during_its_flow_fit_has_no_draws_to_return(monkeypatch):
    """Ctrl-C during NeuTra's flow fit (the fit returns interrupted): there is no chain
    yet, so NeuTra raises KeyboardInterrupt saying where it stopped (the fit is replaced by
    one that reports an interruption, so nothing compiles)."""
    import inference.methods.neutra as neutra
    from inference.training import FitResult

    def interrupted_fit(objective, params, *args, steps, **kw):
        return FitResult(params, jnp.zeros(3), step=3, interrupted=True)

    monkeypatch.setattr(neutra, "fit_within", interrupted_fit)
    with pytest.raises(KeyboardInterrupt, match=r"flow fit \(step 3 of 50\): no draws yet"):
        inference.infer(model, Y, method=inference.NeuTra(vi_steps=50), progress=False)
