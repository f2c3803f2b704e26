"""The ADEV transformation: every strategy's gradient against an exact gradient.

Statistical checks compare the mean of N independent gradient estimates (vmapped over keys,
fixed seeds) with the exact gradient (closed form or exhaustive enumeration) and require
``|mean - exact| < 5 * sd / sqrt(N)``: the estimator's own standard error, at 5 sigma (a
false alarm rate below 1e-6 per component under the CLT). Stochastic estimators must also
show ``sd > 0``, so a check cannot pass vacuously. Enum is exact: compared to 1e-5.
"""

import math

import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
import pytest

import ppl

N = 4000  # estimates per statistical check


def gradient_samples(obj, *args, n=N, seed=0):
    """``n`` gradient estimates of ``obj`` at ``args`` (one per key), jit-compiled."""
    return gradient_samples_of([obj], *args, n=n, seed=seed)[0]


def gradient_samples_of(objs, *args, n=N, seed=0):
    """Gradient estimates of several objectives, compiled together (one XLA compile)."""
    keys = jax.random.split(jax.random.key(seed), n)
    return jax.jit(jax.vmap(lambda k: [o.grad_estimate(k, *args) for o in objs]))(keys)


def assert_unbiased(samples, exact, stochastic=True):
    """Mean of the samples within 5 standard errors of ``exact``; returns the z-scores."""
    samples = np.asarray(samples, dtype=np.float64)
    exact = np.broadcast_to(np.asarray(exact, dtype=np.float64), samples.shape[1:])
    mean, sd = samples.mean(0), samples.std(0, ddof=1)
    se = sd / math.sqrt(samples.shape[0])
    if stochastic:
        assert np.all(sd > 0), "a stochastic estimator showed no variance"
    z = np.abs(mean - exact) / np.maximum(se, 1e-12)
    # 5 standard errors of the estimator's own mean (see module docstring); the 1e-6 slack
    # covers float32 rounding for components that are exact (zero variance, e.g. enumerated).
    assert np.all(np.abs(mean - exact) < 5 * se + 1e-6), (mean, exact, se, z)
    return z


# ---------------------------------------------------------------- Gaussian: E[z^2], z ~ N(theta, 1)


def gaussian(theta, grad):
    numpyro.sample("z", dist.Normal(theta, 1.0), infer={"grad": grad})


def second_moment(grad):
    @ppl.expectation
    def obj(theta):
        values, _ = ppl.sim(gaussian, theta, grad)
        return values["z"] ** 2

    return obj


def test_gaussian_second_moment_gradient():
    theta = 0.8
    strategies = ["reparam", "reinforce", "mvd"]
    samples = gradient_samples_of([second_moment(g) for g in strategies], theta)
    for grad, (g,) in zip(strategies, samples):
        z = assert_unbiased(g, 2 * theta)  # d/dtheta (theta^2 + 1) = 2 theta
        print(grad, "z =", z)


def scaled_gaussian(mu, sigma, grad):
    numpyro.sample("z", dist.Normal(mu, sigma), infer={"grad": grad})


def test_normal_mvd_location_and_scale():
    @ppl.expectation
    def obj(mu, sigma):
        return ppl.sim(scaled_gaussian, mu, sigma, "mvd")[0]["z"] ** 2

    mu, sigma = 0.7, 1.3
    g_mu, g_sigma = gradient_samples(obj, mu, sigma)
    # E[z^2] = mu^2 + sigma^2.
    assert_unbiased(jnp.stack([g_mu, g_sigma], -1), [2 * mu, 2 * sigma])


def coin(p, grad):
    numpyro.sample("b", dist.Bernoulli(p), infer={"grad": grad})


def test_vmapped_particles():
    """K particles drawn with jax.vmap inside the objective: one batched choice."""

    def objective(grad):
        @ppl.expectation
        def obj(p):
            b = jax.vmap(lambda _: ppl.sim(coin, p, grad)[0]["b"])(jnp.arange(3))
            return jnp.prod(1.0 + b * jnp.array([1.0, 2.0, 3.0]))  # couples the particles

        return obj

    p = 0.3
    exact = jax.grad(lambda p: jnp.prod(1.0 + p * jnp.array([1.0, 2.0, 3.0])))(p)
    strategies = ["mvd", "reinforce"]
    for grad, (g,) in zip(strategies, gradient_samples_of([objective(g) for g in strategies], p)):
        print(grad, "z =", assert_unbiased(g, exact))


