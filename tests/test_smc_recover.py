"""SMC runs that can be trusted when long (issue 14): Ctrl-C, checkpoints, ``extend``, and
``init_params`` refused with the reason.

The base run tempers a small model along a fixed schedule of 8 stages (so the number of
stages, chunks and checkpoints is known); every run here has its shapes, so the compiled
programs are shared. Crashes are simulated by a ``write_archive`` that raises after writing
(the file is whole, the process "dies"); interrupts by a progress bar whose update raises
``KeyboardInterrupt`` (the host loop calls it after every chunk), and, in the slow test,
by a real SIGINT.
"""

from __future__ import annotations

import math
import os
import signal
import threading
import time

import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
import pytest

import inference
import ppl
from inference import checkpoint as ckpt
from inference.smc import SMC, driver
from draws_equal import assert_same_draws

Y = jnp.array([1.0, 2.0, 3.0, 0.5, 2.2])
C, S = 2, 40
SCHEDULE = (0.02, 0.05, 0.1, 0.2, 0.35, 0.5, 0.75, 1.0)
METHOD = SMC(num_particles=60, num_mcmc_steps=2, schedule=SCHEDULE)


def model(y=None):
    mu = numpyro.sample("mu", dist.Normal(0.0, 5.0))
    s = numpyro.sample("s", dist.HalfNormal(2.0))
    with numpyro.plate("data", 5):
        numpyro.sample("y", dist.Normal(mu, s), obs=y)


def run(method=METHOD, y=Y, **options):
    options = {"num_samples": S, "num_chains": C, "key": 0, "progress": False,
               "diagnostics": False, **options}
    return inference.infer(model, y=y, method=method, **options)


@pytest.fixture(scope="module")
def base():
    return run()


def assert_same(a, b):
    assert_same_draws(a, b)
    np.testing.assert_array_equal(a.tuning["log_evidence"], b.tuning["log_evidence"])


class CrashAfter:
    """``write_archive`` that writes, then raises (a crash) at its ``n``-th call."""

    def __init__(self, n):
        self.n, self.calls, self.write = n, 0, ckpt.write_archive

    def __call__(self, path, arrays, meta):
        self.write(path, arrays, meta)
        self.calls += 1
        if self.calls == self.n:
            raise RuntimeError("simulated crash")


class InterruptAt:
    """A ProgressBar stand-in raising KeyboardInterrupt at its ``n``-th update."""

    def __init__(self, n):
        self.n, self.updates = n, 0

    def __call__(self, total, desc="", enabled=True, phases=None):
        outer = self

        class Bar(inference.progress.ProgressBar):
            def update(self, done, postfix):
                outer.updates += 1
                if outer.updates == outer.n:
                    raise KeyboardInterrupt

        return Bar(total, desc, False, phases)


# -- checkpoints -------------------------------------------------------------------------
def test_checkpoint_resume_after_a_crash_is_bit_identical(base, tmp_path, monkeypatch):
    path = tmp_path / "smc.npz"
    crash = CrashAfter(2)
    monkeypatch.setattr(ckpt, "write_archive", crash)
    with pytest.raises(RuntimeError, match="simulated crash"):
        run(checkpoint=path, checkpoint_every=2)
    monkeypatch.undo()
    # The file holds the populations after stage 4 (written every 2 stages).
    assert ckpt.read_archive(path)[1]["stage"] == 4
    resumed = run(checkpoint=path, checkpoint_every=2)
    assert_same(resumed, base)
    # A finished file gives the draws back (no stage is run again).
    assert_same(run(checkpoint=path, checkpoint_every=2), base)
    assert ckpt.read_archive(path)[1]["stage"] == len(SCHEDULE)


def test_checkpoint_every_stage_by_default(base, tmp_path, monkeypatch):
    path = tmp_path / "smc.npz"
    stages = []
    write = ckpt.write_archive
    monkeypatch.setattr(ckpt, "write_archive",
                        lambda p, a, m: (stages.append(m["stage"]), write(p, a, m)))
    assert_same(run(checkpoint=path), base)
    assert stages == list(range(1, len(SCHEDULE) + 1))


