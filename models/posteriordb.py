"""Twelve posteriors from posteriordb as plain NumPyro models.

Each model is written from posteriordb's Stan program so that its log density equals
Stan's up to an additive constant (Stan drops normalising constants; a half-Cauchy
written as ``cauchy`` on a ``<lower=0>`` parameter differs by ``log 2``, and so on).
Improper flat priors of Stan (parameters without a prior statement) are
``dist.ImproperUniform`` sites, which add exactly zero to the log density.

Conventions:

* A model takes its data as keyword arguments named as in posteriordb's data file.
  Integer sizes (``N``, ``J``, ``K``, ...) are Python ints; the observed data come last
  and default to ``None``, so that the model can also simulate them (prior predictive
  when all priors are proper; posterior predictive with parameter values substituted,
  e.g. by ``numpyro.infer.Predictive(model, posterior_samples)``).
* Site names are Stan's parameter names. Vector parameters are single array sites:
  Stan's 1-based ``beta[2]`` is ``samples["beta"][..., 1]`` (see :func:`reference_draws`).
  Derived quantities that the reference draws contain (``theta`` in the non-centred
  eight schools, ``f`` in the Gaussian-process model) are ``numpyro.deterministic`` sites.
* Every model runs in float32 and float64. ``gp_pois_regr`` is Stan's model exactly in
  float64; in float32 its kernel jitter is scaled up (see its docstring).
* The data ship with the package (``models/data/<posterior>.json``) and are read with
  :mod:`importlib.resources`.

Example:

>>> import jax
>>> from numpyro.infer import MCMC, NUTS
>>> from models import posteriordb
>>> model, data = posteriordb.load("eight_schools_noncentered")
>>> mcmc = MCMC(NUTS(model), num_warmup=50, num_samples=50, progress_bar=False)
>>> mcmc.run(jax.random.PRNGKey(0), **data)
>>> posteriordb.reference_draws(mcmc.get_samples(), "theta[1]").shape
(50,)
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Mapping
from importlib import resources
from typing import Any

import jax
import jax.numpy as jnp
import numpyro
import numpyro.distributions as dist
from numpyro.contrib.control_flow import scan
from numpyro.distributions import constraints

__all__ = [
    "REFERENCE_NAMES",
    "arK",
    "arma11",
    "blr",
    "diamonds",
    "eight_schools_centered",
    "eight_schools_noncentered",
    "garch11",
    "gp_pois_regr",
    "kidscore_momiq",
    "load",
    "logmesquite",
    "low_dim_gauss_mix",
    "names",
    "nes",
    "reference_draws",
]


def _flat(event_shape: tuple[int, ...] = ()) -> dist.Distribution:
    """Stan's improper flat prior on the real line (log density 0)."""
    return dist.ImproperUniform(constraints.real, (), event_shape)


def _flat_positive() -> dist.Distribution:
    """Stan's improper flat prior on a ``<lower=0>`` scalar (log density 0)."""
    return dist.ImproperUniform(constraints.positive, (), ())


# ---------------------------------------------------------------------------
# eight schools
# ---------------------------------------------------------------------------


def eight_schools_noncentered(J: int, sigma: jax.Array, y: jax.Array | None = None) -> None:
    """Eight schools, non-centred: ``theta = mu + tau * theta_trans``.

    Priors ``mu ~ Normal(0, 5)``, ``tau ~ HalfCauchy(5)``, ``theta_trans[j] ~ Normal(0, 1)``;
    likelihood ``y[j] ~ Normal(theta[j], sigma[j])``. ``theta`` is a deterministic site.
    """
    mu = numpyro.sample("mu", dist.Normal(0.0, 5.0))
    tau = numpyro.sample("tau", dist.HalfCauchy(5.0))
    with numpyro.plate("schools", J):
        theta_trans = numpyro.sample("theta_trans", dist.Normal(0.0, 1.0))
        theta = numpyro.deterministic("theta", mu + tau * theta_trans)
        numpyro.sample("y", dist.Normal(theta, sigma), obs=y)


