"""ppl.auto_strategies: the unbiased strategy with the lowest variance x cost, per site.

The models are built so that the right choice wins by a wide margin (the margins are
derived next to each model), far beyond the pilot's noise and the timing noise of a shared
machine: an exact strategy has zero variance, so it wins at any finite cost.
"""

from __future__ import annotations

import logging
import re

import jax
import jax.numpy as jnp
import numpyro
import numpyro.distributions as dist
import pytest

import ppl

DTYPES = ["float32", "float64"]


def x64(dtype: str):
    return jax.enable_x64(dtype == "float64")


def coins_build(**strategies):
    # Three coins b_i ~ Bernoulli(sigmoid(theta)), f = (S - 1.2)^2 with S = sum b couples them.
    # At theta = 0 (p = 1/2, dp/dtheta = 1/4): REINFORCE's estimate f(S) (S - 3/2) has variance
    # 3.37 (over S ~ Binomial(3, 1/2)); MVD's, (1/4) sum_i (f(S_-i + 1) - f(S_-i)) = S - 1.05,
    # has variance Var S = 0.75; enumerating the 2^3 joint values is exact, variance 0.
    def guide(theta):
        numpyro.sample("b", dist.Bernoulli(jax.nn.sigmoid(theta)).expand([3]))

    @ppl.expectation
    def obj(params):
        values, _ = ppl.sim(ppl.strategies(guide, **strategies), params["theta"])
        return (jnp.sum(values["b"]).astype(params["theta"].dtype) - 1.2) ** 2

    return obj


def normal_build(**strategies):
    # x ~ N(mu, 1), f(x) = 5 (x + 0.1 x^2). Per estimate of d/dmu E f:
    #   reparam: f'(x) = 5 (1 + 0.2 x): variance 25 * 0.04 = 1;
    #   MVD: (f(mu + R) - f(mu - R)) / sqrt(2 pi) = 5 R (2 + 0.4 mu) / sqrt(2 pi), R ~ Rayleigh:
    #     variance 25 * 2.4^2 * (2 - pi/2) / (2 pi) = 9.8 at mu = 1, and it runs more branches;
    #   REINFORCE, leave-one-out: (f(x1) - f(x2)) (x1 - x2) / 2, variance about 25 * 2 = 50.
    # So reparam wins variance x cost by ~10x against the next one.
    def guide(mu):
        numpyro.sample("x", dist.Normal(mu, 1.0))

    @ppl.expectation
    def obj(params):
        values, _ = ppl.sim(ppl.strategies(guide, **strategies), params["mu"])
        x = values["x"]
        return 5.0 * (x + 0.1 * x ** 2)

    return obj


@pytest.mark.parametrize("dtype", DTYPES)
def test_picks_enumeration_for_a_small_support_site(dtype, capsys, caplog):
    with x64(dtype), caplog.at_level(logging.INFO, logger="ppl.auto_strategy"):
        choice = ppl.auto_strategies(coins_build, {"theta": jnp.asarray(0.0, dtype)},
                                     key=jax.random.key(0), num_estimates=64,
                                     candidates=["enum"])
        assert dict(choice) == {"b": ppl.Enum()}
        # what it chose is said, one line per site, printed and logged
        line = capsys.readouterr().out.strip()
        # Enumeration is exact: its variance is zero up to round-off (measured 3e-33 in
        # float64 at XLA level 0), against a squared gradient of 0.45^2 = 0.2.
        chosen = re.match(r"site 'b': enum instead of reinforce \(variance x cost (\S+) x ", line)
        assert chosen and float(chosen.group(1)) < 1e-12, line
        assert re.search(r"also measured: reinforce \d\.\d+ x ", line)  # variance 3.37 exactly
        assert [r.getMessage() for r in caplog.records] == [line] == choice.summary
        # the choice plugs back into the builder: the gradient is now exact
        # d/dtheta E[(S - 1.2)^2], S ~ Binomial(3, p): d/dp [3p(1-p) + (3p - 1.2)^2] = 1.8 at
        # p = 1/2, times dp/dtheta = 1/4
        (g,) = coins_build(**choice).grad_estimate(jax.random.key(1),
                                                   {"theta": jnp.asarray(0.0, dtype)})
        assert abs(float(g["theta"]) - 0.45) < 1e-5
    assert choice.report.dtype == dtype