def test_vmap_over_batched_parameters():
    """jax.vmap over data: each element's choice has its own parameters and its own key."""

    def objective(grad):
        @ppl.expectation
        def obj(mus):
            z = jax.vmap(lambda mu: ppl.sim(gaussian, mu, grad)[0]["z"])(mus)
            return jnp.sum(z**2)

        return obj

    mus = jnp.array([0.5, -1.0])
    strategies = ["reparam", "mvd"]
    for grad, (g,) in zip(strategies, gradient_samples_of([objective(g) for g in strategies], mus)):
        print(grad, "z =", assert_unbiased(g, 2 * mus))


def test_vmapped_particles_are_independent():
    @ppl.expectation
    def obj(mu):
        return jnp.var(jax.vmap(lambda _: ppl.sim(gaussian, mu, "reparam")[0]["z"])(jnp.arange(64)))

    assert float(obj.estimate(jax.random.key(0), 0.0)) > 0.5

    with pytest.raises(TypeError, match="grad_estimate"):  # not jax.grad of an estimate
        jax.grad(lambda mu: obj.estimate(jax.random.key(0), mu))(0.0)


# ---------------------------------------------------------------- Bernoulli and Categorical

W = jnp.array([1.0, -2.0, 3.0])


def discrete(theta, gb, gc):
    b = numpyro.sample("b", dist.Bernoulli(jax.nn.sigmoid(theta[0])), infer={"grad": gb})
    numpyro.sample("c", dist.Categorical(logits=theta[1:] + 0.5 * b), infer={"grad": gc})


def payoff(b, c):
    return (b + 1.0) * W[c] + 3.0 * b


def exact_discrete(theta):
    total = 0.0
    for b in (0, 1):
        pb = jax.nn.sigmoid(theta[0]) if b else 1 - jax.nn.sigmoid(theta[0])
        pc = jax.nn.softmax(theta[1:] + 0.5 * b)
        total += sum(pb * pc[c] * payoff(b, c) for c in range(3))
    return total


THETA = jnp.array([0.3, 0.2, -0.4, 0.1])


def discrete_objective(gb, gc):
    @ppl.expectation
    def obj(theta):
        values, _ = ppl.sim(discrete, theta, gb, gc)
        return payoff(values["b"], values["c"])

    return obj


def test_enum_is_exact():
    obj = discrete_objective("enum", "enum")
    exact = jax.grad(exact_discrete)(THETA)
    (g,) = gradient_samples(obj, THETA, n=3)
    np.testing.assert_allclose(g, jnp.broadcast_to(exact, g.shape), atol=1e-5)
    # The ADEV primal of an enumerated program is the exact expectation.
    value, _ = obj.jvp_estimate(jax.random.key(0), (THETA,), (jnp.ones(4),))
    np.testing.assert_allclose(value, exact_discrete(THETA), atol=1e-5)


def mean_baseline():
    return ppl.Reinforce(baseline="mean")


DISCRETE_STRATEGIES = {
    "mvd": ("mvd", "mvd"),
    "reinforce": ("reinforce", "reinforce"),
    "reinforce-mean-baseline": (mean_baseline(), mean_baseline()),
    "enum+mvd": ("enum", "mvd"),
}


def test_discrete_gradients_unbiased():
    objs = [discrete_objective(*pair) for pair in DISCRETE_STRATEGIES.values()]
    exact = jax.grad(exact_discrete)(THETA)
    for name, (g,) in zip(DISCRETE_STRATEGIES, gradient_samples_of(objs, THETA)):
        # With b enumerated, the Categorical MVD sees a deterministic continuation: exact for
        # those components, so only the other strategies must show noise everywhere.
        z = assert_unbiased(g, exact, stochastic=name != "enum+mvd")
        print(name, "z =", z)


def test_enum_over_a_plate_is_exact():
    def q(p):
        with numpyro.plate("n", 3):
            numpyro.sample("b", dist.Bernoulli(p), infer={"grad": "enum"})

    @ppl.expectation
    def obj(p):
        b = ppl.sim(q, p)[0]["b"]
        return jnp.prod(1.0 + b * jnp.array([1.0, 2.0, 3.0]))

    p = jnp.array([0.2, 0.5, 0.7])
    exact = jax.grad(lambda p: jnp.prod(1.0 + p * jnp.array([1.0, 2.0, 3.0])))(p)
    np.testing.assert_allclose(obj.grad_estimate(jax.random.key(0), p)[0], exact, atol=1e-5)


def test_estimate_is_unbiased():
    obj = discrete_objective("reinforce", "mvd")
    keys = jax.random.split(jax.random.key(3), N)
    values = jax.jit(jax.vmap(obj.estimate, (0, None)))(keys, THETA)
    assert_unbiased(values[:, None], [exact_discrete(THETA)])


# ---------------------------------------------------------------- a discrete choice picks a continuous one


