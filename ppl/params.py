"""Parameters: a program's ``numpyro.param`` sites, stored unconstrained, substituted by name.

As in NumPyro's SVI, parameters live in a plain dict keyed by param-site name, in
*unconstrained* space: a site declared with ``constraint=...`` stores
``biject_to(constraint).inv(value)``, so any optimizer can move it freely.

- :func:`init_params` runs the program(s) once and collects every param site's initial value
  (its ``init_value``, or ``init_value(key)`` when that is a function), unconstrained.
- :func:`constrain_params` maps such a dict back to the constrained values users read, as a
  :class:`ConstrainedParams` (a dict marked constrained, which :func:`with_params` refuses).
- :func:`with_params` gives the program(s) with every param site replaced by its constrained
  value from the dict; objectives (:mod:`ppl.objectives`) use it, and so can users' own.
- :func:`no_grad` marks a program whose param values carry no gradient (RWS, forward KL).

A param site without an entry in the dict is an error naming the site; so is an entry that
none of the programs has (checked once every program of a group has run).

Example:
    >>> import jax, numpyro, numpyro.distributions as dist, ppl
    >>> from numpyro.distributions import constraints
    >>> def guide():
    ...     loc = numpyro.param("loc", 0.5)
    ...     scale = numpyro.param("scale", 2.0, constraint=constraints.positive)
    ...     numpyro.sample("z", dist.Normal(loc, scale))
    >>> params = ppl.init_params(guide, jax.random.key(0))
    >>> round(float(params["scale"]), 4)  # stored unconstrained: log 2
    0.6931
    >>> {k: round(float(v), 4) for k, v in ppl.constrain_params(guide, params).items()}
    {'loc': 0.5, 'scale': 2.0}
"""

from __future__ import annotations

import functools
from typing import Any, Callable, Sequence

import jax
from numpyro.distributions import biject_to, constraints
from numpyro.primitives import Messenger

from ppl.errors import ModelError
from ppl.tracing import model_name, trace_model

__all__ = ["ParamError", "ConstrainedParams", "init_params", "constrain_params", "with_params",
           "no_grad"]


class ParamError(ModelError):
    """A parameter dict that does not fit a program's param sites (the message names the site)."""


class ConstrainedParams(dict):
    """A params dict holding *constrained* values (what :func:`constrain_params` returns).

    A plain ``dict`` in every way (and a JAX pytree like one, so ``jax.tree.map`` keeps the
    mark), except that :func:`with_params` refuses it: it takes unconstrained values, and
    reading a constrained value as unconstrained silently gives another distribution
    (a scale of 0.03 read through softplus is 0.71). ``dict(p)`` drops the mark.

    Example:
        >>> import jax, jax.numpy as jnp, numpyro, ppl
        >>> from numpyro.distributions import constraints
        >>> def guide():
        ...     numpyro.param("s", 1.0, constraint=constraints.positive)
        >>> c = ppl.constrain_params(guide, {"s": jnp.log(3.0)})
        >>> isinstance(c, ppl.params.ConstrainedParams), type(jax.tree.map(lambda v: v, c)).__name__
        (True, 'ConstrainedParams')
    """

    def __repr__(self) -> str:
        return f"ConstrainedParams({dict.__repr__(self)})"


def _flatten_with_keys(params: ConstrainedParams):
    names = tuple(sorted(params))
    return [(jax.tree_util.DictKey(n), params[n]) for n in names], names


def _flatten(params: ConstrainedParams):
    names = tuple(sorted(params))
    return [params[n] for n in names], names


jax.tree_util.register_pytree_with_keys(
    ConstrainedParams, _flatten_with_keys,
    lambda names, values: ConstrainedParams(zip(names, values)), _flatten)


def _constraint(site_kwargs: dict) -> Any:
    return site_kwargs.get("constraint", constraints.real) or constraints.real


def _to_constrained(value: Any, constraint: Any) -> Any:
    if constraint is constraints.real:
        return value  # identity: any pytree (e.g. network weights) is fine
    transform = biject_to(constraint)
    return jax.tree_util.tree_map(transform, value)


def _to_unconstrained(value: Any, constraint: Any) -> Any:
    if constraint is constraints.real:
        return value
    transform = biject_to(constraint)
    return jax.tree_util.tree_map(transform.inv, value)


