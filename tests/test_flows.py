"""Normalizing flows (inference.flows) and the flow guide (inference.guides.flow)."""

import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
import optax
import pytest
from numpyro import handlers

import inference
import ppl
from inference.vi import guides
from inference.flows import KINDS, FlowSpec, check_kind

# float32 throughout: log-determinants agree to ~1e-5 relative; round trips to ~1e-5
# (splines solve a quadratic on the way back, hence the looser bound for them).
LOGDET_TOL = 1e-4
ROUNDTRIP_TOL = {"spline_coupling": 5e-5}
# forward + inverse log-determinants cancel to float32 round-off of a sum over layers; the
# spline's derivative formula amplifies it near knots with small slopes.
LOGDET_SUM_TOL = {"spline_coupling": 1e-3}


def _perturbed(spec, seed=0, scale=0.3):
    """Weights away from the identity initialisation, so every layer does something."""
    theta = spec.init(jax.random.key(seed))
    return theta + scale * jax.random.normal(jax.random.key(seed + 1), theta.shape)


@pytest.mark.parametrize("kind", KINDS)
# dims 1 and 5 run in the slow suite; dim 2 exercises every coupling/IAF path (issue 12).
@pytest.mark.parametrize("dim", [pytest.param(1, marks=pytest.mark.slow), 2,
                                 pytest.param(5, marks=pytest.mark.slow)])
def test_logdet_matches_bruteforce_jacobian(kind, dim):
    spec = FlowSpec(kind, dim=dim, layers=3, width=8)
    theta = _perturbed(spec)

    @jax.jit
    def check(z):
        x, logdet = spec.forward(theta, z)
        brute = jnp.linalg.slogdet(jax.jacfwd(lambda z: spec.forward(theta, z)[0])(z))
        _, inv_logdet = spec.inverse(theta, x)
        brute_inv = jnp.linalg.slogdet(jax.jacfwd(lambda x: spec.inverse(theta, x)[0])(x))
        return logdet, brute, inv_logdet, brute_inv

    z = 1.5 * jax.random.normal(jax.random.key(10), (4, dim))
    logdet, (sign, brute), inv_logdet, (sign_inv, brute_inv) = jax.vmap(check)(z)
    assert bool(jnp.all(sign != 0)) and bool(jnp.all(sign_inv != 0))
    tol = LOGDET_TOL * (1 + jnp.abs(brute))
    np.testing.assert_array_less(jnp.abs(logdet - brute), tol)
    np.testing.assert_array_less(jnp.abs(inv_logdet - brute_inv), tol)


@pytest.mark.parametrize("kind", KINDS)
def test_inverse_of_forward_is_identity(kind):
    spec = FlowSpec(kind, dim=4, layers=3, width=8)
    theta = _perturbed(spec)
    z = 1.5 * jax.random.normal(jax.random.key(3), (64, 4))
    fwd = jax.jit(jax.vmap(lambda z: spec.forward(theta, z)))
    x, logdet = fwd(z)
    z_back, inv_logdet = jax.jit(jax.vmap(lambda x: spec.inverse(theta, x)))(x)
    tol = ROUNDTRIP_TOL.get(kind, 1e-5)
    np.testing.assert_allclose(z_back, z, atol=tol * 10, rtol=tol)
    np.testing.assert_allclose(logdet + inv_logdet, 0.0, atol=LOGDET_SUM_TOL.get(kind, 1e-4))
    x_again, _ = fwd(z_back)
    np.testing.assert_allclose(x_again, x, atol=tol * 10, rtol=tol)


@pytest.mark.parametrize("kind", KINDS)
def test_fresh_flow_is_identity(kind):
    spec = FlowSpec(kind, dim=3, layers=2, width=8)
    theta = spec.init(jax.random.key(0))
    z = jnp.array([0.5, -1.0, 2.0])
    x, logdet = spec.forward(theta, z)
    np.testing.assert_allclose(x, z, atol=1e-6)
    assert abs(float(logdet)) < 1e-6


def test_bad_options_are_clear_errors():
    with pytest.raises(ValueError, match="unknown flow kind"):
        FlowSpec("glow", dim=2)
    with pytest.raises(ValueError, match="unknown flow kind"):
        guides.flow(lambda: None, kind="planar")
    with pytest.raises(ValueError, match="layers"):
        FlowSpec("iaf", dim=2, layers=0)
    with pytest.raises(ValueError, match="shape"):
        FlowSpec("iaf", dim=2).forward(FlowSpec("iaf", dim=2).init(jax.random.key(0)), jnp.ones(3))
    with pytest.raises(ValueError, match="theta has shape"):
        FlowSpec("iaf", dim=2).forward(jnp.zeros(3), jnp.ones(2))
    with pytest.raises(TypeError, match="callable"):
        guides.flow(3)
    assert check_kind("RealNVP") == "affine_coupling"


def _constrained_model():
    numpyro.sample("a", dist.Normal(0.0, 1.0))
    numpyro.sample("s", dist.HalfNormal(1.0).expand([2]).to_event(1))
    numpyro.sample("w", dist.Dirichlet(jnp.ones(3)))


