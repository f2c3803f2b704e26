"""ppl.gradient_report: the measured means and variances against closed forms.

Every statistical check compares a measured quantity with its exact value within 4 of its
own standard errors (computed exactly where the closed form allows it): under the CLT a
two-sided 4-sigma miss has probability 6e-5 per check, and the seeds are fixed, so the
checks are deterministic. Exact strategies (enumeration, MVD of a lone Bernoulli) must show
zero variance up to float rounding.
"""

from __future__ import annotations

import itertools
import math

import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
import pytest

import ppl

DTYPES = ["float32", "float64"]


def x64(dtype: str):
    return jax.enable_x64(dtype == "float64")


# ------------------------------------------------- d/dmu E_{N(mu, 1)}[x^2] = 2 mu, reparameterized


def second_moment():
    @ppl.expectation
    def obj(params):
        values, _ = ppl.sim(lambda: numpyro.sample("x", dist.Normal(params["mu"], 1.0)))
        return values["x"] ** 2

    return obj


@pytest.mark.parametrize("dtype", DTYPES)
def test_reparam_variance_of_the_gaussian_second_moment_is_four(dtype):
    # x = mu + e, e ~ N(0, 1): the pathwise estimate is d/dmu (mu + e)^2 = 2 (mu + e) = 2x, so
    # its mean is 2 mu and its variance 4 Var(e) = 4, exactly. The sample variance of n normal
    # estimates has standard error sqrt(2 sigma^4 / (n - 1)) = sqrt(32 / (n - 1)).
    n, mu = 4000, 0.7
    with x64(dtype):
        report = ppl.gradient_report(second_moment(), {"mu": jnp.asarray(mu, dtype)},
                                     key=jax.random.key(0), num_estimates=n)
        (row,) = report.rows
    assert report.dtype == dtype and report.fixed
    assert (row.site, row.strategy, row.current, row.unbiased, row.group, row.size) == \
        ("x", "reparam", True, True, "mu", 1)
    se_var = math.sqrt(32 / (n - 1))
    assert abs(row.variance - 4.0) < 4 * se_var, (row.variance, se_var)
    assert abs(row.variance_se - se_var) < 0.2 * se_var  # the report's own SE estimate
    assert abs(row.mean - 2 * mu) < 4 * math.sqrt(4 / n)
    assert abs(row.mean_se - math.sqrt(4 / n)) < 0.05 * math.sqrt(4 / n)
    assert abs(row.snr - row.mean / math.sqrt(row.variance)) < 1e-12
    assert row.cost > 0 and math.isfinite(row.cost)


# ------------------------------------------- d/dtheta E_{Bernoulli(sigmoid(theta))}[(z + 1)^2]


def f(z):
    return (z + 1.0) ** 2


def coin_build(**strategies):
    def guide(theta):
        numpyro.sample("z", dist.Bernoulli(jax.nn.sigmoid(theta)))

    @ppl.expectation
    def obj(params):
        values, _ = ppl.sim(ppl.strategies(guide, **strategies), params["theta"])
        return f(values["z"].astype(params["theta"].dtype))

    return obj


def moments(outcomes):
    """Exact mean, variance and standard error of the sample variance of ``n`` draws of an
    estimator with finitely many ``(probability, value)`` outcomes: the sample variance is
    about the mean of ``d = (g - mean)^2``, so its SE is ``sqrt(Var d / n)``."""
    p = np.array([o[0] for o in outcomes])
    g = np.array([o[1] for o in outcomes])
    mean = float(p @ g)
    var = float(p @ (g - mean) ** 2)
    var_d = float(p @ (g - mean) ** 4) - var ** 2
    return mean, var, var_d


def reinforce_outcomes(p):
    # score of z under Bernoulli(sigmoid(theta)): d/dtheta log p(z) = z - p
    return [(1 - p, f(0.0) * (0.0 - p)), (p, f(1.0) * (1.0 - p))]


