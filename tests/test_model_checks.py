"""Checks ``infer`` makes before running any method (issue 14, "Trust"): models that would
otherwise give a silently wrong posterior are refused with an error naming the site.

1. An observed site whose distribution is larger than its data (a covariate of shape
   ``(N, 1)`` widening ``Normal(a + b * x, s)`` inside ``plate(N)`` to ``(N, N)``).
2. ``numpyro.param`` sites under a method that would hold them at their initial values.
"""

from __future__ import annotations

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
from ppl.tracing import free_param_sites, trace_model


def regression(x, y=None):  # the README's model
    alpha = numpyro.sample("alpha", dist.Normal(0.0, 5.0))
    beta = numpyro.sample("beta", dist.Normal(0.0, 1.0))
    sigma = numpyro.sample("sigma", dist.HalfNormal(1.0))
    with numpyro.plate("data", x.shape[0]):
        numpyro.sample("y", dist.Normal(alpha + beta * x, sigma), obs=y)


X = jnp.linspace(-2.0, 2.0, 50)
Y = 1.0 + 0.5 * X + 0.3 * jnp.sin(7.0 * X)


# -- 1. distribution larger than its data ---------------------------------------------------

@pytest.mark.parametrize("method", [
    inference.NUTS(), inference.VI(steps=10), inference.MALA(), inference.SMC(num_particles=8),
], ids=lambda m: type(m).__name__)
def test_column_covariate_is_refused_naming_site_shapes_and_argument(method):
    # Before the check, NUTS returned beta ~ 0.0002 (truth ~ 0.5) with no error.
    with pytest.raises(ppl.ModelError) as err:
        inference.infer(regression, X[:, None], y=Y, method=method, num_samples=10,
                        num_warmup=10, num_chains=1, progress=False)
    message = str(err.value)
    assert "'y'" in message and "regression" in message
    assert "(50,)" in message and "(50, 50)" in message
    assert "x has shape (50, 1)" in message and "x.ravel()" in message


def test_correct_call_traces_with_the_plate_shape():
    assert trace_model(regression, X, y=Y)["y"]["fn"].shape() == (50,)


@pytest.mark.slow  # ~8 s: compiles NUTS
def test_correct_call_still_runs_and_recovers_the_slope():
    r = inference.infer(regression, X, y=Y, num_samples=300, num_warmup=300, num_chains=1,
                        key=0, progress=False)
    # With priors this wide the posterior mean of beta is the least-squares slope (the sin
    # term is deterministic, so it shifts that slope a little from 0.5). The posterior sd is
    # about resid_sd / sqrt(sum (x - xbar)^2) ~ 0.21 / sqrt(70) ~ 0.025; 300 NUTS draws put
    # the mean within ~0.003 of it. 0.03 is > 1 posterior sd, far below the 0.5 that the
    # broadcast bug lost.
    slope = float(np.polyfit(np.asarray(X), np.asarray(Y), 1)[0])
    assert abs(float(r.samples["beta"].mean()) - slope) < 0.03


def test_scalar_data_broadcast_over_a_plate_is_refused():
    def model(y):
        mu = numpyro.sample("mu", dist.Normal(0.0, 1.0))
        with numpyro.plate("data", 10):
            numpyro.sample("y", dist.Normal(mu, 1.0), obs=y)

    with pytest.raises(ppl.ModelError, match=r"'y'.*data has shape \(\).*\(10,\).*counted 10 times"):
        trace_model(model, jnp.float32(1.0))


def test_data_larger_than_its_distribution_is_still_refused():
    with pytest.raises(ppl.ModelError, match=r"'y'.*\(50, 1\).*\(50,\)"):
        trace_model(regression, X, y=Y[:, None])


def _obs_mask(y, mask):
    mu = numpyro.sample("mu", dist.Normal(0.0, 1.0))
    with numpyro.plate("data", y.shape[0]):
        numpyro.sample("y", dist.Normal(mu, 1.0), obs=y, obs_mask=mask)


def _factor():
    mu = numpyro.sample("mu", dist.Normal(0.0, 1.0))
    numpyro.factor("penalty", -(mu ** 2))
    numpyro.factor("vector_penalty", -jnp.ones(3) * mu ** 2)


def _scalar(y):
    mu = numpyro.sample("mu", dist.Normal(0.0, 1.0))
    numpyro.sample("y", dist.Normal(mu, 1.0), obs=y)


def _mvn_in_plate(y):
    mu = numpyro.sample("mu", dist.Normal(0.0, 1.0).expand([3]).to_event(1))
    with numpyro.plate("data", y.shape[0]):
        # validate_args=False: validating scale_tril compiles ~3 s of JAX ops, not the point here
        numpyro.sample("y", dist.MultivariateNormal(mu, scale_tril=jnp.eye(3), validate_args=False),
                       obs=y)


def _nested_plates(y):
    mu = numpyro.sample("mu", dist.Normal(0.0, 1.0))
    with numpyro.plate("cols", y.shape[1], dim=-1):
        tau = numpyro.sample("tau", dist.HalfNormal(1.0))
        with numpyro.plate("rows", y.shape[0], dim=-2):
            numpyro.sample("y", dist.Normal(mu, tau), obs=y)


