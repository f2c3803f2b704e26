"""Simulation-based calibration (``inference.sbc``): ranks, the uniformity test, the bands,
and calibration of the methods.

Fast tests check the rank computation, the chi-square test and the ECDF bands on synthetic
ranks (no sampling), the plot and the errors. Slow tests run ``sbc`` for real: a correct
method must give uniform ranks, and a mean-field VI on a strongly correlated posterior must
be flagged. Every rank test uses the threshold ``P_MIN = 1e-3`` per element: for a
calibrated method the chi-square p-value is (close to) uniform, so a test of ``k``
elements raises a false alarm with probability at most ``k * 1e-3`` (Bonferroni), stated
next to each test. Seeds are fixed, so each test is also reproducible.
"""

import functools
import importlib
import types
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
import pytest

import inference
from inference.mcmc import langevin
from inference.sbc import SBCResult, ecdf_band, ranks_of, uniformity_pvalues
from ppl.errors import ModelError

P_MIN = 1e-3


# ---------------------------------------------------------------------------------------
# Ranks and the uniformity test on synthetic ranks (no sampling)
# ---------------------------------------------------------------------------------------
def test_ranks_count_draws_below_the_truth():
    draws = np.array([[0.0, 5.0], [1.0, 6.0], [2.0, 7.0], [3.0, 8.0]])
    assert ranks_of(np.array([2.5, 4.0]), draws).tolist() == [3, 0]
    assert ranks_of(np.array([-1.0, 9.0]), draws).tolist() == [0, 4]
    assert ranks_of(np.float32(1.5), draws[:, :1].reshape(4).astype(np.float32)).tolist() == 2


def test_ties_are_broken_uniformly():
    """A truth equal to 3 of 5 draws (1 below, 1 above) has rank 1, 2, 3 or 4, each with
    probability 1/4. Over 40000 elements each frequency has SE sqrt(p (1 - p) / n) = 0.0022;
    4 SE bounds it (false alarm 6e-5 per frequency)."""
    n = 40_000
    draws = np.broadcast_to(np.array([0, 1, 1, 1, 2])[:, None], (5, n))
    ranks = ranks_of(np.ones(n, np.int32), draws, key=jax.random.key(3))
    freq = np.bincount(ranks, minlength=6) / n
    se = np.sqrt(0.25 * 0.75 / n)
    assert freq[0] == 0 and freq[5] == 0
    np.testing.assert_array_less(np.abs(freq[1:5] - 0.25), 4 * se)
    # the same key gives the same ranks
    assert np.array_equal(ranks, ranks_of(np.ones(n, np.int32), draws, key=jax.random.key(3)))


def test_pvalues_are_uniform_for_uniform_ranks_and_small_for_skewed_ones():
    """2000 elements of 100 uniform ranks in 0..99: the fraction of p-values under 0.05 is
    0.05 up to the chi-square approximation (5 expected per bin) and an SE of
    sqrt(0.05 * 0.95 / 2000) = 0.0049; 4 SE = 0.02."""
    rng = np.random.default_rng(0)
    ranks = rng.integers(0, 100, size=(100, 2000))
    p = uniformity_pvalues(ranks, num_draws=99)
    assert p.shape == (2000,)
    assert abs(np.mean(p < 0.05) - 0.05) < 0.02
    # ranks piled at both ends (an under-dispersed posterior) or in the middle (over-dispersed)
    ends = np.where(rng.uniform(size=100) < 0.5, rng.integers(0, 10, 100), rng.integers(90, 100, 100))
    middle = rng.integers(30, 70, size=100)
    assert uniformity_pvalues(np.stack([ends, middle], -1), num_draws=99).max() < 1e-6


def test_pvalues_with_unequal_bins_use_each_bins_share():
    """Ranks 0..9 in 3 bins hold 4, 3 and 3 rank values: ranks exactly proportional to that
    are a perfect fit (p = 1), whereas counting the bins as equal would not be."""
    ranks = np.tile(np.arange(10), 30)[:, None, None]  # per-element shape (1, 1)
    p = uniformity_pvalues(ranks, num_draws=9, bins=3)
    assert p.shape == (1, 1) and float(p[0, 0]) == pytest.approx(1.0)
    with pytest.raises(ValueError, match="0..9"):
        uniformity_pvalues(np.array([0, 10]), num_draws=9)


