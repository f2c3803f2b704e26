"""The kernel algebra: compose / cycle / mixture of our kernels and BlackJAX's.

Invariance checks start ``C`` independent (vmapped) chains at exact draws of a correlated
2-D Gaussian and run ``T`` steps of the combined kernel. If the kernel leaves the Gaussian
invariant, every draw of every chain is exactly distributed, so each chain's time average
of ``x`` and of ``x_i x_j`` is unbiased for the true mean (0) and second moments
(``Sigma``). The chains are independent, so the standard error (MCSE) of the average over
chains is the across-chain sd of those time averages over ``sqrt(C)`` -- no autocorrelation
estimate needed. We allow ``Z = 4`` standard errors (probability 6e-5 for one normal
statistic; 5 statistics x 6 runs here keep the false-alarm chance below 0.2%), while a
non-invariant combination (e.g. a stale cached gradient after another member moved) shifts
the covariance by many SE.
"""

from typing import NamedTuple

import blackjax
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from blackjax.base import SamplingAlgorithm

from inference.mcmc import combinators as kernels
from inference.mcmc import langevin

Z = 4.0
SIGMA = np.array([[1.0, 1.2], [1.2, 4.0]])  # sds 1 and 2, correlation 0.6
PREC = jnp.asarray(np.linalg.inv(SIGMA), jnp.float32)
CHOL = jnp.asarray(np.linalg.cholesky(SIGMA), jnp.float32)


def logp(x):
    return -0.5 * x @ PREC @ x


def members():
    return [langevin.mala(logp, 0.3), langevin.obabo(logp, 0.4, num_integration_steps=2),
            blackjax.mala(logp, 0.3)]


MEMBER_GRADS = [1, 2, 1]  # gradients per step of each member above


def run(alg, key, num_chains=1000, num_steps=100):
    """Time averages per chain of x and x x^T, and the infos (steps, chains)."""
    k_x, k_init, k_run = jax.random.split(key, 3)
    x0 = jax.random.normal(k_x, (num_chains, 2)) @ CHOL.T  # exact draws

    @jax.jit
    def go(x0):
        state = jax.vmap(alg.init)(x0, jax.random.split(k_init, num_chains))

        def body(state, k):
            state, info = jax.vmap(alg.step)(jax.random.split(k, num_chains), state)
            x = state.position
            return state, (x, info)

        _, (xs, infos) = jax.lax.scan(body, state, jax.random.split(k_run, num_steps))
        return xs, infos

    xs, infos = go(x0)
    xs = np.asarray(xs, np.float64)  # (T, C, 2)
    feats = np.stack([xs[..., 0], xs[..., 1], xs[..., 0] ** 2, xs[..., 0] * xs[..., 1],
                      xs[..., 1] ** 2], axis=-1).mean(0)  # (C, 5) chain averages
    return feats, infos


def assert_invariant(feats):
    truth = np.array([0.0, 0.0, SIGMA[0, 0], SIGMA[0, 1], SIGMA[1, 1]])
    se = feats.std(0, ddof=1) / np.sqrt(feats.shape[0])
    z = (feats.mean(0) - truth) / se
    assert np.all(np.abs(z) < Z), f"z-scores of (mean x1, mean x2, S11, S12, S22): {z}"
    return z


@pytest.mark.parametrize("share_cache", [True, False])
def test_compose_leaves_gaussian_invariant_and_sums_n_grad(share_cache):
    alg = kernels.compose(*members(), share_cache=share_cache)
    feats, infos = run(alg, jax.random.key(1))
    assert_invariant(feats)
    n_grad = np.asarray(infos.n_grad)
    own = sum(np.asarray(kernels.info_n_grad(i)) for i in infos.infos)
    if share_cache:
        # The shared cache passes log p and its gradient along: exactly the members' counts.
        assert np.all(n_grad == sum(MEMBER_GRADS))
        assert np.all(n_grad == own)
    else:
        # Re-initialising a member whose position another member moved costs 1 gradient.
        extra = n_grad - own
        assert np.all((extra >= 0) & (extra <= len(MEMBER_GRADS)))
        assert extra.mean() > 0.5
    assert np.all(np.asarray(infos.kernel) == -1)
    rate = np.asarray(infos.acceptance_rate)
    assert np.all((rate >= 0) & (rate <= 1))


# share_cache=True runs in the slow suite (issue 12); compose checks it by default.
@pytest.mark.parametrize("share_cache", [pytest.param(True, marks=pytest.mark.slow), False])
def test_cycle_leaves_gaussian_invariant_and_follows_the_schedule(share_cache):
    alg = kernels.cycle(members(), share_cache=share_cache)
    feats, infos = run(alg, jax.random.key(2))
    assert_invariant(feats)
    kernel = np.asarray(infos.kernel)
    t = np.arange(kernel.shape[0])[:, None]
    assert np.all(kernel == t % 3)
    n_grad = np.asarray(infos.n_grad)
    want = np.asarray(MEMBER_GRADS)[kernel]
    if share_cache:
        assert np.all(n_grad == want)
    else:
        assert np.all((n_grad - want >= 0) & (n_grad - want <= 1))


