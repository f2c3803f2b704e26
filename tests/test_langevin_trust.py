"""The Langevin methods do not freeze silently in degenerate modes, count every gradient,
and say exactly which draws the same key reproduces on other device counts (issue 14)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
import pytest

import inference
from inference.methods import warmup_checks
from inference.methods.langevin import _towards_mode
from inference.methods.warmup_checks import WarmupWarning

# Efron & Morris (1975): hits in the first 45 at-bats of the 1970 season, 18 players
# (NumPyro's examples/baseball.py data, first two columns).
HITS = jnp.array([18, 17, 16, 15, 14, 14, 13, 12, 11, 11, 10, 10, 10, 10, 10, 9, 8, 7], jnp.float32)
AT_BATS = jnp.full(18, 45.0)


def partially_pooled(at_bats, hits=None):
    """NumPyro's baseball example ``partially_pooled``: its mode has ``kappa -> infinity``."""
    m = numpyro.sample("m", dist.Uniform(0.0, 1.0))
    kappa = numpyro.sample("kappa", dist.Pareto(1.0, 1.5))
    with numpyro.plate("num_players", at_bats.shape[0]):
        phi = numpyro.sample("phi", dist.Beta(m * kappa, (1 - m) * kappa))
        numpyro.sample("obs", dist.Binomial(at_bats, probs=phi), obs=hits)


def funnel():
    """The centred funnel: its mode is at ``y = -40.5``, where the ``x`` have scale e^-20."""
    y = numpyro.sample("y", dist.Normal(0.0, 3.0))
    with numpyro.plate("n", 9):
        numpyro.sample("x", dist.Normal(0.0, jnp.exp(y / 2)))


# ---------------------------------------------------------------------------------------
# The collapse check
# ---------------------------------------------------------------------------------------
def test_collapse_threshold_is_a_hundredth_of_the_mala_scale():
    # MALA's optimal step on a d-dim Gaussian is ~1.4 d^(-1/3); the bound is 0.01 d^(-1/3).
    assert warmup_checks.collapse_threshold(1000) == pytest.approx(1e-3)
    flags = warmup_checks.collapsed_chains(jnp.array([0.3, 9e-7, jnp.nan, 2e-3]), 10)
    assert flags.tolist() == [False, True, True, True]  # 2e-3 < 0.01 * 10^(-1/3) = 4.6e-3


def test_a_collapsed_chain_is_named_with_its_frozen_sites():
    # Chain 1 as the funnel left it: step 9e-7, x's variance ~e^-40, y's small.
    tuning = {"step_size": np.array([0.3, 9e-7]),
              "inverse_mass_matrix": np.array([[1.0] * 10, [1e-17] * 9 + [1e-6]])}
    samples = {"x": np.zeros((2, 5, 9)), "y": np.full((2, 5), -40.5)}
    with pytest.warns(WarmupWarning) as record:
        bad = warmup_checks.warn_collapsed("MALA", tuning, samples, {"x": (9,), "y": ()})
    assert bad == [1]
    msg = str(record[0].message)
    assert "chain(s) [1]" in msg and "9e-07" in msg
    # The site that moves least comes first, with where the chain sits.
    assert msg.index("'x'") < msg.index("'y'") and "at -40.5" in msg
    assert "non-centred" in msg and "NUTS" in msg


def test_a_chain_whose_draws_never_change_is_named():
    # A start in the funnel's neck (y = -30): warmup's mass matrix shrinks with the chain,
    # so the step size looks fine (0.007), but the moves (~4e-7) are below float32's
    # resolution at 30 (2e-6): y's draws never change. Chain 1 is healthy.
    rng = np.random.default_rng(0)
    tuning = {"step_size": np.array([0.007, 0.5]), "inverse_mass_matrix": np.ones((2, 10))}
    y = rng.normal(size=(2, 30))
    y[0] = -30.0
    samples = {"x": rng.normal(size=(2, 30, 9)), "y": y, "det": np.ones((2, 30))}
    with pytest.warns(WarmupWarning) as record:
        bad = warmup_checks.warn_collapsed("ULA", tuning, samples, {"x": (9,), "y": ()})
    assert bad == [0]  # 'det' (a deterministic site, constant) is not a latent site
    msg = str(record[0].message)
    assert "draws of ['y'] never change" in msg and "'y' (its draws never change" in msg
    assert "at -30" in msg


@pytest.mark.slow
def test_chains_started_in_the_funnel_neck_warn():
    # End to end: init_params in the neck, no climb; the chains cannot leave it.
    with pytest.warns(WarmupWarning, match=r"draws of \['y'\] never change"):
        inference.infer(funnel, method=inference.MALA(find_mode=0), num_warmup=200,
                        num_samples=50, num_chains=2, key=0, progress=False,
                        init_params={"y": -30.0, "x": np.zeros(9)})


