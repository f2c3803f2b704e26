"""Objectives that cannot be estimated as written fail at the boundary, naming the site."""

import jax
import jax.numpy as jnp
import numpyro
import numpyro.distributions as dist
import pytest

import ppl


def objective_over(program, *args):
    @ppl.expectation
    def obj(theta):
        values, log_q = ppl.sim(program, theta, *args)
        return log_q

    return obj


def test_reparam_on_a_bernoulli_names_the_site_and_what_fits():
    def q(p):
        numpyro.sample("coin", dist.Bernoulli(p), infer={"grad": "reparam"})

    with pytest.raises(ppl.StrategyError) as err:
        objective_over(q).grad_estimate(jax.random.key(0), 0.3)
    msg = str(err.value)
    assert "'coin'" in msg and "'reinforce'" in msg and "'enum'" in msg and "'mvd'" in msg


def test_enum_on_a_poisson_names_the_site_and_what_fits():
    def q(lam):
        numpyro.sample("count", dist.Poisson(lam))

    with pytest.raises(ppl.StrategyError) as err:
        objective_over(ppl.strategies(q, count="enum")).estimate(jax.random.key(0), 2.0)
    msg = str(err.value)
    assert "'count'" in msg and "'reinforce'" in msg and "'mvd'" in msg and "'enum'" not in msg


def test_mvd_without_a_decomposition_and_unknown_names():
    def q(a):
        numpyro.sample("g", dist.Gamma(a, 1.0), infer={"grad": "mvd"})

    with pytest.raises(ppl.StrategyError, match="'g'.*weak-derivative.*'reparam'"):
        objective_over(q).estimate(jax.random.key(0), 2.0)

    def r(a):
        numpyro.sample("g", dist.Gamma(a, 1.0), infer={"grad": "magic"})

    with pytest.raises(ppl.StrategyError, match="'g'.*unknown gradient strategy"):
        objective_over(r).estimate(jax.random.key(0), 2.0)

    def s(a):
        numpyro.sample("g", dist.Gamma(a, 1.0))

    with pytest.raises(ppl.StrategyError, match="no sample site named \\['h'\\]"):
        objective_over(ppl.strategies(s, h="enum")).estimate(jax.random.key(0), 2.0)
    with pytest.raises(ValueError, match="baseline"):
        ppl.Reinforce(baseline="median")


def test_relaxation_on_a_categorical_is_an_error():
    def q(theta):
        numpyro.sample("c", dist.Categorical(logits=theta), infer={"grad": ppl.StraightThrough()})

    with pytest.raises(ppl.StrategyError, match="'c'.*Bernoulli"):
        objective_over(q).estimate(jax.random.key(0), jnp.zeros(3))


def test_non_scalar_objective_is_an_error():
    def q(theta):
        numpyro.sample("z", dist.Normal(theta, 1.0))

    @ppl.expectation
    def vector(theta):
        return ppl.sim(q, theta)[0]["z"] * jnp.ones(3)

    with pytest.raises(ppl.ExpectationError, match="scalar.*\\(3,\\)"):
        vector.estimate(jax.random.key(0), jnp.zeros(()))
    with pytest.raises(ppl.ExpectationError, match="scalar"):
        vector.grad_estimate(jax.random.key(0), jnp.zeros(()))


def test_enum_under_vmap_is_refused():
    def q(p):
        numpyro.sample("b", dist.Bernoulli(p), infer={"grad": "enum"})

    @ppl.expectation
    def obj(p):
        return jnp.mean(jax.vmap(lambda _: ppl.sim(q, p)[0]["b"] * 1.0)(jnp.arange(3)))

    with pytest.raises(ppl.StrategyError, match="'b'.*vmap.*exponential"):
        obj.grad_estimate(jax.random.key(0), 0.3)


def test_choices_inside_scan_are_a_clear_error():
    def q(mu):
        numpyro.sample("z", dist.Normal(mu, 1.0))

    @ppl.expectation
    def obj(mu):
        def step(carry, _):
            return carry + ppl.sim(q, mu)[0]["z"], None

        return jax.lax.scan(step, 0.0, None, length=3)[0]

    with pytest.raises(ppl.ExpectationError, match="jax.lax.scan.*jax.vmap"):
        obj.grad_estimate(jax.random.key(0), 0.0)


def test_sampling_directly_in_an_objective_is_an_error():
    @ppl.expectation
    def obj(mu):
        return numpyro.sample("z", dist.Normal(mu, 1.0))

    with pytest.raises(ppl.ExpectationError, match="'z'.*ppl.sim"):
        obj.estimate(jax.random.key(0), 0.0)


def test_sim_outside_an_expectation_is_an_error():
    def q():
        numpyro.sample("z", dist.Normal(0.0, 1.0))

    with pytest.raises(ppl.ExpectationError, match="'z'.*@ppl.expectation"):
        ppl.sim(q)


def test_numpyro_control_flow_scan_is_a_clear_error():
    from numpyro.contrib.control_flow import scan

    def q(mu):
        def step(carry, _):
            return carry + numpyro.sample("z", dist.Normal(mu, 1.0)), None

        scan(step, 0.0, None, length=3)

    with pytest.raises(ppl.ExpectationError, match="control_flow"):
        objective_over(q).estimate(jax.random.key(0), 0.0)


def test_int_argument_stays_concrete_for_plate_sizes():
    # A plate size passed as a Python int must stay a concrete int inside the objective,
    # also when grad_estimate runs under jax.jit; its gradient is float0 (JAX's convention).
    import jax.numpy as jnp

    def q(theta, n):
        with numpyro.plate("n", n):
            numpyro.sample("z", dist.Normal(theta, 1.0))

    @ppl.expectation
    def objective(theta, n):
        values, _ = ppl.sim(q, theta, n)
        return jnp.sum(values["z"])

    # d/dtheta E[sum of n draws of N(theta, 1)] = n exactly, for every key (reparam).
    g_theta, g_n = objective.grad_estimate(jax.random.key(0), 0.5, 3)
    assert float(g_theta) == pytest.approx(3.0)
    assert g_n.dtype == jax.dtypes.float0
    jitted = jax.jit(lambda k, t: objective.grad_estimate(k, t, 4)[0])
    assert float(jitted(jax.random.key(1), 0.5)) == pytest.approx(4.0)