def leave_one_out_outcomes(p):
    # two draws, each with the other's value as baseline, averaged:
    # g = ((f(z1) - f(z2)) s(z1) + (f(z2) - f(z1)) s(z2)) / 2
    out = []
    for z1, z2 in itertools.product([0.0, 1.0], repeat=2):
        prob = (p if z1 else 1 - p) * (p if z2 else 1 - p)
        s1, s2 = z1 - p, z2 - p
        out.append((prob, ((f(z1) - f(z2)) * s1 + (f(z2) - f(z1)) * s2) / 2))
    return out


def straight_through_outcomes(p):
    # the hard value z in the forward pass, dz/dtheta := dp/dtheta = p (1 - p) backwards:
    # g = f'(z) p (1 - p) = 2 (z + 1) p (1 - p); biased: E g = 2 (p + 1) p (1 - p), not 3 p (1 - p)
    return [(1 - p, 2 * 1.0 * p * (1 - p)), (p, 2 * 2.0 * p * (1 - p))]


def check_row(row, outcomes, n, exact_mean=None):
    mean, var, var_d = moments(outcomes)
    se_var, se_mean = math.sqrt(var_d / n), math.sqrt(var / n)
    assert abs(row.variance - var) < 4 * se_var, (row.strategy, row.variance, var, se_var)
    assert abs(row.mean - mean) < 4 * se_mean, (row.strategy, row.mean, mean, se_mean)
    if exact_mean is not None:  # an unbiased estimator: the closed form is the true gradient
        assert abs(mean - exact_mean) < 1e-12


@pytest.mark.parametrize("dtype", DTYPES)
def test_reinforce_variances_match_brute_force_enumeration(dtype):
    n, theta = 4000, 0.5
    p = 1 / (1 + math.exp(-theta))
    with x64(dtype):
        report = ppl.gradient_report(coin_build, {"theta": jnp.asarray(theta, dtype)},
                                     key=jax.random.key(1), num_estimates=n,
                                     candidates=[ppl.Reinforce(baseline="mean")])
    rows = {r.strategy: r for r in report.rows}
    assert list(rows) == ["reinforce", "reinforce(mean)"]
    assert rows["reinforce"].current and not rows["reinforce(mean)"].current
    true_grad = p * (1 - p) * (f(1.0) - f(0.0))
    check_row(rows["reinforce"], reinforce_outcomes(p), n, true_grad)
    check_row(rows["reinforce(mean)"], leave_one_out_outcomes(p), n, true_grad)
    # the leave-one-out baseline removes about half of the variance here (0.56 vs 1.08
    # exactly, both measured to within 0.01): f > 0 everywhere, so the plain score term is noisy
    assert rows["reinforce(mean)"].variance < 0.75 * rows["reinforce"].variance


@pytest.mark.slow
@pytest.mark.parametrize("dtype", DTYPES)
def test_every_bernoulli_strategy_against_brute_force(dtype):
    n, theta = 4000, 0.5
    p = 1 / (1 + math.exp(-theta))
    true_grad = p * (1 - p) * (f(1.0) - f(0.0))
    with x64(dtype):
        report = ppl.gradient_report(coin_build, {"theta": jnp.asarray(theta, dtype)},
                                     key=jax.random.key(2), num_estimates=n)
    rows = {r.strategy: r for r in report.rows}
    assert list(rows) == ["reinforce", "reinforce(mean)", "enum", "mvd", "straight_through",
                          "gumbel_softmax(1)"]
    check_row(rows["reinforce"], reinforce_outcomes(p), n, true_grad)
    check_row(rows["reinforce(mean)"], leave_one_out_outcomes(p), n, true_grad)
    tol = 1e-5 if dtype == "float32" else 1e-12  # rounding of the exact gradient
    for exact in ("enum", "mvd"):  # both exact for one coin: (f(1) - f(0)) dp/dtheta
        assert rows[exact].variance < tol ** 2 and abs(rows[exact].mean - true_grad) < tol
    check_row(rows["straight_through"], straight_through_outcomes(p), n)
    for biased in ("straight_through", "gumbel_softmax(1)"):
        assert not rows[biased].unbiased
        assert abs(rows[biased].mean - true_grad) > 4 * rows[biased].mean_se  # the bias shows
    assert all(r.unbiased for r in report.rows if r.strategy not in
               ("straight_through", "gumbel_softmax(1)"))


