"""Flow matching against known answers: Gaussian source N(0, I) to Gaussian target N(m, s^2).

For independent x0 ~ N(0, I), x1 ~ N(m, s^2) and x_t = (1 - t) x0 + t x1 (+ gamma(t) z) the
optimal velocity is v*(x, t) = E[u_t | x_t = x] = m + c(t) (x - t m) with
c(t) = (t s^2 - (1 - t) + gamma gamma') / ((1 - t)^2 + t^2 s^2 + gamma^2)
(``flow_matching.gaussian_velocity``; derivation in its docstring). Its flow is affine,
x_t = t m + sigma_t x0 with sigma_t = sqrt((1 - t)^2 + t^2 s^2) on the straight path, so it
maps N(0, I) exactly onto the target, log densities are Gaussian, and the straightness of
its paths is known in closed form.

Statistical tolerances come from the spread of the quantity itself, never hand-picked:

* energy distances are compared with the null distribution of the energy distance between
  two independent exact sample sets of the same size (``_null_bound``: mean + 4 sd over
  replicates). If a sampler were exact, its energy distance to an independent exact set
  would be one more draw of that null statistic; the null is right-skewed, so mean + 4 sd is
  above its 99.9th percentile (Cantelli: P(X > mean + 4 sd) < 1/17 for any law; far less for
  this light-tailed one, whose replicate maximum we see well below the bound).
* loss optimality and Hutchinson unbiasedness use z-scores: a Monte Carlo mean minus its
  exact value divided by its standard error, |z| < 4.
"""

import math

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from inference import flow_matching as fm
from inference.metrics import energy_distance
from models import toy2d

Z = 4.0
M = jnp.array([1.5, -1.0])
S = 0.5
N_ED = 1000  # sample size of every energy-distance comparison


def _target(key, n, m=M, s=S):
    return m + s * jax.random.normal(key, (n, m.shape[0]))


@pytest.fixture(scope="module")
def null_bound():
    """mean + 4 sd of the energy distance between two independent exact sets of N_ED."""

    def one(k):
        ka, kb = jax.random.split(k)
        return energy_distance(_target(ka, N_ED), _target(kb, N_ED))

    vals = np.asarray(jax.lax.map(one, jax.random.split(jax.random.key(123), 40)))
    return vals.mean() + Z * vals.std(ddof=1), vals


def _sigma_t(t, s):
    return np.sqrt((1 - t) ** 2 + t**2 * s**2)


# ---------------------------------------------------------------------------------------
# (i) the closed-form field minimises the loss
# ---------------------------------------------------------------------------------------


def _per_pair_losses(v, keys, x0, x1, path, sigma):
    one = lambda k, a, b: fm.cfm_loss(v, k, a[None], b[None], path=path, sigma=sigma)  # noqa: E731
    return jax.jit(jax.vmap(one))(keys, x0, x1)


PERTURBATIONS = {
    "constant": lambda x, t: jnp.array([0.3, -0.2]),
    "linear_in_x": lambda x, t: 0.2 * x,
    "time_dependent": lambda x, t: 0.4 * t * (1 - t) * jnp.ones(2) - 0.1 * t * x,
}


@pytest.mark.parametrize("path,sigma", [("straight", 0.0), ("interpolant", 0.5)])
# Each case compiles its own program (~3-6 s): the most general perturbation runs on both
# paths by default, the other two in the slow suite.
@pytest.mark.parametrize("name", [
    n if n == "time_dependent" else pytest.param(n, marks=pytest.mark.slow) for n in PERTURBATIONS])
