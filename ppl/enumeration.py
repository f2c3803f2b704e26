"""Summing a model's enumerated discrete sites out of its density, exactly.

A NumPyro model marks a discrete latent site for enumeration with
``infer={"enumerate": "parallel"}`` (or is wrapped in ``numpyro.contrib.funsor.config_enumerate``).
Its log density over the continuous sites is then the log of the sum over every value of
those sites: NumPyro's own enumeration (``numpyro.contrib.funsor``, built on ``funsor``)
computes it, in parallel over plates and as the forward algorithm through
``numpyro.contrib.control_flow.scan``. This module decides whether a traced model needs it,
checks what it cannot do (unmarked or unbounded discrete sites, tensors too large) with
errors that name the site, and evaluates the enumerated density.

``funsor`` is imported only when a model has enumerated sites: models without them never
load it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable

import jax
import jax.numpy as jnp
from numpyro import handlers
from numpyro.primitives import Messenger

from ppl.distributions import base_distribution
from ppl.errors import ModelError
from ppl.tracing import latent_sites, model_name

#: Largest log-density tensor (bytes, per chain) an enumeration may build before
#: :func:`enumeration_of` refuses the model: a factor holds one entry per combination of
#: the values of the enumerated sites it depends on, times its plates' sizes.
MAX_ENUM_BYTES = 2**30

ANNOTATION = 'infer={"enumerate": "parallel"}'


def enumerated_sites(trace: dict) -> list[str]:
    """Names of the discrete latent sites of a trace marked for enumeration.

    Example:
        >>> import numpyro, numpyro.distributions as dist
        >>> from ppl.tracing import trace_model
        >>> def model():
        ...     numpyro.sample("z", dist.Bernoulli(0.5), infer={"enumerate": "parallel"})
        ...     numpyro.sample("k", dist.Bernoulli(0.5))
        >>> enumerated_sites(trace_model(model))
        ['z']
    """
    return [name for name, site in latent_sites(trace).items()
            if site["fn"].support.is_discrete
            and (site.get("infer") or {}).get("enumerate") is not None]


def unmarked_discrete_sites(trace: dict) -> list[str]:
    """Discrete latent sites with a finite support (enumerable) that are *not* marked for
    enumeration: a gradient method cannot move them, and adding the mark would sum them out.

    Example:
        >>> import numpyro, numpyro.distributions as dist
        >>> from ppl.tracing import trace_model
        >>> def model():
        ...     numpyro.sample("k", dist.Bernoulli(0.5))
        >>> unmarked_discrete_sites(trace_model(model))
        ['k']
    """
    marked = set(enumerated_sites(trace))
    return [name for name, site in latent_sites(trace).items()
            if site["fn"].support.is_discrete and name not in marked
            and site["fn"].has_enumerate_support]


def unmarked_error(model: Callable, trace: dict, names: list[str], what: str) -> ModelError:
    """The error for finite discrete sites left without the enumeration mark: it says how to
    add it (per site, or the one-line wrapper) and the alternative (Gibbs)."""
    details = ", ".join(f"'{n}' ({type(base_distribution(trace[n]['fn'])).__name__})"
                        for n in names)
    return ModelError(
        f"model {model_name(model)} has discrete latent site(s) {details} not marked for "
        f"enumeration, which {what} cannot sample: it moves by gradients. To sum them out "
        f"exactly (their draws come back after sampling), mark each with "
        f"numpyro.sample(..., {ANNOTATION}), or wrap the model in one line: "
        f"model = numpyro.contrib.funsor.config_enumerate(model). Otherwise: Marginalise "
        f"them out in the model by hand, or use a method that handles discrete sites "
        f"(inference.Gibbs)."
    )


class _FreshInfer(Messenger):
    """Give each sample site its own copy of its ``infer`` dict: NumPyro's enumeration
    writes into it (``dim_to_name``), so one dict shared by several sites or calls (a
    module-level ``ENUM = {"enumerate": "parallel"}``) would carry one site's dimensions
    into another's."""

    def process_message(self, msg):
        if msg["type"] == "sample" and msg.get("infer") is not None:
            msg["infer"] = dict(msg["infer"])


def fresh_infer(model: Callable) -> Callable:
    """``model`` with every sample site's ``infer`` dict copied before enumeration reads it.

    Example:
        >>> import numpyro, numpyro.distributions as dist
        >>> from numpyro import handlers
        >>> ENUM = {"enumerate": "parallel"}
        >>> def model():
        ...     numpyro.sample("z", dist.Bernoulli(0.5), infer=ENUM)
        >>> tr = handlers.trace(handlers.seed(fresh_infer(model), 0)).get_trace()
        >>> tr["z"]["infer"] is ENUM
        False
    """
    return _FreshInfer(model)


def _max_plate_nesting(trace: dict) -> int:
    """How many plate dimensions the model uses (NumPyro's own guess, from a trace)."""
    dims = [frame.dim for site in trace.values() if site["type"] == "sample"
            for frame in site.get("cond_indep_stack", ()) if frame.dim is not None]
    return -min(dims) if dims else 0