def _programs(program: Callable | Sequence[Callable]) -> tuple[Callable, ...]:
    if callable(program):
        return (program,)
    programs = tuple(program)
    for p in programs:
        if not callable(p):
            raise TypeError(f"expected a program (a callable) or a tuple of programs, got {p!r}")
    return programs


def _param_sites(program: Callable, key: jax.Array, args: tuple, kwargs: dict) -> dict:
    trace = trace_model(program, *args, key=key, **kwargs)
    return {name: site for name, site in trace.items() if site["type"] == "param"}


def init_params(program: Callable | Sequence[Callable], key: jax.Array, *args: Any,
                **kwargs: Any) -> dict[str, Any]:
    """Initial values of the param sites of ``program(*args, **kwargs)``, unconstrained.

    ``program`` may be one program or a tuple of programs called with the same arguments
    (e.g. ``(model, guide)``); their param sites go into one dict (a name shared by two
    programs is one parameter, as in NumPyro). Initial values come from each site's
    ``init_value``, called with a key split from ``key`` when it is a function.

    Example:
        >>> import jax, jax.numpy as jnp, numpyro, ppl
        >>> def guide(x):
        ...     numpyro.param("w", lambda key: jax.random.normal(key, (2,)))
        ...     numpyro.param("b", jnp.zeros(()))
        >>> sorted(ppl.init_params(guide, jax.random.key(0), 1.0))
        ['b', 'w']
    """
    out: dict[str, Any] = {}
    programs = _programs(program)
    for p, k in zip(programs, jax.random.split(key, len(programs))):
        for name, site in _param_sites(p, k, args, kwargs).items():
            if name not in out:
                out[name] = _to_unconstrained(site["value"], _constraint(site["kwargs"]))
    return out


def constrain_params(program: Callable | Sequence[Callable], params: dict[str, Any], *args: Any,
                     **kwargs: Any) -> ConstrainedParams:
    """The constrained values of unconstrained ``params`` (as from :func:`init_params`).

    The result is a :class:`ConstrainedParams` (a dict), for reading; :func:`with_params`
    and the optimizers take the unconstrained dict.

    ``program`` (one or a tuple) is run once with ``args``/``kwargs`` to read each site's
    constraint. Every entry of ``params`` must be a param site of one of the programs and
    every param site needs an entry; otherwise a :class:`ParamError` names the site.

    Example:
        >>> import jax, jax.numpy as jnp, numpyro, ppl
        >>> from numpyro.distributions import constraints
        >>> def guide():
        ...     numpyro.param("s", 1.0, constraint=constraints.positive)
        >>> float(ppl.constrain_params(guide, {"s": jnp.log(3.0)})["s"])  # doctest: +ELLIPSIS
        3.0...
    """
    sites: dict = {}
    for p in _programs(program):
        for name, site in _param_sites(p, jax.random.key(0), args, kwargs).items():
            sites.setdefault(name, site)
    names = ", ".join(model_name(p) for p in _programs(program))
    _check_names(params, set(sites), names)
    return ConstrainedParams(
        (name, _to_constrained(params[name], _constraint(sites[name]["kwargs"])))
        for name in params)


def _check_names(params: dict, seen: set, names: str) -> None:
    missing = seen - set(params)
    if missing:
        name = sorted(missing)[0]
        raise ParamError(
            f"param site '{name}' of {names} has no value in params (got "
            f"{sorted(params)}); initialize them with ppl.init_params."
        )
    unknown = set(params) - seen
    if unknown:
        raise ParamError(
            f"params has entries {sorted(unknown)} that are not param sites of {names} "
            f"(their param sites: {sorted(seen)}); check the names."
        )


class _Group:
    """Param names seen by a group of programs substituted together, to report unknown entries."""

    def __init__(self, params: dict, size: int, names: str):
        self.params = params
        self.size = size
        self.names = names
        self.ran: set[int] = set()
        self.seen: set[str] = set()

    def finished(self, index: int) -> None:
        self.ran.add(index)
        if self.size > 1 and len(self.ran) == self.size:
            unknown = set(self.params) - self.seen
            if unknown:
                raise ParamError(
                    f"params has entries {sorted(unknown)} that are not param sites of "
                    f"{self.names} (their param sites: {sorted(self.seen)}); check the names."
                )