def eight_schools_centered(J: int, sigma: jax.Array, y: jax.Array | None = None) -> None:
    """Eight schools, centred: ``theta[j] ~ Normal(mu, tau)`` sampled directly (a funnel).

    Priors ``mu ~ Normal(0, 5)``, ``tau ~ HalfCauchy(5)``; likelihood
    ``y[j] ~ Normal(theta[j], sigma[j])``.
    """
    mu = numpyro.sample("mu", dist.Normal(0.0, 5.0))
    tau = numpyro.sample("tau", dist.HalfCauchy(5.0))
    with numpyro.plate("schools", J):
        theta = numpyro.sample("theta", dist.Normal(mu, tau))
        numpyro.sample("y", dist.Normal(theta, sigma), obs=y)


# ---------------------------------------------------------------------------
# linear regressions
# ---------------------------------------------------------------------------


def kidscore_momiq(N: int, mom_iq: jax.Array, kid_score: jax.Array | None = None) -> None:
    """Child's test score on mother's IQ (Gelman & Hill).

    ``beta`` (length 2) has an improper flat prior, ``sigma ~ HalfCauchy(2.5)``;
    ``kid_score[n] ~ Normal(beta[1] + beta[2] * mom_iq[n], sigma)``.
    """
    beta = numpyro.sample("beta", _flat((2,)))
    sigma = numpyro.sample("sigma", dist.HalfCauchy(2.5))
    with numpyro.plate("children", N):
        numpyro.sample("kid_score", dist.Normal(beta[0] + beta[1] * mom_iq, sigma), obs=kid_score)


def blr(N: int, D: int, X: jax.Array, y: jax.Array | None = None) -> None:
    """Bayesian linear regression without intercept (``sblrc`` data: correlated X).

    ``beta[d] ~ Normal(0, 10)``, ``sigma ~ HalfNormal(10)``; ``y ~ Normal(X @ beta, sigma)``.
    """
    beta = numpyro.sample("beta", dist.Normal(0.0, 10.0).expand([D]).to_event(1))
    sigma = numpyro.sample("sigma", dist.HalfNormal(10.0))
    with numpyro.plate("observations", N):
        numpyro.sample("y", dist.Normal(X @ beta, sigma), obs=y)


def logmesquite(
    N: int,
    diam1: jax.Array,
    diam2: jax.Array,
    canopy_height: jax.Array,
    total_height: jax.Array,
    density: jax.Array,
    group: jax.Array,
    weight: jax.Array | None = None,
) -> None:
    """Log-log regression of mesquite biomass on size measurements (Gelman & Hill).

    Flat improper priors on ``beta`` (length 7) and on ``sigma > 0``. The observed site is
    ``log_weight = log(weight)``; all predictors but ``group`` enter on the log scale.
    """
    beta = numpyro.sample("beta", _flat((7,)))
    sigma = numpyro.sample("sigma", _flat_positive())
    mean = (
        beta[0]
        + beta[1] * jnp.log(diam1)
        + beta[2] * jnp.log(diam2)
        + beta[3] * jnp.log(canopy_height)
        + beta[4] * jnp.log(total_height)
        + beta[5] * jnp.log(density)
        + beta[6] * group
    )
    log_weight = None if weight is None else jnp.log(weight)
    with numpyro.plate("bushes", N):
        numpyro.sample("log_weight", dist.Normal(mean, sigma), obs=log_weight)