def test_checkpoint_from_another_call_is_refused(tmp_path):
    path = tmp_path / "smc.npz"
    run(checkpoint=path)
    other = SMC(num_particles=61, num_mcmc_steps=2, schedule=SCHEDULE)
    cases = [({"method": other}, "method"), ({"key": 1}, "key"), ({"num_chains": 1}, "num_chains"),
             ({"num_samples": 30}, "num_samples"), ({"y": Y + 1.0}, "data")]
    for options, what in cases:
        with pytest.raises(ValueError, match=rf"different run: it differs in {what}\b"):
            run(checkpoint=path, **options)
    with pytest.raises(ValueError, match="checkpoint_every is given but checkpoint is not"):
        run(checkpoint_every=2)


def test_checkpoint_is_not_a_saved_result(base, tmp_path):
    path = tmp_path / "r.npz"
    base.save(path)
    with pytest.raises(ValueError, match="saved Result, not a checkpoint"):
        run(checkpoint=path)


# -- Ctrl-C ------------------------------------------------------------------------------
def test_interrupt_propagates_with_where_and_resumes(base, tmp_path, monkeypatch):
    path = tmp_path / "smc.npz"
    monkeypatch.setattr(driver, "ProgressBar", InterruptAt(2))
    with pytest.raises(KeyboardInterrupt, match=r"chain 0: stage \d, beta .*checkpoint"):
        run(checkpoint=path, checkpoint_every=100, progress=True)
    monkeypatch.undo()
    # Written at the interrupt, although the next checkpoint was not due.
    stage = ckpt.read_archive(path)[1]["stage"]
    assert 1 < stage < len(SCHEDULE)
    assert_same(run(checkpoint=path, checkpoint_every=100), base)


def test_interrupt_without_checkpoint_says_how_to_resume(monkeypatch):
    monkeypatch.setattr(driver, "ProgressBar", InterruptAt(1))
    with pytest.raises(KeyboardInterrupt, match="pass checkpoint='smc.npz'"):
        run(progress=True)


def test_chunking_does_not_change_the_draws(base, monkeypatch):
    # Chunks of ~1 ms: about one stage per call, against the base run's larger chunks.
    monkeypatch.setattr(driver, "CHUNK_SECONDS", 1e-3)
    assert_same(run(), base)


@pytest.mark.slow
def test_real_sigint_stops_within_seconds(monkeypatch):
    """A real SIGINT during a long run (about 300 stages of ~0.05 s) is answered at the end
    of the chunk in flight (about a second), not at the end of the run."""
    method = SMC(num_particles=400, num_mcmc_steps=20, schedule=np.linspace(0.003, 1.0, 300))
    sent, timers = [], []

    class Bar(inference.progress.ProgressBar):
        def update(self, done, postfix):
            if not sent:  # the first chunk is done: the programs are compiled
                sent.append(time.perf_counter())
                timers.append(threading.Timer(0.5, os.kill, (os.getpid(), signal.SIGINT)))
                timers[0].start()

    monkeypatch.setattr(driver, "ProgressBar", lambda *a, **k: Bar(100, enabled=False))
    started = time.perf_counter()
    try:
        with pytest.raises(KeyboardInterrupt, match="stage"):
            run(method=method, num_samples=100)
    finally:  # a signal sent after the run would interrupt whatever runs next
        for timer in timers:
            timer.cancel()
    stopped = time.perf_counter()
    assert sent, "the run ended before its first chunk"
    # Signal at sent + 0.5 s; a chunk is sized to about 1 s (first ones shorter): 3 s bound.
    assert stopped - sent[0] < 3.5, (stopped - sent[0], stopped - started)


# -- init_params --------------------------------------------------------------------------
def test_init_params_is_refused_with_the_reason():
    with pytest.raises(TypeError, match="SMC starts every particle from a prior draw"):
        run(init_params={"mu": 1.0, "s": 1.0})


# -- extend -------------------------------------------------------------------------------
def test_extend_appends_draws_moved_at_beta_one(base, tmp_path):
    ext = base.extend(25, progress=False, diagnostics=False)
    assert ext.samples["mu"].shape == (C, S + 25) and ext.stats["lp"].shape == (C, S + 25)
    np.testing.assert_array_equal(ext.samples["mu"][:, :S], base.samples["mu"])
    assert ext.state.t == 1 and ext.state.draws == S + 25
    assert np.all(np.asarray(ext.stats["n_grad"][:, S:]) > 0)
    # lp of a new draw is the model's log density there (unconstrained), as in infer.
    pot = ppl.potential(model, y=Y)
    u = pot.to_unconstrained({"mu": ext.samples["mu"][1, S + 3], "s": ext.samples["s"][1, S + 3]})
    np.testing.assert_allclose(float(ext.stats["lp"][1, S + 3]), float(pot.logdensity_fn(u)),
                               rtol=1e-5)
    # More draws than particles: several rounds of moves; and through save / load_result.
    path = tmp_path / "r.npz"
    ext.save(path)
    loaded = inference.load_result(path, model, y=Y)
    more = loaded.extend(130, progress=False, diagnostics=False)
    assert more.samples["s"].shape == (C, S + 25 + 130) and more.state.t == 2
    direct = ext.extend(130, progress=False, diagnostics=False)
    np.testing.assert_array_equal(more.samples["s"], direct.samples["s"])


