"""Particle counts are totals in every objective: iwhvi(particles=n), diwhvi(K, inner_particles=m).

A problem whose bounds are known exactly for every particle count: the guide draws a fair
coin ``u`` and ``z ~ N(2u - 1, s)`` with ``s = 0.1``; the reverse model ``r(u | z)`` is the
fair coin again, and the model's ``z`` has the guide's marginal, ``p(z) = (N(z; -1, s) +
N(z; 1, s)) / 2``. The two components are 2 apart, 20 ``s``: a weight ``q(z, u) / r(u | z)``
of the other component is ``exp(-200)`` times one of the draw's own, nothing in float32 and
float64 alike. So with ``n`` inner weights (the guide's own ``u_1`` and ``n - 1`` fair coins,
``B ~ Binomial(n - 1, 1/2)`` of which match ``u_1``), ``log q_hat(z) = log N(z; 2u_1 - 1, s)
+ log((1 + B) / n)``, and each IWHVI estimate ``log p(z) - log q_hat(z)`` equals exactly
``log(n / 2) - log(1 + B)``. Its mean and variance come from the Binomial by enumeration:
that is the brute-force bound with exactly ``n`` particles, which the old ``n - 1`` extra
samples convention (``n + 1`` in all) misses by ~0.06 nats (over 10 standard errors here).
"""

import itertools
import math

import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
import pytest
from scipy.stats import binom

from ppl import objectives as O

S = 0.1
N = 4000


def model():
    mix = dist.MixtureSameFamily(dist.Categorical(probs=jnp.array([0.5, 0.5])),
                                 dist.Normal(jnp.array([-1.0, 1.0]), S))
    numpyro.sample("z", mix)


def coin_guide():
    u = numpyro.sample("u", dist.Bernoulli(0.5))
    numpyro.sample("z", dist.Normal(2.0 * u - 1.0, S))


def fair_reverse(values):
    numpyro.sample("u", dist.Bernoulli(0.5))


def inner_outcomes(n):
    """``(value of log q_hat(z) - log N(z; 2u_1 - 1, s), probability)`` over ``B``."""
    return [(math.log((1 + b) / n), binom.pmf(b, n - 1, 0.5)) for b in range(n)]


def exact_iwhvi(n):
    """Mean and variance of one IWHVI estimate with exactly ``n`` particles."""
    vals = [(math.log(0.5) - v, p) for v, p in inner_outcomes(n)]
    mean = sum(v * p for v, p in vals)
    return mean, sum((v - mean) ** 2 * p for v, p in vals)


def exact_diwhvi(K, m):
    """Mean and variance of one DIWHVI estimate: ``K`` outer particles, each with exactly
    ``m`` inner ones (the ``K`` inner estimates are independent), by enumeration."""
    vals = []
    for combo in itertools.product(inner_outcomes(m), repeat=K):
        log_w = [math.log(0.5) - v for v, _ in combo]
        value = float(np.logaddexp.reduce(log_w) - math.log(K))
        vals.append((value, math.prod(p for _, p in combo)))
    mean = sum(v * p for v, p in vals)
    return mean, sum((v - mean) ** 2 * p for v, p in vals)


def estimates(obj, dtype, seed=0):
    with jax.enable_x64(dtype == "float64"):
        keys = jax.random.split(jax.random.key(seed), N)
        out = jax.jit(jax.vmap(lambda k: obj.estimate(k, {})))(keys)
        assert out.dtype == np.dtype(dtype)
        return np.asarray(out, np.float64)


def assert_mean(samples, mean, var):
    # The exact variance of one estimate gives the standard error of the mean of N; 5 of
    # them: a false alarm below 1e-6 (CLT; the estimates are bounded). Plus float32
    # round-off (1e-5), for the zero-variance case of one particle.
    se = math.sqrt(var / samples.size)
    print(f"mean {samples.mean():.4f}, exact {mean:.4f}, se {se:.4f}")
    assert abs(samples.mean() - mean) < 5 * se + 1e-5


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_iwhvi_with_n_particles_is_the_bound_with_exactly_n(dtype):
    n = 3
    est = estimates(O.iwhvi(model, coin_guide, fair_reverse, ["z"], particles=n), dtype)
    # every estimate is one of the n values log(n/2) - log(1 + b)
    allowed = np.array([math.log(n / 2) - math.log(1 + b) for b in range(n)])
    assert np.all(np.min(np.abs(est[:, None] - allowed[None]), axis=1) < 1e-5)
    assert_mean(est, *exact_iwhvi(n))
    # ... and not the old convention's n + 1 particles (separation: over 10 se)
    assert abs(exact_iwhvi(n)[0] - exact_iwhvi(n + 1)[0]) > 10 * math.sqrt(exact_iwhvi(n)[1] / N)


def test_one_particle_is_hvi():
    assert_mean(estimates(O.iwhvi(model, coin_guide, fair_reverse, ["z"], particles=1),
                          "float32"), *exact_iwhvi(1))
    assert_mean(estimates(O.hvi(model, coin_guide, fair_reverse, ["z"]), "float32"),
                *exact_iwhvi(1))


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_diwhvi_counts_outer_and_inner_particles_in_total(dtype):
    K, m = 2, 3
    obj = O.diwhvi(model, coin_guide, fair_reverse, ["z"], K=K, inner_particles=m)
    assert_mean(estimates(obj, dtype, seed=1), *exact_diwhvi(K, m))


def test_the_old_extra_sample_counts_warn_and_keep_their_meaning():
    with pytest.warns(DeprecationWarning, match=r"iwhvi\(K=2\).*3 particles in all.*"
                                                r"Pass particles=3"):
        old = O.iwhvi(model, coin_guide, fair_reverse, ["z"], 2)
    assert_mean(estimates(old, "float32"), *exact_iwhvi(3))
    with pytest.warns(DeprecationWarning, match=r"diwhvi\(M=2\).*Pass inner_particles=3"):
        old = O.diwhvi(model, coin_guide, fair_reverse, ["z"], 2, 2)
    assert_mean(estimates(old, "float32", seed=1), *exact_diwhvi(2, 3))


def test_old_and_new_counts_together_are_refused():
    with pytest.raises(ValueError, match=r"iwhvi: got both K=2 .* and particles=3.*pass only particles"):
        O.iwhvi(model, coin_guide, fair_reverse, ["z"], K=2, particles=3)
    with pytest.raises(ValueError, match=r"diwhvi: got both M=1 .* and inner_particles=2"):
        O.diwhvi(model, coin_guide, fair_reverse, ["z"], K=2, M=1, inner_particles=2)
    with pytest.raises(ValueError, match=r"iwhvi: particles must be an int >= 1, got 0"):
        O.iwhvi(model, coin_guide, fair_reverse, ["z"], particles=0)
