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
import numpy as np
import numpyro
from numpyro import handlers
from numpyro.distributions import constraints
from numpyro.distributions.transforms import biject_to
from numpyro.primitives import Messenger

from ppl.distributions import base_distribution
from ppl.errors import ModelError


class ModelArgumentError(ModelError, TypeError):
    """The model was called with arguments that do not fit its signature."""


#: Key set on a traced param site whose value a handler around the model supplied
#: (``handlers.substitute``, ``ppl.with_params``): the user fixed it on purpose.
PARAM_GIVEN = "ppl_value_given"


class _LastSite(Messenger):
    """Remember the name of the last site the model reached (for error messages), and mark
    param sites whose value a handler inside the call already supplied."""

    def __init__(self, fn=None):
        self.last = None
        super().__init__(fn)

    def process_message(self, msg):
        if msg.get("name") is not None and msg["type"] in ("sample", "param", "deterministic", "plate"):
            self.last = msg["name"]
        if msg["type"] == "param" and msg.get("value") is not None:
            msg[PARAM_GIVEN] = True


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


def _parameter_shapes(fn) -> str:
    """``"loc (50, 1), scale ()"``: the shapes of a distribution's parameters, for messages."""
    base = base_distribution(fn)
    shapes = []
    for name in getattr(base, "arg_constraints", {}):
        value = getattr(base, name, None)
        if value is not None and hasattr(value, "shape"):
            shapes.append(f"{name} {tuple(value.shape)}")
    return f"{type(base).__name__}({', '.join(shapes)})" if shapes else type(base).__name__


def _argument_hint(value: Any, value_shape: tuple, bound: inspect.BoundArguments | None) -> str:
    """Which of the model's array arguments could have widened a site's distribution."""
    if bound is None:
        return ""
    suspects = []
    for name, arg in bound.arguments.items():
        shape = tuple(getattr(arg, "shape", ()))
        if arg is value or not shape or shape == value_shape:
            continue
        if 1 in shape and len(shape) > 1:  # a column or row vector: the usual culprit
            flat = f"{name}.ravel()" + (f" or {name}[:, 0]" if len(shape) == 2 and shape[1] == 1 else "")
            suspects.append(f"{name} has shape {shape} (did you mean {flat}?)")
        elif len(shape) > len(value_shape):
            suspects.append(f"{name} has shape {shape}")
    if not suspects:
        return ""
    return " Among the model's arguments, " + "; ".join(suspects[:3]) + "."


def check_observed_shapes(trace: dict, model: Callable, bound: inspect.BoundArguments | None = None) -> None:
    """Every observed value must have exactly its distribution's shape.

    Two mismatches broadcast silently in the log density, and both are errors naming the
    model, the site and both shapes:

    * a value with *more* elements than the distribution (``y`` of shape ``(N, 1)`` against
      a location of shape ``(N,)``) would broadcast the likelihood to ``(N, N)``;
    * a distribution with more elements than its value (a covariate ``x`` of shape
      ``(N, 1)`` makes ``Normal(a + b * x, s)`` inside ``plate("data", N)`` of shape
      ``(N, N)`` while ``y`` has shape ``(N,)``) would count every observation ``N`` times
      against every location: a silently wrong posterior.

    The shape compared is ``sample_shape + batch_shape + event_shape`` of the site's
    distribution after the plates expanded it, so data with the plate's shape, event dims
    (a ``MultivariateNormal`` observed with shape ``(N, D)`` inside ``plate(N)``) and
    ``numpyro.factor`` sites all fit. ``bound`` (the model's bound arguments) lets the
    message point at an argument whose shape widened the distribution.
    """
    for name, site in trace.items():
        if site["type"] != "sample" or not site["is_observed"]:
            continue
        fn = site["fn"]
        sample_shape = tuple(site["kwargs"].get("sample_shape") or ())
        shape = sample_shape + _dist_shape(fn)
        value_shape = tuple(jnp.shape(site["value"]))
        try:
            joint = jnp.broadcast_shapes(value_shape, shape)
        except ValueError:
            joint = None
        if joint == shape == value_shape:
            continue
        where = (f"observed site '{name}' of model {model_name(model)}: data has shape "
                 f"{value_shape} but its distribution {_parameter_shapes(fn)} has shape {shape}"
                 f" (batch {tuple(fn.batch_shape)} + event {tuple(fn.event_shape)}"
                 + (f", sample_shape {sample_shape}" if sample_shape else "") + ")")
        if joint == shape:  # the distribution is larger: the data would be broadcast up
            raise ModelError(
                f"{where}, larger than the data: each observation would be counted "
                f"{_ratio(shape, value_shape)} times, against every entry of the "
                "distribution's parameters, a silently wrong posterior. Check the shapes of "
                "the arguments that feed the distribution's parameters (inside a plate of size "
                "N they should have shape (N,) or be scalars, not (N, 1)), or pass data of "
                f"shape {shape} if it really has that many entries."
                + _argument_hint(site["value"], value_shape, bound)
            )
        raise ModelError(
            f"{where}: "
            + ("they do not broadcast together" if joint is None else
               f"the data would broadcast its likelihood up to {joint}, more entries than "
               "the distribution has")
            + f". Pass data of shape {shape}, or fix the shapes of the distribution's "
            "parameters." + _argument_hint(site["value"], value_shape, bound)
        )


