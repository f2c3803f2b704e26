"""Exact draws of an enumerated Markov chain written with ``numpyro.contrib.control_flow.scan``.

NumPyro sums such a chain out of the density with the forward algorithm, but its
``infer_discrete`` cannot draw it back (it fails inside ``funsor``'s adjoint for scanned
sites). Here the same factors NumPyro builds (one log-density tensor per site, with the
scan's time axis and the previous step's value as named dimensions) are reduced to an
initial vector and one transition matrix per step, and the chain is drawn by forward
filtering, backward sampling: linear in the length, batched over the plates inside the
scan body.

Supported: one enumerated site inside one ``scan`` whose step depends on the previous step
only (``history=1``, NumPyro's default), with any plates inside the body and any
continuous sites; anything else is a :class:`ppl.errors.ModelError` naming the sites,
raised before sampling.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from typing import Any, Callable

import jax
import jax.numpy as jnp
from numpyro import handlers

from ppl.enumeration import Enumeration, fresh_infer
from ppl.errors import ModelError
from ppl.tracing import model_name


@dataclass(frozen=True)
class Chain:
    """Where a model's enumerated Markov chain sits among NumPyro's enumeration factors.

    Attributes:
        site: the enumerated site inside ``scan`` (its steps after the first).
        prev: the name NumPyro gives the previous step's value (``_PREV_`` + site).
        time: the scan's time dimension name.
        plates: plate names inside the scan body, leftmost first.
        shape, dtype: the site's value in the model (time first, then the plates).
    """

    site: str
    prev: str
    time: str
    plates: tuple[str, ...]
    shape: tuple[int, ...]
    dtype: Any


def _packed_trace(model: Callable, args: tuple, kwargs: dict, values: dict,
                  first_available_dim: int) -> OrderedDict:
    """The model's trace under NumPyro's enumeration (what its enumerated density reads)."""
    from numpyro.contrib.funsor import enum, trace as packed_trace
    from numpyro.contrib.funsor.infer_util import plate_to_enum_plate

    fn = enum(handlers.substitute(handlers.seed(fresh_infer(model), 0), data=values),
              first_available_dim=first_available_dim)
    with plate_to_enum_plate():
        return packed_trace(fn).get_trace(*args, **kwargs)


def chain_of(model: Callable, args: tuple, kwargs: dict, enumeration: Enumeration,
             values: dict) -> Chain | None:
    """The enumerated Markov chain of ``model`` (``values``: one draw of its continuous
    sites), or ``None`` when its enumerated sites are all outside ``scan``. Traced
    abstractly: nothing is computed.

    Example:
        >>> import jax.numpy as jnp, numpyro, numpyro.distributions as dist
        >>> from numpyro.contrib.control_flow import scan
        >>> from ppl.enumeration import enumeration_of
        >>> from ppl.tracing import trace_model
        >>> def hmm(y):
        ...     def step(prev, y_t):
        ...         x = numpyro.sample("x", dist.Categorical(jnp.array([[0.9, 0.1], [0.2, 0.8]])[prev]),
        ...                            infer={"enumerate": "parallel"})
        ...         numpyro.sample("y", dist.Normal(x, 1.0), obs=y_t)
        ...         return x, None
        ...     scan(step, 0, y)
        >>> y = jnp.zeros(5)
        >>> chain_of(hmm, (y,), {}, enumeration_of(hmm, (y,), {}, trace_model(hmm, y)), {}).shape
        (5,)
    """
    found: dict[str, Any] = {}

    def run(vals):
        tr = _packed_trace(model, args, kwargs, vals, enumeration.first_available_dim)
        found["sites"] = {n: (dict(s["infer"].get("dim_to_name") or {}), s["is_observed"],
                              [f.name for f in s["cond_indep_stack"] if f.dim is not None])
                          for n, s in tr.items() if s["type"] == "sample"}
        plain = handlers.trace(handlers.substitute(handlers.seed(model, 0), data=vals)
                               ).get_trace(*args, **kwargs)
        found["plain"] = {n: (tuple(jnp.shape(plain[n]["value"])), jnp.result_type(plain[n]["value"]))
                          for n in enumeration.sites}
        return jnp.zeros(())

    jax.eval_shape(run, values)
    sites = found["sites"]
    times = sorted({d for dims, _, _ in sites.values() for d in dims.values() if d.startswith("_time")})
    if not times:
        return None
    where = f"model {model_name(model)}"
    scanned = [n for n, (dims, obs, _) in sites.items()
               if not obs and n in enumeration.sites and any(d in times for d in dims.values())]
    if len(times) > 1 or len(scanned) != 1 or len(enumeration.sites) != 1:
        raise ModelError(
            f"{where}: drawing enumerated sites {list(enumeration.sites)} back after sampling "
            "is supported for one enumerated site inside one numpyro.contrib.control_flow.scan "
            f"(found scan time dimension(s) {times}, enumerated scanned site(s) {scanned}). "
            "Their density is exact, but their draws are not: sample them with inference.Gibbs, "
            "or write the chain with one enumerated site per scan.")
    site = scanned[0]
    dims = sites[site][0]
    prev = "_PREV_" + site
    deeper = [d for d in dims.values() if d.startswith("_PREV__PREV_")]
    if prev not in dims.values() or deeper:
        raise ModelError(
            f"{where}: the scanned site '{site}' must depend on its previous step only (scan's "
            f"history=1) for its draws to come back; its factor has dimensions {sorted(dims.values())}.")
    plates = tuple(name for _, name in sorted(dims.items())
                   if name not in (site, prev) and not name.startswith("_time"))
    shape, dtype = found["plain"][site]
    return Chain(site, prev, times[0], plates, shape, dtype)


def _factors(trace: OrderedDict) -> tuple[list, frozenset, frozenset, dict]:
    """NumPyro's enumeration factors of a packed trace: one funsor per sample site (its log
    density, scaled), the summed and the plate variables, and every variable's size."""
    import funsor
    from numpyro.distributions.util import is_identically_one

    factors, sum_vars, prod_vars, sizes = [], frozenset(), frozenset(), {}
    for site in trace.values():
        if site["type"] != "sample":
            continue
        lp = (site["fn"].log_prob(site["value"], site["intermediates"]) if site["intermediates"]
              else site["fn"].log_prob(site["value"]))
        if site["scale"] is not None and not is_identically_one(site["scale"]):
            lp = site["scale"] * lp
        dim_to_name = site["infer"]["dim_to_name"]
        if all(d == 1 for d in lp.shape) and not dim_to_name:
            lp = lp.squeeze()
        f = funsor.to_funsor(lp, output=funsor.Real, dim_to_name=dim_to_name)
        factors.append(f)
        sizes.update({n: d.size for n, d in f.inputs.items()})
        if not site["is_observed"]:
            sum_vars |= {site["name"]}
        prod_vars |= {fr.name for fr in site["cond_indep_stack"] if fr.dim is not None}
    return factors, sum_vars, prod_vars, sizes


