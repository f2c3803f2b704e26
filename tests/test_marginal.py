"""ppl.marginal and ppl.normalize: which estimate is unbiased, checked on Gaussians.

- ``density`` of a marginal: ``E[exp(log_w)] = p(x)``, known exactly here.
- ``sim`` of a marginal: reciprocal-unbiased, ``E[exp(-log_w) | x] = 1 / p(x)``; checked
  through ``E_{x ~ p}[h(x) exp(-log_w)] = int h = 1`` for a probability density ``h``.
- ``normalize``: both estimates refer to the density ``q_K`` of the SIR draw, which has no
  closed form, so they are checked through normalisation: ``E_{z ~ g}[exp(log_w(z)) / g(z)]
  = int q_K = 1`` (density, unbiased) and ``E_{z ~ sim}[g(z) exp(-log_w)] = int g = 1`` (sim,
  reciprocal-unbiased) for a probability density ``g``.

Tolerance: 5 standard errors of the mean of N estimates (see tests/test_adev.py).
"""

import math

import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
import pytest

import ppl

N = 4000


def joint():
    u = numpyro.sample("u", dist.Normal(0.0, 1.0))
    numpyro.sample("x", dist.Normal(u, 1.0))  # x ~ N(0, sqrt 2)


def reverse(values):
    """r(u | x): deliberately not the exact posterior N(x / 2, sqrt 0.5)."""
    numpyro.sample("u", dist.Normal(0.4 * values["x"], 0.6))


MARGINAL_X = dist.Normal(0.0, math.sqrt(2.0))


def many(fn, *args, n=N, seed=0):
    keys = jax.random.split(jax.random.key(seed), n)
    return np.asarray(jax.jit(jax.vmap(fn, (0,) + (None,) * len(args)))(keys, *args), np.float64)


def assert_mean(samples, exact):
    mean, se = samples.mean(), samples.std(ddof=1) / math.sqrt(len(samples))
    assert se > 0
    z = abs(mean - exact) / se
    assert z < 5, (mean, exact, se, z)
    return z


def test_density_of_marginal_is_unbiased():
    Ks = (1, 4)
    objs = []
    for K in Ks:
        q = ppl.marginal(joint, keep=["x"], proposal=reverse, particles=K)
        objs.append(ppl.expectation(lambda x, q=q: jnp.exp(ppl.density(q, {"x": x}))))
    x = 1.3
    exact = float(jnp.exp(MARGINAL_X.log_prob(x)))
    keys = jax.random.split(jax.random.key(0), N)
    est = jax.jit(jax.vmap(lambda k: jnp.stack([o.estimate(k, x) for o in objs])))(keys)
    for K, samples in zip(Ks, np.asarray(est, np.float64).T):
        print(f"K={K}: density z = {assert_mean(samples, exact):.2f}")


def test_sim_of_marginal_is_reciprocal_unbiased():
    h = dist.Normal(0.3, 1.0)

    def stats(K):
        q = ppl.marginal(joint, keep=["x"], proposal=reverse, particles=K)

        @ppl.expectation
        def reciprocal():
            values, log_w = ppl.sim(q)
            return jnp.exp(h.log_prob(values["x"]) - log_w)

        @ppl.expectation
        def log_w_minus_exact():
            values, log_w = ppl.sim(q)
            return log_w - MARGINAL_X.log_prob(values["x"])

        return reciprocal, log_w_minus_exact

    objs = [stats(K) for K in (1, 4)]
    keys = jax.random.split(jax.random.key(1), N)
    out = np.asarray(jax.jit(jax.vmap(lambda k: jnp.stack(
        [o.estimate(k) for pair in objs for o in pair])))(keys), np.float64)
    for i, K in enumerate((1, 4)):
        z = assert_mean(out[:, 2 * i], 1.0)
        # Jensen: E[log_w] >= log p(x): sim's estimate overstates the log density on average.
        bias = out[:, 2 * i + 1]
        print(f"K={K}: reciprocal z = {z:.2f}, E[log_w - log p(x)] = {bias.mean():.4f}")
        assert bias.mean() > 5 * bias.std() / math.sqrt(N)


def test_marginal_with_exact_proposal_is_exact():
    def exact_reverse(values):
        numpyro.sample("u", dist.Normal(values["x"] / 2, math.sqrt(0.5)))

    q = ppl.marginal(joint, keep=["x"], proposal=exact_reverse, particles=3)

    @ppl.expectation
    def error():
        values, log_w = ppl.sim(q)
        return (log_w - MARGINAL_X.log_prob(values["x"])) ** 2 + (
            ppl.density(q, values) - MARGINAL_X.log_prob(values["x"])) ** 2

    assert float(error.estimate(jax.random.key(0))) < 1e-9


# ---------------------------------------------------------------- normalize

Y = 1.5


