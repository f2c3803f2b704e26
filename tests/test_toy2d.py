"""The toy 2-D targets: shapes, determinism, supports and moments against closed forms."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from models import toy2d


@pytest.mark.parametrize("name", list(toy2d.TARGETS))
def test_shape_dtype_and_determinism(name):
    a = toy2d.sample(name, jax.random.key(0), 500)
    b = toy2d.sample(name, jax.random.key(0), 500)
    assert a.shape == (500, 2) and a.dtype == jnp.float32
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, toy2d.sample(name, jax.random.key(1), 500))
    assert float(jnp.max(jnp.abs(a))) < 4.0


def test_eight_gaussians_components():
    n = 40000
    x = np.asarray(toy2d.eight_gaussians(jax.random.key(0), n, radius=2.0, scale=0.2))
    angle = np.round(np.arctan2(x[:, 1], x[:, 0]) / (np.pi / 4)) % 8
    counts = np.bincount(angle.astype(int), minlength=8)
    # multinomial counts: each n/8 with sd sqrt(n p (1 - p)); |z| < 4
    assert np.all(np.abs(counts - n / 8) < 4 * math.sqrt(n / 8 * 7 / 8))
    centres = 2.0 * np.stack([np.cos(angle * np.pi / 4), np.sin(angle * np.pi / 4)], 1)
    resid = x - centres
    assert abs(resid.std() - 0.2) < 4 * 0.2 / math.sqrt(2 * 2 * n)  # sd of a sd estimate


def test_two_moons_mean():
    n = 40000
    x = np.asarray(toy2d.two_moons(jax.random.key(0), n, noise=0.1))
    # before scaling, E[x] = (0.5, 0.25): both moons average (0, 2/pi) and (1, 0.5 - 2/pi)
    se = x.std(0) / math.sqrt(n)
    assert np.all(np.abs(x.mean(0)) < 4 * se)


def test_checkerboard_support_and_balance():
    n = 40000
    x = np.asarray(toy2d.checkerboard(jax.random.key(0), n, cells=4, width=4.0))
    assert x.min() >= -2.0 and x.max() <= 2.0
    col, row = np.floor(x[:, 0] + 2), np.floor(x[:, 1] + 2)
    assert np.all((col + row) % 2 == 0)
    counts = np.bincount((4 * col + row).astype(int), minlength=16)[
        [4 * i + j for i in range(4) for j in range(4) if (i + j) % 2 == 0]]
    assert np.all(np.abs(counts - n / 8) < 4 * math.sqrt(n / 8 * 7 / 8))


def test_errors():
    with pytest.raises(ValueError, match="unknown target 'spiral'"):
        toy2d.sample("spiral", jax.random.key(0), 3)
    with pytest.raises(ValueError, match="n must be a positive int"):
        toy2d.two_moons(jax.random.key(0), 0)
    with pytest.raises(ValueError, match="cells must be an even int"):
        toy2d.checkerboard(jax.random.key(0), 3, cells=3)
    with pytest.raises(ValueError, match="scale must be a positive number"):
        toy2d.eight_gaussians(jax.random.key(0), 3, scale=0.0)