def _dense(f: Any, names: tuple[str, ...], sizes: dict) -> jax.Array:
    """The data of funsor ``f`` with exactly the inputs ``names``, in that order (inputs it
    lacks broadcast)."""
    import funsor

    zero = funsor.Tensor(jnp.zeros(tuple(sizes[n] for n in names)),
                         OrderedDict((n, funsor.Bint[sizes[n]]) for n in names))
    return (f + zero).align(names).data


def backward_sample(model: Callable, args: tuple, kwargs: dict, values: dict,
                    enumeration: Enumeration, chain: Chain, key: jax.Array) -> dict:
    """One exact draw of ``chain.site`` given the continuous ``values``: ``{site: value}``.

    The factors at the scan's steps, summed over everything but (time, plates, previous,
    current), give the transition log-matrices; the others, summed over everything but
    (plates, first step), the initial log-vector. Forward filtering, then backward sampling.
    """
    import funsor
    from funsor.sum_product import sum_product

    tr = _packed_trace(model, args, kwargs, values, enumeration.first_available_dim)
    factors, sum_vars, prod_vars, sizes = _factors(tr)
    step = [f for f in factors if chain.time in f.inputs]
    first = [f for f in factors if chain.time not in f.inputs]
    everything = (sum_vars | prod_vars) - {chain.time}
    keep_step = {chain.time, chain.prev, chain.site, *chain.plates}
    lse, add = funsor.ops.logaddexp, funsor.ops.add
    with funsor.interpretations.lazy:
        trans = sum_product(lse, add, step, eliminate=everything - keep_step, plates=prod_vars)
        init = sum_product(lse, add, first, eliminate=everything - {chain.prev, *chain.plates},
                           plates=prod_vars)
    trans = _dense(funsor.optimizer.apply_optimizer(trans),
                   (chain.time, *chain.plates, chain.prev, chain.site), sizes)
    init = _dense(funsor.optimizer.apply_optimizer(init), (*chain.plates, chain.prev), sizes)

    def forward(alpha, t):
        alpha = jax.nn.logsumexp(alpha[..., :, None] + t, axis=-2)
        return alpha, alpha

    _, alphas = jax.lax.scan(forward, init, trans)
    alphas = jnp.concatenate([init[None], alphas])
    keys = jax.random.split(key, alphas.shape[0])
    last = jax.random.categorical(keys[-1], alphas[-1])

    def backward(x_next, inputs):
        alpha, t, k = inputs
        to_next = jnp.take_along_axis(t, x_next[..., None, None], axis=-1)[..., 0]
        x = jax.random.categorical(k, alpha + to_next)
        return x, x

    _, path = jax.lax.scan(backward, last, (alphas[:-1], trans, keys[:-1]), reverse=True)
    index = jnp.concatenate([path, last[None]])
    support = jnp.reshape(tr[chain.prev]["value"], (sizes[chain.prev], -1))[:, 0]
    return {chain.site: jnp.reshape(support[index], chain.shape).astype(chain.dtype)}