@pytest.mark.parametrize("kind", ["affine_coupling", "iaf"])
def test_guide_log_q_is_the_pushforward_density(kind):
    """log q of the constrained draw = flow density of u minus the bijections' log-Jacobians,
    checked against an independent computation, and sim agrees with density."""
    guide = guides.flow(_constrained_model, kind=kind, layers=2, width=8)
    params = ppl.init_params(guide, jax.random.key(0))
    params = {"guide.flow": _perturbed(FlowSpec(kind, dim=5, layers=2, width=8), scale=0.2)}
    g = ppl.with_params(guide, params)
    tr = handlers.trace(handlers.seed(g, 3)).get_trace()
    assert all(tr[n]["type"] == "sample" for n in ("a", "s", "w", "guide.u"))
    assert bool(jnp.all(tr["s"]["value"] > 0)) and abs(float(tr["w"]["value"].sum()) - 1) < 1e-5
    values = {n: tr[n]["value"] for n in ("a", "s", "w", "guide.u")}
    log_q = sum(jnp.sum(tr[n]["fn"].log_prob(tr[n]["value"])) for n in values)

    spec = FlowSpec(kind, dim=5, layers=2, width=8)
    u = values["guide.u"]
    expected = spec.log_prob(params["guide.flow"], u)
    from numpyro.distributions.transforms import biject_to
    for name, sl, support in (("s", slice(1, 3), dist.HalfNormal(1.0).support),
                              ("w", slice(3, 5), dist.Dirichlet(jnp.ones(3)).support)):
        t = biject_to(support)
        expected -= jnp.sum(t.log_abs_det_jacobian(u[sl], t(u[sl])))
        np.testing.assert_allclose(t(u[sl]), values[name], rtol=1e-6)
    np.testing.assert_allclose(log_q, expected, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(ppl.density(g, values), expected, rtol=1e-5, atol=1e-5)


# renyi, rws_wake_q and forward_kl run in the slow suite (issue 12: a 5-minute default suite).
@pytest.mark.parametrize("name", ["elbo", "iwae", "vimco"] + [
    pytest.param(n, marks=pytest.mark.slow) for n in ("renyi", "rws_wake_q", "forward_kl")])
def test_guide_works_with_objectives(name):
    def model(y):
        mu = numpyro.sample("mu", dist.Normal(0.0, 2.0))
        sigma = numpyro.sample("sigma", dist.HalfNormal(1.0))
        numpyro.sample("y", dist.Normal(mu, sigma).expand([3]).to_event(1), obs=y)

    y = jnp.array([0.5, 1.0, 1.5])
    guide = guides.flow(model, kind="affine_coupling", layers=2, width=8)
    params = ppl.init_params(guide, jax.random.key(0), y)
    obj = getattr(ppl.objectives, name)(model, guide)
    value = obj.estimate(jax.random.key(1), params, y)
    (grad,) = obj.grad_estimate(jax.random.key(1), params, y)[:1]
    assert np.isfinite(float(value))
    assert grad["guide.flow"].shape == params["guide.flow"].shape
    assert bool(jnp.all(jnp.isfinite(grad["guide.flow"])))
    assert float(jnp.abs(grad["guide.flow"]).max()) > 0


@pytest.mark.slow  # a 2500-step fit; VI(guide="flow") runs by default in the test below
def test_flow_guide_recovers_correlated_gaussian():
    """ELBO fit of a RealNVP guide to N(mu, Sigma) (correlation 0.8): mean and covariance."""
    mu = jnp.array([1.0, -2.0])
    cov = jnp.array([[1.0, 0.8 * 1.5], [0.8 * 1.5, 2.25]])

    def model():
        numpyro.sample("x", dist.MultivariateNormal(mu, cov))

    method = inference.VI(guide="flow", guide_options={"kind": "affine_coupling", "layers": 2,
                                                       "width": 16},
                          steps=2500, optimizer=optax.adam(optax.cosine_decay_schedule(1e-2, 2500,
                                                                                       0.05)))
    r = inference.infer(model, method=method, num_samples=4000, num_chains=1, key=0,
                        progress=False)
    x = np.asarray(r.samples["x"][0])
    # Monte Carlo error of the estimates with 4000 draws is ~0.03 (mean) and ~0.05
    # (covariance entries); the rest of the tolerance is the fit's own error.
    np.testing.assert_allclose(x.mean(0), mu, atol=0.1)
    np.testing.assert_allclose(np.cov(x.T), cov, atol=0.2, rtol=0.1)
    # the ELBO is -KL here (log Z = 0): close to 0
    assert float(np.mean(r.stats["lp"] - r.stats["log_q"])) > -0.05


def test_vi_guide_flow_string_and_options():
    def model():
        numpyro.sample("x", dist.Normal(1.0, 0.5))

    r = inference.infer(model, method=inference.VI(guide="flow", steps=300,
                                                   guide_options={"layers": 1, "width": 4}),
                        num_samples=50, num_chains=2, progress=False)
    assert r.samples["x"].shape == (2, 50)
    assert "guide.u" not in r.samples
    with pytest.raises(ValueError, match="guide_options"):
        inference.VI(guide="flow", guide_options={"nonsense": 1})
    with pytest.raises(ValueError, match="unknown flow kind"):
        inference.VI(guide="flow", guide_options={"kind": "glow"}).make_guide(model)