def test_healthy_chains_give_no_warning():
    tuning = {"step_size": np.array([0.3, 0.5]), "inverse_mass_matrix": np.ones((2, 3))}
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert warmup_checks.warn_collapsed("MALA", tuning, {}, lambda: 1 / 0) == []
        assert warmup_checks.warn_restarted("MALA", {"warmup_restarted": np.zeros(2, bool)}, 100) == []


@pytest.mark.slow
def test_funnel_climb_is_undone_and_the_chains_move():
    # Before: find_mode=100 climbed to y = -40.5 and every chain froze there (step ~1e-6,
    # R-hat 1.0). Now the collapse is detected after warmup and the chains warm up again
    # from their initial points, with a WarmupWarning saying so.
    with pytest.warns(WarmupWarning, match="degenerate mode"):
        r = inference.infer(funnel, method=inference.MALA(), num_warmup=300, num_samples=200,
                            num_chains=2, key=0, progress=False)
    assert np.asarray(r.tuning["warmup_restarted"]).all()
    y = np.asarray(r.samples["y"])
    # y's posterior sd is 3; a frozen chain has sd exactly 0 and sits at -40.5. 0.1 is 30x
    # below the posterior sd: far from 0, and reached by any chain that moves at all.
    assert np.all(y.std(axis=1) > 0.1) and np.all(y > -30.0)
    assert np.all(np.asarray(r.tuning["step_size"]) > warmup_checks.collapse_threshold(10))


# ---------------------------------------------------------------------------------------
# Counting gradients
# ---------------------------------------------------------------------------------------
def _counted(logdensity, calls):
    """``logdensity`` with a host callback that counts its evaluations (a batch of ``k``
    vmapped evaluations arrives as one callback with ``k`` values, so count their number)."""

    def f(x):
        lp = logdensity(x)
        jax.debug.callback(lambda v: calls.append(int(np.size(v))), lp)
        return lp

    return f


def _gauss(x):
    return -0.5 * jnp.sum(x["a"] ** 2 / jnp.array([1.0, 4.0])) - 0.5 * x["b"] ** 2


@pytest.mark.parametrize("steps", [1, 12])
def test_lbfgs_climb_counts_every_gradient(steps):
    calls = []
    f = _counted(lambda x: -0.5 * jnp.sum((x - 3.0) ** 2 / jnp.array([1.0, 4.0, 0.1]))
                 - 0.1 * jnp.sum(x**4), calls)
    x, n = jax.jit(lambda p: _towards_mode(f, p, steps))(jnp.zeros(3))
    jax.block_until_ready(x)
    # Every evaluation is a value and gradient (no value-only calls): the count is exact.
    assert int(n) == sum(calls) and int(n) >= steps + 1


@pytest.mark.slow  # ~10 s each: a host callback keeps the program out of the disk cache
@pytest.mark.parametrize("method, hvp", [
    (inference.MALA(find_mode=0), 0),
    (inference.Underdamped(adjusted=True, num_integration_steps=3, find_mode=0), 0),
    (inference.ULA(find_mode=0), 8 * 31),
], ids=["MALA", "OBABO", "ULA"])
def test_tuned_warmup_reports_every_gradient(method, hvp):
    # One chain, so nothing is batched but the curvature points: the callbacks count
    # every evaluation of the log density. Unadjusted kernels also estimate the curvature
    # with 8 x 31 Hessian-vector products, each evaluating the density once and counted
    # as two gradients: the report is the evaluations plus those 248.
    calls = []
    sampler = method.sampler(_counted(_gauss, calls), 40, 1)
    carry = jax.jit(sampler.init)(jax.random.key(0), {"a": jnp.ones((1, 2)), "b": jnp.ones(1)})
    jax.block_until_ready(carry)
    reported = int(sampler.tuning(carry)["warmup_n_grad"][0])
    assert reported == sum(calls) + hvp
    # At least one gradient per transition (OBABO: three) and the initial states.
    assert reported >= 40 * getattr(method, "num_integration_steps", 1) + 2


@pytest.mark.parametrize("method, per_step", [
    (inference.MALA(step_size=0.2, thinning=2), 1),
    (inference.Underdamped(adjusted=True, num_integration_steps=3, step_size=0.2, thinning=2), 3),
    (inference.RandomizedMidpoint(step_size=0.2, thinning=2), 2),
], ids=["MALA", "OBABO", "RandomizedMidpoint"])
def test_burn_in_and_draw_gradients_exactly(method, per_step):
    def model():
        numpyro.sample("x", dist.Normal(0.0, 1.0))

    r = inference.infer(model, method=method, num_warmup=7, num_samples=5, num_chains=2,
                        key=0, progress=False)
    # Before the draws: the initial-point search (the first candidate is valid), the
    # initial state's gradient, then 7 steps; each draw: 2 thinned steps.
    assert np.asarray(r.tuning["warmup_n_grad"]).tolist() == [1 + 1 + 7 * per_step] * 2
    assert np.all(np.asarray(r.stats["n_grad"]) == 2 * per_step)