# ------------------------------------------------ a library objective: the ELBO of a mixture


def mixture_model(x):
    c = numpyro.sample("c", dist.Categorical(jnp.array([0.3, 0.7])))
    numpyro.sample("x", dist.Normal(jnp.array([-1.0, 1.0])[c], 1.0), obs=x)


def mixture_guide(x):
    numpyro.sample("c", dist.Categorical(logits=numpyro.param("logits", jnp.zeros(2))))


def exact_elbo(params, x):
    # sum_c q(c) (log p(x, c) - log q(c)), the ELBO by enumeration: its gradient is exact
    log_q = jax.nn.log_softmax(params["logits"])
    log_p = jnp.log(jnp.array([0.3, 0.7])) + dist.Normal(jnp.array([-1.0, 1.0]), 1.0).log_prob(x)
    return jnp.sum(jnp.exp(log_q) * (log_p - log_q))


def test_report_on_a_library_objective_matches_the_enumerated_gradient():
    n, x = 2000, jnp.asarray(0.3)
    params = {"logits": jnp.array([0.4, -0.2])}
    report = ppl.gradient_report(
        lambda **s: ppl.objectives.elbo(mixture_model, ppl.strategies(mixture_guide, **s)),
        params, x, key=jax.random.key(7), num_estimates=n, candidates=["enum"])
    exact = np.asarray(jax.jit(jax.grad(exact_elbo))(params, x)["logits"], np.float64)
    reinforce, enum = report.rows
    assert (reinforce.strategy, enum.strategy) == ("reinforce", "enum")
    # the enumerated estimate is the exact gradient (float32 rounding only)
    assert enum.variance < 1e-10 and abs(enum.mean - np.linalg.norm(exact)) < 1e-5
    # REINFORCE is unbiased: the norm of its mean within 4 standard errors of the exact norm
    # (mean_se bounds the error of the mean vector, and | |a| - |b| | <= |a - b|)
    assert abs(reinforce.mean - np.linalg.norm(exact)) < 4 * reinforce.mean_se
    assert reinforce.variance > 100 * enum.variance + 1e-3
    # The enumerated estimate uses no random numbers; its cost must still be that of computing
    # it once per estimate, not of a loop whose body XLA hoisted (that measured 8 ns against
    # ~1 us for REINFORCE's; computed each time, ~0.7 us). 0.05 sits 15x from both.
    assert enum.cost > 0.05 * reinforce.cost, (enum.cost, reinforce.cost)


@pytest.mark.slow
@pytest.mark.parametrize("dtype", DTYPES)
def test_report_variances_match_independent_brute_force_estimates(dtype):
    # A mixture ELBO with a continuous site beside the discrete one (no closed form for the
    # variances): each strategy's reported total variance against the sample variance of
    # n independent estimates drawn apart (jax.vmap over other keys), within 4 standard errors
    # of their difference (the two SEs added in quadrature).
    def model(x):
        c = numpyro.sample("c", dist.Categorical(jnp.array([0.3, 0.7])))
        z = numpyro.sample("z", dist.Normal(0.0, 1.0))
        numpyro.sample("x", dist.Normal(jnp.array([-2.0, 2.0])[c] + z, 1.0), obs=x)

    def guide(x):
        numpyro.sample("c", dist.Categorical(logits=numpyro.param("logits", jnp.zeros(2))))
        numpyro.sample("z", dist.Normal(numpyro.param("m", 0.0), 1.0))

    def build(**s):
        return ppl.objectives.elbo(model, ppl.strategies(guide, **s))

    n = 2000
    with x64(dtype):
        x = jnp.asarray(1.0, dtype)
        params = {"logits": jnp.array([0.3, -0.1], dtype), "m": jnp.asarray(0.2, dtype)}
        report = ppl.gradient_report(build, params, x, key=jax.random.key(8), num_estimates=n,
                                     candidates={"c": ["enum", "mvd"], "z": ["reinforce(mean)"]})
        keys = jax.random.split(jax.random.key(9), n)
        seen = set()
        for site, variants in report.per_site.items():
            for v in variants:
                if v.strategies in seen:  # the objective as given, under both sites
                    continue
                seen.add(v.strategies)
                obj = build(**dict(v.strategies))  # the objective this variant measured
                g = jax.jit(jax.vmap(lambda k, o=obj: o.grad_estimate(k, params, x)[0]))(keys)
                for row in v.rows:
                    flat = np.asarray(g[row.group], np.float64).reshape(n, -1)
                    d = np.sum((flat - flat.mean(0)) ** 2, axis=1)
                    var, se = d.sum() / (n - 1), d.std(ddof=1) / np.sqrt(n)
                    assert abs(row.variance - var) < 4 * np.hypot(row.variance_se, se), (
                        site, row.strategy, row.group, row.variance, var)