def test_ecdf_band_has_its_simultaneous_coverage():
    """The band (built from seed 0) holds the whole ECDF of fresh uniform rank sets (seed 1)
    with frequency ~0.95. Over 2000 sets the SE is sqrt(0.95 * 0.05 / 2000) = 0.0049; the
    band is built from 2000 simulations too (its own error about as large), and discrete
    binomial quantiles make it slightly conservative: 0.93 < coverage < 0.98 is 4 SE of the
    combined error below and the conservative excess above."""
    n, num_draws = 50, 19
    lower, upper = ecdf_band(n, num_draws, level=0.95)
    rng = np.random.default_rng(1)
    sims = rng.integers(0, num_draws + 1, size=(2000, n))
    ecdf = np.cumsum(np.stack([np.bincount(s, minlength=num_draws + 1) for s in sims]), 1) / n
    inside = np.all((ecdf >= lower - 1e-12) & (ecdf <= upper + 1e-12), axis=1)
    assert 0.93 < inside.mean() < 0.98, inside.mean()


def test_plot_draws_one_panel_per_element():
    rng = np.random.default_rng(0)
    r = SBCResult(ranks={"mu": rng.integers(0, 20, (40, 2)), "s": rng.integers(0, 20, 40)},
                  pvalues={"mu": np.array([0.5, 0.2]), "s": np.array(0.9)}, num_draws=19,
                  bins=8, truths={}, timing=[])
    fig = r.plot()
    assert len([ax for ax in fig.axes if ax.get_visible()]) == 3
    assert "mu[1]" in fig.axes[1].get_title()
    assert r.min_pvalue == 0.2 and r.num_elements == 3 and r.num_simulations == 40
    with pytest.raises(KeyError, match="'nu'"):
        r.plot(sites=["nu"])


# ---------------------------------------------------------------------------------------
# Errors (no posterior run)
# ---------------------------------------------------------------------------------------
def normal_mean(n, y=None):
    mu = numpyro.sample("mu", dist.Normal(0.0, 1.0))
    with numpyro.plate("data", n):
        numpyro.sample("y", dist.Normal(mu, 1.0), obs=y)


def test_errors_name_what_to_do():
    with pytest.raises(ValueError, match=r"num_draws=500.*num_chains \* num_samples = 200"):
        inference.sbc(normal_mean, 3, num_draws=500, num_samples=100, num_chains=2)
    with pytest.raises(ModelError, match=r"no observed-data argument left as None"):
        inference.sbc(normal_mean, 3, y=jnp.zeros(3), num_simulations=2, num_draws=9,
                      num_samples=10, num_chains=1, progress=False)
    with pytest.raises(TypeError, match=r"method must be a method object.*got .nuts."):
        inference.sbc(normal_mean, 3, method="nuts", num_draws=9, num_samples=10, num_chains=1)
    with pytest.raises(ValueError, match=r"observed=\['x'\].*no sample site"):
        inference.sbc(normal_mean, 3, observed=["x"], num_simulations=2, num_draws=9,
                      num_samples=10, num_chains=1, progress=False)

    def improper(y=None):
        mu = numpyro.sample("mu", dist.ImproperUniform(dist.constraints.real, (), ()))
        numpyro.sample("y", dist.Normal(mu, 1.0), obs=y)

    with pytest.raises(ModelError, match=r"proper prior"):
        inference.sbc(improper, num_simulations=2, num_draws=9, num_samples=10, num_chains=1,
                      progress=False)


