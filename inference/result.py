"""What ``inference.infer`` returns: draws, sampler statistics, and their ArviZ view."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

import jax
import numpy as np
from numpyro.infer import log_likelihood as numpyro_log_likelihood

from inference.arviz_data import _arviz, from_groups


@dataclass
class Result:
    """Posterior draws of every latent and deterministic site, with per-draw statistics.

    Attributes:
        samples: site name -> array of shape (chains, draws, *site_shape).
        stats: statistic name -> array of shape (chains, draws), under ArviZ's
            ``sample_stats`` names (``lp``, ``diverging``, ``acceptance_rate``, ``n_grad``...).
        method: the method object that produced the draws.
        observed: observed site name -> data.
        tuning: what warmup chose (e.g. step size and inverse mass matrix per chain).
        timing: seconds spent compiling and running.

    Example:
        >>> import numpyro.distributions as dist, ppl, inference
        >>> def model():
        ...     ppl.sample("x", dist.Normal(0.0, 1.0))
        >>> r = inference.infer(model, num_samples=100, num_warmup=100, num_chains=2,
        ...                     progress=False)
        >>> "x" in r.summary().index
        True
    """

    samples: dict[str, jax.Array]
    stats: dict[str, jax.Array]
    method: Any = None
    observed: dict[str, Any] = field(default_factory=dict)
    tuning: dict[str, Any] = field(default_factory=dict)
    timing: dict[str, float] = field(default_factory=dict)
    model: Callable | None = field(default=None, repr=False)
    model_args: tuple = field(default=(), repr=False)
    model_kwargs: dict = field(default_factory=dict, repr=False)

    @property
    def num_chains(self) -> int:
        return int(next(iter(self.samples.values())).shape[0])

    @property
    def num_draws(self) -> int:
        return int(next(iter(self.samples.values())).shape[1])

    def log_likelihood(self) -> dict[str, np.ndarray]:
        """Pointwise log likelihood of each observed site, shape (chains, draws, *data_shape)."""
        if self.model is None:
            raise ValueError("this Result has no model attached; cannot compute log likelihood.")
        values = numpyro_log_likelihood(
            self.model, self.samples, *self.model_args, batch_ndims=2, **self.model_kwargs
        )
        return {k: np.asarray(v) for k, v in values.items()}

    def to_arviz(self, log_likelihood: bool = False) -> Any:
        """The draws as the installed ArviZ's data (DataTree on ArviZ 1.x, else InferenceData).

        Groups: ``posterior``, ``sample_stats`` (ArviZ's names, plus ``n_grad``),
        ``observed_data``, and ``log_likelihood`` when asked (for ``loo``/``waic``).
        """
        groups = {
            "posterior": dict(self.samples),
            "sample_stats": dict(self.stats),
            "observed_data": dict(self.observed),
        }
        if log_likelihood:
            groups["log_likelihood"] = self.log_likelihood()
        return from_groups(groups)

    def summary(self, **kwargs: Any):
        """ArviZ's summary table (mean, sd, HDI, MCSE, ESS, R-hat) of the posterior draws."""
        return _arviz().summary(self.to_arviz(), **kwargs)