def _ratio(big: tuple, small: tuple) -> int:
    n_big = int(np.prod(big)) if big else 1
    n_small = int(np.prod(small)) if small else 1
    return n_big // max(n_small, 1)


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
    bound = check_arguments(model, args, kwargs)
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
            + _data_dict_hint(model, args)
        ) from err
    check_observed_shapes(trace, model, bound)
    return trace


def _data_dict_hint(model: Callable, args: tuple) -> str:
    """A hint when a positional argument is a dict whose keys are all keyword parameters of
    the model: the data were passed as one argument (``infer(model, data)``, or
    ``infer(*posteriordb.load(name))``) instead of unpacked (``infer(model, **data)``)."""
    try:
        params = inspect.signature(model).parameters
    except (TypeError, ValueError):
        return ""
    for i, a in enumerate(args):
        if isinstance(a, dict) and a and all(isinstance(k, str) and k in params for k in a):
            return (f" (positional argument {i} is a dict whose keys {sorted(a)} are the "
                    "model's parameter names: pass it unpacked, as **data, e.g. "
                    "infer(model, **data))")
    return ""


def latent_sites(trace: dict) -> OrderedDict:
    """The sample sites of a trace that are not observed, in model order."""
    return OrderedDict(
        (name, site)
        for name, site in trace.items()
        if site["type"] == "sample" and not site["is_observed"]
    )


def free_param_sites(trace: dict) -> list[str]:
    """Names of the ``numpyro.param`` sites of a trace left at their initial values.

    A param site whose value a handler wrapped around the model supplied
    (``handlers.substitute(model, data=...)``, ``ppl.with_params``) is fixed on purpose
    and not listed.

    Example:
        >>> import numpyro, numpyro.distributions as dist
        >>> from numpyro import handlers
        >>> def model():
        ...     m = numpyro.param("m", 0.0)
        ...     numpyro.sample("z", dist.Normal(m, 1.0))
        >>> free_param_sites(trace_model(model))
        ['m']
        >>> free_param_sites(trace_model(handlers.substitute(model, data={"m": 1.0})))
        []
    """
    return [name for name, site in trace.items()
            if site["type"] == "param" and not site.get(PARAM_GIVEN, False)]


def discrete_latent_sites(trace: dict) -> list[str]:
    """Names of latent sites whose distribution has a discrete support."""
    return [
        name for name, site in latent_sites(trace).items() if site["fn"].support.is_discrete
    ]


def unsampleable_sites(trace: dict) -> dict[str, str]:
    """The latent sites of ``trace`` whose prior cannot be sampled, with why: an improper
    prior (NumPyro raises ``NotImplementedError``), or a sampler that needs a package that
    is not installed (NumPyro's ``icdf`` of a ``StudentT``, behind a truncated one, needs
    ``tensorflow_probability``). Methods that start from prior draws (SMC) or simulate from
    the prior (SBC) name these sites in their errors.

    Example:
        >>> import numpyro, numpyro.distributions as dist
        >>> def model():
        ...     numpyro.sample("flat", dist.ImproperUniform(dist.constraints.real, (), ()))
        ...     numpyro.sample("x", dist.Normal(0.0, 1.0))
        >>> list(unsampleable_sites(trace_model(model)))
        ['flat']
    """
    out = {}
    for name, site in latent_sites(trace).items():
        fn = site["fn"]
        try:
            jax.eval_shape(fn.sample, jax.random.key(0))
        except (NotImplementedError, ImportError) as err:
            reason = str(err) or ("an improper prior, with no sampler"
                                  if isinstance(err, NotImplementedError) else type(err).__name__)
            out[name] = f"{type(fn).__name__}: {reason}"
    return out