@pytest.mark.slow
def test_extended_draws_follow_the_posterior():
    """Conjugate normal mean (known sd 1, prior N(0, 5^2), 5 observations): posterior
    N(m, v). 16 independent SMC chains, each extended once by 200 draws; the extension's
    chain means are independent across chains, so their SE is their sd / 4. Z = 4 SEs for
    the mean; the variance is checked through E[(mu - m)^2] = v the same way."""

    def normal_mean(y=None):
        mu = numpyro.sample("mu", dist.Normal(0.0, 5.0))
        with numpyro.plate("data", 5):
            numpyro.sample("y", dist.Normal(mu, 1.0), obs=y)

    v = 1.0 / (1.0 / 25.0 + 5.0)
    m = v * float(Y.sum())
    r = inference.infer(normal_mean, y=Y, method=SMC(num_particles=400, num_mcmc_steps=5),
                        num_samples=200, num_chains=16, key=3, progress=False, diagnostics=False)
    new = np.asarray(r.extend(200, progress=False, diagnostics=False).samples["mu"][:, 200:],
                     dtype=np.float64)
    for stat, exact in ((new, m), ((new - m) ** 2, v)):
        means = stat.mean(1)
        se = means.std(ddof=1) / math.sqrt(means.size)
        assert abs(means.mean() - exact) < 4.0 * se, (means.mean(), exact, se)


# -- float64 ------------------------------------------------------------------------------
@pytest.mark.slow  # compiles every program again under x64
def test_checkpoint_and_extend_in_float64(tmp_path, monkeypatch):
    with jax.enable_x64(True):
        y = jnp.asarray(Y, jnp.float64)
        plain = run(y=y, num_chains=1)
        assert plain.samples["mu"].dtype == jnp.float64
        path = tmp_path / "smc64.npz"
        monkeypatch.setattr(ckpt, "write_archive", CrashAfter(3))
        with pytest.raises(RuntimeError):
            run(y=y, num_chains=1, checkpoint=path)
        monkeypatch.undo()
        assert_same(run(y=y, num_chains=1, checkpoint=path), plain)
        assert plain.extend(10, progress=False, diagnostics=False).num_draws == S + 10


# -- split over devices -------------------------------------------------------------------
MESH_SCRIPT = """
import os, sys, tempfile
sys.path.insert(0, {tests!r})
import test_smc_recover as T
from inference import checkpoint as ckpt
for chains in (1, 4):  # 1 chain: its particles split over the 4 devices; 4: one chain each
    base = T.run(num_chains=chains, devices="all")
    assert base.timing["devices"] == 4
    path = os.path.join(tempfile.mkdtemp(), "c.npz")
    write, ckpt.write_archive = ckpt.write_archive, T.CrashAfter(3)
    try:
        T.run(num_chains=chains, devices="all", checkpoint=path)
        raise AssertionError("no crash")
    except RuntimeError:
        pass
    ckpt.write_archive = write
    T.assert_same(T.run(num_chains=chains, devices="all", checkpoint=path), base)
    ext = base.extend(100, progress=False, diagnostics=False, devices="all")
    assert ext.samples["mu"].shape == (chains, T.S + 100)
print("ok")
"""


@pytest.mark.slow  # a 4-device subprocess (~30 s)
def test_checkpoint_and_extend_with_chains_or_particles_split_over_devices():
    """The states go in and out of the chunked programs with the shardings they were
    compiled for (a single chain's particles split over devices once failed that)."""
    import subprocess
    import sys

    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=4"}
    script = MESH_SCRIPT.format(tests=os.path.dirname(os.path.abspath(__file__)))
    out = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True,
                         text=True, timeout=600)
    assert out.returncode == 0 and out.stdout.strip().endswith("ok"), out.stderr[-3000:]