# ---------------------------------------------------------------------------------------
# The whole loop with an exact posterior in place of infer (no sampling)
# ---------------------------------------------------------------------------------------
def conjugate(y=None):
    """mu ~ N(0, I_2), y_i ~ N(mu, I_2): a conjugate normal model with two parameters."""
    mu = numpyro.sample("mu", dist.Normal(0.0, 1.0).expand([2]).to_event(1))
    with numpyro.plate("data", 4):
        numpyro.sample("y", dist.Normal(mu, 1.0).to_event(1), obs=y)


class _Exact:
    """Stands in for ``infer`` on ``conjugate``: independent draws of the exact posterior
    N(sum(y) / 5, I / 5), with a width factor (1 is exact) and a warning per run."""

    def __init__(self, width):
        self.width, self.seen = width, []

    def __call__(self, model, *args, method, key, progress, num_samples, num_chains, **kwargs):
        y = args[0] if args else kwargs["y"]
        self.seen.append(np.asarray(y))
        z = np.asarray(jax.random.normal(key, (num_chains, num_samples, 2)))
        draws = np.sum(y, axis=0) / 5.0 + self.width * z / np.sqrt(5.0)
        warnings.warn("Fake: a diagnostic", UserWarning)
        return types.SimpleNamespace(samples={"mu": draws}, timing={"run": 0.0})


def test_sbc_loop_with_an_exact_posterior(monkeypatch):
    """With exact posterior draws, 200 simulations give uniform ranks (2 elements: false
    alarm <= 2e-3); each run sees the simulated data, and the runs' warnings come out as one
    summary. With draws 3x too narrow the same ranks pile at the ends (p < 1e-6 at once)."""
    sbc_module = importlib.import_module("inference.sbc")  # the package's sbc is the function
    exact = _Exact(1.0)
    monkeypatch.setattr(sbc_module, "infer", exact)
    with pytest.warns(UserWarning, match=r"sbc: 200 of 200 runs warned.*Fake: a diagnostic"):
        r = inference.sbc(conjugate, num_simulations=200, num_draws=49, num_samples=100,
                          num_chains=2, key=5, progress=False)
    assert r.ranks["mu"].shape == (200, 2) and r.min_pvalue > P_MIN, r.pvalues
    # the data each run saw are the model's simulations: y_i ~ N(mu, 1) around the true mu
    seen = np.stack(exact.seen)
    assert seen.shape == (200, 4, 2)
    residual = seen - r.truths["mu"][:, None, :]
    assert abs(residual.std() - 1.0) < 0.1  # 1600 normals: sd's SE 0.018
    monkeypatch.setattr(sbc_module, "infer", _Exact(1.0 / 3.0))
    with pytest.warns(UserWarning):
        narrow = inference.sbc(conjugate, num_simulations=200, num_draws=49, num_samples=100,
                               num_chains=2, key=5, progress=False)
    assert np.all(narrow.pvalues["mu"] < 1e-6), narrow.pvalues


# ---------------------------------------------------------------------------------------
# Calibration of the methods (slow: each runs tens of posterior fits)
# ---------------------------------------------------------------------------------------

@pytest.mark.slow
def test_nuts_ranks_are_uniform_and_runs_after_the_first_do_not_compile():
    """100 simulations, 49 draws each (every 8th of 2 x 200): 2 elements, false alarm
    <= 2e-3. Every run after the first takes its programs from the in-memory cache."""
    r = inference.sbc(conjugate, method=inference.NUTS(), num_simulations=100, num_draws=49,
                      num_samples=200, num_warmup=200, num_chains=2, key=0, progress=False)
    assert r.ranks["mu"].shape == (100, 2) and r.pvalues["mu"].shape == (2,)
    assert r.ranks["mu"].min() >= 0 and r.ranks["mu"].max() <= 49
    assert r.min_pvalue > P_MIN, r.pvalues
    assert all(t["cache"] == "memory" and t["compile"] == 0.0 for t in r.timing[1:])
    assert sum(t["run"] for t in r.timing[1:]) < 30.0


def scale_model(y=None):
    """A positive site (a log transform between spaces) and a mean: s ~ HalfNormal(1),
    m ~ N(0, 1), y_i ~ N(m, s)."""
    s = numpyro.sample("s", dist.HalfNormal(1.0))
    m = numpyro.sample("m", dist.Normal(0.0, 1.0))
    with numpyro.plate("data", 5):
        numpyro.sample("y", dist.Normal(m, s), obs=y)


