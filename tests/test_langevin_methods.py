"""Langevin kernels behind ``inference.infer``: correctness on Gaussians, SGLD's exact
stationary variance, the statistics, reproducibility, and errors on bad input.

Statistical bounds: 4 Monte Carlo standard errors (ArviZ's MCSE, which accounts for the
autocorrelation within chains). A correct sampler fails one such check with probability
6e-5; the ~30 checks here fail spuriously for a fixed seed with probability < 0.2%.
"""

import warnings

import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
import pytest

import inference
import ppl
from ppl.errors import ModelError

Z = 4.0


def _arviz():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import arviz
    return arviz


# A correlated 2-D Gaussian (sds 1 and 3, correlation 0.8): the diagonal mass matrix of
# warmup does not remove the correlation, so the kernels' step sizes matter.
COV = np.array([[1.0, 2.4], [2.4, 9.0]])


def gaussian():
    numpyro.sample("x", dist.MultivariateNormal(jnp.zeros(2), covariance_matrix=jnp.asarray(COV)))


def _moments(draws):
    """(mean, mcse of mean, E[x^2], mcse of E[x^2]) per coordinate, over (chains, draws, 2)."""
    az = _arviz()
    d = np.asarray(draws, np.float64)
    out = []
    for i in range(d.shape[-1]):
        x = d[..., i]
        out.append((x.mean(), float(az.mcse(x, method="mean")),
                    (x**2).mean(), float(az.mcse(x**2, method="mean"))))
    return out


EXACT = {
    "MALA": inference.MALA(),
    "OBABO": inference.Underdamped(adjusted=True, num_integration_steps=2),
    # BAOAB's positions are exact on a Gaussian for any stable step size (see langevin.py).
    "BAOAB": inference.Underdamped(),
}


# Each case is ~10-15 s on 2 cores, nearly all of it compiling: all run in the slow suite
# (issue 12: a 5-minute default suite). The default suite runs MALA and OBABO through infer
# in their doctests (inference.methods.langevin.MALA / Underdamped).
@pytest.mark.parametrize("name", [
    pytest.param(n, marks=pytest.mark.slow) for n in sorted(EXACT)])  # ~10-15 s each (issue 12)
def test_exact_on_gaussian(name):
    r = inference.infer(gaussian, method=EXACT[name], num_samples=1500, num_warmup=500,
                        num_chains=4, key=jax.random.key(1), progress=False)
    assert r.samples["x"].shape == (4, 1500, 2)
    for i, (m, se_m, m2, se_m2) in enumerate(_moments(r.samples["x"])):
        assert abs(m) < Z * se_m, (name, i, m, se_m)
        assert abs(m2 - COV[i, i]) < Z * se_m2, (name, i, m2, se_m2)


# ~10-13 s each on 2 cores; the default suite runs both methods through infer in their
# doctests (inference.methods.langevin.ULA / RandomizedMidpoint).
@pytest.mark.slow
@pytest.mark.parametrize("name", ["ULA", "RandomizedMidpoint"])
def test_unadjusted_bias_within_tolerance(name):
    """With step_size=None the step size bounds the stationary variance error on a Gaussian by
    ``tolerance`` (relative). ULA's error is exactly ``tolerance`` along the stiffest
    direction of the preconditioned covariance and positive, smaller elsewhere, so each
    coordinate's E[x^2] lies in [var - 4 SE, var (1 + tol) + 4 SE]. The randomized midpoint
    kernel shares BAOAB's rule; its bias is also bounded by ``tol`` here (checked the same way)."""
    tol = 0.05
    method = inference.ULA(tolerance=tol) if name == "ULA" else inference.RandomizedMidpoint(tolerance=tol)
    r = inference.infer(gaussian, method=method, num_samples=2000, num_warmup=500,
                        num_chains=4, key=jax.random.key(2), progress=False)
    for i, (m, se_m, m2, se_m2) in enumerate(_moments(r.samples["x"])):
        assert abs(m) < Z * se_m, (name, i, m, se_m)
        assert COV[i, i] - Z * se_m2 < m2 < COV[i, i] * (1 + tol) + Z * se_m2, (name, i, m2, se_m2)


@pytest.mark.slow  # slow suite: tests/test_langevin_trust.py checks the counts exactly by default (issue 12)
def test_stats_and_gradient_counts():
    r = inference.infer(gaussian, method=inference.Underdamped(adjusted=True, num_integration_steps=3,
                                                               thinning=2),
                        num_samples=50, num_warmup=100, num_chains=2, progress=False)
    assert sorted(r.stats) == ["acceptance_rate", "diverging", "energy", "lp", "n_grad", "step_size"]
    assert (np.asarray(r.stats["n_grad"]) == 6).all()  # 3 leapfrog steps x 2 thinned steps
    assert r.stats["diverging"].dtype == bool
    acc = np.asarray(r.stats["acceptance_rate"])
    assert ((acc >= 0) & (acc <= 1)).all()
    # lp is the log density at the kept draw (unconstrained = constrained for this model).
    lp = jax.vmap(jax.vmap(lambda x: dist.MultivariateNormal(
        jnp.zeros(2), covariance_matrix=jnp.asarray(COV)).log_prob(x)))(r.samples["x"])
    np.testing.assert_allclose(r.stats["lp"], lp, rtol=1e-4, atol=1e-4)
    idata = r.to_arviz()
    assert "n_grad" in idata.sample_stats


