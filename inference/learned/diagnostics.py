"""Diagnostics of importance weights: PSIS's Pareto ``k``, Kish's ESS, the log normaliser."""

from __future__ import annotations

import math
from typing import Any

import numpy as np

__all__ = ["pareto_khat", "importance_diagnostics"]


def _generalized_pareto_shape(x: np.ndarray) -> float:
    """Shape ``k`` of a generalized Pareto fit to exceedances ``x`` (sorted, ascending, > 0 at
    the top), by Zhang & Stephens' (2009) profile-likelihood empirical Bayes estimate, then
    the weakly informative prior of PSIS (Vehtari et al. 2024): ``k <- (n k + 5) / (n + 10)``.

    In the parameterisation ``1 + k x / sigma = 1 - b x``, the profile MLE of ``k`` at ``b`` is
    ``mean(log(1 - b x))`` and the profile log-likelihood is ``n (log(-b / k) - k - 1)``; the
    estimate of ``b`` is the posterior mean over a grid of ``30 + sqrt(n)`` values below
    ``1 / max(x)`` set from the first quartile.
    """
    n = x.size
    grid_size = 30 + int(math.sqrt(n))
    quartile = x[int(n / 4 + 0.5) - 1]
    j = np.arange(1, grid_size + 1, dtype=np.float64)
    b = 1.0 / x[-1] + (1.0 - np.sqrt(grid_size / (j - 0.5))) / (3.0 * quartile)
    k_of_b = np.mean(np.log1p(-b[:, None] * x[None, :]), axis=1)
    with np.errstate(divide="ignore", invalid="ignore"):
        profile = n * (np.log(-b / k_of_b) - k_of_b - 1.0)
    profile = np.where(np.isfinite(profile), profile, -np.inf)
    post = np.exp(profile - np.max(profile))
    post /= post.sum()
    b_hat = float(np.sum(post * b))
    k = float(np.mean(np.log1p(-b_hat * x)))
    return (n * k + 10 * 0.5) / (n + 10)


def pareto_khat(log_weights: Any) -> float:
    """PSIS's Pareto ``k`` of importance weights, from their logs (any shape; flattened).

    The largest ``M = ceil(min(n / 5, 3 sqrt(n)))`` weights, less the next largest, are fitted
    by a generalized Pareto distribution (see :func:`_generalized_pareto_shape`); weights tied
    with the next largest are left out of the fit, as in ArviZ's ``psislw``. ``k < 0.5``:
    the weights have a finite variance; ``k < 0.7``: importance sampling (and an independent
    Metropolis chain with this proposal) is reliable; above, the proposal's tails are too
    light for the target. ``-inf`` weights (target density 0) are allowed; NaN is an error.
    Returns ``inf`` when fewer than 5 weights are in the tail, ``-inf`` when the largest are all equal.

    Example:
        >>> import numpy as np
        >>> w = np.random.default_rng(0).pareto(2.0, 20000) + 1.0   # tail index 2: k = 1/2
        >>> round(pareto_khat(np.log(w)), 1)
        0.5
    """
    lw = np.asarray(log_weights, dtype=np.float64).ravel()
    if np.any(np.isnan(lw)):
        raise ValueError(f"pareto_khat: {int(np.isnan(lw).sum())} log weights are NaN.")
    if np.any(lw == np.inf):
        return math.inf
    n = lw.size
    tail = int(math.ceil(min(0.2 * n, 3.0 * math.sqrt(n))))
    if tail < 5 or n <= tail:
        return math.inf
    lw = np.sort(lw)
    top = lw[-1]
    if top == -np.inf:
        raise ValueError("pareto_khat: every weight is zero (log weight -inf).")
    # Relative to the largest weight, the threshold is at least the smallest normal float
    # (below it exp() underflows), and ties with it are not exceedances: a zero exceedance
    # in the fit's first quartile would make its grid infinite (k NaN).
    threshold = max(lw[-tail - 1] - top, math.log(np.finfo(np.float64).tiny))
    exceed = lw[-tail:] - top
    exceed = exceed[exceed > threshold]
    if exceed.size == 0:  # the top weights are all equal: bounded weights
        return -math.inf
    if exceed.size < 5:
        return math.inf
    return _generalized_pareto_shape(np.exp(exceed) - math.exp(threshold))


def importance_diagnostics(log_weights: Any) -> dict[str, float]:
    """Diagnostics of importance weights ``w = p / q`` of draws of ``q``, from their logs.

    Returns ``pareto_k`` (:func:`pareto_khat`), ``ess`` (Kish's effective sample size
    ``(sum w)^2 / sum w^2``), ``ess_fraction`` (``ess / n``) and ``log_z`` (the log of the
    mean weight: ``log`` of the normalising constant of ``p`` when ``q`` is normalised, e.g.
    the model's log marginal likelihood for ``p`` its unconstrained joint density).

    Example:
        >>> import numpy as np
        >>> d = importance_diagnostics(np.zeros(1000))   # equal weights
        >>> d["ess_fraction"], d["log_z"]
        (1.0, 0.0)
    """
    lw = np.asarray(log_weights, dtype=np.float64).ravel()
    n = lw.size
    top = np.max(lw)
    w = np.exp(lw - top)
    ess = float(w.sum() ** 2 / np.sum(w**2))
    return {"pareto_k": pareto_khat(lw), "ess": ess, "ess_fraction": ess / n,
            "log_z": float(top + np.log(w.mean()))}