def test_closed_form_field_minimises_the_loss(path, sigma, name):
    # With common random numbers, per pair l(v* + d) - l(v*) = |d|^2 + 2 (v* - u) . d. The
    # symmetric combinations separate the two terms:
    #   excess = [l(v* + d) + l(v* - d)] / 2 - l(v*) = |d|^2 (> 0 for d != 0),
    #   cross  = [l(v* + d) - l(v* - d)] / 4 = (v* - u) . d,
    # and v* = E[u | x_t] iff E[cross] = 0 for every d: the z-score of the cross term is the
    # test; a misspecified field (wrong scale) must fail it (power check).
    n = 10000
    k0, k1, kl = jax.random.split(jax.random.key(0), 3)
    x0, x1 = jax.random.normal(k0, (n, 2)), _target(k1, n)
    keys = jax.random.split(kl, n)
    d = PERTURBATIONS[name]

    def z_cross(v):
        plus = _per_pair_losses(lambda x, t: v(x, t) + d(x, t), keys, x0, x1, path, sigma)
        minus = _per_pair_losses(lambda x, t: v(x, t) - d(x, t), keys, x0, x1, path, sigma)
        base = _per_pair_losses(v, keys, x0, x1, path, sigma)
        cross = np.asarray((plus - minus) / 4)
        excess = np.asarray((plus + minus) / 2 - base)
        return cross.mean() / (cross.std(ddof=1) / math.sqrt(n)), excess

    vstar = fm.gaussian_velocity(M, S, path=path, sigma=sigma)
    z, excess = z_cross(vstar)
    assert abs(z) < Z, f"cross term z = {z:.2f}"
    assert excess.min() >= -1e-4 and excess.mean() > 0
    wrong = fm.gaussian_velocity(M, 1.5 * S, path=path, sigma=sigma)
    z_wrong, _ = z_cross(wrong)
    if name != "constant":  # a constant d is orthogonal in mean to this wrong field's error
        assert abs(z_wrong) > Z, f"power check: z = {z_wrong:.2f} for a misspecified field"
    loss = lambda v: float(fm.cfm_loss(v, kl, x0, x1, path=path, sigma=sigma))  # noqa: E731
    assert loss(vstar) < loss(lambda x, t: vstar(x, t) + d(x, t))
    assert loss(vstar) < loss(lambda x, t: vstar(x, t) - d(x, t))


def test_closed_form_endpoints():
    v = fm.gaussian_velocity(M, S)
    x = jnp.array([0.3, 2.0])
    np.testing.assert_allclose(v(x, 0.0), M - x, atol=1e-6)  # E[x1 - x0 | x0 = x]
    np.testing.assert_allclose(v(x, 1.0), x, atol=1e-6)  # E[x1 - x0 | x1 = x]


# ---------------------------------------------------------------------------------------
# (ii) a trained MLP approaches the closed form
# ---------------------------------------------------------------------------------------


@pytest.mark.slow  # 2000 Adam steps; fm.train runs by default in its doctest and below
def test_trained_field_approaches_closed_form(null_bound):
    # 2000 Adam steps (~2 s). The correctness check is the last one: the trained field's
    # samples must pass the same energy-distance test as exact ones (derived bound: mean +
    # 4 sd of the null law, see the module docstring). The relative L2 error < 0.05 is a
    # regression guard (measured 0.019 when written; a trained network's error has no
    # first-principles bound).
    bound, _ = null_bound
    steps = 2000
    v = fm.VelocityMLP(2, jax.random.key(0), width=64, depth=2)
    opt = optax.adam(optax.cosine_decay_schedule(3e-3, steps))
    r = fm.train(v, jax.random.key(1), _target, steps=steps, batch_size=256, optimizer=opt)
    assert r.losses.shape == (steps,)
    vstar = fm.gaussian_velocity(M, S)
    k0, k1, kt, ke, kg = jax.random.split(jax.random.key(5), 5)
    n = 4000
    x0, x1, t = jax.random.normal(k0, (n, 2)), _target(k1, n), jax.random.uniform(kt, (n,))
    xt = (1 - t)[:, None] * x0 + t[:, None] * x1
    a, b = r.field(xt, t), jax.vmap(vstar)(xt, t)
    rel = float(jnp.sqrt(jnp.sum((a - b) ** 2) / jnp.sum(b**2)))
    assert rel < 0.05, f"relative L2 error {rel:.4f}"  # regression guard (measured 0.019)
    xs, nfe = fm.sample(r.field, jax.random.normal(ke, (N_ED, 2)), 20, "rk4")
    assert nfe == 80
    ed = float(energy_distance(xs, _target(kg, N_ED)))
    print(f"relative L2 error {rel:.4f}, energy distance {ed:.5f}, bound {bound:.5f}")
    assert ed < bound, f"energy distance {ed:.5f} >= bound {bound:.5f}"  # derived