def nes(
    N: int,
    real_ideo: jax.Array,
    race_adj: jax.Array,
    age_discrete: jax.Array,
    educ1: jax.Array,
    gender: jax.Array,
    income: jax.Array,
    partyid7: jax.Array | None = None,
) -> None:
    """Party identification (NES 2000) on ideology and demographics (Gelman & Hill).

    Flat improper priors on ``beta`` (length 9) and on ``sigma > 0``. Age category 1 is the
    baseline; categories 2, 3, 4 get dummy variables (coefficients ``beta[4..6]``).
    """
    beta = numpyro.sample("beta", _flat((9,)))
    sigma = numpyro.sample("sigma", _flat_positive())
    age30_44 = (age_discrete == 2).astype(real_ideo.dtype)
    age45_64 = (age_discrete == 3).astype(real_ideo.dtype)
    age65up = (age_discrete == 4).astype(real_ideo.dtype)
    mean = (
        beta[0]
        + beta[1] * real_ideo
        + beta[2] * race_adj
        + beta[3] * age30_44
        + beta[4] * age45_64
        + beta[5] * age65up
        + beta[6] * educ1
        + beta[7] * gender
        + beta[8] * income
    )
    with numpyro.plate("respondents", N):
        numpyro.sample("partyid7", dist.Normal(mean, sigma), obs=partyid7)


def diamonds(N: int, K: int, X: jax.Array, prior_only: int = 0, Y: jax.Array | None = None) -> None:
    """brms linear regression of diamond log price on 24 centred, correlated predictors.

    The intercept column ``X[:, 0]`` is dropped and the other columns are centred;
    ``Intercept`` is the intercept of the centred design.
    ``b[c] ~ Normal(0, 1)``, ``Intercept ~ StudentT(3, 8, 10)``,
    ``sigma ~ HalfStudentT(3, 10)``; ``Y ~ Normal(Intercept + Xc @ b, sigma)``, left out
    when ``prior_only`` is nonzero. Needs long trajectories (Stan used max_treedepth 20).
    """
    Kc = K - 1
    X_no_intercept = X[:, 1:]
    Xc = X_no_intercept - jnp.mean(X_no_intercept, axis=0)
    b = numpyro.sample("b", dist.Normal(0.0, 1.0).expand([Kc]).to_event(1))
    intercept = numpyro.sample("Intercept", dist.StudentT(3.0, 8.0, 10.0))
    sigma = numpyro.sample(
        "sigma", dist.TruncatedDistribution(dist.StudentT(3.0, 0.0, 10.0), low=0.0)
    )
    if not prior_only:
        with numpyro.plate("observations", N):
            numpyro.sample("Y", dist.Normal(intercept + Xc @ b, sigma), obs=Y)


# ---------------------------------------------------------------------------
# mixture
# ---------------------------------------------------------------------------


def low_dim_gauss_mix(N: int, y: jax.Array | None = None) -> None:
    """Two-component normal mixture with ordered means ``mu[1] < mu[2]``.

    ``mu`` lives on the ordered region with density ``Normal(mu[1]|0,2) Normal(mu[2]|0,2)``
    there (an ordered ``ImproperUniform`` plus a ``factor``); ``sigma[k] ~ HalfNormal(2)``;
    ``theta ~ Beta(5, 5)`` is the weight of component 1;
    ``y[n] ~ theta Normal(mu[1], sigma[1]) + (1 - theta) Normal(mu[2], sigma[2])``.
    Because of the improper site, ``mu`` must be given to simulate ``y``.
    """
    mu = numpyro.sample("mu", dist.ImproperUniform(constraints.ordered_vector, (), (2,)))
    numpyro.factor("mu_prior", jnp.sum(dist.Normal(0.0, 2.0).log_prob(mu)))
    sigma = numpyro.sample("sigma", dist.HalfNormal(2.0).expand([2]).to_event(1))
    theta = numpyro.sample("theta", dist.Beta(5.0, 5.0))
    weights = jnp.stack([theta, 1.0 - theta])
    mixture = dist.MixtureSameFamily(dist.Categorical(probs=weights), dist.Normal(mu, sigma))
    with numpyro.plate("observations", N):
        numpyro.sample("y", mixture, obs=y)


# ---------------------------------------------------------------------------
# Gaussian process
# ---------------------------------------------------------------------------


