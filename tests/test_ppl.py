"""The language layer: densities and potentials agree with hand-written formulas,
and bad models fail at the boundary with the site's name."""

import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
import pytest
from scipy import stats

import ppl
from ppl.tracing import ModelArgumentError


def regression(x, y=None):
    a = ppl.sample("a", dist.Normal(0.0, 2.0))
    s = ppl.sample("s", dist.HalfNormal(1.5))
    ppl.deterministic("a2", 2 * a)
    with ppl.plate("n", x.shape[0]):
        ppl.sample("y", dist.Normal(a * x, s), obs=y)


X = jnp.array([0.5, -1.0, 2.0])
Y = jnp.array([1.0, -0.5, 3.0])


def test_primitives_are_numpyro_functions():
    assert ppl.sample is numpyro.sample and ppl.plate is numpyro.plate
    assert ppl.param is numpyro.param and ppl.factor is numpyro.factor
    assert ppl.deterministic is numpyro.deterministic


def test_log_density_matches_scipy():
    a, s = 0.7, 0.9
    expected = (
        stats.norm(0, 2).logpdf(a)
        + stats.halfnorm(scale=1.5).logpdf(s)
        + stats.norm(a * np.asarray(X), s).logpdf(np.asarray(Y)).sum()
    )
    got = ppl.log_density(regression, {"a": a, "s": s}, X, y=Y)
    np.testing.assert_allclose(float(got), expected, rtol=1e-5)


def test_site_log_densities_sum_to_joint():
    values = {"a": 0.3, "s": 1.2}
    parts = ppl.site_log_densities(regression, values, X, y=Y)
    assert sorted(parts) == ["a", "s", "y"]
    np.testing.assert_allclose(
        float(sum(parts.values())), float(ppl.log_density(regression, values, X, y=Y)), rtol=1e-6
    )


def test_potential_adds_log_jacobian_and_maps_spaces():
    pot = ppl.potential(regression, X, y=Y)
    assert pot.sites == {"a": (), "s": ()}
    u = {"a": jnp.array(0.7), "s": jnp.array(-0.2)}
    values = pot.to_constrained(u)
    # s = exp(u_s) for a positive site, so log|ds/du| = u_s.
    np.testing.assert_allclose(float(values["s"]), np.exp(-0.2), rtol=1e-6)
    np.testing.assert_allclose(float(values["a2"]), 1.4, rtol=1e-6)
    expected = float(ppl.log_density(regression, {"a": 0.7, "s": np.exp(-0.2)}, X, y=Y)) - 0.2
    np.testing.assert_allclose(float(pot.logdensity_fn(u)), expected, rtol=1e-5)
    back = pot.to_unconstrained(values)
    np.testing.assert_allclose(float(back["s"]), -0.2, rtol=1e-5)
    flat = pot.ravel(u)
    assert flat.shape == (2,) and pot.dimension == 2
    np.testing.assert_allclose(float(pot.flat_logdensity_fn(flat)), float(pot.logdensity_fn(u)))
    assert jax.tree.map(float, pot.unravel(flat)) == jax.tree.map(float, u)


def test_init_position_is_uniform_in_radius():
    pot = ppl.potential(regression, X, y=Y)
    xs = jax.vmap(lambda k: pot.init_position(k, radius=1.5))(jax.random.split(jax.random.key(0), 500))
    assert float(jnp.max(jnp.abs(xs["a"]))) <= 1.5
    # Uniform(-1.5, 1.5) has sd 1.5/sqrt(3) = 0.866; 500 draws put the sample sd within ~0.05.
    assert abs(float(jnp.std(xs["s"])) - 0.866) < 0.1


def test_wrong_data_shape_names_site_and_shapes():
    with pytest.raises(ppl.ModelError, match=r"'y'.*\(2,\).*\(3,\)"):
        ppl.trace_model(regression, X, y=Y[:2])


def test_data_that_would_broadcast_up_is_an_error():
    # y of shape (3, 1) against a (3,) location would silently give a (3, 3) likelihood.
    with pytest.raises(ppl.ModelError, match=r"'y'.*\(3, 1\).*\(3,\)"):
        ppl.trace_model(regression, X, y=Y[:, None])


def test_missing_argument_names_it():
    with pytest.raises(ModelArgumentError, match="missing a required argument: 'x'"):
        ppl.trace_model(regression, y=Y)


def test_failure_inside_model_names_last_site():
    def broken(x):
        a = ppl.sample("a", dist.Normal(0.0, 1.0))
        ppl.sample("b", dist.Normal(jnp.ones(3) * a, jnp.ones(2)))

    with pytest.raises(ppl.ModelError, match="after site 'a'"):
        ppl.trace_model(broken, 1.0)


def test_potential_refuses_discrete_latent_site():
    def mixture():
        z = ppl.sample("z", dist.Bernoulli(0.5))
        ppl.sample("x", dist.Normal(z, 1.0), obs=0.3)

    with pytest.raises(ppl.ModelError, match="'z'"):
        ppl.potential(mixture)


def test_potential_ravel_unravel_round_trip_in_model_order():
    # Site names deliberately not in alphabetical order: "sigma" comes first in the model.
    def model():
        numpyro.sample("sigma", dist.HalfNormal(1.0))
        numpyro.sample("mu", dist.Normal(0.0, 1.0).expand([2]))

    pot = ppl.potential(model)
    x = {"sigma": jnp.array(2.0), "mu": jnp.array([0.5, 1.0])}
    flat = pot.ravel(x)
    assert flat.tolist() == [2.0, 0.5, 1.0]
    back = pot.unravel(flat)
    assert float(back["sigma"]) == 2.0 and back["mu"].tolist() == [0.5, 1.0]
    assert float(pot.flat_logdensity_fn(flat)) == float(pot.logdensity_fn(x))


def test_to_unconstrained_inverts_a_support_that_depends_on_another_site():
    # b ~ Uniform(0, 1 - a): inverted with the support at the trace's point (a = 0.5, so
    # (0, 0.5)), b = 0.8 was NaN (Learned fitted its flow to such draws); the model now runs
    # at the values, and the round trip through to_constrained is exact.
    def model():
        a = numpyro.sample("a", dist.Beta(1.0, 20.0))
        numpyro.sample("b", dist.Uniform(0.0, 1.0 - a))

    pot = ppl.potential(model)
    values = {"a": jnp.asarray(0.05), "b": jnp.asarray(0.8)}
    u = pot.to_unconstrained(values)
    assert all(np.isfinite(np.asarray(x)) for x in u.values())
    back = pot.to_constrained(u)
    for name in values:
        np.testing.assert_allclose(np.asarray(back[name]), np.asarray(values[name]), rtol=1e-5)