# ---------------------------------------------------------------------------------------
# (iii) integrating the closed form maps N(0, I) to the target
# ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("path,sigma", [("straight", 0.0), ("interpolant", 0.5)])
def test_closed_form_flow_reaches_target(null_bound, path, sigma):
    bound, null = null_bound
    assert null.max() < bound  # the bound is above every null replicate seen
    v = fm.gaussian_velocity(M, S, path=path, sigma=sigma)
    x0 = jax.random.normal(jax.random.key(7), (N_ED, 2))
    truth = _target(jax.random.key(8), N_ED)
    x1, nfe = fm.sample(v, x0, 20, "rk4")
    ed = float(energy_distance(x1, truth))
    z = (ed - null.mean()) / null.std(ddof=1)
    assert ed < bound, f"energy distance {ed:.5f} (z = {z:.2f}) >= bound {bound:.5f}"
    # power: one Euler step of the straight field sends every point to m (x + m - x).
    x_bad, _ = fm.sample(v, x0, 1, "euler")
    assert float(energy_distance(x_bad, truth)) > 10 * bound


def test_integrators_converge_and_count_evaluations():
    v = fm.gaussian_velocity(M, S)
    x0 = jax.random.normal(jax.random.key(0), (256, 2))
    exact = M + S * x0  # the flow map of v* (x_1 = m + s x0)
    errs = {}
    for method, per_step in (("euler", 1), ("heun", 2), ("rk4", 4)):
        for steps in (8, 16):
            x1, nfe = fm.sample(v, x0, steps, method)
            assert nfe == per_step * steps
            errs[method, steps] = float(jnp.max(jnp.abs(x1 - exact)))
    assert errs["euler", 16] < errs["euler", 8] and errs["heun", 16] < errs["heun", 8] / 3
    assert errs["rk4", 16] < 1e-4 and errs["rk4", 8] < errs["heun", 8] < errs["euler", 8]
    one, _ = fm.sample(v, x0[0], 16, "rk4")  # a single point keeps its shape
    assert one.shape == (2,)


def test_adaptive_integrator():
    pytest.importorskip("diffrax")  # optional: method="adaptive" only
    v = fm.gaussian_velocity(M, S)
    x0 = jax.random.normal(jax.random.key(0), (256, 2))
    x_ad, nfe_ad = fm.sample(v, x0, 4, "adaptive")
    assert float(jnp.max(jnp.abs(x_ad - (M + S * x0)))) < 1e-3 and 1 < int(nfe_ad) < 400


# ---------------------------------------------------------------------------------------
# (iv) log densities
# ---------------------------------------------------------------------------------------


def _gauss_logpdf(x, m, s):
    return jnp.sum(-0.5 * ((x - m) / s) ** 2 - jnp.log(s) - 0.5 * math.log(2 * math.pi), -1)


@pytest.mark.parametrize("given", ["x1", "x0"])
def test_exact_log_density_of_closed_form_flow(given):
    scale = jnp.array([0.5, 1.5])  # anisotropic: the divergence varies per coordinate
    v = fm.gaussian_velocity(M, scale)
    x = (_target(jax.random.key(0), 200, s=scale) if given == "x1"
         else jax.random.normal(jax.random.key(0), (200, 2)))
    r = fm.log_density(v, x, 32, "rk4", given=given)
    np.testing.assert_allclose(r.x1, M + scale * r.x0, atol=1e-4)
    np.testing.assert_allclose(r.log_prob, _gauss_logpdf(r.x1, M, scale), atol=1e-3)
    assert r.nfe == 128
    # Rademacher probes are exact for a diagonal Jacobian (eps_i^2 = 1).
    h = fm.log_density(v, x, 32, "rk4", given=given, divergence="hutchinson",
                       key=jax.random.key(1))
    np.testing.assert_allclose(h.log_prob, r.log_prob, atol=1e-4)


