"""Checks of the posteriordb models: loading, shapes, reference names, and log densities.

The density tests write each model's log density independently with numpy/scipy from the
plain-language description and compare it with NumPyro's ``log_density`` at a random
parameter value. They run in float64 (``jax.enable_x64`` context, data loaded inside it)
so that the comparison can be tight. The scipy side uses the full normalised densities
(a half-Cauchy is ``halfcauchy``, not Stan's ``cauchy`` on a positive parameter), and
Stan's improper flat priors contribute 0 on both sides (``ImproperUniform.log_prob`` is
exactly 0), so the two sides agree without any additive constant.
"""

import functools
import inspect
import json
import warnings
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import numpyro.distributions as dist
import pytest
from numpyro import handlers
from numpyro.infer import init_to_uniform
from numpyro.infer.util import log_density, potential_energy
from scipy import special, stats

from models import posteriordb

REFERENCE_DIR = Path(__file__).parent / "reference"
REFERENCE_FILES = sorted(REFERENCE_DIR.glob("*.ref.json"))
ALL_NAMES = posteriordb.names()

# Most checks below run the models inside jax.jit or jax.eval_shape: eager (op-by-op)
# evaluation compiles every primitive separately and would make this file slow.


@functools.cache
def _load_cached(name, x64):
    with jax.enable_x64(x64), warnings.catch_warnings():
        # (gp_pois_regr used to warn when loaded in float32; it no longer does)
        warnings.filterwarnings("ignore", message=".*needs float64", category=UserWarning)
        return posteriordb.load(name)


def load(name):
    """``posteriordb.load`` in the current precision, cached (diamonds takes 0.4 s to read)."""
    return _load_cached(name, bool(jnp.result_type(float) == jnp.float64))


def observed_argument(model):
    """By convention the observed data are the model's last argument, default None."""
    last = list(inspect.signature(model).parameters.values())[-1]
    assert last.default is None
    return last.name


def site_shapes(model, data):
    """Per sample/deterministic site: (type, is_observed, value shape, distribution shape).

    The model is traced abstractly with ``jax.eval_shape`` (nothing is compiled); latent
    values come from ``init_to_uniform``, which also covers the improper flat priors."""
    sites = {}

    def run(key):
        seeded = handlers.seed(model, key)
        model_trace = handlers.trace(
            handlers.substitute(seeded, substitute_fn=init_to_uniform(radius=0.5))
        ).get_trace(**data)
        for name, site in model_trace.items():
            if site["type"] == "sample":
                kind = "factor" if isinstance(site["fn"], dist.Unit) else "sample"
                fn_shape = site["fn"].shape()
                sites[name] = (kind, site["is_observed"], jnp.shape(site["value"]), fn_shape)
            elif site["type"] == "deterministic":
                sites[name] = ("deterministic", False, jnp.shape(site["value"]), None)

    jax.eval_shape(run, jax.random.PRNGKey(0))
    return sites


# ---------------------------------------------------------------------------
# names and loading
# ---------------------------------------------------------------------------


def test_names_lists_the_twelve_posteriors():
    assert len(ALL_NAMES) == 12
    assert ALL_NAMES == sorted(set(ALL_NAMES))
    assert set(ALL_NAMES) == set(posteriordb.REFERENCE_NAMES)
    assert "eight_schools-eight_schools_noncentered" in ALL_NAMES


@pytest.mark.parametrize("name", ALL_NAMES)
def test_load_by_full_name_and_by_model_name(name):
    model, data = load(name)
    model_part = name.split("-", 1)[1]
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*needs float64", category=UserWarning)
        model2, data2 = posteriordb.load(model_part)
    assert model is model2
    assert model.__name__ == model_part
    assert data.keys() == data2.keys()
    for key, value in data.items():
        np.testing.assert_array_equal(np.asarray(value), np.asarray(data2[key]))
        # sizes are Python ints; arrays have the default float dtype or an integer dtype
        if not isinstance(value, int):
            assert value.dtype in (jnp.result_type(float), jnp.result_type(int)), key
    # model(**data) gets every argument by keyword
    assert set(data) == set(inspect.signature(model).parameters)