#: Relative jitter of the float32 kernel: ``cholesky(K + 1e-4 I)`` of the unit-scale kernel
#: ``K`` is accurate to about 1e-4 in float32 for every length-scale (the smallest
#: eigenvalues of ``K`` go down to 1e-17 for ``rho`` near 10, far below float32's 1e-7).
GP_FLOAT32_JITTER = 1e-4


def gp_pois_regr(N: int, x: jax.Array, k: jax.Array | None = None) -> None:
    """Poisson regression with a latent squared-exponential GP, non-centred via Cholesky.

    ``rho ~ Gamma(25, rate 4)``, ``alpha ~ HalfNormal(2)``, ``f_tilde[i] ~ Normal(0, 1)``;
    ``f = cholesky(C) @ f_tilde`` with
    ``C[i, j] = alpha^2 exp(-(x[i] - x[j])^2 / (2 rho^2)) + 1e-10 [i == j]`` (deterministic
    site ``f``); ``k[i] ~ Poisson(exp(f[i]))``.

    In float64 this is Stan's model exactly. In float32 the tiny jitter leaves ``C``
    numerically singular (its Cholesky factor is NaN once ``rho`` exceeds about 7.5), so
    the jitter is scaled to the kernel's magnitude, as Stan users do:
    ``f = alpha * cholesky(K + 1e-4 I) @ f_tilde`` with ``K`` the unit-scale kernel
    (:data:`GP_FLOAT32_JITTER`). This adds independent ``Normal(0, 1e-4 alpha^2)`` noise
    (sd about 0.03) to each ``f[i]``; measured against a long float64 run of the exact model
    the posterior means move by at most 0.04 posterior sds (see
    ``tests/test_posteriordb_float32.py``).

    ``alpha`` and ``f_tilde`` form a funnel (the data pin ``f``, so ``f_tilde`` narrows as
    ``alpha`` grows): in either precision NUTS at its default target acceptance 0.8
    diverges in up to ~2% of a chain's transitions, under-explores large ``alpha`` and now
    and then sticks there; ``NUTS(target_accept_prob=0.9)`` samples it cleanly.
    """
    rho = numpyro.sample("rho", dist.Gamma(25.0, 4.0))
    alpha = numpyro.sample("alpha", dist.HalfNormal(2.0))
    f_tilde = numpyro.sample("f_tilde", dist.Normal(0.0, 1.0).expand([N]).to_event(1))
    sq_dist = (x[:, None] - x[None, :]) ** 2
    kernel = jnp.exp(-sq_dist / (2.0 * rho**2))
    if jnp.result_type(rho) == jnp.float64:
        cov = alpha**2 * kernel + 1e-10 * jnp.eye(N)
        f = jnp.linalg.cholesky(cov) @ f_tilde
    else:
        f = alpha * (jnp.linalg.cholesky(kernel + GP_FLOAT32_JITTER * jnp.eye(N)) @ f_tilde)
    f = numpyro.deterministic("f", f)
    with numpyro.plate("points", N):
        numpyro.sample("k", dist.Poisson(jnp.exp(f)), obs=k)


# ---------------------------------------------------------------------------
# time series
# ---------------------------------------------------------------------------


def arK(K: int, T: int, y: jax.Array | None = None) -> None:  # noqa: N802 (posteriordb name)
    """AR(K) with intercept; the first K values are conditioned on, not modelled.

    ``alpha ~ Normal(0, 10)``, ``beta[k] ~ Normal(0, 10)`` (no stationarity constraint),
    ``sigma ~ HalfCauchy(2.5)``; for t = K+1..T,
    ``y[t] ~ Normal(alpha + sum_k beta[k] y[t-k], sigma)``. The observed site ``y`` holds
    the T - K modelled values. Without ``y`` the series is simulated from K zeros.
    """
    alpha = numpyro.sample("alpha", dist.Normal(0.0, 10.0))
    beta = numpyro.sample("beta", dist.Normal(0.0, 10.0).expand([K]).to_event(1))
    sigma = numpyro.sample("sigma", dist.HalfCauchy(2.5))
    if y is not None:
        # column k - 1 holds lag k, i.e. y[t - k] for t = K+1..T (1-based)
        lags = jnp.stack([y[K - k : T - k] for k in range(1, K + 1)], axis=-1)
        with numpyro.plate("time", T - K):
            numpyro.sample("y", dist.Normal(alpha + lags @ beta, sigma), obs=y[K:])
        return

    def step(recent, _):
        # recent[k - 1] = y[t - k]
        y_t = numpyro.sample("y", dist.Normal(alpha + recent @ beta, sigma))
        return jnp.concatenate([y_t[None], recent[:-1]]), None

    scan(step, jnp.zeros(K, dtype=jnp.result_type(alpha)), None, length=T - K)