def model(y):
    mu = numpyro.sample("mu", dist.Normal(0.0, 1.0))
    numpyro.sample("y", dist.Normal(mu, 1.0), obs=y)


def proposal(y):
    numpyro.sample("mu", dist.Normal(0.2, 1.2))


G = dist.Normal(0.5, 1.0)  # a reference probability density


def test_normalize_estimates_are_properly_weighted():
    Ks = (1, 5)
    objs = []
    for K in Ks:
        posterior = ppl.normalize(model, proposal=proposal, particles=K)

        @ppl.expectation
        def density_over_g(y, posterior=posterior):
            mu = ppl.sim(lambda: numpyro.sample("mu", G))[0]["mu"]
            return jnp.exp(ppl.density(posterior, {"mu": mu}, y) - G.log_prob(mu))

        @ppl.expectation
        def g_over_sim(y, posterior=posterior):
            values, log_w = ppl.sim(posterior, y)
            return jnp.exp(G.log_prob(values["mu"]) - log_w)

        objs += [density_over_g, g_over_sim]
    keys = jax.random.split(jax.random.key(2), N)
    out = np.asarray(jax.jit(jax.vmap(lambda k: jnp.stack([o.estimate(k, Y) for o in objs])))(keys),
                     np.float64)
    for i, K in enumerate(Ks):
        z1, z2 = assert_mean(out[:, 2 * i], 1.0), assert_mean(out[:, 2 * i + 1], 1.0)
        print(f"K={K}: density z = {z1:.2f}, sim z = {z2:.2f}")


def test_normalize_with_one_particle_is_the_proposal_and_many_approach_the_posterior():
    one = ppl.normalize(model, proposal=proposal, particles=1)

    @ppl.expectation
    def error(y):
        values, log_w = ppl.sim(one, y)
        log_r = dist.Normal(0.2, 1.2).log_prob(values["mu"])
        return (log_w - log_r) ** 2 + (ppl.density(one, values, y) - log_r) ** 2

    assert float(error.estimate(jax.random.key(0), Y)) < 1e-9

    # SIR with 64 particles: the draws' mean is near the posterior mean y / 2 (SIR's bias is
    # O(1/K), far below the 5 se of 4000 draws here).
    posterior = ppl.normalize(model, proposal=proposal, particles=64)

    @ppl.expectation
    def draw(y):
        return ppl.sim(posterior, y)[0]["mu"]

    assert_mean(many(draw.estimate, Y), Y / 2)


@pytest.mark.slow
def test_gradient_flows_through_normalize_with_enumerated_resampling():
    def objective(grad):
        @ppl.expectation
        def obj(loc):
            def guide(y):
                numpyro.sample("mu", dist.Normal(loc, 1.0))

            posterior = ppl.normalize(model, proposal=guide, particles=3, resample_grad=grad)
            return ppl.sim(posterior, Y)[0]["mu"]

        return obj

    keys = jax.random.split(jax.random.key(0), 2000)
    objs = [objective(s) for s in ("enum", "reinforce")]
    g_enum, g_reinforce = np.asarray(
        jax.jit(jax.vmap(lambda k: jnp.stack([o.grad_estimate(k, 0.0)[0] for o in objs])))(keys)).T
    # Both strategies estimate the same gradient; enum has lower variance.
    diff = g_enum.mean() - g_reinforce.mean()
    se = math.sqrt(g_enum.var() / len(keys) + g_reinforce.var() / len(keys))
    assert abs(diff) < 5 * se, (g_enum.mean(), g_reinforce.mean(), se)
    assert g_enum.var() < g_reinforce.var()


# ---------------------------------------------------------------- errors


def test_errors_name_the_site():
    @ppl.expectation
    def sim_of(q):
        return ppl.sim(q)[1]

    bad_keep = ppl.marginal(joint, keep=["y"], proposal=reverse)
    with pytest.raises(ppl.ModelError, match="'y'"):
        ppl.expectation(lambda: ppl.sim(bad_keep)[1]).estimate(jax.random.key(0))

    def greedy(values):
        numpyro.sample("u", dist.Normal(0.0, 1.0))
        numpyro.sample("x", dist.Normal(0.0, 1.0))

    q = ppl.marginal(joint, keep=["x"], proposal=greedy, particles=2)
    with pytest.raises(ppl.ModelError, match="'x'"):
        ppl.expectation(lambda: ppl.sim(q)[1]).estimate(jax.random.key(0))

    q = ppl.marginal(joint, keep=["x"], proposal=reverse, particles=2)
    with pytest.raises(ppl.ModelError, match="kept sites"):
        ppl.expectation(lambda: ppl.density(q, {"x": 0.0, "u": 0.0})).estimate(jax.random.key(0))
    with pytest.raises(ppl.ModelError, match="ppl.sim"):
        q()
    with pytest.raises(ValueError, match="particles"):
        ppl.marginal(joint, keep=["x"], proposal=reverse, particles=0)