def _column_model_without_plate(x, y):  # (N, 1) covariate with (N, 1) data: shapes agree
    beta = numpyro.sample("beta", dist.Normal(0.0, 1.0))
    numpyro.sample("y", dist.Normal(beta * x, 1.0), obs=y)


def _sample_shape(y):
    mu = numpyro.sample("mu", dist.Normal(0.0, 1.0))
    numpyro.sample("y", dist.Normal(mu, 1.0), obs=y, sample_shape=(4,))


def _subsampled(y):
    mu = numpyro.sample("mu", dist.Normal(0.0, 1.0))
    with numpyro.plate("data", y.shape[0], subsample_size=5) as idx:
        numpyro.sample("y", dist.Normal(mu, 1.0), obs=y[idx])


@pytest.mark.parametrize("model, args", [
    (_obs_mask, (jnp.zeros(6), jnp.array([True, False] * 3))),
    (_factor, ()),
    (_scalar, (jnp.float32(0.3),)),
    (_mvn_in_plate, (jnp.zeros((7, 3)),)),
    (_nested_plates, (jnp.zeros((5, 4)),)),
    (_column_model_without_plate, (jnp.ones((6, 1)), jnp.zeros((6, 1)))),
    (_sample_shape, (jnp.zeros(4),)),
    (_subsampled, (jnp.zeros(20),)),
], ids=lambda v: getattr(v, "__name__", ""))
def test_valid_observed_shapes_are_accepted(model, args):
    trace = trace_model(model, *args)
    assert any(site["type"] == "sample" for site in trace.values())


# -- 2. numpyro.param under a method that would not learn it -------------------------------

def _with_param(y=None):
    m = numpyro.param("m", 0.0)  # the prior mean: learned by empirical Bayes under VI
    mu = numpyro.sample("mu", dist.Normal(m, 1.0))
    with numpyro.plate("data", 20):
        numpyro.sample("y", dist.Normal(mu, 1.0), obs=y)


Y_PARAM = 2.0 + jax.random.normal(jax.random.key(1), (20,))


@pytest.mark.parametrize("method", [inference.NUTS(), inference.MALA()],
                         ids=lambda m: type(m).__name__)
def test_param_site_under_mcmc_is_refused_naming_it_and_the_fixes(method):
    with pytest.raises(ppl.ModelError) as err:
        inference.infer(_with_param, y=Y_PARAM, method=method, num_samples=10, num_warmup=10,
                        num_chains=1, progress=False)
    message = str(err.value)
    assert "['m']" in message and type(method).__name__ in message
    assert "numpyro.sample" in message and "inference.VI()" in message


def test_only_vi_declares_it_learns_params():
    assert inference.VI.learns_params and not inference.NUTS.learns_params
    assert not inference.MALA.learns_params and not inference.SMC.learns_params


def test_vi_fits_a_model_param():
    r = inference.infer(_with_param, y=Y_PARAM, num_samples=50, num_chains=1, key=0,
                        method=inference.VI(steps=1500, optimizer=optax.adam(0.05)),
                        progress=False)
    # The marginal likelihood p(y | m) is maximized at m = mean(y) and the Normal guide is
    # exact here, so the ELBO's optimum has m = mean(y). The reparameterized gradient in m
    # has sd ~ posterior sd of mu (1/sqrt(21) ~ 0.22); Adam at lr 0.05 jitters around the
    # optimum by a few lr, so 0.2 is generous yet far from the initial value's error (~2).
    assert abs(float(r.tuning["params"]["m"]) - float(Y_PARAM.mean())) < 0.2


def test_params_supplied_by_a_handler_are_not_free():
    assert free_param_sites(trace_model(_with_param, y=Y_PARAM)) == ["m"]
    fixed = handlers.substitute(_with_param, data={"m": 1.0})
    assert free_param_sites(trace_model(fixed, y=Y_PARAM)) == []
    fitted = ppl.with_params(_with_param, {"m": jnp.float32(1.5)})
    assert free_param_sites(trace_model(fitted, y=Y_PARAM)) == []


def test_a_data_dict_passed_as_one_argument_gets_a_hint_to_unpack_it():
    # posteriordb.load returns (model, data); infer(*posteriordb.load(name)) passes the dict
    # as the model's first argument, and the model fails somewhere inside: say what to do.
    import numpyro
    import numpyro.distributions as dist

    from ppl.errors import ModelError
    from ppl.tracing import trace_model

    def model(T, y=None):
        mu = numpyro.sample("mu", dist.Normal(0.0, 1.0))
        with numpyro.plate("t", int(T)):
            numpyro.sample("y", dist.Normal(mu, 1.0), obs=y)

    data = {"T": 3, "y": [0.1, 0.2, 0.3]}
    with pytest.raises(ModelError, match=r"is a dict whose keys \['T', 'y'\] are the model's "
                                         r"parameter names: pass it unpacked, as \*\*data"):
        trace_model(model, data)
    with pytest.raises(ModelError) as info:  # another failure: no such hint
        trace_model(model, "three")
    assert "unpacked" not in str(info.value)
