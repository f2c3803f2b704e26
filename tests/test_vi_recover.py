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
    with pytest.raises(ValueError, match="checkpoint_every is given but checkpoint is not"):
        inference.fit(objective, p0, Y, steps=30, progress=False, checkpoint_every=5)


def test_fit_refuses_to_continue_with_another_optimizer():
    objective, p0 = _setup()
    r = inference.fit(objective, p0, Y, steps=10, optimizer=optax.adam(0.05), progress=False)
    with pytest.raises(ValueError, match="state of another optimizer"):
        inference.fit(objective, r, Y, steps=10, optimizer=optax.sgd(0.05), progress=False)