class _WithParams(Messenger):
    """Substitutes constrained values from an unconstrained params dict at ``param`` sites."""

    def __init__(self, fn: Callable, group: _Group, index: int):
        self.group = group
        self.index = index
        super().__init__(fn)
        functools.update_wrapper(self, fn, updated=())

    def process_message(self, msg):
        if msg["type"] != "param":
            return
        name = msg["name"]
        params = self.group.params
        if name not in params:
            raise ParamError(
                f"param site '{name}' of program {model_name(self.fn)} has no value in params "
                f"(got {sorted(params)}); initialize them with ppl.init_params."
            )
        self.group.seen.add(name)
        msg["value"] = _to_constrained(params[name], _constraint(msg["kwargs"]))

    def __call__(self, *args, **kwargs):
        out = super().__call__(*args, **kwargs)
        self.group.finished(self.index)
        return out


def with_params(program: Callable | Sequence[Callable], params: dict[str, Any]) -> Any:
    """``program`` with its param sites set to the constrained values of ``params``.

    ``params`` are unconstrained (as from :func:`init_params`); a :class:`ConstrainedParams`
    (from :func:`constrain_params`) is refused with a :class:`ParamError`. Given a tuple of
    programs, returns the tuple of substituted programs; once each of them has run, an entry
    of ``params`` that none of them has as a param site is a :class:`ParamError` (one dict
    holds model and guide parameters, as in NumPyro's SVI). A param site missing from
    ``params`` is an error when the site is reached.

    Example:
        >>> import jax, jax.numpy as jnp, numpyro, numpyro.distributions as dist, ppl
        >>> from numpyro.distributions import constraints
        >>> def guide():
        ...     s = numpyro.param("s", 1.0, constraint=constraints.positive)
        ...     numpyro.sample("z", dist.Normal(0.0, s))
        >>> @ppl.expectation
        ... def log_q(params):
        ...     q = ppl.with_params(guide, params)
        ...     return ppl.density(q, {"z": 0.0})
        >>> round(float(log_q.estimate(jax.random.key(0), {"s": jnp.log(2.0)})), 4)  # N(0; 0, 2)
        -1.6121
    """
    if not isinstance(params, dict):
        raise ParamError(
            f"params must be a dict from param-site name to value, got {type(params).__name__}."
        )
    programs = _programs(program)
    if isinstance(params, ConstrainedParams):
        raise ParamError(
            f"with_params({', '.join(model_name(p) for p in programs)}, params): params holds "
            f"constrained values (a ConstrainedParams, from ppl.constrain_params or a Result's "
            f"tuning['params']: {sorted(params)}), but with_params takes UNconstrained ones "
            "and would read e.g. a scale through its bijection a second time. Pass the "
            "unconstrained dict (ppl.init_params, inference.fit's params, a VI Result's "
            "tuning['unconstrained_params']); to rebuild a fitted VI guide use "
            "inference.VI(...).fitted_guide(model, params)."
        )
    group = _Group(params, len(programs), ", ".join(model_name(p) for p in programs))
    wrapped = tuple(_WithParams(p, group, i) for i, p in enumerate(programs))
    return wrapped[0] if callable(program) else wrapped


class _NoGrad(Messenger):
    def __init__(self, fn: Callable):
        super().__init__(fn)
        functools.update_wrapper(self, fn, updated=())

    def postprocess_message(self, msg):
        if msg["type"] == "param" and msg["value"] is not None:
            msg["value"] = jax.lax.stop_gradient(msg["value"])


def no_grad(program: Callable) -> Callable:
    """``program`` with ``jax.lax.stop_gradient`` applied to every param value it reads.

    Used where an objective must not differentiate through one program's parameters, e.g.
    the guide in the RWS wake-phase model update. Combine with :func:`with_params`:
    ``p, q = ppl.with_params((model, ppl.no_grad(guide)), params)``.

    Example:
        >>> import jax, jax.numpy as jnp, numpyro, numpyro.distributions as dist, ppl
        >>> def guide():
        ...     numpyro.sample("z", dist.Normal(numpyro.param("loc", 0.0), 1.0))
        >>> @ppl.expectation
        ... def mean_z(params):
        ...     q = ppl.with_params(ppl.no_grad(guide), params)
        ...     return ppl.sim(q)[0]["z"]
        >>> float(mean_z.grad_estimate(jax.random.key(0), {"loc": 1.0})[0]["loc"])
        0.0
    """
    return _NoGrad(program)