def arma11(T: int, y: jax.Array | None = None) -> None:
    """ARMA(1, 1) with the innovation before the first observation set to zero.

    ``mu ~ Normal(0, 10)``, ``phi ~ Normal(0, 2)``, ``theta ~ Normal(0, 2)``,
    ``sigma ~ HalfCauchy(2.5)`` (no stationarity/invertibility constraint);
    ``nu[1] = mu + phi mu``, ``nu[t] = mu + phi y[t-1] + theta err[t-1]``,
    ``err[t] = y[t] - nu[t]`` and ``y[t] ~ Normal(nu[t], sigma)`` for t = 1..T.
    """
    mu = numpyro.sample("mu", dist.Normal(0.0, 10.0))
    phi = numpyro.sample("phi", dist.Normal(0.0, 2.0))
    theta = numpyro.sample("theta", dist.Normal(0.0, 2.0))
    sigma = numpyro.sample("sigma", dist.HalfCauchy(2.5))
    # before t = 1 the recursion sees y[0] = mu and err[0] = 0, which gives nu[1] = mu + phi mu
    start = (mu, jnp.zeros_like(mu))
    if y is not None:

        def one_step_mean(carry, y_t):
            y_prev, err_prev = carry
            nu_t = mu + phi * y_prev + theta * err_prev
            return (y_t, y_t - nu_t), nu_t

        _, nu = jax.lax.scan(one_step_mean, start, y)
        with numpyro.plate("time", T):
            numpyro.sample("y", dist.Normal(nu, sigma), obs=y)
        return

    def step(carry, _):
        y_prev, err_prev = carry
        nu_t = mu + phi * y_prev + theta * err_prev
        y_t = numpyro.sample("y", dist.Normal(nu_t, sigma))
        return (y_t, y_t - nu_t), None

    scan(step, start, None, length=T)


def garch11(T: int, sigma1: jax.Array, y: jax.Array | None = None) -> None:
    """GARCH(1, 1) with constant mean and known first volatility ``sigma1``.

    Stan has no prior statements: ``mu`` is flat on R, ``alpha0`` flat on (0, inf) and
    ``(alpha1, beta1)`` uniform on the triangle ``alpha1, beta1 > 0, alpha1 + beta1 < 1``,
    written as ``alpha1 ~ Beta(1, 2)``, ``beta1 | alpha1 ~ Uniform(0, 1 - alpha1)`` (the
    product is the constant 2 on the triangle; ``alpha1 ~ Uniform(0, 1)`` would add a factor
    ``1 / (1 - alpha1)``). ``s[1] = sigma1``,
    ``s[t] = sqrt(alpha0 + alpha1 (y[t-1] - mu)^2 + beta1 s[t-1]^2)``, ``y[t] ~ Normal(mu, s[t])``.
    """
    mu = numpyro.sample("mu", _flat())
    alpha0 = numpyro.sample("alpha0", _flat_positive())
    alpha1 = numpyro.sample("alpha1", dist.Beta(1.0, 2.0))
    beta1 = numpyro.sample("beta1", dist.Uniform(0.0, 1.0 - alpha1))

    def next_volatility(y_t, s_t):
        return jnp.sqrt(alpha0 + alpha1 * (y_t - mu) ** 2 + beta1 * s_t**2)

    s1 = jnp.asarray(sigma1, dtype=jnp.result_type(mu))
    if y is not None:

        def volatility_step(s_t, y_t):
            return next_volatility(y_t, s_t), s_t

        # scan over y[1..T-1] yields s[1..T-1]; the last carry is s[T]
        s_last, s_head = jax.lax.scan(volatility_step, s1, y[:-1])
        s = jnp.concatenate([s_head, s_last[None]])
        with numpyro.plate("time", T):
            numpyro.sample("y", dist.Normal(mu, s), obs=y)
        return

    def step(s_t, _):
        y_t = numpyro.sample("y", dist.Normal(mu, s_t))
        return next_volatility(y_t, s_t), None

    scan(step, s1, None, length=T)