def test_load_converts_integer_and_real_data():
    _, data = load("nes2000-nes")
    assert isinstance(data["N"], int) and data["N"] == 476
    assert jnp.issubdtype(data["age_discrete"].dtype, jnp.integer)
    assert jnp.issubdtype(data["partyid7"].dtype, jnp.floating)
    assert "year" not in data  # present in the file, not used by the model
    _, data = load("kidiq-kidscore_momiq")
    assert jnp.issubdtype(data["kid_score"].dtype, jnp.floating)
    assert data["kid_score"].shape == (434,)
    _, data = load("diamonds-diamonds")
    assert data["X"].shape == (5000, 25) and data["prior_only"] == 0


def test_unknown_name_raises_key_error_listing_names():
    with pytest.raises(KeyError, match="eight_schools-eight_schools_noncentered"):
        posteriordb.load("eight_school")


def test_gp_loads_without_warning_in_both_precisions():
    # float32 works now (scaled jitter); tests/test_posteriordb_float32.py checks its posterior
    for x64, dtype in ((False, jnp.float32), (True, jnp.float64)):
        with jax.enable_x64(x64), warnings.catch_warnings():
            warnings.simplefilter("error")
            _, data = posteriordb.load("gp_pois_regr")
            assert data["x"].dtype == dtype


# ---------------------------------------------------------------------------
# tracing and shapes
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("name", ALL_NAMES)
def test_model_traces_and_observed_shapes_match(name):
    model, data = load(name)
    sites = site_shapes(model, data)
    observed = {k: v for k, v in sites.items() if v[0] == "sample" and v[1]}
    for site_name, (_, _, value_shape, fn_shape) in observed.items():
        assert value_shape == fn_shape, site_name
    # one observed site, fed by the observed argument
    assert len(observed) == 1
    ((_, (_, _, value_shape, _)),) = observed.items()
    if name == "arK-arK":  # the first K values are conditioned on, not modelled
        assert value_shape == (data["T"] - data["K"],)
    else:
        assert value_shape == data[observed_argument(model)].shape
    # the only factor site is the mixture's prior on its ordered means
    factors = [k for k, v in sites.items() if v[0] == "factor"]
    assert factors == (["mu_prior"] if name.startswith("low_dim_gauss_mix") else [])


@pytest.mark.parametrize("name", ALL_NAMES)
def test_model_simulates_data_when_observed_argument_is_none(name):
    """With the observed argument None and the parameters given, the observed site is
    sampled with the same shape. Checked abstractly (jax.eval_shape); the simulated values
    of the time-series models, the only ones with their own simulation code, are checked
    in test_time_series_simulation_matches_conditioned_likelihood."""
    model, data = load(name)
    conditioned = site_shapes(model, data)
    (obs_site,) = [k for k, v in conditioned.items() if v[0] == "sample" and v[1]]
    params, _ = params_and_reference_lp(name, as_np(data), np.random.default_rng(0))
    no_data = {**data, observed_argument(model): None}

    def simulate(key, params):
        model_trace = handlers.trace(
            handlers.seed(handlers.substitute(model, data=params), key)
        ).get_trace(**no_data)
        assert not model_trace[obs_site]["is_observed"]
        return model_trace[obs_site]["value"]

    value = jax.eval_shape(simulate, jax.random.PRNGKey(1), to_jax(params))
    assert value.shape == conditioned[obs_site][2]
    expected_kind = jnp.integer if name == "gp_pois_regr-gp_pois_regr" else jnp.floating
    assert jnp.issubdtype(value.dtype, expected_kind)