@pytest.mark.slow  # slow suite: many Monte Carlo draws (issue 12: a 5-minute default suite)
def test_hutchinson_is_unbiased():
    # A random (nonlinear, full-Jacobian) MLP field. For fixed x the estimate's mean over
    # probe draws is the exact-divergence value of the same discretisation; z per point.
    v = fm.VelocityMLP(2, jax.random.key(3), width=32, depth=2)
    x = jax.random.normal(jax.random.key(4), (20, 2))
    exact = fm.log_density(v, x, 8, "rk4").log_prob
    R = 400

    est = np.asarray(jax.vmap(
        lambda k: fm.log_density(v, x, 8, "rk4", divergence="hutchinson", key=k).log_prob
    )(jax.random.split(jax.random.key(5), R)))
    sd = est.std(0, ddof=1)
    assert np.all(sd > 1e-4)  # the estimator really is random here
    z = (est.mean(0) - np.asarray(exact)) / (sd / math.sqrt(R))
    assert np.max(np.abs(z)) < 4.5, z  # 20 points: P(max |z| > 4.5) ~ 1e-4
    pooled = z.sum() / math.sqrt(len(z))
    assert abs(pooled) < Z
    # more probes, smaller spread
    many = jax.vmap(lambda k: fm.log_density(v, x, 8, "rk4", divergence="hutchinson", key=k,
                                             probes=16).log_prob)(jax.random.split(jax.random.key(7), 32))
    assert float(jnp.mean(jnp.std(many, 0))) < 0.5 * float(sd.mean())


# ---------------------------------------------------------------------------------------
# (v) reflow straightens the paths
# ---------------------------------------------------------------------------------------


def test_straightness_of_closed_form_flow():
    # Paths x_t = t m + sigma_t x0 deviate from the chord by (s - 1 - sigma_t') x0, so
    # straightness = mean|x0|^2 * int_0^1 (s - 1 - sigma_t')^2 dt, exactly given x0.
    s = 0.3
    v = fm.gaussian_velocity(M, s)
    x0 = jax.random.normal(jax.random.key(0), (2000, 2))
    t = np.linspace(0, 1, 200001)
    dsig = (t * s**2 - (1 - t)) / _sigma_t(t, s)
    expected = float(jnp.mean(jnp.sum(x0**2, 1))) * np.trapezoid((s - 1 - dsig) ** 2, t)
    got = float(fm.straightness(v, x0, 200, "rk4"))
    assert abs(got - expected) < 1e-3 * expected, (got, expected)


@pytest.mark.slow  # trains a network; fm.reflow runs by default in its doctest
def test_reflow_straightens_gaussian_flow():
    # The 1-rectified flow for s = 0.3 has curved paths (straightness ~0.4). Its coupling is
    # x1 = m + s x0, whose straight-path field m + (s - 1) x0 is straight; a fresh MLP
    # trained on the couplings must cut the straightness by 10x and make one Euler step good.
    s = 0.3
    v1 = fm.gaussian_velocity(M, s)
    x0 = jax.random.normal(jax.random.key(0), (4096, 2))
    init = fm.VelocityMLP(2, jax.random.key(1), width=64, depth=2)
    r = fm.reflow(v1, jax.random.key(2), x0, init=init, steps=1500,
                  optimizer=optax.adam(optax.cosine_decay_schedule(3e-3, 1500)))
    np.testing.assert_allclose(r.x1, M + s * r.x0, atol=1e-3)  # couplings = ODE(x0)
    x_eval = jax.random.normal(jax.random.key(3), (1000, 2))
    s1, s2 = float(fm.straightness(v1, x_eval)), float(fm.straightness(r.field, x_eval))
    assert s2 < 0.1 * s1, (s1, s2)
    truth = _target(jax.random.key(4), 1000, s=s)
    ed1 = float(energy_distance(fm.sample(v1, x_eval, 1)[0], truth))
    ed2 = float(energy_distance(fm.sample(r.field, x_eval, 1)[0], truth))
    assert ed2 < 0.1 * ed1, (ed1, ed2)


