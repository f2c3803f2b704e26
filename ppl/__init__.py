"""The language: NumPyro models, their densities, and objective programs.

Models are plain NumPyro functions. ``ppl`` re-exports NumPyro's primitives, so
``ppl.sample is numpyro.sample`` and an existing model runs unchanged.

Example:
    >>> import jax, ppl
    >>> import numpyro.distributions as dist
    >>> def model(y=None):
    ...     mu = ppl.sample("mu", dist.Normal(0.0, 1.0))
    ...     ppl.sample("y", dist.Normal(mu, 1.0), obs=y)
    >>> float(ppl.log_density(model, {"mu": 0.0}, y=0.0))  # doctest: +ELLIPSIS
    -1.837...
"""

from numpyro import deterministic, factor, param, plate, sample

from ppl.density import log_density, site_log_densities
from ppl.errors import ModelError
from ppl.expectation import Expectation, ExpectationError, density, expectation, sim
from ppl.marginal import Marginal, Normalize, marginal, normalize
from ppl.params import ParamError, constrain_params, init_params, no_grad, with_params
from ppl.strategy import (
    MVD,
    Enum,
    GumbelSoftmax,
    Reinforce,
    Reparam,
    StraightThrough,
    Strategy,
    StrategyError,
    strategies,
)
from ppl.potential import Potential, potential
from ppl.gradient_report import GradientReport, GradientRow, gradient_report
from ppl.auto_strategy import AutoStrategies, auto_strategies
from ppl.subsample import subsampled_plates, with_subsample_size
from ppl.tracing import latent_sites, trace_model
from ppl import objectives  # noqa: E402  (objective programs written with the above)

__all__ = [
    "sample",
    "param",
    "plate",
    "deterministic",
    "factor",
    "log_density",
    "site_log_densities",
    "potential",
    "Potential",
    "trace_model",
    "latent_sites",
    "subsampled_plates",
    "with_subsample_size",
    "ModelError",
    "expectation",
    "Expectation",
    "ExpectationError",
    "sim",
    "density",
    "strategies",
    "Strategy",
    "StrategyError",
    "Reparam",
    "Reinforce",
    "Enum",
    "MVD",
    "StraightThrough",
    "GumbelSoftmax",
    "gradient_report",
    "GradientReport",
    "GradientRow",
    "auto_strategies",
    "AutoStrategies",
    "marginal",
    "normalize",
    "Marginal",
    "Normalize",
    "init_params",
    "constrain_params",
    "with_params",
    "no_grad",
    "ParamError",
    "objectives",
]