# ------------------------------------------------------------------- the report's structure


def test_biased_strategies_are_marked_in_rows_table_and_plot():
    report = ppl.gradient_report(coin_build, {"theta": jnp.asarray(0.3)}, key=jax.random.key(3),
                                 num_estimates=64, candidates=["straight_through"])
    (current, biased) = report.rows
    assert current.unbiased and not biased.unbiased
    table = str(report)
    line = next(l for l in table.splitlines() if l.startswith("z") and "straight_through" in l)
    assert line.endswith("BIASED") and "biased; its variance does not say" in table
    ax = report.plot()
    labels = [t.get_text() for t in ax.texts]
    assert labels == ["as given (z: reinforce)", "straight_through (biased)"]
    (as_given, st) = ax.collections
    assert as_given.get_facecolors().shape[0] == 1 and st.get_facecolors().shape[0] == 0  # hollow
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["site 'z'"]
    import matplotlib.pyplot as plt

    plt.close(ax.figure)


def vector_objective():
    @ppl.expectation
    def obj(params):
        loc = jnp.concatenate([params["a"]["u"], params["a"]["v"], params["b"][None]])
        values, _ = ppl.sim(lambda: numpyro.sample("x", dist.Normal(loc, 1.0).to_event(1)))
        return jnp.sum(values["x"] ** 2)

    return obj


@pytest.mark.parametrize("by", ["group", "leaf"])
def test_groups_report_the_norm_of_the_mean_and_the_trace_of_the_covariance(by):
    # d/dloc_i sum x^2 = 2 x_i: mean 2 loc, covariance 4 I, so a group of k coordinates has
    # total variance 4k (sample SE sqrt(2 * 16 k / n) for k independent normal coordinates).
    n = 2000
    params = {"a": {"u": jnp.array([0.5, -1.0]), "v": jnp.array([2.0])}, "b": jnp.asarray(1.5)}
    report = ppl.gradient_report(vector_objective(), params, key=jax.random.key(4),
                                 num_estimates=n, by=by)
    got = {r.group: r for r in report.rows}
    if by == "group":
        expected = {"a": np.array([0.5, -1.0, 2.0]), "b": np.array([1.5])}
    else:
        expected = {"['a']['u']": np.array([0.5, -1.0]), "['a']['v']": np.array([2.0]),
                    "['b']": np.array([1.5])}
    assert list(got) == list(expected)
    for name, loc in expected.items():
        row, k = got[name], loc.size
        assert row.size == k
        assert abs(row.variance - 4 * k) < 4 * math.sqrt(32 * k / n), (name, row.variance)
        mean = 2 * float(np.linalg.norm(loc)) if k > 1 else 2 * float(loc[0])
        assert abs(row.mean - mean) < 4 * math.sqrt(4 * k / n)


def test_to_dataframe_and_variance_x_cost():
    report = ppl.gradient_report(second_moment(), {"mu": 1.0}, key=jax.random.key(5),
                                 num_estimates=16)
    frame = report.to_dataframe()
    assert list(frame["strategy"]) == ["reparam"] and bool(frame["current"].iloc[0])
    row = report.rows[0]
    assert frame["variance_x_cost"].iloc[0] == pytest.approx(row.variance * row.cost)
    assert report.variance_x_cost("x") == {"reparam": pytest.approx(row.variance * row.cost)}
    assert "Only the current strategies were measured" in str(report)


