"""SMC on models with enumerated discrete sites (issue 15): the tempered target is
``p(theta) p(y | theta)^beta`` with the discrete sites summed out of ``p(y | theta)``.

The split into prior and marginal likelihood is checked exactly (it sums to the enumerated
potential; the prior part equals the continuous sites' prior); the posterior and the log
evidence against quadrature on a one-parameter mixture, and against our enumerated NUTS
on a two-component mixture (slow).

Statistical bounds: Z = 4 standard errors. Each SMC chain is an independent run, so an
SMC statistic's SE is the sd of its per-chain values over sqrt(chains) (draws within a
chain are correlated through resampling; one chain's average is one number). NUTS's MCSE
is ArviZ's (from its draws' ESS); two estimates are compared with the combined SE
sqrt(se_a^2 + se_b^2).
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
import pytest
from numpyro.contrib.control_flow import scan
from scipy.special import logsumexp
from scipy.stats import norm

import inference
import ppl
from inference.smc import SMC
from inference.smc.model import _split_potential

Z = 4.0
ENUM = {"enumerate": "parallel"}

# A one-parameter mixture: y_i ~ sum_k w_k N(c_k mu, 1), mu ~ N(0, 2^2).
W1, C1 = np.array([0.3, 0.7]), np.array([-1.0, 2.0])
Y1 = np.array([2.1, 3.0, -1.4, 2.6, 1.9, -0.8, 2.4, 3.1])


def mix1(y):
    mu = numpyro.sample("mu", dist.Normal(0.0, 2.0))
    with numpyro.plate("data", y.shape[0]):
        z = numpyro.sample("z", dist.Categorical(jnp.asarray(W1)), infer=ENUM)
        numpyro.sample("y", dist.Normal(jnp.asarray(C1)[z] * mu, 1.0), obs=y)


def _mix1_exact():
    """log evidence and posterior mean of mu by brute force over z (the sum over the two
    components per point) and quadrature over mu (a fine grid: the integrand is smooth
    and negligible beyond |mu| = 12)."""
    mu = np.linspace(-12.0, 12.0, 48001)
    log_lik = np.sum(logsumexp(np.log(W1)[None, None, :] + norm.logpdf(
        Y1[None, :, None], C1[None, None, :] * mu[:, None, None], 1.0), axis=-1), axis=-1)
    log_joint = norm.logpdf(mu, 0.0, 2.0) + log_lik
    h = mu[1] - mu[0]
    log_z = logsumexp(log_joint) + math.log(h)
    post = np.exp(log_joint - logsumexp(log_joint))
    return log_z, float(np.sum(post * mu))


def mixture(y, K=2):
    w = numpyro.sample("w", dist.Dirichlet(jnp.ones(K)))
    mu = numpyro.sample("mu", dist.Normal(0.0, 5.0).expand([K]).to_event(1))
    s = numpyro.sample("s", dist.HalfNormal(2.0))
    with numpyro.plate("data", y.shape[0]):
        z = numpyro.sample("z", dist.Categorical(w), infer=ENUM)
        numpyro.sample("y", dist.Normal(mu[z], s), obs=y)


def hmm(y):
    trans = numpyro.sample("trans", dist.Dirichlet(jnp.ones(2)).expand([2]).to_event(1))
    locs = numpyro.sample("locs", dist.Normal(0.0, 3.0).expand([2]).to_event(1))

    def step(x_prev, t):
        x = numpyro.sample("x", dist.Categorical(trans[x_prev]), infer=ENUM)
        numpyro.sample("obs", dist.Normal(locs[x], 1.0), obs=y[t])
        return x, None

    scan(step, 0, jnp.arange(y.shape[0]))


# -- the split ----------------------------------------------------------------------------
# The HMM case compiles a scan under enumeration (~10 s): slow suite.
@pytest.mark.parametrize("case", ["mixture", pytest.param("hmm", marks=pytest.mark.slow)])
def test_split_is_the_prior_and_the_marginal_likelihood(case):
    """prior + likelihood == the enumerated potential, and the prior part is the continuous
    sites' own prior (with log-Jacobians): the observed sites, also those renamed inside
    ``scan`` (``_PREV_obs``), are left out of it, NumPyro's Jacobian factors are not."""
    if case == "mixture":
        model, y = mixture, jnp.array([-2.2, -1.9, 1.8, 2.4, 2.1])

        def prior():
            numpyro.sample("w", dist.Dirichlet(jnp.ones(2)))
            numpyro.sample("mu", dist.Normal(0.0, 5.0).expand([2]).to_event(1))
            numpyro.sample("s", dist.HalfNormal(2.0))
    else:
        model, y = hmm, jnp.array([0.1, 2.0, 2.2, -0.3])

        def prior():
            numpyro.sample("trans", dist.Dirichlet(jnp.ones(2)).expand([2]).to_event(1))
            numpyro.sample("locs", dist.Normal(0.0, 3.0).expand([2]).to_event(1))

    pot, prior_pot = ppl.potential(model, y), ppl.potential(prior)
    logprior, loglik = _split_potential(model, (y,), {}, list(pot.sites), pot.enumeration)
    keys = jax.random.split(jax.random.key(0), len(pot.sites))
    u = {n: jax.random.normal(k, (2, *shape)) for k, (n, shape) in zip(keys, pot.sites.items())}
    values = jax.jit(jax.vmap(lambda u: (logprior(u) + loglik(u), pot.logdensity_fn(u),
                                         logprior(u), prior_pot.logdensity_fn(u))))(u)
    a, b, c, d = (np.asarray(v) for v in values)
    np.testing.assert_allclose(a, b, rtol=1e-5)
    np.testing.assert_allclose(c, d, rtol=1e-5)