# ---------------------------------------------------------------------------
# registry, data loading, reference names
# ---------------------------------------------------------------------------

# How each data field becomes a model argument: "int" stays a Python int (it sets shapes),
# "real" becomes a float jax array, "int_array" an integer jax array. Fields of the data
# file that the model does not use (e.g. kidiq's mom_hs) are not listed and not passed.
_POSTERIORS: dict[str, tuple[Callable[..., None], dict[str, str]]] = {
    "arK-arK": (arK, {"K": "int", "T": "int", "y": "real"}),
    "arma-arma11": (arma11, {"T": "int", "y": "real"}),
    "diamonds-diamonds": (
        diamonds,
        {"N": "int", "K": "int", "X": "real", "prior_only": "int", "Y": "real"},
    ),
    "eight_schools-eight_schools_centered": (
        eight_schools_centered,
        {"J": "int", "sigma": "real", "y": "real"},
    ),
    "eight_schools-eight_schools_noncentered": (
        eight_schools_noncentered,
        {"J": "int", "sigma": "real", "y": "real"},
    ),
    "garch-garch11": (garch11, {"T": "int", "sigma1": "real", "y": "real"}),
    "gp_pois_regr-gp_pois_regr": (gp_pois_regr, {"N": "int", "x": "real", "k": "int_array"}),
    "kidiq-kidscore_momiq": (
        kidscore_momiq,
        {"N": "int", "mom_iq": "real", "kid_score": "real"},
    ),
    "low_dim_gauss_mix-low_dim_gauss_mix": (low_dim_gauss_mix, {"N": "int", "y": "real"}),
    "mesquite-logmesquite": (
        logmesquite,
        {
            "N": "int",
            "diam1": "real",
            "diam2": "real",
            "canopy_height": "real",
            "total_height": "real",
            "density": "real",
            "group": "real",
            "weight": "real",
        },
    ),
    "nes2000-nes": (
        nes,
        {
            "N": "int",
            "real_ideo": "real",
            "race_adj": "real",
            "age_discrete": "int_array",
            "educ1": "real",
            "gender": "real",
            "income": "real",
            "partyid7": "real",
        },
    ),
    "sblrc-blr": (blr, {"N": "int", "D": "int", "X": "real", "y": "real"}),
}


def _indexed(name: str, size: int) -> tuple[str, ...]:
    return tuple(f"{name}[{i}]" for i in range(1, size + 1))


_EIGHT_SCHOOLS_NAMES = (*_indexed("theta", 8), "mu", "tau")

#: Scalar parameter names of each posterior's reference draws (Stan style, 1-based).
#: The centred eight schools shares the non-centred reference posterior.
REFERENCE_NAMES: dict[str, tuple[str, ...]] = {
    "arK-arK": ("alpha", *_indexed("beta", 5), "sigma"),
    "arma-arma11": ("mu", "phi", "theta", "sigma"),
    "diamonds-diamonds": (*_indexed("b", 24), "Intercept", "sigma"),
    "eight_schools-eight_schools_centered": _EIGHT_SCHOOLS_NAMES,
    "eight_schools-eight_schools_noncentered": _EIGHT_SCHOOLS_NAMES,
    "garch-garch11": ("mu", "alpha0", "alpha1", "beta1"),
    "gp_pois_regr-gp_pois_regr": ("rho", "alpha", *_indexed("f", 11)),
    "kidiq-kidscore_momiq": (*_indexed("beta", 2), "sigma"),
    "low_dim_gauss_mix-low_dim_gauss_mix": (*_indexed("mu", 2), *_indexed("sigma", 2), "theta"),
    "mesquite-logmesquite": (*_indexed("beta", 7), "sigma"),
    "nes2000-nes": (*_indexed("beta", 9), "sigma"),
    "sblrc-blr": (*_indexed("beta", 5), "sigma"),
}


