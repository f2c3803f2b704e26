"""Benchmark models: plain NumPyro models, so that both our ``infer`` and NumPyro's MCMC run them.

Each entry of :data:`MODELS` is a function returning ``(model, data)`` such that
``model(**data)`` conditions on the data.
"""

from __future__ import annotations

from typing import Any, Callable

import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist


def logistic_regression(X: jnp.ndarray, y: jnp.ndarray | None = None) -> None:
    """Bayesian logistic regression: ``beta ~ Normal(0, 1)`` (D), ``intercept ~ Normal(0, 5)``,
    ``y[n] ~ Bernoulli(sigmoid(intercept + X[n] @ beta))``."""
    D = X.shape[1]
    beta = numpyro.sample("beta", dist.Normal(0.0, 1.0).expand([D]).to_event(1))
    intercept = numpyro.sample("intercept", dist.Normal(0.0, 5.0))
    with numpyro.plate("rows", X.shape[0]):
        numpyro.sample("y", dist.Bernoulli(logits=intercept + X @ beta), obs=y)


def logistic_regression_data(N: int = 1000, D: int = 25, seed: int = 0) -> dict[str, Any]:
    """Synthetic data from a fixed seed: ``X`` standard normal, true coefficients drawn once
    (standard normal, no intercept), ``y ~ Bernoulli(sigmoid(X @ beta_true))``."""
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((N, D))
    beta_true = rng.standard_normal(D)
    p = 1.0 / (1.0 + np.exp(-(X @ beta_true)))
    y = (rng.random(N) < p).astype(np.float64)
    return {"X": jnp.asarray(X, dtype=float), "y": jnp.asarray(y, dtype=float)}


def _eight_schools_noncentered() -> tuple[Callable, dict[str, Any]]:
    from models.posteriordb import load

    return load("eight_schools_noncentered")


def _logistic_regression() -> tuple[Callable, dict[str, Any]]:
    return logistic_regression, logistic_regression_data()


#: Benchmark model name -> loader returning ``(model, data)``.
MODELS: dict[str, Callable[[], tuple[Callable, dict[str, Any]]]] = {
    "eight_schools_noncentered": _eight_schools_noncentered,
    "logistic_regression_N1000_D25": _logistic_regression,
}