@pytest.mark.slow  # compiles SMC's programs on an enumerated model and the draws (~10 s)
def test_infer_runs_smc_on_an_enumerated_model_and_draws_the_sites():
    r = inference.infer(mix1, jnp.asarray(Y1), method=SMC(num_particles=100, num_mcmc_steps=2),
                        num_samples=50, num_chains=2, key=0, progress=False, diagnostics=False)
    assert r.samples["mu"].shape == (2, 50) and r.samples["z"].shape == (2, 50, Y1.size)
    assert set(np.unique(np.asarray(r.samples["z"]))) <= {0, 1}
    assert np.all(np.isfinite(r.tuning["log_evidence"]))
    assert SMC.sums_out_enumerated


# -- against exact values and NUTS (slow) ------------------------------------------------
def _check_evidence_and_mean(r, log_z, mean):
    # log Z-hat is biased low by Var/2 (Jensen; see tests/test_smc.py): add it back.
    lz = np.asarray(r.tuning["log_evidence"], np.float64)
    se = lz.std(ddof=1) / math.sqrt(lz.size)
    assert abs(lz.mean() + 0.5 * lz.var(ddof=1) - log_z) < Z * se, (lz.mean(), log_z, se)
    means = np.asarray(r.samples["mu"], np.float64).mean(1)
    se = means.std(ddof=1) / math.sqrt(means.size)
    assert abs(means.mean() - mean) < Z * se, (means.mean(), mean, se)


@pytest.mark.slow
@pytest.mark.parametrize("x64", [False, True])
def test_log_evidence_and_posterior_mean_match_quadrature(x64):
    log_z, mean = _mix1_exact()
    with jax.enable_x64(x64):
        r = inference.infer(mix1, jnp.asarray(Y1), method=SMC(num_particles=600, num_mcmc_steps=5),
                            num_samples=300, num_chains=16, key=1, progress=False,
                            diagnostics=False)
        assert r.samples["mu"].dtype == (jnp.float64 if x64 else jnp.float32)
    _check_evidence_and_mean(r, log_z, mean)


@pytest.mark.slow
def test_mixture_agrees_with_enumerated_nuts():
    """Two-component mixture: sorted locations, the weights in the same order and the
    scale agree with our enumerated NUTS within 4 combined SEs (label-switching-invariant
    summaries: SMC's populations hold both labellings, NUTS chains mostly one)."""
    import arviz

    y = jnp.array([-2.2, -1.9, -2.6, -1.4, 1.8, 2.4, 2.1, 1.6, 2.9, -2.0])
    smc = inference.infer(mixture, y, method=SMC(num_particles=500, num_mcmc_steps=5),
                          num_samples=300, num_chains=10, key=2, progress=False,
                          diagnostics=False)
    nuts = inference.infer(mixture, y, num_samples=600, num_warmup=300, num_chains=2, key=3,
                           progress=False, diagnostics=False)

    def summaries(r):
        order = np.argsort(np.asarray(r.samples["mu"]), axis=-1)
        pick = lambda v: np.take_along_axis(np.asarray(v), order, -1)  # noqa: E731
        return {"mu": pick(r.samples["mu"]), "w": pick(r.samples["w"]),
                "s": np.asarray(r.samples["s"])[..., None]}

    ours, theirs = summaries(smc), summaries(nuts)
    for name in ours:
        chain_means = ours[name].astype(np.float64).mean(1)
        se_smc = chain_means.std(0, ddof=1) / math.sqrt(chain_means.shape[0])
        b = theirs[name]
        se_nuts = np.asarray(arviz.mcse(arviz.from_dict(posterior={"v": b}), method="mean")["v"])
        diff = np.abs(chain_means.mean(0) - b.mean((0, 1)))
        bound = Z * np.sqrt(se_smc**2 + se_nuts**2)
        assert np.all(diff <= bound), (name, diff, bound)
    assert smc.samples["z"].shape == (10, 300, 10)