# ---------------------------------------------------------------------------------------
# Slow: whole runs
# ---------------------------------------------------------------------------------------
@pytest.mark.slow
def test_baseball_partially_pooled_kappa_with_default_mala():
    # Before: kappa's posterior median ~2e5 (the L-BFGS climb followed kappa -> infinity).
    # Reference: NUTS, 4 x 5000 draws (key 123): median log kappa 4.1539, MCSE 0.0139
    # (ArviZ's mcse of the median; kappa's median 63.7). Bound: 4 combined MCSEs.
    az = pytest.importorskip("arviz")
    with pytest.warns(WarmupWarning, match="degenerate mode"):
        r = inference.infer(partially_pooled, AT_BATS, hits=HITS, method=inference.MALA(),
                            num_samples=500, num_warmup=500, num_chains=4, key=0,
                            progress=False)
    log_kappa = np.log(np.asarray(r.samples["kappa"], dtype=np.float64))
    mcse = float(az.mcse(log_kappa, method="median"))
    assert abs(np.median(log_kappa) - 4.1539) < 4.0 * np.hypot(mcse, 0.0139)


@pytest.mark.slow
@pytest.mark.parametrize("method", [inference.ULA(), inference.Underdamped(),
                                    inference.RandomizedMidpoint(),
                                    inference.Underdamped(adjusted=True)],
                         ids=["ULA", "BAOAB", "RandomizedMidpoint", "OBABO"])
def test_funnel_does_not_freeze_any_langevin_method(method):
    with pytest.warns(WarmupWarning):
        r = inference.infer(funnel, method=method, num_warmup=500, num_samples=300,
                            num_chains=2, key=0, progress=False)
    y = np.asarray(r.samples["y"])
    # As above: a frozen chain has sd 0 at y = -40.5; 0.1 is 30x below y's posterior sd.
    assert np.all(y.std(axis=1) > 0.1) and np.all(y > -30.0)


_DEVICES_SCRIPT = textwrap.dedent("""
    import json, os, warnings
    os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=4"
    os.environ["JAX_PLATFORMS"] = "cpu"
    warnings.filterwarnings("ignore")
    import numpy as np, jax, inference
    from models import posteriordb

    model, data = posteriordb.load("eight_schools-eight_schools_noncentered")
    out = {"devices": jax.device_count()}

    def run(method, devices, warmup):
        r = inference.infer(model, **data, method=method, num_samples=200, num_warmup=warmup,
                            num_chains=4, key=1, devices=devices, progress=False)
        return {k: np.asarray(v, dtype=np.float64) for k, v in r.samples.items()}, r

    def diff(a, b):
        return float(max(np.max(np.abs(a[k] - b[k])) for k in a))

    for name, method in [("ula", inference.ULA(step_size=0.05)),
                         ("baoab", inference.Underdamped(step_size=0.2))]:
        one, _ = run(method, 1, 100)
        four, _ = run(method, "all", 100)
        out[name] = diff(one, four)
    one, r1 = run(inference.MALA(), 1, 200)
    four, r4 = run(inference.MALA(), "all", 200)
    again, _ = run(inference.MALA(), "all", 200)
    out["mala_same_devices"] = diff(four, again)
    out["mala_other_devices"] = diff(one, four)
    out["mala_devices"] = [r1.timing["devices"], r4.timing["devices"]]
    out["mu"] = [float(one["mu"].mean()), float(four["mu"].mean()),
                 float(r1.summary()["mcse_mean"]["mu"]), float(r4.summary()["mcse_mean"]["mu"])]
    print("RESULT " + json.dumps(out))
""")


@pytest.mark.slow
def test_what_the_same_key_gives_on_other_device_counts():
    """What README's *More devices* and ``infer``'s ``devices`` state, on 4 CPU devices."""
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    proc = subprocess.run([sys.executable, "-c", _DEVICES_SCRIPT], capture_output=True,
                          text=True, env=env, cwd=root, timeout=600)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
    assert proc.returncode == 0 and lines, proc.stdout[-3000:] + proc.stderr[-3000:]
    out = json.loads(lines[-1][len("RESULT "):])
    assert out["devices"] == 4 and out["mala_devices"] == [1, 4]
    # No discrete decisions (fixed step, burn-in included): rounding only. 300 contractive
    # steps in float32 on values of order 1-10 (ulp ~1e-7..1e-6); 1e-4 is far below the
    # O(1) a different key or start would give.
    assert out["ula"] < 1e-4 and out["baoab"] < 1e-4
    # The same number of devices: the same draws, bit for bit.
    assert out["mala_same_devices"] == 0.0
    # Another number of devices with MALA's warmup: accept decisions can flip, so the
    # chains may differ; they are draws from the same posterior, so mu's means agree
    # within 4 combined Monte Carlo standard errors.
    m1, m4, s1, s4 = out["mu"]
    assert abs(m1 - m4) < 4.0 * np.hypot(s1, s4)