@dataclass(frozen=True)
class Enumeration:
    """How a model's enumerated sites are summed out.

    Attributes:
        sites: the enumerated site names, in model order.
        first_available_dim: the first tensor dimension (negative, from the right) left of
            every plate, where enumeration puts the sites' values (NumPyro's convention).
        largest_factor: (shape, bytes) of the largest log-density tensor enumeration builds.

    Example:
        >>> import jax.numpy as jnp, numpyro, numpyro.distributions as dist
        >>> from ppl.tracing import trace_model
        >>> def model(y):
        ...     p = numpyro.sample("p", dist.Beta(1.0, 1.0))
        ...     with numpyro.plate("data", 3):
        ...         z = numpyro.sample("z", dist.Bernoulli(p), infer={"enumerate": "parallel"})
        ...         numpyro.sample("y", dist.Normal(z, 1.0), obs=y)
        >>> y = jnp.zeros(3)
        >>> e = enumeration_of(model, (y,), {}, trace_model(model, y))
        >>> e.sites, e.first_available_dim
        (('z',), -2)
    """

    sites: tuple[str, ...]
    first_available_dim: int
    largest_factor: tuple[tuple[int, ...], int]

    def enumerated_model(self, model: Callable) -> Callable:
        """``model`` under NumPyro's ``enum`` handler (its sites' values on new dimensions)."""
        from numpyro.contrib.funsor import enum

        return enum(fresh_infer(model), first_available_dim=self.first_available_dim)

    def log_density(self, model: Callable, args: tuple, kwargs: dict,
                    position: dict[str, jax.Array]) -> jax.Array:
        """Log density at unconstrained continuous ``position`` (log-Jacobians included),
        the enumerated sites summed out: NumPyro's ``potential_energy(..., enum=True)``,
        negated."""
        from numpyro.infer import util as numpyro_util

        return -numpyro_util.potential_energy(
            self.enumerated_model(model), args, kwargs, position, enum=True)


def _factor_shapes(model: Callable, args: tuple, kwargs: dict, first_available_dim: int,
                   values: dict[str, Any]) -> list[tuple[str, tuple[int, ...], Any]]:
    """(site, log-density shape, dtype) of every sample site under enumeration, found by
    tracing abstractly (``jax.eval_shape``: nothing is computed)."""
    from numpyro.contrib.funsor import enum, trace as packed_trace
    from numpyro.contrib.funsor.infer_util import plate_to_enum_plate

    found: list[tuple[str, tuple[int, ...], Any]] = []

    def run(vals):
        fn = enum(handlers.substitute(handlers.seed(fresh_infer(model), 0), data=vals),
                  first_available_dim=first_available_dim)
        with plate_to_enum_plate():
            tr = packed_trace(fn).get_trace(*args, **kwargs)
        for name, site in tr.items():
            if site["type"] == "sample":
                lp = site["fn"].log_prob(site["value"])
                found.append((name, tuple(jnp.shape(lp)), jnp.result_type(lp)))
        return jnp.zeros(())

    jax.eval_shape(run, values)
    return found


def enumeration_of(model: Callable, args: tuple, kwargs: dict, trace: dict,
                   max_bytes: int = MAX_ENUM_BYTES) -> Enumeration | None:
    """How to sum out the enumerated sites of ``model(*args, **kwargs)`` (traced as
    ``trace``), or ``None`` when it has none (then ``funsor`` is never imported).

    Raises a :class:`ModelError` naming the site for a site marked other than
    ``"parallel"``, a marked site whose distribution cannot be enumerated (an unbounded
    support such as Poisson), and an enumeration whose largest log-density tensor would
    exceed ``max_bytes`` (its shape and size in the message).

    Example:
        >>> import numpyro, numpyro.distributions as dist
        >>> from ppl.tracing import trace_model
        >>> def model():
        ...     numpyro.sample("x", dist.Normal(0.0, 1.0))
        >>> enumeration_of(model, (), {}, trace_model(model)) is None
        True
    """
    names = enumerated_sites(trace)
    if not names:
        return None
    for name in names:
        site = trace[name]
        mark = site["infer"]["enumerate"]
        if mark != "parallel":
            raise ModelError(
                f"model {model_name(model)}: discrete site '{name}' is marked "
                f"infer={{'enumerate': {mark!r}}}; only 'parallel' enumeration is supported "
                f"(sequential steps go through numpyro.contrib.control_flow.scan). Mark it "
                f"{ANNOTATION}.")
        if not site["fn"].has_enumerate_support:
            raise ModelError(
                f"model {model_name(model)}: discrete site '{name}' "
                f"({type(site['fn']).__name__}) is marked for enumeration but its support is "
                "not finite, so it cannot be summed out. Marginalise it in the model (a "
                "truncated sum with jax.nn.logsumexp added by numpyro.factor), or sample it "
                "with inference.Gibbs.")
    first_available_dim = -_max_plate_nesting(trace) - 1
    continuous = {n: s["value"] for n, s in latent_sites(trace).items()
                  if not s["fn"].support.is_discrete}
    try:
        shapes = _factor_shapes(model, args, kwargs, first_available_dim, continuous)
    except ModelError:
        raise
    except Exception as err:
        raise ModelError(
            f"model {model_name(model)}: NumPyro's enumeration of its discrete site(s) "
            f"{names} failed: {type(err).__name__}: {err}. Each enumerated site's value must "
            "only be used to index or broadcast against other arrays (its values sit on new "
            "dimensions left of every plate), and every plate the model uses must be a "
            "numpyro.plate.") from err
    site, shape, dtype = max(shapes, key=lambda s: math.prod(s[1]))
    size = math.prod(shape) * jnp.dtype(dtype).itemsize
    if size > max_bytes:
        raise ModelError(
            f"model {model_name(model)}: enumerating discrete site(s) {names} builds a "
            f"log-density tensor of shape {shape} at site '{site}' ({size / 2**20:.1f} MiB "
            f"per chain), over the bound of {max_bytes / 2**20:.0f} MiB. Enumerate fewer "
            "sites at once (sites in separate plates, or sequential steps through "
            "numpyro.contrib.control_flow.scan, multiply less), or sample some with "
            "inference.Gibbs.")
    return Enumeration(tuple(names), first_available_dim, (shape, size))