@pytest.mark.parametrize("name", ["arK-arK", "arma-arma11", "garch-garch11"])
def test_time_series_simulation_matches_conditioned_likelihood(name):
    """The simulating branch (numpyro scan) and the conditioned branch (vectorised or
    lax.scan) implement the same recursion: the log-likelihood of a simulated series is
    the same whichever branch computes it."""
    with jax.enable_x64(True):
        model, data = load(name)
        params = to_jax(params_and_reference_lp(name, as_np(data), np.random.default_rng(1))[0])

        @jax.jit
        def both_logliks(key):
            simulated = handlers.trace(
                handlers.seed(handlers.substitute(model, data=params), key)
            ).get_trace(**{**data, "y": None})
            y_sim = simulated["y"]["value"]
            loglik_sim = jnp.sum(simulated["y"]["fn"].log_prob(y_sim))
            if name == "arK-arK":  # the simulation starts from K zeros
                y_sim = jnp.concatenate([jnp.zeros(data["K"]), y_sim])
            conditioned = handlers.trace(handlers.substitute(model, data=params)).get_trace(
                **{**data, "y": y_sim}
            )
            site = conditioned["y"]
            return loglik_sim, jnp.sum(site["fn"].log_prob(site["value"]))

        loglik_sim, loglik_obs = both_logliks(jax.random.PRNGKey(2))
    np.testing.assert_allclose(float(loglik_sim), float(loglik_obs), rtol=1e-10)


# ---------------------------------------------------------------------------
# reference names
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("name", ALL_NAMES)
def test_reference_names_resolve_to_one_scalar_per_draw(name):
    model, data = load(name)
    # draws as an MCMC run returns them: (chains, draws) + site shape, here (2, 3, ...)
    samples = {
        site_name: np.zeros((2, 3) + value_shape)
        for site_name, (kind, observed, value_shape, _) in site_shapes(model, data).items()
        if kind in ("sample", "deterministic") and not observed
    }
    names = posteriordb.REFERENCE_NAMES[name]
    assert len(names) == len(set(names))
    for param in names:
        assert posteriordb.reference_draws(samples, param).shape == (2, 3), param
    # a vector site has exactly as many reference names as elements: beta[1] .. beta[K]
    vector_names = {}
    for param in names:
        if "[" in param:
            site = param.split("[")[0]
            vector_names[site] = vector_names.get(site, 0) + 1
    for site, count in vector_names.items():
        assert samples[site].shape[2:] == (count,), site


@pytest.mark.parametrize("path", REFERENCE_FILES, ids=lambda p: p.name)
def test_reference_files_use_the_declared_names(path):
    ref = json.loads(path.read_text())
    assert ref["posterior"] in ALL_NAMES
    assert set(ref["params"]) == set(posteriordb.REFERENCE_NAMES[ref["posterior"]])
    for summary in ref["params"].values():
        assert summary["sd"] > 0
        assert summary["q05"] < summary["mean"] < summary["q95"]


def test_six_reference_files_are_present():
    assert len(REFERENCE_FILES) == 6


def test_reference_draws_indexing():
    samples = {
        "beta": np.arange(24.0).reshape(2, 3, 4),
        "sigma": np.ones((2, 3)),
        "L": np.arange(2 * 3 * 2 * 2).reshape(2, 3, 2, 2),
    }
    draws = posteriordb.reference_draws
    np.testing.assert_array_equal(draws(samples, "beta[1]"), samples["beta"][..., 0])
    np.testing.assert_array_equal(draws(samples, "beta[4]"), samples["beta"][..., 3])
    np.testing.assert_array_equal(draws(samples, "sigma"), samples["sigma"])
    np.testing.assert_array_equal(draws(samples, "L[2,1]"), samples["L"][..., 1, 0])
    # no leading batch dims at all: one draw
    assert draws({"beta": np.arange(4.0)}, "beta[3]") == 2.0
    with pytest.raises(ValueError, match="start at 1"):
        draws(samples, "beta[0]")
    with pytest.raises(KeyError):
        draws(samples, "gamma[1]")


# ---------------------------------------------------------------------------
# independent log densities (numpy / scipy)
# ---------------------------------------------------------------------------


def to_jax(params):
    return {k: jnp.asarray(v) for k, v in params.items()}


def jit_log_density(model, data):
    """NumPyro's joint log density of the conditioned model at constrained values."""
    return jax.jit(lambda params: log_density(model, (), data, params)[0])


def as_np(data):
    return {
        k: (v if isinstance(v, int) else np.asarray(v, dtype=np.float64)) for k, v in data.items()
    }


def halfcauchy_lp(x, scale):
    return stats.halfcauchy.logpdf(x, scale=scale)


