"""Guides: names, supports, params, and ``log q`` of ``ppl.sim`` against hand computations."""

import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
import pytest
from jax.scipy.stats import multivariate_normal, norm
from numpyro import handlers

import ppl
import inference
from inference.vi import guides
from inference.vi.guides import latent_site_info
from ppl.errors import ModelError
from ppl.tracing import dependent_supports


def model(y=None):
    mu = numpyro.sample("mu", dist.Normal(0.0, 1.0))
    s = numpyro.sample("s", dist.HalfNormal(1.0))  # positive: exp
    with numpyro.plate("two", 2):
        p = numpyro.sample("p", dist.Beta(2.0, 2.0))  # unit interval: sigmoid
    numpyro.sample("y", dist.Normal(mu + jnp.sum(p), s), obs=y)


def unconstrained(z):
    """The guides' coordinates by hand: identity, log, logit."""
    return jnp.concatenate([jnp.atleast_1d(z["mu"]), jnp.atleast_1d(jnp.log(z["s"])),
                            jnp.log(z["p"]) - jnp.log1p(-z["p"])])


def log_jacobian(z):
    """log |d constrained / d unconstrained| by hand: s = exp(u), p = sigmoid(u)."""
    return jnp.log(z["s"]) + jnp.sum(jnp.log(z["p"]) + jnp.log1p(-z["p"]))


NORMAL_PARAMS = {  # constrained values, given by hand
    "guide.mu.loc": 0.3, "guide.mu.scale": 0.7,
    "guide.s.loc": -0.2, "guide.s.scale": 0.4,
    "guide.p.loc": jnp.array([0.5, -1.0]), "guide.p.scale": jnp.array([0.3, 0.9]),
}


def test_normal_guide_params_and_sites():
    guide = guides.normal(model)
    params = ppl.init_params(guide, jax.random.key(0), y=1.0)
    assert sorted(params) == sorted(NORMAL_PARAMS)
    constrained = ppl.constrain_params(guide, params, y=1.0)
    # Stan-like init: locs uniform in [-2, 2], scales 0.1.
    assert bool(jnp.all(jnp.abs(constrained["guide.p.loc"]) <= 2.0))
    np.testing.assert_allclose(constrained["guide.p.scale"], [0.1, 0.1], rtol=1e-5)
    trace = handlers.trace(handlers.seed(ppl.with_params(guide, params), 1)).get_trace(y=1.0)
    samples = {n: s["value"] for n, s in trace.items() if s["type"] == "sample"}
    assert sorted(samples) == ["mu", "p", "s"]
    assert samples["p"].shape == (2,) and bool(jnp.all((samples["p"] > 0) & (samples["p"] < 1)))
    assert bool(samples["s"] > 0)


def test_normal_guide_log_q_matches_hand_computation():
    guide = guides.normal(model)
    params = {k: jnp.asarray(v, float) for k, v in NORMAL_PARAMS.items()}

    @ppl.expectation
    def log_q_error(params):
        q = handlers.substitute(guide, data=params)
        z, log_q = ppl.sim(q, y=1.0)
        u = unconstrained(z)
        loc = jnp.concatenate([jnp.atleast_1d(params[f"guide.{n}.loc"]) for n in ("mu", "s", "p")])
        scale = jnp.concatenate([jnp.atleast_1d(params[f"guide.{n}.scale"]) for n in ("mu", "s", "p")])
        by_hand = jnp.sum(norm.logpdf(u, loc, scale)) - log_jacobian(z)
        return log_q - by_hand

    errors = jax.vmap(log_q_error.estimate, (0, None))(jax.random.split(jax.random.key(0), 64), params)
    np.testing.assert_allclose(errors, 0.0, atol=2e-4)  # float32 round-off only


@pytest.mark.slow  # slow suite: the normal guide's exact log q stays in the default suite (issue 12: a 5-minute default suite)
def test_mvn_guide_log_q_is_the_joint_density():
    guide = guides.mvn(model)
    L = jnp.array([[0.8, 0.0, 0.0, 0.0],
                   [0.3, 0.5, 0.0, 0.0],
                   [-0.4, 0.2, 0.6, 0.0],
                   [0.1, -0.3, 0.5, 0.7]])
    loc = jnp.array([0.2, -0.5, 0.4, -1.0])
    params = {"guide.loc": loc, "guide.scale_tril": L}

    @ppl.expectation
    def log_q_error(params):
        z, log_q = ppl.sim(handlers.substitute(guide, data=params), y=1.0)
        by_hand = multivariate_normal.logpdf(unconstrained(z), loc, L @ L.T) - log_jacobian(z)
        return log_q - by_hand

    errors = jax.vmap(log_q_error.estimate, (0, None))(jax.random.split(jax.random.key(1), 64), params)
    np.testing.assert_allclose(errors, 0.0, atol=5e-4)  # float32 round-off only