def test_fixed_step_size_skips_tuning_and_is_reproducible():
    method = inference.MALA(step_size=0.3)
    a = inference.infer(gaussian, method=method, num_samples=20, num_warmup=10, num_chains=2,
                        key=jax.random.key(5), progress=False)
    b = inference.infer(gaussian, method=method, num_samples=20, num_warmup=10, num_chains=2,
                        key=jax.random.key(5), progress=False)
    c = inference.infer(gaussian, method=method, num_samples=20, num_warmup=10, num_chains=2,
                        key=jax.random.key(6), progress=False)
    np.testing.assert_array_equal(a.samples["x"], b.samples["x"])
    assert not np.array_equal(a.samples["x"], c.samples["x"])
    np.testing.assert_allclose(a.stats["step_size"], 0.3)


@pytest.mark.slow  # slow suite: MALA runs through infer in its doctest (issue 12)
def test_constrained_sites_and_deterministic():
    def model(y=None):
        s = numpyro.sample("s", dist.HalfNormal(2.0))
        numpyro.deterministic("log_s", jnp.log(s))
        with numpyro.plate("data", 3):
            numpyro.sample("y", dist.Normal(0.0, s), obs=y)

    r = inference.infer(model, y=jnp.array([0.5, -1.0, 2.0]), method=inference.MALA(),
                        num_samples=100, num_warmup=200, num_chains=2, progress=False)
    assert (r.samples["s"] > 0).all()
    np.testing.assert_allclose(r.samples["log_s"], np.log(r.samples["s"]), rtol=1e-4, atol=1e-6)


# ---------------------------------------------------------------------------------------
# Stochastic gradients from the model's subsampled plate
# ---------------------------------------------------------------------------------------
N, B = 200, 50
Y = np.asarray(1.0 + jax.random.normal(jax.random.key(0), (N,)))
PRIOR_SD = 10.0


def subsampled(y):
    mu = numpyro.sample("mu", dist.Normal(0.0, PRIOR_SD))
    with numpyro.plate("data", y.shape[0], subsample_size=10) as idx:
        numpyro.sample("y", dist.Normal(mu, 1.0), obs=y[idx])


@pytest.mark.slow  # ~17 s on 2 cores; the SGLD doctest runs it through infer by default
def test_sgld_stationary_law_matches_theory():
    """On a Gaussian posterior with Gaussian likelihood terms the minibatch gradient's noise
    does not depend on mu: ``(N/B) sum_batch (y_i - mu)`` has variance
    ``sigma^2 = (N/B)^2 B v (N - B) / (N - 1)`` (a without-replacement sample of B of N values
    with population variance v). SGLD with preconditioned step ``h m`` is then the AR(1) chain
    ``x' = x + hm(-(x - m_post)/s^2 + noise) + sqrt(2hm) xi``, whose stationary law has mean
    ``m_post`` and variance ``s^2 (1 + hm sigma^2 / 2) / (1 - hm / (2 s^2))`` -- exact, so
    both are checked within 4 MCSE using the step size and mass the warmup chose."""
    r = inference.infer(subsampled, jnp.asarray(Y), method=inference.SGLD(batch_size=B),
                        num_samples=3000, num_warmup=500, num_chains=4, key=jax.random.key(3),
                        progress=False)
    post_var = 1.0 / (N + 1.0 / PRIOR_SD**2)
    post_mean = post_var * Y.sum()
    v = Y.var()
    sigma2 = (N / B) ** 2 * B * v * (N - B) / (N - 1)
    hm = np.asarray(r.tuning["step_size"]) * np.asarray(r.tuning["inverse_mass_matrix"])[:, 0]
    az = _arviz()
    mu = np.asarray(r.samples["mu"], np.float64)
    for c in range(4):  # each chain has its own tuning, so its own stationary variance
        x = mu[c]
        var_c = post_var * (1 + hm[c] * sigma2 / 2) / (1 - hm[c] / (2 * post_var))
        se_m = float(az.mcse(x[None], method="mean"))
        d2 = (x - post_mean) ** 2
        se_v = float(az.mcse(d2[None], method="mean"))
        assert abs(x.mean() - post_mean) < Z * se_m, (c, x.mean(), post_mean, se_m)
        assert abs(d2.mean() - var_c) < Z * se_v, (c, d2.mean(), var_c, se_v)
    assert (np.asarray(r.stats["n_grad"]) == 1).all()
    assert "lp" not in r.stats