def switch(theta, gb, gz):
    b = numpyro.sample("b", dist.Bernoulli(jax.nn.sigmoid(theta[0])), infer={"grad": gb})
    numpyro.sample("z", dist.Normal(jnp.where(b == 1, theta[1], theta[2]), 0.5),
                   infer={"grad": gz})


def exact_switch(theta):
    p = jax.nn.sigmoid(theta[0])
    return p * (theta[1] ** 2 + 0.25) + (1 - p) * (theta[2] ** 2 + 0.25)


def test_discrete_choice_controls_continuous_one():
    def objective(gb, gz):
        @ppl.expectation
        def obj(theta):
            return ppl.sim(switch, theta, gb, gz)[0]["z"] ** 2

        return obj

    pairs = [("enum", "reparam"), ("mvd", "mvd"), ("reinforce", "reinforce")]
    theta = jnp.array([0.4, 1.5, -0.5])
    samples = gradient_samples_of([objective(*pair) for pair in pairs], theta)
    for pair, (g,) in zip(pairs, samples):
        print(pair, "z =", assert_unbiased(g, jax.grad(exact_switch)(theta)))


# ---------------------------------------------------------------- Poisson, Gamma (implicit reparam)


def test_poisson():
    def objective(grad):
        @ppl.expectation
        def obj(lam):
            n = ppl.sim(lambda: numpyro.sample("n", dist.Poisson(lam), infer={"grad": grad}))[0]["n"]
            return n.astype(jnp.float32) ** 2

        return obj

    lam = 2.5
    strategies = ["mvd", "reinforce"]
    for grad, (g,) in zip(strategies, gradient_samples_of([objective(g) for g in strategies], lam)):
        print(grad, "z =", assert_unbiased(g, 1 + 2 * lam))  # E[N^2] = lam + lam^2


def test_default_strategies():
    from ppl.strategy import resolve_strategy

    assert resolve_strategy("z", dist.Normal(0.0, 1.0), None) == ppl.Reparam()
    assert resolve_strategy("g", dist.Gamma(2.0, 1.0), None) == ppl.Reparam()
    assert resolve_strategy("d", dist.Dirichlet(jnp.ones(3)), None) == ppl.Reparam()
    assert resolve_strategy("b", dist.Bernoulli(0.5), None) == ppl.Reinforce()
    assert resolve_strategy("n", dist.Poisson(1.0), None) == ppl.Reinforce()


@pytest.mark.slow
def test_implicit_reparameterization_of_gamma():

    @ppl.expectation
    def obj(a):
        return ppl.sim(lambda: numpyro.sample("g", dist.Gamma(a, 1.0)))[0]["g"]

    (g,) = gradient_samples(obj, 2.5, n=1000)
    assert_unbiased(g, 1.0)  # E[g] = a


# ---------------------------------------------------------------- forward and reverse modes


def test_forward_and_reverse_modes_agree():
    def mixed(theta):
        b = numpyro.sample("b", dist.Bernoulli(jax.nn.sigmoid(theta[0])), infer={"grad": "enum"})
        c = numpyro.sample("c", dist.Categorical(logits=theta[1:] + 0.5 * b),
                           infer={"grad": mean_baseline()})
        numpyro.sample("z", dist.Normal(W[c] * theta[0], 1.0), infer={"grad": "mvd"})

    @ppl.expectation
    def obj(theta):
        values = ppl.sim(mixed, theta)[0]
        return payoff(values["b"], values["c"]) * values["z"]

    key = jax.random.key(7)
    (grad,) = obj.grad_estimate(key, THETA)
    direction = jnp.array([0.5, -1.0, 2.0, 0.25])
    _, tangent = obj.jvp_estimate(key, (THETA,), (direction,))
    # Same key, same linear map: equal up to float32 rounding.
    np.testing.assert_allclose(tangent, jnp.dot(grad, direction), rtol=1e-5, atol=1e-5)


# ---------------------------------------------------------------- baselines