def names() -> list[str]:
    """The full names (``"<data>-<model>"``) of the available posteriors, sorted.

    >>> from models import posteriordb
    >>> len(posteriordb.names()), posteriordb.names()[0]
    (12, 'arK-arK')
    """
    return sorted(_POSTERIORS)


def _full_name(name: str) -> str:
    if name in _POSTERIORS:
        return name
    matches = [full for full in _POSTERIORS if full.split("-", 1)[1] == name]
    if len(matches) != 1:
        raise KeyError(f"unknown posterior {name!r}; available: {', '.join(names())}")
    return matches[0]


def _convert(value: Any, kind: str) -> Any:
    if kind == "int":
        return int(value)
    if kind == "real":
        return jnp.asarray(value, dtype=float)
    if kind == "int_array":
        return jnp.asarray(value, dtype=int)
    raise ValueError(f"unknown data kind {kind!r}")


def load(name: str) -> tuple[Callable[..., None], dict[str, Any]]:
    """Return ``(model, data)`` for a posterior, such that ``model(**data)`` runs.

    ``name`` is the full posterior name (``"eight_schools-eight_schools_noncentered"``) or
    its model part (``"eight_schools_noncentered"``). Real data become float arrays of
    JAX's default float dtype (float64 only under ``numpyro.enable_x64()``), so load after
    choosing the precision. Unknown names raise ``KeyError`` listing the available ones.

    >>> import jax
    >>> from numpyro.infer.util import log_density
    >>> from models import posteriordb
    >>> model, data = posteriordb.load("kidscore_momiq")
    >>> sorted(data)
    ['N', 'kid_score', 'mom_iq']
    >>> params = {"beta": jax.numpy.array([26.0, 0.6]), "sigma": 18.0}
    >>> float(log_density(model, (), data, params)[0]) < 0.0
    True
    """
    full = _full_name(name)
    model, fields = _POSTERIORS[full]
    path = resources.files(__package__) / "data" / f"{full}.json"
    raw = json.loads(path.read_text())
    data = {field: _convert(raw[field], kind) for field, kind in fields.items()}
    return model, data


_INDEXED_NAME = re.compile(r"^(\w+)\[(\d+(?:,\d+)*)\]$")


def reference_draws(samples: Mapping[str, Any], param: str) -> Any:
    """Draws of one Stan-style scalar parameter, e.g. ``"beta[2]"`` -> ``samples["beta"][..., 1]``.

    Indices are 1-based as in Stan (``"L[2,1]"`` is ``samples["L"][..., 1, 0]``); a name
    without brackets is returned as is. Leading batch dimensions, such as
    ``(chains, draws)``, are kept.

    >>> import numpy as np
    >>> from models import posteriordb
    >>> samples = {"beta": np.zeros((4, 100, 5)), "sigma": np.ones((4, 100))}
    >>> posteriordb.reference_draws(samples, "beta[2]").shape
    (4, 100)
    >>> posteriordb.reference_draws(samples, "sigma").shape
    (4, 100)
    """
    match = _INDEXED_NAME.match(param)
    if match is None:
        return samples[param]
    site, indices = match.groups()
    zero_based = tuple(int(i) - 1 for i in indices.split(","))
    if min(zero_based) < 0:
        raise ValueError(f"{param!r}: Stan indices start at 1")
    return samples[site][(Ellipsis, *zero_based)]