@pytest.mark.slow  # ~15 s on 2 cores; the SGHMC doctest runs it through infer by default
def test_sghmc_recovers_posterior_mean():
    r = inference.infer(subsampled, jnp.asarray(Y), method=inference.SGHMC(batch_size=B),
                        num_samples=2000, num_warmup=500, num_chains=4, key=jax.random.key(4),
                        progress=False)
    post_var = 1.0 / (N + 1.0 / PRIOR_SD**2)
    post_mean = post_var * Y.sum()
    mu = np.asarray(r.samples["mu"], np.float64)
    se = float(_arviz().mcse(mu, method="mean"))
    assert abs(mu.mean() - post_mean) < Z * se
    assert (np.asarray(r.tuning["step_size"]) * 1.0 <= 0.5 + 1e-6).all()  # friction 1


@pytest.mark.slow  # slow suite: SGLD/SGHMC run through infer in their doctests (issue 12: a 5-minute default suite)
def test_batch_size_resizes_the_models_plate():
    trace = ppl.trace_model(subsampled, jnp.asarray(Y))
    assert ppl.subsampled_plates(trace) == {"data": (N, 10)}
    resized = ppl.with_subsample_size(subsampled, {"data": 37}, trace)
    assert ppl.trace_model(resized, jnp.asarray(Y))["y"]["value"].shape == (37,)
    # The estimate is unbiased: its mean over minibatches is the full log density.
    pot = ppl.potential(resized, jnp.asarray(Y))
    pos = {"mu": jnp.asarray(0.7)}
    estimates = jax.vmap(lambda k: pot.logdensity_estimate(pos, k))(
        jax.random.split(jax.random.key(0), 4000))
    exact = dist.Normal(0.0, PRIOR_SD).log_prob(0.7) + dist.Normal(0.7, 1.0).log_prob(Y).sum()
    se = float(np.std(estimates) / np.sqrt(4000))
    assert abs(float(np.mean(estimates)) - float(exact)) < Z * se


# ---------------------------------------------------------------------------------------
# Bad input
# ---------------------------------------------------------------------------------------
def test_full_data_method_on_subsampled_model_names_the_plate():
    with pytest.raises(ModelError, match=r"'data' \(10 of 200\).*SGLD"):
        inference.infer(subsampled, jnp.asarray(Y), method=inference.MALA(), progress=False)


def test_batch_size_without_subsampled_plate():
    def model(y):
        mu = numpyro.sample("mu", dist.Normal(0.0, 1.0))
        with numpyro.plate("data", y.shape[0]):
            numpyro.sample("y", dist.Normal(mu, 1.0), obs=y)

    with pytest.raises(ModelError, match="no subsampled plate.*subsample_size"):
        inference.infer(model, jnp.zeros(10), method=inference.SGLD(batch_size=5), progress=False)


@pytest.mark.parametrize("make, match", [
    (lambda: inference.MALA(step_size=-0.1), "step_size"),
    (lambda: inference.ULA(step_size=0.0), "step_size"),
    (lambda: inference.MALA(thinning=0), "thinning"),
    (lambda: inference.MALA(target_accept_prob=1.5), "target_accept_prob"),
    (lambda: inference.Underdamped(friction=0.0), "friction"),
    (lambda: inference.Underdamped(num_integration_steps=3), "adjusted=True"),
    (lambda: inference.ULA(tolerance=2.0), "tolerance"),
    (lambda: inference.MALA(inverse_mass_matrix=jnp.ones(2)), "fixed step_size"),
    (lambda: inference.SGLD(batch_size=0), "batch_size"),
])
def test_bad_parameters(make, match):
    with pytest.raises(ValueError, match=match):
        make()


def test_no_warmup_needs_a_step_size():
    with pytest.raises(ValueError, match="num_warmup=0"):
        inference.infer(gaussian, method=inference.MALA(), num_warmup=0, progress=False)


@pytest.mark.slow  # slow suite (issue 12: a 5-minute default suite); siblings in this file cover the same code by default
def test_nonfinite_density_everywhere_names_the_site():
    def model():
        x = numpyro.sample("x", dist.Normal(0.0, 1.0))
        numpyro.factor("wall", jnp.where(x > 100.0, 0.0, -jnp.inf))

    with pytest.raises(ModelError, match="wall"):
        inference.infer(model, method=inference.MALA(), num_samples=10, num_warmup=10,
                        num_chains=2, progress=False)


def test_position_that_does_not_match_the_model():
    pot = ppl.potential(gaussian)
    with pytest.raises(ModelError, match=r"'x' has shape \(3,\), expected \(2,\)"):
        pot.logdensity_fn({"x": jnp.zeros(3)})
    with pytest.raises(ModelError, match=r"missing site\(s\) \['x'\].*unknown site\(s\) \['y'\]"):
        pot.logdensity_fn({"y": jnp.zeros(2)})