def params_and_reference_lp(name, d, rng):
    """A random parameter value and the model's log density there, by numpy/scipy."""
    norm = stats.norm
    if name in ("eight_schools-eight_schools_noncentered", "eight_schools-eight_schools_centered"):
        mu, tau = rng.normal(4.0, 3.0), rng.uniform(0.5, 8.0)
        lp = norm.logpdf(mu, 0, 5) + halfcauchy_lp(tau, 5)
        if name.endswith("noncentered"):
            theta_trans = rng.normal(size=8)
            theta = mu + tau * theta_trans
            lp += norm.logpdf(theta_trans).sum()
            params = {"mu": mu, "tau": tau, "theta_trans": theta_trans}
        else:
            theta = rng.normal(mu, tau, size=8)
            lp += norm.logpdf(theta, mu, tau).sum()
            params = {"mu": mu, "tau": tau, "theta": theta}
        lp += norm.logpdf(d["y"], theta, d["sigma"]).sum()
        return params, lp
    if name == "kidiq-kidscore_momiq":
        beta = np.array([rng.normal(26.0, 6.0), rng.normal(0.6, 0.06)])
        sigma = rng.uniform(16.0, 21.0)
        lp = halfcauchy_lp(sigma, 2.5)  # beta: flat prior, log density 0
        lp += norm.logpdf(d["kid_score"], beta[0] + beta[1] * d["mom_iq"], sigma).sum()
        return {"beta": beta, "sigma": sigma}, lp
    if name == "sblrc-blr":
        beta = rng.normal(1.0, 0.01, size=5)
        sigma = rng.uniform(0.8, 1.5)
        lp = norm.logpdf(beta, 0, 10).sum() + stats.halfnorm.logpdf(sigma, scale=10)
        lp += sum(
            norm.logpdf(d["y"][n], sum(d["X"][n, j] * beta[j] for j in range(5)), sigma)
            for n in range(d["N"])
        )
        return {"beta": beta, "sigma": sigma}, lp
    if name == "mesquite-logmesquite":
        beta = rng.normal([5.3, 0.4, 1.1, 0.4, 0.4, 0.1, -0.6], 0.2)
        sigma = rng.uniform(0.3, 0.5)
        mean = beta[0] + beta[6] * d["group"]
        for j, column in enumerate(["diam1", "diam2", "canopy_height", "total_height", "density"]):
            mean = mean + beta[j + 1] * np.log(d[column])
        lp = norm.logpdf(np.log(d["weight"]), mean, sigma).sum()  # flat priors: 0
        return {"beta": beta, "sigma": sigma}, lp
    if name == "nes2000-nes":
        beta = rng.normal(0.0, 0.5, size=9)
        sigma = rng.uniform(1.5, 2.5)
        age = d["age_discrete"]
        design = np.column_stack(
            [
                np.ones(d["N"]),
                d["real_ideo"],
                d["race_adj"],
                age == 2,
                age == 3,
                age == 4,
                d["educ1"],
                d["gender"],
                d["income"],
            ]
        ).astype(np.float64)
        lp = norm.logpdf(d["partyid7"], design @ beta, sigma).sum()  # flat priors: 0
        return {"beta": beta, "sigma": sigma}, lp
    if name == "diamonds-diamonds":
        b = rng.normal(0.0, 0.3, size=24)
        intercept, sigma = rng.normal(7.8, 0.1), rng.uniform(0.5, 2.0)
        predictors = d["X"][:, 1:]
        Xc = predictors - predictors.mean(axis=0)
        lp = norm.logpdf(b, 0, 1).sum() + stats.t.logpdf(intercept, 3, 8, 10)
        lp += np.log(2.0) + stats.t.logpdf(sigma, 3, 0, 10)  # half Student-t
        lp += norm.logpdf(d["Y"], intercept + Xc @ b, sigma).sum()
        return {"b": b, "Intercept": intercept, "sigma": sigma}, lp
    if name == "low_dim_gauss_mix-low_dim_gauss_mix":
        mu = np.sort(rng.normal([-2.7, 2.9], 0.3))
        sigma, theta = rng.uniform(0.8, 1.3, size=2), rng.uniform(0.4, 0.8)
        # product of Normal(0, 2) densities on the ordered region mu[1] < mu[2]
        lp = norm.logpdf(mu, 0, 2).sum() + stats.halfnorm.logpdf(sigma, scale=2).sum()
        lp += stats.beta.logpdf(theta, 5, 5)
        lp += np.logaddexp(
            np.log(theta) + norm.logpdf(d["y"], mu[0], sigma[0]),
            np.log1p(-theta) + norm.logpdf(d["y"], mu[1], sigma[1]),
        ).sum()
        return {"mu": mu, "sigma": sigma, "theta": theta}, lp
    if name == "gp_pois_regr-gp_pois_regr":
        rho, alpha = rng.uniform(4.0, 7.0), rng.uniform(1.5, 4.0)
        f_tilde = rng.normal(size=11)
        x = d["x"]
        cov = np.array(
            [[alpha**2 * np.exp(-((xi - xj) ** 2) / (2 * rho**2)) for xj in x] for xi in x]
        ) + 1e-10 * np.eye(11)
        f = np.linalg.cholesky(cov) @ f_tilde
        lp = stats.gamma.logpdf(rho, 25, scale=1 / 4) + stats.halfnorm.logpdf(alpha, scale=2)
        lp += norm.logpdf(f_tilde).sum() + stats.poisson.logpmf(d["k"], np.exp(f)).sum()
        return {"rho": rho, "alpha": alpha, "f_tilde": f_tilde}, lp
    if name == "arK-arK":
        K, T, y = d["K"], d["T"], d["y"]
        alpha, beta = rng.normal(0.0, 0.02), rng.normal([0.7, 0.4, 0.1, 0.0, -0.3], 0.05)
        sigma = rng.uniform(0.13, 0.18)
        lp = norm.logpdf(alpha, 0, 10) + norm.logpdf(beta, 0, 10).sum() + halfcauchy_lp(sigma, 2.5)
        for t in range(K, T):  # 0-based t = K..T-1 is Stan's t = K+1..T
            mu_t = alpha + sum(beta[k - 1] * y[t - k] for k in range(1, K + 1))
            lp += norm.logpdf(y[t], mu_t, sigma)
        return {"alpha": alpha, "beta": beta, "sigma": sigma}, lp
    if name == "arma-arma11":
        y = d["y"]
        mu, phi, theta = rng.normal(0.0, 0.02), rng.uniform(0.9, 0.99), rng.uniform(-0.2, 0.2)
        sigma = rng.uniform(0.14, 0.2)
        lp = norm.logpdf(mu, 0, 10) + norm.logpdf(phi, 0, 2) + norm.logpdf(theta, 0, 2)
        lp += halfcauchy_lp(sigma, 2.5)
        err = np.zeros(d["T"])
        nu = mu + phi * mu
        err[0] = y[0] - nu
        for t in range(1, d["T"]):
            nu = mu + phi * y[t - 1] + theta * err[t - 1]
            err[t] = y[t] - nu
        lp += norm.logpdf(err, 0, sigma).sum()
        return {"mu": mu, "phi": phi, "theta": theta, "sigma": sigma}, lp
    if name == "garch-garch11":
        y = d["y"]
        mu, alpha0 = rng.normal(5.0, 0.1), rng.uniform(0.5, 2.5)
        alpha1 = rng.uniform(0.3, 0.7)
        beta1 = rng.uniform(0.0, 1.0 - alpha1)
        # mu, alpha0 flat (0); (alpha1, beta1) uniform on a triangle of area 1/2: log 2
        lp = np.log(2.0)
        s = float(d["sigma1"])
        for t in range(d["T"]):
            if t > 0:
                s = np.sqrt(alpha0 + alpha1 * (y[t - 1] - mu) ** 2 + beta1 * s**2)
            lp += norm.logpdf(y[t], mu, s)
        return {"mu": mu, "alpha0": alpha0, "alpha1": alpha1, "beta1": beta1}, lp
    raise AssertionError(f"no reference density for {name}")