def test_baselines_reduce_variance():
    def q(p, grad):
        numpyro.sample("b", dist.Bernoulli(p), infer={"grad": grad})

    def objective(grad):
        @ppl.expectation
        def obj(p):
            return 10.0 + 3.0 * ppl.sim(q, p, grad)[0]["b"]

        return obj

    p = 0.3
    strategies = ["reinforce", ppl.Reinforce(baseline="mean"),
                  ppl.Reinforce(baseline=lambda d: 10.0 + 3.0 * d.probs)]
    (plain,), (loo,), (fixed,) = gradient_samples_of([objective(g) for g in strategies], p)
    for g in (plain, loo, fixed):
        assert_unbiased(g[:, None], [3.0])
    # The leave-one-out baseline runs the continuation twice: compare with the average of
    # two plain estimates (variance / 2) for equal cost.
    ratio_loo = float(jnp.var(plain) / 2 / jnp.var(loo))
    ratio_fixed = float(jnp.var(plain) / jnp.var(fixed))
    print(f"variance ratio: leave-one-out {ratio_loo:.1f}x, fixed baseline {ratio_fixed:.1f}x")
    # Measured: about 28x and 100x. Sample variances over 4000 draws have a relative error of a
    # few percent, so requiring 10x leaves a wide margin while failing if baselines do nothing.
    assert ratio_loo > 10, ratio_loo
    assert ratio_fixed > 10, ratio_fixed


# ---------------------------------------------------------------- relaxations (biased)


def test_relaxations_are_marked_biased_and_run():
    assert not ppl.StraightThrough().unbiased and not ppl.GumbelSoftmax(0.5).unbiased
    assert "biased" in ppl.StraightThrough.__doc__ and "biased" in ppl.GumbelSoftmax.__doc__

    def objective(strategy):
        @ppl.expectation
        def obj(p):
            b = ppl.sim(lambda: numpyro.sample("b", dist.Bernoulli(p), infer={"grad": strategy}))[0]["b"]
            return 2.0 * b

        return obj

    # Straight-through on a linear function is exact: d/dp E[2b] = 2.
    (g,) = jax.jit(objective(ppl.StraightThrough()).grad_estimate)(jax.random.key(0), 0.3)
    np.testing.assert_allclose(g, 2.0, rtol=1e-6)
    gumbel = objective(ppl.GumbelSoftmax(0.5))
    values, (g,) = jax.jit(jax.vmap(lambda k: (gumbel.estimate(k, 0.3), gumbel.grad_estimate(k, 0.3))))(
        jax.random.split(jax.random.key(1), 200))
    assert np.all(np.isfinite(g)) and float(jnp.mean(g)) > 0
    assert set(np.unique(np.asarray(values))) <= {0.0, 2.0}  # hard values


# ---------------------------------------------------------------- sim, density, jit, vmap


def test_sim_returns_values_and_log_q_and_density_includes_observations():
    def model(y=None):
        mu = numpyro.sample("mu", dist.Normal(0.0, 1.0))
        numpyro.sample("y", dist.Normal(mu, 1.0), obs=y)

    @ppl.expectation
    def obj(y):
        values, log_q = ppl.sim(model, y=y)  # y observed: not drawn, not in log_q
        assert sorted(values) == ["mu"]
        expected = dist.Normal(0.0, 1.0).log_prob(values["mu"])
        log_p = ppl.density(model, values, y=y)
        return (log_q - expected) ** 2 + (log_p - ppl.log_density(model, values, y=y)) ** 2

    assert float(obj.estimate(jax.random.key(0), 1.0)) < 1e-10

    @ppl.expectation
    def missing(y):
        return ppl.density(model, {}, y=y)

    with pytest.raises(ppl.ExpectationError, match="'mu'"):
        missing.estimate(jax.random.key(0), 1.0)


def test_jit_and_vmap_of_estimate_and_grad_estimate():
    def q(params, n):
        numpyro.sample("z", dist.Normal(params["loc"], jnp.exp(params["log_scale"])))
        numpyro.sample("b", dist.Bernoulli(jax.nn.sigmoid(params["logit"])), infer={"grad": "enum"})

    @ppl.expectation
    def obj(params, n):
        values, log_q = ppl.sim(q, params, n)
        return jnp.sum(values["z"]) * values["b"] * n - log_q

    params = {"loc": jnp.zeros(2), "log_scale": jnp.zeros(2), "logit": 0.3}
    key = jax.random.key(0)
    keys = jax.random.split(key, 5)
    g_params, g_n = jax.jit(obj.grad_estimate)(keys[0], params, 3)
    assert jax.tree_util.tree_structure(g_params) == jax.tree_util.tree_structure(params)
    assert g_params["loc"].shape == (2,) and g_n.dtype == jax.dtypes.float0
    values, (g, _) = jax.jit(jax.vmap(
        lambda k: (obj.estimate(k, params, 3), obj.grad_estimate(k, params, 3))))(keys)
    assert values.shape == (5,) and g["log_scale"].shape == (5, 2)
    # Same key, same estimate: vmapped and single calls agree.
    for a, b in zip(jax.tree_util.tree_leaves(g_params), jax.tree_util.tree_leaves(g)):
        np.testing.assert_allclose(a, b[0], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(values[0], obj.estimate(keys[0], params, 3), rtol=1e-5)