@pytest.mark.parametrize("dtype", DTYPES)
def test_picks_reparameterisation_for_a_normal_site(dtype):
    with x64(dtype):
        choice = ppl.auto_strategies(normal_build, {"mu": jnp.asarray(1.0, dtype)},
                                     key=jax.random.key(0), num_estimates=256,
                                     candidates=["mvd"], verbose=False)
    assert dict(choice) == {"x": ppl.Reparam()}
    variances = {v.strategy.name: v.variance for v in choice.report.for_site("x")}
    # the derivation in normal_build: 1 and ~9.8 (256 estimates: within ~30%, about 3 SEs
    # of a sample variance of non-normal estimates)
    assert 0.7 < variances["reparam"] < 1.3 and 6 < variances["mvd"] < 14
    assert choice.summary[0].startswith("site 'x': reparam (kept; variance x cost ")


def test_a_biased_current_strategy_is_replaced():
    def build(**s):  # the guide's own strategy is straight-through (biased)
        return coins_build(**{"b": ppl.StraightThrough(), **s})

    choice = ppl.auto_strategies(build, {"theta": jnp.asarray(0.0)}, key=jax.random.key(0),
                                 num_estimates=16, candidates={"b": ["reinforce"]},
                                 verbose=False)
    assert dict(choice) == {"b": ppl.Reinforce()}  # the only unbiased one tried
    assert [r.strategy for r in choice.report.rows] == ["straight_through", "reinforce"]


@pytest.mark.slow
@pytest.mark.parametrize("dtype", DTYPES)
def test_mixed_guide_gets_enumeration_and_reparameterisation(dtype):
    # Both sites in one guide, every default candidate: the coins come first in program
    # order, so by the time the normal site is measured they are enumerated and add no noise.
    def guide(theta, mu):
        numpyro.sample("b", dist.Bernoulli(jax.nn.sigmoid(theta)).expand([3]))
        numpyro.sample("x", dist.Normal(mu, 1.0))

    def build(**s):
        @ppl.expectation
        def obj(params):
            values, _ = ppl.sim(ppl.strategies(guide, **s), params["theta"], params["mu"])
            b = jnp.sum(values["b"]).astype(params["mu"].dtype)
            x = values["x"]
            return (b - 1.2) ** 2 + 5.0 * (x + 0.1 * x ** 2)

        return obj

    with x64(dtype):
        params = {"theta": jnp.asarray(0.0, dtype), "mu": jnp.asarray(1.0, dtype)}
        choice = ppl.auto_strategies(build, params, key=jax.random.key(3), num_estimates=256,
                                     verbose=False)
    assert dict(choice) == {"b": ppl.Enum(), "x": ppl.Reparam()}
    tried = {site: [v.strategy for v in choice.report.for_site(site)] for site in choice}
    assert tried["b"] == [ppl.Reinforce(), ppl.Reinforce("mean"), ppl.Enum(), ppl.MVD()]
    assert tried["x"] == [ppl.Reparam(), ppl.Reinforce(), ppl.Reinforce("mean"), ppl.MVD()]
    variances = {str(v.strategy): v.variance for v in choice.report.for_site("x")}
    # normal_build's derivation (mu part) plus nothing from the enumerated coins: 1, ~9.8 and
    # about 50 for leave-one-out REINFORCE (256 estimates: within ~30%)
    assert 0.7 < variances["Reparam()"] < 1.3 and 6 < variances["MVD()"] < 14
    assert variances["Reinforce(baseline='mean', num_samples=2)"] > 25
    # x's variants were measured with b enumerated: the theta gradient is exact in all of them
    for v in choice.report.for_site("x"):
        assert dict(v.strategies)["b"] == ppl.Enum()
        (theta_row,) = [r for r in v.rows if r.group == "theta"]
        assert theta_row.variance < 1e-8


def test_an_objective_without_random_choices_has_nothing_to_choose():
    @ppl.expectation
    def square(params):
        return params["a"] ** 2

    choice = ppl.auto_strategies(lambda **s: square, {"a": jnp.asarray(1.5)},
                                 key=jax.random.key(0), num_estimates=4, verbose=False)
    assert dict(choice) == {} and choice.summary == [
        "the objective draws no random choices: no strategy to choose"]
    (row,) = choice.report.rows
    assert (row.strategy, row.mean, row.variance) == ("as given", 3.0, 0.0)
    ax = choice.report.plot()
    assert [t.get_text() for t in ax.texts] == ["as given (exact)"]
    import matplotlib.pyplot as plt

    plt.close(ax.figure)


def test_auto_needs_a_builder():
    with pytest.raises(TypeError, match=r"needs a function that builds the objective .* got "
                                        r"Expectation; pass e.g. `lambda \*\*s:"):
        ppl.auto_strategies(coins_build(), {"theta": 0.0}, key=jax.random.key(0))