# share_cache=True runs in the slow suite (issue 12); compose checks it by default.
@pytest.mark.parametrize("share_cache", [pytest.param(True, marks=pytest.mark.slow), False])
def test_mixture_leaves_gaussian_invariant_and_picks_by_weight(share_cache):
    weights = np.array([0.2, 0.5, 0.3])
    alg = kernels.mixture(members(), weights, share_cache=share_cache)
    feats, infos = run(alg, jax.random.key(3))
    assert_invariant(feats)
    kernel = np.asarray(infos.kernel).ravel()
    # Picks are iid categorical: each frequency within Z binomial SEs of its weight.
    freq = np.bincount(kernel, minlength=3) / kernel.size
    se = np.sqrt(weights * (1 - weights) / kernel.size)
    assert np.all(np.abs(freq - weights) < Z * se), (freq, weights)
    n_grad = np.asarray(infos.n_grad).ravel()
    want = np.asarray(MEMBER_GRADS)[kernel]
    if share_cache:
        assert np.all(n_grad == want)
    else:
        assert np.all((n_grad - want >= 0) & (n_grad - want <= 1))


def test_nested_combinations_share_the_cache():
    inner = kernels.cycle(members()[:2])
    alg = kernels.compose(inner, blackjax.mala(logp, 0.3))
    state = alg.init(jnp.zeros(2), jax.random.key(0))
    assert state.logdensity is not None and state.states[0].logdensity is not None
    state, info = jax.jit(alg.step)(jax.random.key(1), state)
    assert int(info.n_grad) == 1 + 1  # inner cycle steps MALA (1) then BlackJAX MALA (1)


def test_gradient_free_member_falls_back_to_reinit():
    sgld = langevin.sgld(lambda x, k: jax.grad(logp)(x), 0.01)
    alg = kernels.compose(langevin.mala(logp, 0.3), sgld)
    state = alg.init(jnp.zeros(2), jax.random.key(0))
    assert state.logdensity is None  # SGLD's state has no cache: nothing is shared
    state, info = alg.step(jax.random.key(1), state)
    # SGLD always moves, so MALA is re-initialised (1 gradient) on the next step.
    state, info = alg.step(jax.random.key(2), state)
    assert int(info.n_grad) == 3


def test_mismatched_position_structures_raise_naming_the_kernel():
    dict_kernel = langevin.mala(lambda p: -0.5 * jnp.sum(p["x"] ** 2), 0.1)
    array_kernel = langevin.obabo(lambda x: -0.5 * jnp.sum(x**2), 0.1)
    alg = kernels.compose(dict_kernel, array_kernel)
    with pytest.raises(ValueError, match=r"kernel 1 cannot be initialised.*'x'"):
        alg.init({"x": jnp.zeros(2)})

    base = langevin.mala(lambda x: -0.5 * jnp.sum(x**2), 0.1)
    # A kernel that silently changes the position's shape.
    bad = SamplingAlgorithm(lambda p, k=None: base.init(p[:1]), base.step)
    with pytest.raises(ValueError, match=r"kernel 1's state position has structure .*\[1\].*\[2\]"):
        kernels.cycle([base, bad]).init(jnp.zeros(2))

    f64 = SamplingAlgorithm(lambda p, k=None: base.init(p.astype(jnp.float16)), base.step)
    with pytest.raises(ValueError, match=r"kernel 0's state position .*float16"):
        kernels.mixture([f64, base], [1.0, 1.0]).init(jnp.zeros(2))


def test_bad_weights_and_members_raise():
    ks = members()[:2]
    with pytest.raises(ValueError, match=r"weights has shape \(3,\) but there are 2 kernels"):
        kernels.mixture(ks, [0.2, 0.3, 0.5])
    with pytest.raises(ValueError, match="positive"):
        kernels.mixture(ks, [1.0, 0.0])
    with pytest.raises(ValueError, match="positive"):
        kernels.mixture(ks, [1.0, -1.0])
    with pytest.raises(ValueError, match="positive"):
        kernels.mixture(ks, [1.0, float("nan")])
    with pytest.raises(ValueError, match="at least one kernel"):
        kernels.cycle([])
    with pytest.raises(TypeError, match="kernel 1 is"):
        kernels.compose(ks[0], "mala")


class Opaque(NamedTuple):
    acceptance_rate: jax.Array


def test_kernel_without_gradient_count_must_be_counted():
    base = langevin.mala(logp, 0.3)

    def step(key, state):  # an info that does not say how many gradients it took
        state, info = base.step(key, state)
        return state, Opaque(info.acceptance_rate)

    rw = SamplingAlgorithm(base.init, step)
    with pytest.raises(ValueError, match=r"kernel 1: .*counted"):
        kernels.compose(members()[0], rw).init(jnp.zeros(2))
    alg = kernels.compose(members()[0], kernels.counted(rw, n_grad=1))
    state, info = alg.step(jax.random.key(0), alg.init(jnp.zeros(2)))
    assert int(info.n_grad) == 2 and 0.0 <= float(info.acceptance_rate) <= 1.0
    # BlackJAX's random walk has a known count (0) and needs no wrapper.
    rmh = blackjax.rmh(logp, blackjax.mcmc.random_walk.normal(jnp.ones(2)))
    state, info = kernels.compose(members()[0], rmh).step(
        jax.random.key(0), kernels.compose(members()[0], rmh).init(jnp.zeros(2)))
    assert int(info.n_grad) in (1, 2)  # MALA's 1 (+1 on later steps to re-initialise it after a random-walk move)