@pytest.mark.slow
@pytest.mark.parametrize("method", [
    inference.MALA(),
    inference.Underdamped(adjusted=True, num_integration_steps=3),
    inference.SMC(num_particles=200, num_mcmc_steps=5),
], ids=["mala", "underdamped-adjusted", "smc"])
def test_gradient_methods_give_uniform_ranks(method):
    """50 simulations, 19 draws each: 2 elements (s, m), false alarm <= 2e-3 per method."""
    num_samples = 100 if isinstance(method, inference.SMC) else 400
    r = inference.sbc(scale_model, method=method, num_simulations=50, num_draws=19,
                      num_samples=num_samples, num_warmup=300, num_chains=2, key=1,
                      progress=False)
    assert set(r.ranks) == {"s", "m"}
    assert r.min_pvalue > P_MIN, r.pvalues


def mixture(n, y=None):
    """A discrete site per point: z_i ~ Bernoulli(0.5), y_i ~ N(mu + 2 z_i, 1), i < n."""
    mu = numpyro.sample("mu", dist.Normal(0.0, 1.0))
    with numpyro.plate("data", n):
        z = numpyro.sample("z", dist.Bernoulli(0.5))
        numpyro.sample("y", dist.Normal(mu + 2.0 * z, 1.0), obs=y)


@pytest.mark.slow
def test_gibbs_with_enumeration_gives_uniform_ranks_for_discrete_and_continuous_sites():
    """50 simulations, 19 draws: 5 elements (mu and z[0..3], whose ranks among 0/1 draws
    are tie-broken at random), false alarm <= 5e-3."""
    method = inference.Gibbs({"z": inference.Enumerate(),
                              "mu": functools.partial(langevin.mala, step_size=0.5)})
    r = inference.sbc(mixture, 4, method=method, num_simulations=50, num_draws=19,
                      num_samples=200, num_warmup=100, num_chains=2, key=2, progress=False)
    assert r.ranks["z"].shape == (50, 4)
    assert r.min_pvalue > P_MIN, r.pvalues


def correlated(y=None):
    """theta ~ N(0, I_2) and one observation of theta_1 + theta_2 with sd 0.1: the posterior
    correlation is about -0.99, so a mean-field normal guide has marginal sds near 0.1 where
    the posterior's are near 0.7."""
    theta = numpyro.sample("theta", dist.Normal(0.0, 1.0).expand([2]).to_event(1))
    numpyro.sample("y", dist.Normal(theta.sum(), 0.1), obs=y)


@pytest.mark.slow
def test_mean_field_vi_on_a_correlated_posterior_is_flagged():
    """The guide is 7x too narrow, so most truths fall outside its draws (ranks 0 or 19):
    the chi-square p-value of 30 such ranks is far below P_MIN (a correct method would
    fall below it with probability 1e-3 per element)."""
    r = inference.sbc(correlated, method=inference.VI(guide="normal", steps=1000),
                      num_simulations=30, num_draws=19, num_samples=100, num_chains=1,
                      key=3, progress=False)
    assert np.all(r.pvalues["theta"] < P_MIN), r.pvalues
    ends = np.mean((r.ranks["theta"] == 0) | (r.ranks["theta"] == 19))
    assert ends > 0.5, ends


@pytest.mark.slow
def test_sbc_in_float64():
    """The same machinery under x64: prior draws, posterior draws and ranks in float64.
    30 simulations of NUTS, 2 elements: false alarm <= 2e-3."""
    with jax.enable_x64(True):
        r = inference.sbc(scale_model, method=inference.NUTS(), num_simulations=30,
                          num_draws=19, num_samples=100, num_warmup=100, num_chains=2, key=4,
                          progress=False)
    assert r.truths["s"].dtype == np.float64 and r.truths["m"].dtype == np.float64
    assert r.min_pvalue > P_MIN, r.pvalues