@pytest.mark.slow  # slow suite (issue 12: a 5-minute default suite); siblings in this file cover the same code by default
def test_mvn_guide_draws_have_the_joint_covariance():
    """Site-by-site conditional draws must give u ~ MVN(loc, L L^T) jointly."""
    guide = guides.mvn(model)
    L = jnp.array([[1.0, 0.0, 0.0, 0.0],
                   [0.9, 0.4, 0.0, 0.0],
                   [-0.5, 0.3, 0.6, 0.0],
                   [0.2, -0.6, 0.4, 0.5]])
    loc = jnp.array([1.0, -0.5, 0.0, 0.3])
    q = handlers.substitute(guide, data={"guide.loc": loc, "guide.scale_tril": L})

    def draw(key):
        trace = handlers.trace(handlers.seed(q, key)).get_trace(y=1.0)
        return unconstrained({n: trace[n]["value"] for n in ("mu", "s", "p")})

    n = 20000
    u = jax.jit(jax.vmap(draw))(jax.random.split(jax.random.key(2), n))
    cov = L @ L.T
    sd = jnp.sqrt(jnp.diag(cov))
    # Standard errors: mean sd/sqrt(n); covariance entry sqrt((S_ii S_jj + S_ij^2) / n).
    np.testing.assert_array_less(jnp.abs(u.mean(0) - loc), 4 * sd / np.sqrt(n))
    se_cov = jnp.sqrt((jnp.outer(jnp.diag(cov), jnp.diag(cov)) + cov ** 2) / n)
    np.testing.assert_array_less(jnp.abs(jnp.cov(u.T) - cov), 4 * se_cov)


def test_guides_follow_argument_shapes():
    def regression(n, y=None):
        with numpyro.plate("units", n):
            numpyro.sample("b", dist.Normal(0.0, 1.0))

    # The guides read the model's sites from the arguments at every call.
    assert guides.latent_site_info(regression, 3)["b"].shape == (3,)
    assert guides.latent_site_info(regression, 5)["b"].shape == (5,)


def test_zeros_init():
    guide = guides.normal(model, init_loc="zeros", init_scale=0.5)
    c = ppl.constrain_params(guide, ppl.init_params(guide, jax.random.key(0), y=1.0), y=1.0)
    np.testing.assert_allclose(c["guide.p.loc"], 0.0)
    np.testing.assert_allclose(c["guide.s.scale"], 0.5, rtol=1e-5)


def test_discrete_site_is_an_error_naming_it():
    def mixture(y=None):
        z = numpyro.sample("z", dist.Bernoulli(0.3))
        numpyro.sample("y", dist.Normal(z, 1.0), obs=y)

    with pytest.raises(ppl.ModelError, match=r"'z' is discrete \(Bernoulli"):
        ppl.init_params(guides.normal(mixture), jax.random.key(0), y=0.0)


def test_local_latent_in_subsampled_plate_is_an_error():
    def local(y=None):
        with numpyro.plate("data", 10, subsample_size=3):
            numpyro.sample("z", dist.Normal(0.0, 1.0))

    with pytest.raises(ppl.ModelError, match=r"'z' is inside a subsampled plate"):
        ppl.init_params(guides.mvn(local), jax.random.key(0))


@pytest.mark.parametrize("family", [guides.normal, guides.mvn])
def test_bad_options(family):
    with pytest.raises(ValueError, match="init_loc"):
        family(model, init_loc="median")
    with pytest.raises(ValueError, match="init_scale"):
        family(model, init_scale=0.0)
    with pytest.raises(TypeError, match="callable"):
        family("model")


def test_a_support_that_depends_on_another_site_is_refused_by_name():
    # b ~ Uniform(0, 1 - a): the guides mapped b onto the support found at the trace's
    # point (a = 0.5: (0, 0.5)) for every draw of a. Before, VI on this model with y = 0.7
    # returned b = 0.493 (max 0.499) without a word; NUTS gives 0.700 (it runs the model
    # at each point, so the support follows a). posteriordb's garch11 has such a site.
    def model(y=None):
        a = numpyro.sample("a", dist.Beta(1.0, 20.0))
        b = numpyro.sample("b", dist.Uniform(0.0, 1.0 - a))
        with numpyro.plate("n", 5):
            numpyro.sample("y", dist.Normal(b, 0.05), obs=y)

    y = jnp.full(5, 0.7)
    assert list(dependent_supports(model, y=y)) == ["b"]
    for guide in ("normal", "mvn", "flow"):
        with pytest.raises(ModelError, match=r"support of latent site\(s\) \['b'\] depends on "
                                             r"other sites' values .*Reparameterise"):
            inference.infer(model, y=y, method=inference.VI(guide=guide, steps=10),
                            num_samples=10, num_chains=1, progress=False)

    def fixed(y=None):  # the same model with b's support fixed: accepted
        a = numpyro.sample("a", dist.Beta(1.0, 20.0))
        u = numpyro.sample("u", dist.Uniform(0.0, 1.0))
        numpyro.deterministic("b", (1.0 - a) * u)

    assert dependent_supports(fixed) == {}
    assert list(latent_site_info(fixed)) == ["a", "u"]