@pytest.mark.parametrize("name", ALL_NAMES)
def test_log_density_matches_scipy(name):
    rng = np.random.default_rng(ALL_NAMES.index(name))
    with jax.enable_x64(True):
        model, data = load(name)
        model_log_density = jit_log_density(model, data)
        for _ in range(2):
            params, expected = params_and_reference_lp(name, as_np(data), rng)
            got = float(model_log_density(to_jax(params)))
            np.testing.assert_allclose(got, expected, rtol=1e-8)


def test_deterministic_sites_match_their_definitions():
    with jax.enable_x64(True):
        model, data = load("eight_schools-eight_schools_noncentered")
        params = {"mu": 1.0, "tau": 2.0, "theta_trans": jnp.arange(8.0)}
        model_trace = handlers.trace(handlers.substitute(model, data=params)).get_trace(**data)
        np.testing.assert_allclose(model_trace["theta"]["value"], 1.0 + 2.0 * np.arange(8.0))

        model, data = load("gp_pois_regr-gp_pois_regr")
        f_tilde = np.linspace(-1.0, 1.0, 11)
        params = {"rho": 5.0, "alpha": 2.0, "f_tilde": jnp.asarray(f_tilde)}
        f = jax.jit(
            lambda p: handlers.trace(handlers.substitute(model, data=p)).get_trace(**data)["f"][
                "value"
            ]
        )(params)
        x = np.asarray(data["x"])
        cov = 4.0 * np.exp(-(np.subtract.outer(x, x) ** 2) / 50.0) + 1e-10 * np.eye(11)
        np.testing.assert_allclose(f, np.linalg.cholesky(cov) @ f_tilde, rtol=1e-10)


