"""Sample-quality metrics against closed forms.

Each statistic is replicated over independent draws (vmapped keys) and its mean compared
with the population value within 4 standard errors of that mean (SE = sd over replicates /
sqrt(replicates)), using the unbiased (U-statistic) forms so that no bias term is needed.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy.stats import norm

from inference import metrics

Z = 4.0
R = 32  # replicates


def _abs_normal_mean(m, s):
    """E|W| for W ~ N(m, s^2)."""
    return s * np.sqrt(2 / np.pi) * np.exp(-(m**2) / (2 * s**2)) + m * (1 - 2 * norm.cdf(-m / s))


def _replicate(stat, shift, n=400):
    def one(k):
        kx, ky = jax.random.split(k)
        x = jax.random.normal(kx, (n, 1))
        y = shift + jax.random.normal(ky, (n, 1))
        return stat(x, y)

    vals = np.asarray(jax.jit(jax.vmap(one))(jax.random.split(jax.random.key(0), R)))
    return vals.mean(), vals.std(ddof=1) / np.sqrt(R)


@pytest.mark.parametrize("shift", [0.0, 1.0])
def test_energy_distance_of_two_normals(shift):
    # 2 E|X - Y| - E|X - X'| - E|Y - Y'| with X - Y ~ N(-shift, 2), X - X' ~ N(0, 2).
    exact = 2 * _abs_normal_mean(shift, np.sqrt(2)) - 2 * _abs_normal_mean(0.0, np.sqrt(2))
    mean, se = _replicate(lambda x, y: metrics.energy_distance(x, y, unbiased=True), shift)
    assert abs(mean - exact) < Z * se, (mean, exact, se)


@pytest.mark.parametrize("shift", [0.0, 1.0])
def test_mmd_of_two_normals(shift):
    # E exp(-(X - Y)^2 / (2 h^2)) = h / sqrt(h^2 + v) exp(-m^2 / (2 (h^2 + v))) for
    # X - Y ~ N(m, v); here v = 2 for every pair of independent draws.
    h = 1.0
    ek = lambda m: h / np.sqrt(h**2 + 2) * np.exp(-(m**2) / (2 * (h**2 + 2)))  # noqa: E731
    exact = 2 * ek(0.0) - 2 * ek(shift)
    mean, se = _replicate(lambda x, y: metrics.mmd(x, y, bandwidth=h), shift)
    assert abs(mean - exact) < Z * se, (mean, exact, se)


@pytest.mark.slow  # slow suite: a large kernel matrix (issue 12: a 5-minute default suite)
def test_mmd_median_heuristic_detects_a_shift():
    x = jax.random.normal(jax.random.key(1), (300, 2))
    y = jax.random.normal(jax.random.key(2), (300, 2))
    same, shifted = metrics.mmd(x, y), metrics.mmd(x, y + 1.0)
    assert float(shifted) > 10 * abs(float(same))


def test_sliced_wasserstein_of_a_translation():
    """For y = x + m the sorted projections differ by theta.m exactly, so SW_2^2 is the mean
    of (theta.m)^2 = |m|^2 cos^2(t) over the directions: |m|^2 / 2 in expectation, with
    per-direction sd |m|^2 sqrt(1/8) (Var cos^2 t = 1/8 for t uniform)."""
    m = jnp.array([3.0, 4.0])  # |m| = 5
    x = jax.random.normal(jax.random.key(0), (200, 2))
    P = 4000
    sw = float(metrics.sliced_wasserstein(x, x + m, jax.random.key(1), num_projections=P))
    se_sq = 25.0 * np.sqrt(1 / 8) / np.sqrt(P)
    assert abs(sw**2 - 12.5) < Z * se_sq


def test_bad_shapes():
    with pytest.raises(ValueError, match="dimension 2 but y has 3"):
        metrics.energy_distance(jnp.zeros((5, 2)), jnp.zeros((5, 3)))
    with pytest.raises(ValueError, match="same|equal sizes"):
        metrics.sliced_wasserstein(jnp.zeros((5, 2)), jnp.zeros((6, 2)), jax.random.key(0))
    with pytest.raises(ValueError, match=r"\(n, d\)"):
        metrics.mmd(jnp.zeros((1, 2)), jnp.zeros((5, 2)))
