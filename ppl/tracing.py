"""Running a model once to see its sites, with errors that name the site at fault.

Everything that inspects a model (densities, potentials, ``infer``) starts here, so a
model with a missing argument or mis-shaped data fails once, at the boundary, with a
message that says which argument or site and which shapes.
"""

from __future__ import annotations

import inspect
from collections import OrderedDict
from typing import Any, Callable

import jax
import jax.numpy as jnp
from numpyro import handlers
from numpyro.distributions.transforms import biject_to
from numpyro.primitives import Messenger

from ppl.errors import ModelError


class ModelArgumentError(ModelError, TypeError):
    """The model was called with arguments that do not fit its signature."""


class _LastSite(Messenger):
    """Remember the name of the last site the model reached (for error messages)."""

    def __init__(self, fn=None):
        self.last = None
        super().__init__(fn)

    def process_message(self, msg):
        if msg.get("name") is not None and msg["type"] in ("sample", "param", "deterministic", "plate"):
            self.last = msg["name"]


def model_name(model: Callable) -> str:
    """A readable name for a model function, for error messages."""
    return getattr(model, "__name__", None) or type(model).__name__


def check_arguments(model: Callable, args: tuple, kwargs: dict) -> inspect.BoundArguments | None:
    """Bind ``args``/``kwargs`` to the model's signature; raise naming what is missing or extra."""
    try:
        sig = inspect.signature(model)
    except (TypeError, ValueError):  # builtins or callables without a signature
        return None
    try:
        return sig.bind(*args, **kwargs)
    except TypeError as err:
        raise ModelArgumentError(
            f"model {model_name(model)}{sig} cannot be called with "
            f"{len(args)} positional argument(s) and keyword argument(s) "
            f"{sorted(kwargs)}: {err}."
        ) from None


def omitted_data_arguments(model: Callable, args: tuple, kwargs: dict) -> set[str]:
    """Names of the model's parameters that were left at their default of ``None``."""
    bound = check_arguments(model, args, kwargs)
    if bound is None:
        return set()
    return {
        name
        for name, p in bound.signature.parameters.items()
        if name not in bound.arguments and p.default is None
    }


def _dist_shape(fn) -> tuple[int, ...]:
    return tuple(fn.batch_shape) + tuple(fn.event_shape)


def check_observed_shapes(trace: dict, model: Callable) -> None:
    """Every observed value must have its distribution's shape (or broadcast up to it).

    A value with *more* elements than the distribution (say ``y`` of shape ``(N, 1)``
    against a location of shape ``(N,)``) would silently broadcast the likelihood to
    ``(N, N)``; that is always a bug, so it is an error naming the site.
    """
    for name, site in trace.items():
        if site["type"] != "sample" or not site["is_observed"]:
            continue
        fn = site["fn"]
        shape = _dist_shape(fn)
        value_shape = tuple(jnp.shape(site["value"]))
        try:
            joint = jnp.broadcast_shapes(value_shape, shape)
        except ValueError:
            joint = None
        if joint != shape:
            raise ModelError(
                f"observed site '{name}' of model {model_name(model)}: data has shape "
                f"{value_shape} but its distribution {type(fn).__name__} has shape {shape} "
                f"(batch {tuple(fn.batch_shape)} + event {tuple(fn.event_shape)}). "
                f"Pass data of shape {shape}, or fix the shapes of the distribution's parameters."
            )


def _init_to_zero(site: dict) -> Any:
    """A continuous latent site's value at 0 on its unconstrained scale (a typical point:
    the median of Stan's initial box), or None (discrete sites: a prior draw).

    Deterministic, so what a trace finds never depends on a lucky draw (an ARMA recursion
    run from a coefficient near the edge of the initial box overflows), and it dispatches
    no random-number kernels.
    """
    if site["type"] != "sample" or site["is_observed"] or site["fn"].support.is_discrete:
        return None
    if site["value"] is not None:
        return site["value"]
    from numpyro.infer.util import helpful_support_errors

    with helpful_support_errors(site):
        transform = biject_to(site["fn"].support)
    shape = tuple(site["kwargs"].get("sample_shape") or ()) + tuple(
        transform.inverse_shape(site["fn"].shape()))
    return transform(jnp.zeros(shape, jnp.result_type(float)))


def trace_model(
    model: Callable,
    *args: Any,
    key: jax.Array | None = None,
    **kwargs: Any,
) -> OrderedDict:
    """Run ``model(*args, **kwargs)`` once under a seed and return its NumPyro trace.

    Continuous latent sites take the value 0 on their unconstrained scale (discrete ones a
    prior draw), so the trace is the same on every call.

    Errors raised while running the model are re-raised as :class:`ModelError` naming
    the last site reached, and observed data whose shape does not fit its distribution is
    an error naming the site and both shapes.

    Example:
        >>> import numpyro.distributions as dist, ppl
        >>> def model(y=None):
        ...     mu = ppl.sample("mu", dist.Normal(0.0, 1.0))
        ...     ppl.sample("y", dist.Normal(mu, 1.0), obs=y)
        >>> list(trace_model(model, y=1.0))
        ['mu', 'y']
    """
    check_arguments(model, args, kwargs)
    key = jax.random.key(0) if key is None else key
    tracker = _LastSite()
    try:
        # Latent values are the unconstrained zero point rather than prior draws, so models
        # with improper priors (ImproperUniform) trace too.
        with handlers.trace() as trace, handlers.substitute(substitute_fn=_init_to_zero), \
                handlers.seed(rng_seed=key), tracker:
            model(*args, **kwargs)
    except ModelError:
        raise
    except Exception as err:  # re-raised with the site context, original chained
        where = (
            f"after site '{tracker.last}'" if tracker.last is not None else "before its first site"
        )
        raise ModelError(
            f"model {model_name(model)} failed {where}: {type(err).__name__}: {err}"
        ) from err
    check_observed_shapes(trace, model)
    return trace


def latent_sites(trace: dict) -> OrderedDict:
    """The sample sites of a trace that are not observed, in model order."""
    return OrderedDict(
        (name, site)
        for name, site in trace.items()
        if site["type"] == "sample" and not site["is_observed"]
    )


def discrete_latent_sites(trace: dict) -> list[str]:
    """Names of latent sites whose distribution has a discrete support."""
    return [
        name for name, site in latent_sites(trace).items() if site["fn"].support.is_discrete
    ]