# ---------------------------------------------------------------------------
# constrained supports: the unconstrained potential has the right Jacobian
# ---------------------------------------------------------------------------


def jit_potential(model, data):
    return jax.jit(lambda u: potential_energy(model, (), data, u))


def test_garch_potential_on_unconstrained_space():
    """beta1's upper bound 1 - alpha1 depends on alpha1 (a dynamic support). The potential
    must use alpha0 = exp(u0), alpha1 = sigmoid(u1), beta1 = (1 - alpha1) sigmoid(u2) with
    the log-Jacobian of that map."""
    rng = np.random.default_rng(3)
    with jax.enable_x64(True):
        model, data = load("garch-garch11")
        u = {"mu": 5.0, "alpha0": rng.normal(), "alpha1": rng.normal(), "beta1": rng.normal()}
        alpha0 = np.exp(u["alpha0"])
        alpha1 = special.expit(u["alpha1"])
        beta1 = (1.0 - alpha1) * special.expit(u["beta1"])
        constrained = {"mu": 5.0, "alpha0": alpha0, "alpha1": alpha1, "beta1": beta1}
        log_jacobian = (
            u["alpha0"]
            + np.log(alpha1 * (1.0 - alpha1))
            + np.log(1.0 - alpha1)
            + np.log(special.expit(u["beta1"]) * special.expit(-u["beta1"]))
        )
        expected = float(jit_log_density(model, data)(to_jax(constrained))) + log_jacobian
        got = -float(jit_potential(model, data)(to_jax(u)))
    np.testing.assert_allclose(got, expected, rtol=1e-10)


def test_mixture_means_are_ordered_on_unconstrained_space():
    """mu = (u0, u0 + exp(u1)) for every unconstrained value, with log-Jacobian u1."""
    with jax.enable_x64(True):
        model, data = load("low_dim_gauss_mix-low_dim_gauss_mix")
        u = {"mu": np.array([0.3, -0.5]), "sigma": np.zeros(2), "theta": 0.4}
        constrained = {
            "mu": np.array([0.3, 0.3 + np.exp(-0.5)]),
            "sigma": np.ones(2),
            "theta": special.expit(0.4),
        }
        # log-Jacobians: ordered mu: u1 = -0.5; sigma = exp(0): 0; theta: log sigmoid'(0.4)
        log_jacobian = -0.5 + np.log(special.expit(0.4) * special.expit(-0.4))
        expected = float(jit_log_density(model, data)(to_jax(constrained))) + log_jacobian
        got = -float(jit_potential(model, data)(to_jax(u)))
    np.testing.assert_allclose(got, expected, rtol=1e-10)
