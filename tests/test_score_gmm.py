"""The Gaussian-mixture reference of the score samplers: draws, densities, noised scores."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from inference.score import VE, VP, Linear
from models.score_gmm import GaussianMixture, ring_mixture, two_moons_mixture
from models.score_net import ScoreMLP, digits_net, mlp_2d


def test_draws_match_moments():
    g = two_moons_mixture()
    n = 40_000
    x = np.asarray(g.sample(jax.random.key(0), n))
    mean, cov = np.asarray(g.mean()), np.asarray(g.covariance())
    # standard errors of the sample mean: sqrt(diag cov / n); 5 se
    se = np.sqrt(np.diag(cov) / n)
    assert np.all(np.abs(x.mean(0) - mean) < 5 * se)
    assert np.allclose(np.cov(x, rowvar=False), cov, atol=0.05)


def test_log_prob_normalised_1d():
    g = GaussianMixture(jnp.array([0.3, 0.7]), jnp.array([[-1.0], [2.0]]),
                        jnp.array([[[0.25]], [[1.0]]]))
    grid = jnp.linspace(-8, 10, 4001)[:, None]
    mass = float(jnp.sum(jnp.exp(g.log_prob(grid))) * (grid[1, 0] - grid[0, 0]))
    assert abs(mass - 1.0) < 1e-3


@pytest.mark.parametrize("proc", [VP(), VE(), Linear()], ids=["vp", "ve", "linear"])
def test_noised_law_is_the_law_of_x_t(proc):
    """Moments of ``a x0 + s eps`` (Monte Carlo) against the closed-form noised mixture."""
    g, t, n = two_moons_mixture(), 0.3, 40_000
    a, s = proc.marginal(t)
    k0, k1 = jax.random.split(jax.random.key(1))
    xt = a * g.sample(k0, n) + s * jax.random.normal(k1, (n, 2))
    gt = g.noised(proc, t)
    se = np.sqrt(np.diag(np.asarray(gt.covariance())) / n)
    assert np.all(np.abs(np.asarray(xt.mean(0) - gt.mean())) < 5 * se)
    assert np.allclose(np.cov(np.asarray(xt), rowvar=False), gt.covariance(), rtol=0.05, atol=0.01)


@pytest.mark.slow  # slow suite: several compiled programs (issue 12: a 5-minute default suite)
def test_score_is_gradient_of_noised_log_prob_and_tweedie():
    g, p, t = ring_mixture(3), VP(), 0.2
    x = jnp.array([[0.3, -0.2], [1.5, 0.7]])
    eps = 1e-3
    fd = jnp.stack([(g.noised(p, t).log_prob(x + eps * e) - g.noised(p, t).log_prob(x - eps * e))
                    / (2 * eps) for e in jnp.eye(2)], 1)
    assert np.allclose(g.score(x, t, p), fd, atol=2e-2)
    # Tweedie's E[x0 | x_t] by Monte Carlo over the posterior is hard; check a 1-Gaussian case:
    one = GaussianMixture(jnp.ones(1), jnp.array([[1.0, -1.0]]), 0.5 * jnp.eye(2)[None])
    a, s = p.marginal(t)
    # conjugate normal: E[x0|x] = mu + C a (a^2 C + s^2)^-1 (x - a mu), C = 0.5 I
    want = one.means[0] + 0.5 * a / (a**2 * 0.5 + s**2) * (x - a * one.means[0])
    assert np.allclose(one.denoiser(x, t, p), want, atol=1e-4)


@pytest.mark.slow  # slow suite: several compiled programs (issue 12: a 5-minute default suite)
def test_posterior_matches_bayes_rule_on_a_grid():
    g = two_moons_mixture()
    A, y, R = jnp.array([[1.0, 0.0]]), jnp.array([0.5]), jnp.array([[0.04]])
    post = g.posterior(A, y, R)
    # unnormalised log posterior on a grid vs the closed form (both normalised on the grid)
    u = jnp.linspace(-4, 4, 241)
    grid = jnp.stack(jnp.meshgrid(u, u, indexing="ij"), -1).reshape(-1, 2)
    lp = g.log_prob(grid) - 0.5 * (grid[:, 0] - 0.5) ** 2 / 0.04
    p1 = jax.nn.softmax(lp)
    p2 = jax.nn.softmax(post.log_prob(grid))
    assert float(jnp.sum(jnp.abs(p1 - p2))) < 1e-3


def test_bad_shapes_are_errors():
    with pytest.raises(ValueError, match="means must have shape"):
        GaussianMixture(jnp.ones(2), jnp.ones(2), jnp.ones((2, 1, 1)))
    with pytest.raises(ValueError, match="covs must have shape"):
        GaussianMixture(jnp.ones(2), jnp.ones((2, 2)), jnp.ones((2, 1, 1)))
    with pytest.raises(ValueError, match="do not fit"):
        two_moons_mixture().posterior(jnp.ones((1, 3)), jnp.ones(1), jnp.ones((1, 1)))


@pytest.mark.slow  # slow suite (issue 12: a 5-minute default suite); siblings in this file cover the same code by default
def test_networks_shapes_and_errors():
    assert mlp_2d(jax.random.key(0))(jnp.ones(2), 0.1).shape == (2,)
    net = digits_net(jax.random.key(0), hidden=16, depth=1)
    assert float(jnp.abs(net(jnp.ones(64), 0.5)).max()) == 0.0  # zero-initialised output
    with pytest.raises(ValueError, match="one example"):
        net(jnp.ones((3, 64)), 0.5)
    with pytest.raises(ValueError, match="even emb"):
        ScoreMLP(2, emb=3, key=jax.random.key(0))