def test_an_exact_gradient_is_plotted_at_the_bottom_and_said_exact():
    @ppl.expectation
    def linear(params):
        values, _ = ppl.sim(lambda: numpyro.sample("x", dist.Normal(params["mu"], 1.0)))
        return 3.0 * values["x"]  # reparameterized: d/dmu = 3 exactly, every time

    report = ppl.gradient_report(linear, {"mu": 0.5}, key=jax.random.key(6), num_estimates=8)
    (row,) = report.rows
    assert row.variance == 0.0 and row.mean == 3.0 and row.snr == math.inf
    ax = report.plot()
    assert [t.get_text() for t in ax.texts] == ["as given (x: reparam) (exact)"]
    import matplotlib.pyplot as plt

    plt.close(ax.figure)


def test_sites_inside_vmap_are_not_offered_enumeration():
    def guide():
        numpyro.sample("b", dist.Bernoulli(0.3))

    def build(**s):
        @ppl.expectation
        def obj(params):
            draws = jax.vmap(lambda _: ppl.sim(ppl.strategies(guide, **s))[0]["b"])(jnp.arange(2))
            return jnp.sum(draws * params["w"])

        return obj

    from ppl.estimator_lab import _Lab

    lab = _Lab(build, {"w": jnp.asarray(1.0)}, (), jax.random.key(0), 2, "group")
    current, fits = lab.sites["b"]
    assert current == ppl.Reinforce()
    assert ppl.Enum() not in fits and ppl.MVD() in fits


# ------------------------------------------------------------------------------- mistakes


def test_mistakes_name_the_argument_and_the_way_out():
    obj = second_moment()
    with pytest.raises(ValueError, match=r"num_estimates=1\): need an int >= 2"):
        ppl.gradient_report(obj, {"mu": 0.0}, key=jax.random.key(0), num_estimates=1)
    with pytest.raises(ValueError, match=r"by='site'\): use 'group'"):
        ppl.gradient_report(obj, {"mu": 0.0}, key=jax.random.key(0), by="site")
    with pytest.raises(TypeError, match=r"candidates=...\): got 'reparm'; give strategy names"):
        ppl.gradient_report(coin_build, {"theta": 0.0}, key=jax.random.key(0),
                            candidates=["reparm"])
    with pytest.raises(TypeError, match=r"objective\(\) \(called with no strategies\) must give "
                                        r"a ppl.Expectation .* got float"):
        ppl.gradient_report(lambda **s: 1.0, {"theta": 0.0}, key=jax.random.key(0))
    with pytest.raises(TypeError, match=r"calling the objective builder as objective\(z=enum\) "
                                        r"raised TypeError: .* It must take the sites' strategies "
                                        r"as keywords"):
        ppl.gradient_report(lambda: coin_build(), {"theta": jnp.asarray(0.0)},
                            key=jax.random.key(0), num_estimates=4, candidates=["enum"])
    with pytest.raises(ValueError, match=r"objective\(z=enum\) draws site 'z' with Reinforce\("
                                         r"baseline=None, num_samples=2\), not Enum\(\): the "
                                         r"builder must pass its keywords on"):
        ppl.gradient_report(lambda **s: coin_build(), {"theta": jnp.asarray(0.0)},
                            key=jax.random.key(0), num_estimates=4, candidates=["enum"])
    with pytest.raises(TypeError, match="key must be a JAX key"):
        ppl.gradient_report(obj, {"mu": 0.0}, key="seed")
    with pytest.raises(ValueError, match=r"names site\(s\) \['y'\] that the objective does not "
                                         r"draw; its random choices are \['z'\]"):
        ppl.gradient_report(coin_build, {"theta": jnp.asarray(0.0)}, key=jax.random.key(0),
                            num_estimates=4, candidates={"y": ["enum"]})