def _constraint_values(c: Any) -> list:
    """The numbers a constraint holds (bounds, ...), its nested constraints' included."""
    out = []
    for value in vars(c).values():
        if isinstance(value, constraints.Constraint):
            out.extend(_constraint_values(value))
        elif isinstance(value, (int, float, np.ndarray, jax.Array)) and not isinstance(value, bool):
            out.append(value)
    return out


def _trace_at(model: Callable, args: tuple, kwargs: dict, level: float) -> dict:
    """The model's trace with every continuous latent site at ``level`` on its unconstrained
    scale (discrete ones a fixed prior draw), blocked from enclosing handlers, without
    NumPyro's argument checks (a point far from the data may overflow the model)."""

    def at_level(msg: dict) -> Any:
        if msg["type"] != "sample" or msg["is_observed"]:
            return None
        fn, sample_shape = msg["fn"], msg["kwargs"].get("sample_shape", ())
        if fn.support.is_discrete:
            return fn.sample(jax.random.key(0), sample_shape)
        t = biject_to(fn.support)
        return t(jnp.full(t.inverse_shape(fn.shape(sample_shape)), level))

    with handlers.block(), numpyro.validation_enabled(False):
        with handlers.trace() as trace, handlers.seed(rng_seed=0), \
                handlers.substitute(substitute_fn=at_level):
            model(*args, **kwargs)
    return trace


def dependent_supports(model: Callable, *args: Any, **kwargs: Any) -> dict[str, str]:
    """The latent sites whose support depends on other sites' values (``beta ~
    Uniform(0, 1 - alpha)``), each with its support at two points.

    A guide or flow that maps an unconstrained space onto each site's support with one fixed
    transform cannot follow such a support: it would leave out part of it (a silently
    truncated posterior) or put mass where the density is 0. Those methods refuse such
    models by name; NUTS and the Langevin methods follow the support (NumPyro's
    ``constrain_fn`` runs the model at each point). The model runs twice, at two points
    of its unconstrained space; with traced (abstract) arguments, or a model that fails at
    those points, nothing is found.

    Example:
        >>> import numpyro, numpyro.distributions as dist
        >>> def model():
        ...     a = numpyro.sample("a", dist.Beta(1.0, 2.0))
        ...     numpyro.sample("b", dist.Uniform(0.0, 1.0 - a))
        >>> list(dependent_supports(model))
        ['b']
    """
    if any(isinstance(x, jax.core.Tracer) for x in jax.tree_util.tree_leaves((args, kwargs))):
        return {}
    try:
        first, second = (_trace_at(model, args, kwargs, level) for level in (0.0, 0.75))
    except Exception:  # a model that cannot run at those points: nothing found  # noqa: BLE001
        return {}
    out = {}
    for name, site in latent_sites(first).items():
        other = second.get(name)
        if other is None or site["fn"].support.is_discrete:
            continue
        a, b = site["fn"].support, other["fn"].support
        va, vb = _constraint_values(a), _constraint_values(b)
        try:
            same = type(a) is type(b) and len(va) == len(vb) and all(
                np.shape(x) == np.shape(y) and np.allclose(np.asarray(x), np.asarray(y))
                for x, y in zip(va, vb))
        except Exception:  # abstract values (a model that closes over traced data)  # noqa: BLE001
            continue
        if not same:
            out[name] = f"{a!r} at one point, {b!r} at another"
    return out


def site_reasons(reasons: dict[str, str]) -> str:
    """``{site: why}`` as one clause for an error message (what :func:`unsampleable_sites`
    and :func:`dependent_supports` return).

    Example:
        >>> site_reasons({"b": "Interval(0, 0.5) at one point"})
        "'b': Interval(0, 0.5) at one point"
    """
    return "; ".join(f"{name!r}: {why}" for name, why in reasons.items())
