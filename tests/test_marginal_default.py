"""ppl.marginal's default proposal: the program's own prior for the marginalised sites (issue 17).

Statistical checks as in tests/test_objectives.py: the mean of N independent estimates (fixed
seeds, vmapped over keys) is compared with the exact value within 5 standard errors of that
mean (a false alarm below 1e-6 under the CLT); each estimator's variance is finite (argued at
each test), so the CLT applies.
"""

import math

import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
import pytest

import ppl
from ppl.marginal import prior_proposal

N = 4000
MU = (-1.0, 2.0)  # the mixture's component means, weights 0.7 and 0.3
PI1 = 0.3


def mixture():
    c = numpyro.sample("c", dist.Bernoulli(PI1))
    numpyro.sample("x", dist.Normal(jnp.where(c == 1, MU[1], MU[0]), 1.0))


def exact_mixture_density(x):
    return ((1 - PI1) * math.exp(dist.Normal(MU[0], 1.0).log_prob(x))
            + PI1 * math.exp(dist.Normal(MU[1], 1.0).log_prob(x)))


def normal_normal():  # u ~ N(0, 1/2), x | u ~ N(u, 1): x ~ N(0, sqrt(1.25))
    u = numpyro.sample("u", dist.Normal(0.0, 0.5))
    numpyro.sample("x", dist.Normal(u, 1.0))


def mean_se(samples):
    samples = np.asarray(samples, np.float64)
    return samples.mean(), samples.std(ddof=1) / math.sqrt(samples.size)


def many(fn, dtype, seed=0, n=N):
    with jax.enable_x64(dtype == "float64"):
        keys = jax.random.split(jax.random.key(seed), n)
        out = jax.jit(jax.vmap(fn))(keys)
        assert out.dtype == np.dtype(dtype)
        return np.asarray(out)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_default_proposal_estimates_a_mixture_density(dtype):
    """``density`` of the marginal is unbiased for ``p(x)``: with the prior proposal each
    weight is ``N(x; mu_c, 1)``, bounded by ``1/sqrt(2 pi)``, so its variance is finite."""
    p_x = ppl.marginal(mixture, keep=["x"], particles=4)  # no proposal: the prior of c

    @ppl.expectation
    def density_at(x):
        return jnp.exp(ppl.density(p_x, {"x": x}))

    for x in (0.0, 2.5):  # (not 0.5: midway between the means, every weight is p(x))
        est = many(lambda k, x=x: density_at.estimate(k, jnp.asarray(x, dtype)), dtype)
        mean, se = mean_se(est)
        exact = exact_mixture_density(x)
        print(f"x={x}: estimate {mean:.5f} (se {se:.5f}), exact {exact:.5f}")
        assert abs(mean - exact) < 5 * se


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_default_proposal_sim_weight_is_reciprocal_unbiased(dtype):
    """``sim`` of the marginal: ``E[exp(-log_w) | x] = 1 / p(x)``, so
    ``E_{x ~ p}[exp(-log_w) 1{|x| < 1}] = 2`` (the interval's length). Finite variance: with
    the prior proposal ``exp(-log_w) = K / sum_k N(x; u_k, 1) <= K / N(x; u_j, 1)`` for a
    proposal particle ``u_j ~ N(0, 1/2)`` (sd), independent of ``x``; given ``x``,
    ``x - u_j ~ N(x, var 1/4)`` and ``E[1 / N(x; u_j, 1)^2] = 2 pi E[exp((x - u_j)^2)]`` is
    finite because that variance is below 1/2. Also ``density``'s estimate of ``p(1)``
    (weights bounded by ``1/sqrt(2 pi)``) is unbiased."""
    p_x = ppl.marginal(normal_normal, keep=["x"], particles=4)

    @ppl.expectation
    def inverse_weight_on_interval():
        values, log_w = ppl.sim(p_x)
        return jnp.where(jnp.abs(values["x"]) < 1.0, jnp.exp(-log_w), 0.0)

    @ppl.expectation
    def density_at_one():
        return jnp.exp(ppl.density(p_x, {"x": jnp.ones((), jnp.result_type(float))}))

    mean, se = mean_se(many(inverse_weight_on_interval.estimate, dtype, seed=1))
    print(f"E[exp(-log_w) 1(|x| < 1)] = {mean:.4f} (se {se:.4f}), exact 2")
    assert abs(mean - 2.0) < 5 * se
    mean, se = mean_se(many(density_at_one.estimate, dtype, seed=2))
    exact = math.exp(dist.Normal(0.0, math.sqrt(1.25)).log_prob(1.0))
    print(f"p(1): estimate {mean:.5f} (se {se:.5f}), exact {exact:.5f}")
    assert abs(mean - exact) < 5 * se


def chain(y):  # x ~ N(0, 1); z | x ~ N(x, 1) (marginalised, drawn after x); y | x observed
    x = numpyro.sample("x", dist.Normal(0.0, 1.0))
    numpyro.sample("z", dist.Normal(x, 1.0))
    numpyro.factor("penalty", -0.5 * x**2)
    numpyro.sample("y", dist.Normal(x, 1.0), obs=y)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_default_proposal_is_exact_for_sites_drawn_after_the_kept_ones(dtype):
    """A site drawn after every kept site is proposed from its exact conditional, so both
    estimates are exact for every key: ``log N(x; 0, 1) - x^2/2 + log N(y; x, 1)`` (the
    program's observed site and factor count in the weight, as with any proposal)."""
    y = 0.7
    p_x = ppl.marginal(chain, keep=["x"], particles=3)

    def exact(x):
        return (dist.Normal(0.0, 1.0).log_prob(x) - 0.5 * x**2
                + dist.Normal(x, 1.0).log_prob(y))

    @ppl.expectation
    def sim_error():
        values, log_w = ppl.sim(p_x, y)
        return log_w - exact(values["x"])

    @ppl.expectation
    def density_error(x):
        return ppl.density(p_x, {"x": x}, y) - exact(x)

    tol = {"float32": 1e-5, "float64": 1e-12}[dtype]
    assert np.max(np.abs(many(sim_error.estimate, dtype, n=64))) < tol
    err = many(lambda k: density_error.estimate(k, jnp.asarray(-1.3, dtype)), dtype, n=64)
    assert np.max(np.abs(err)) < tol


def test_prior_proposal_draws_only_the_other_latent_sites():
    r = prior_proposal(chain, ["x"])

    @ppl.expectation
    def draw():
        values, log_r = ppl.sim(r, {"x": 2.0}, 0.7)
        assert sorted(values) == ["z"]  # not x (kept), y (observed) or the factor
        return log_r - dist.Normal(2.0, 1.0).log_prob(values["z"])  # log r = log p(z | x)

    assert abs(float(draw.estimate(jax.random.key(0)))) < 1e-6
    assert "prior(chain)" in repr(ppl.marginal(chain, keep=["x"]))


def test_a_proposal_that_is_not_a_program_is_refused_with_the_way_out():
    with pytest.raises(TypeError, match=r"proposal must be a program.*or None for the program's own prior"):
        ppl.marginal(chain, keep=["x"], proposal="prior")
