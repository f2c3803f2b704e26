"""Draws of a model's enumerated discrete sites, given the continuous draws of a run.

A gradient method samples only the continuous sites of a model whose discrete sites are
summed out of its density (:mod:`ppl.enumeration`). Afterwards each discrete site is drawn
from its exact conditional given each continuous draw, with NumPyro's ``infer_discrete``
(temperature 1); a Markov chain through ``numpyro.contrib.control_flow.scan``, which
NumPyro's ``infer_discrete`` does not handle, by forward filtering and backward sampling
(:mod:`inference.scan_chain`). So the joint draws are exact posterior draws.
One compiled program maps over every draw of every chain.
"""

from __future__ import annotations

import time
from typing import Any, Callable

import jax
import jax.numpy as jnp
from numpyro import handlers

from inference.arguments import CONCRETE_ERRORS, split_arguments, static_part
from inference.programs.cache import compiling
from inference.scan_chain import Chain, backward_sample, chain_of
from ppl.enumeration import Enumeration, fresh_infer

#: Folded into a run's key for the draws of enumerated discrete sites (infer, extend).
DRAWS_KEY = 0xD15C


def _one_draw(model: Callable, enumeration: Enumeration, chain: "Chain | None",
              names: list[str], data: tuple, values: dict, key: jax.Array) -> dict:
    """The enumerated sites (and the deterministic ones in ``names``) for one continuous draw."""
    args, kwargs = data
    draw_key, run_key = jax.random.split(key)
    if chain is None:  # parallel enumeration only: NumPyro's infer_discrete
        from numpyro.contrib.funsor import infer_discrete

        fn = infer_discrete(handlers.substitute(fresh_infer(model), data=values),
                            first_available_dim=enumeration.first_available_dim,
                            temperature=1, rng_key=draw_key)
    else:  # a Markov chain through scan: forward filtering, backward sampling
        drawn = backward_sample(model, args, kwargs, values, enumeration, chain, draw_key)
        fn = handlers.substitute(model, data={**values, **drawn})
    tr = handlers.trace(handlers.seed(fn, run_key)).get_trace(*args, **kwargs)
    return {n: tr[n]["value"] for n in names}


def draw_discrete(model: Callable, args: tuple, kwargs: dict, samples: dict[str, Any],
                  enumeration: Enumeration, continuous: list[str], key: jax.Array,
                  batch_size: int = 256) -> tuple[dict[str, jax.Array], float]:
    """Exact conditional draws of ``enumeration.sites`` given each continuous draw.

    Args:
        model, args, kwargs: the model and its data.
        samples: a run's constrained draws, each ``(chains, draws, ...)``: the continuous
            latent sites named in ``continuous`` and any deterministic sites.
        enumeration: from :func:`ppl.enumeration.enumeration_of`.
        continuous: the continuous latent site names (substituted into the model).
        key: one key for all draws.
        batch_size: draws evaluated at once (bounds the memory of the enumeration tensors).

    Returns:
        ``(draws, seconds)``: the discrete sites' draws, shape ``(chains, draws, ...)``, plus
        the deterministic sites of ``samples`` recomputed with them (a deterministic site
        that reads a discrete site sees its drawn value); and the wall time taken.

    Example:
        >>> import jax, jax.numpy as jnp, numpyro, numpyro.distributions as dist
        >>> from ppl.enumeration import enumeration_of
        >>> from ppl.tracing import trace_model
        >>> def model(y):
        ...     mu = numpyro.sample("mu", dist.Normal(0.0, 1.0))
        ...     z = numpyro.sample("z", dist.Bernoulli(0.5), infer={"enumerate": "parallel"})
        ...     numpyro.sample("y", dist.Normal(mu + 10.0 * z, 1.0), obs=y)
        >>> y = jnp.array(10.0)
        >>> e = enumeration_of(model, (y,), {}, trace_model(model, y))
        >>> out, _ = draw_discrete(model, (y,), {}, {"mu": jnp.zeros((2, 3))}, e, ["mu"],
        ...                        jax.random.key(0))
        >>> out["z"].tolist()
        [[1, 1, 1], [1, 1, 1]]
    """
    start = time.perf_counter()
    lead = None
    for name in continuous:
        lead = tuple(jnp.shape(samples[name])[:2])
        break
    if lead is None:
        raise ValueError("draw_discrete: no continuous site to condition on; a model whose "
                         "latent sites are all enumerated has no gradient method to run.")
    chain = chain_of(model, args, kwargs, enumeration,
                     {n: samples[n][0, 0] for n in continuous})
    deterministic = [n for n in samples if n not in continuous and n not in enumeration.sites]
    names = list(enumeration.sites) + deterministic
    flat = {n: jnp.reshape(samples[n], (-1,) + tuple(jnp.shape(samples[n])[2:]))
            for n in continuous}
    count = lead[0] * lead[1]
    keys = jax.random.split(key, count)
    data = (tuple(args), dict(kwargs))

    def run(split, cache_key):
        dyn, rebuild = split

        def program(dyn, flat, keys):
            one = lambda xs: _one_draw(model, enumeration, chain, names, rebuild(dyn), *xs)  # noqa: E731
            # Equal batches, the last padded with copies of the first draw: lax.map with a
            # remainder compiles the model's enumeration twice (the loop's body and the rest).
            batches = -(-count // max(1, min(batch_size, count)))
            size = -(-count // batches)
            pad = lambda x: jnp.concatenate(  # noqa: E731
                [x, jnp.broadcast_to(x[:1], (batches * size - count,) + x.shape[1:])])
            xs = jax.tree.map(pad, (flat, keys))
            out = jax.lax.map(one, xs, batch_size=size)
            return jax.tree.map(lambda v: v[:count], out)

        # One program per model and shapes, kept with the samplers' programs (memory, disk).
        with compiling("discrete draws", False) as programs:
            compiled = programs.compile(jax.jit(program), (dyn, flat, keys), key=cache_key)
        return compiled(dyn, flat, keys)

    try:
        out = run(split_arguments(data), ("discrete_draws", model, enumeration, chain,
                                          tuple(names), static_part(data), batch_size))
    except CONCRETE_ERRORS:
        # The model reads its data's values in Python: the data baked in, not cached.
        out = run(([], lambda _: data), None)
    out = {n: jnp.reshape(v, lead + tuple(v.shape[1:])) for n, v in out.items()}
    jax.block_until_ready(out)
    return out, time.perf_counter() - start