@pytest.mark.slow
def test_reflow_on_eight_gaussians():
    steps = 3000
    opt = optax.adam(optax.cosine_decay_schedule(3e-3, steps, alpha=0.05))
    v = fm.VelocityMLP(2, jax.random.key(0), width=64, depth=3)
    r1 = fm.train(v, jax.random.key(1), toy2d.eight_gaussians, steps=steps, optimizer=opt)
    r2 = fm.reflow(r1.field, jax.random.key(2), jax.random.normal(jax.random.key(3), (10000, 2)),
                   steps=steps, optimizer=opt)
    x0 = jax.random.normal(jax.random.key(4), (1000, 2))
    assert float(fm.straightness(r2.field, x0)) < 0.2 * float(fm.straightness(r1.field, x0))
    truth = toy2d.eight_gaussians(jax.random.key(5), 1000)
    ed = lambda f, k: float(energy_distance(fm.sample(f, x0, k)[0], truth))  # noqa: E731
    assert ed(r2.field, 1) < 0.2 * ed(r1.field, 1)
    assert ed(r2.field, 2) < 2.0 * ed(r2.field, 100)


# ---------------------------------------------------------------------------------------
# training details and errors
# ---------------------------------------------------------------------------------------


def test_train_with_couplings_and_padding_is_deterministic():
    x0 = jax.random.normal(jax.random.key(0), (512, 1))
    x1 = x0 + 2.0
    v = fm.VelocityMLP(1, jax.random.key(1), width=16, depth=1)
    a = fm.train(v, jax.random.key(2), x1, x0=x0, steps=37, batch_size=64, updates=4)
    b = fm.train(v, jax.random.key(2), x1, x0=x0, steps=37, batch_size=64, updates=4)
    assert a.losses.shape == (37,) and bool(jnp.all(jnp.isfinite(a.losses)))
    np.testing.assert_array_equal(a.losses, b.losses)
    leaves = lambda m: jax.tree_util.tree_leaves(eqx.filter(m, eqx.is_array))  # noqa: E731
    for p, q in zip(leaves(a.field), leaves(b.field)):
        np.testing.assert_array_equal(p, q)


def test_bad_input_errors():
    v = fm.VelocityMLP(2, jax.random.key(0), width=8, depth=1)
    x = jnp.zeros((4, 2))
    with pytest.raises(ValueError, match="unknown method 'midpoint'.*euler, heun, rk4"):
        fm.sample(v, x, 4, "midpoint")
    with pytest.raises(ValueError, match=r"sample\(steps=0\): must be a positive int"):
        fm.sample(v, x, 0)
    with pytest.raises(ValueError, match="dimension 2, but the points have dimension 3"):
        fm.sample(v, jnp.zeros((4, 3)), 4)
    with pytest.raises(ValueError, match="must return the velocity at x, shape \\(2,\\)"):
        fm.sample(lambda x, t: jnp.zeros(3), x, 4)
    with pytest.raises(ValueError, match="cannot be called as v\\(x, t\\)"):
        fm.sample(lambda x, t: x @ jnp.zeros((3, 3)), x, 4)
    with pytest.raises(ValueError, match="unknown path 'curved'.*straight, interpolant"):
        fm.cfm_loss(v, jax.random.key(0), x, x, path="curved")
    with pytest.raises(ValueError, match="sigma must be a number >= 0"):
        fm.cfm_loss(v, jax.random.key(0), x, x, sigma=-1.0)
    with pytest.raises(ValueError, match="same shape.*\\(4, 2\\) and \\(3, 2\\)"):
        fm.cfm_loss(v, jax.random.key(0), x, jnp.zeros((3, 2)))
    with pytest.raises(ValueError, match="needs key"):
        fm.log_density(v, x, 4, divergence="hutchinson")
    with pytest.raises(ValueError, match="unknown divergence"):
        fm.log_density(v, x, 4, divergence="trace")
    with pytest.raises(ValueError, match="fixed coupling"):
        fm.train(v, jax.random.key(0), toy2d.two_moons, x0=x, steps=2)
    with pytest.raises(TypeError, match="init=VelocityMLP"):
        fm.reflow(lambda x, t: x, jax.random.key(0), x, steps=2)
    with pytest.raises(ValueError, match="x must have shape \\(2,\\)"):
        v(jnp.zeros(3), 0.0)
