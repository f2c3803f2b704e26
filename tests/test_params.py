"""Parameters: init_params / constrain_params / with_params / no_grad."""

import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
import pytest
from numpyro.distributions import constraints

import ppl


def guide(x):
    loc = numpyro.param("loc", 0.5)
    scale = numpyro.param("scale", 2.0, constraint=constraints.positive)
    w = numpyro.param("w", lambda key: jax.random.normal(key, (3,)))
    numpyro.sample("z", dist.Normal(loc + jnp.sum(w) * x, scale))


def model(x):
    z = numpyro.sample("z", dist.Normal(numpyro.param("prior_loc", 0.0), 1.0))
    numpyro.sample("x", dist.Normal(z, 1.0), obs=x)


def test_init_and_constrain_round_trip():
    params = ppl.init_params(guide, jax.random.key(0), 1.0)
    assert sorted(params) == ["loc", "scale", "w"]
    np.testing.assert_allclose(params["scale"], np.log(2.0), rtol=1e-6)  # stored unconstrained
    assert params["w"].shape == (3,)
    # The init function got a key from init_params: a different key, different values.
    other = ppl.init_params(guide, jax.random.key(1), 1.0)
    assert not np.allclose(params["w"], other["w"])
    constrained = ppl.constrain_params(guide, params, 1.0)
    np.testing.assert_allclose(constrained["scale"], 2.0, rtol=1e-6)
    np.testing.assert_allclose(constrained["loc"], 0.5)
    np.testing.assert_allclose(constrained["w"], params["w"])
    # Any unconstrained value maps to a positive scale.
    assert float(ppl.constrain_params(guide, dict(params, scale=-30.0), 1.0)["scale"]) > 0


def test_init_params_of_model_and_guide_together():
    params = ppl.init_params((model, guide), jax.random.key(0), 1.0)
    assert sorted(params) == ["loc", "prior_loc", "scale", "w"]


def test_with_params_substitutes_constrained_values():
    params = {"loc": jnp.array(0.5), "scale": jnp.log(3.0), "w": jnp.zeros(3)}

    @ppl.expectation
    def log_q(params):
        return ppl.density(ppl.with_params(guide, params), {"z": 0.0}, 1.0)

    expected = dist.Normal(0.5, 3.0).log_prob(0.0)
    np.testing.assert_allclose(log_q.estimate(jax.random.key(0), params), expected, rtol=1e-6)
    # The gradient is w.r.t. the unconstrained value: d/du log N(0; 0.5, e^u) at e^u = 3.
    (g,) = log_q.grad_estimate(jax.random.key(0), params)
    u = jnp.log(3.0)
    exact = jax.grad(lambda u: dist.Normal(0.5, jnp.exp(u)).log_prob(0.0))(u)
    np.testing.assert_allclose(g["scale"], exact, rtol=1e-5)


def test_missing_and_unknown_params_are_named():
    params = ppl.init_params((model, guide), jax.random.key(0), 1.0)
    obj = ppl.objectives.elbo(model, guide)
    assert np.isfinite(obj.estimate(jax.random.key(0), params, 1.0))

    missing = {k: v for k, v in params.items() if k != "scale"}
    with pytest.raises(ppl.ParamError, match="'scale'"):
        obj.estimate(jax.random.key(0), missing, 1.0)
    with pytest.raises(ppl.ParamError, match="bogus"):
        obj.estimate(jax.random.key(0), dict(params, bogus=1.0), 1.0)
    with pytest.raises(ppl.ParamError, match="'prior_loc'"):
        ppl.constrain_params(guide, params, 1.0)  # not a param site of the guide
    with pytest.raises(ppl.ParamError, match="'w'"):
        ppl.constrain_params(guide, {"loc": 0.0, "scale": 0.0}, 1.0)


def test_no_grad_stops_only_that_programs_gradient():
    params = ppl.init_params((model, guide), jax.random.key(0), 1.0)

    @ppl.expectation
    def obj(params, x):
        p, q = ppl.with_params((model, ppl.no_grad(guide)), params)
        z, log_q = ppl.sim(q, x)
        return ppl.density(p, z, x) - log_q

    (g, _) = obj.grad_estimate(jax.random.key(0), params, 1.0)
    for name in ("loc", "scale", "w"):
        np.testing.assert_array_equal(g[name], 0.0)
    assert float(jnp.abs(g["prior_loc"])) > 0
