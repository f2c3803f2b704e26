"""Initial positions for chains: random points where the log density and its gradient are finite.

Stan's rule: draw each unconstrained coordinate uniformly in ``[-radius, radius]`` and
retry (up to ``tries`` times) until the log density and its gradient are finite. The
candidates are drawn on the host side of the program (cheap, no compilation), and the
selection is a traced function, so ``infer`` runs it inside its one compiled program.
"""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

from ppl.errors import ModelError
from ppl.potential import Position, Potential
from ppl.tracing import model_name


def candidate_positions(
    potential: Potential, key: jax.Array, num_chains: int, tries: int = 100, radius: float = 2.0
) -> Position:
    """Uniform candidates in ``[-radius, radius]``, shape (num_chains, tries, *site_shape) per site.

    Example:
        >>> import jax, numpyro.distributions as dist, ppl
        >>> def model():
        ...     ppl.sample("x", dist.Normal(0.0, 1.0).expand([3]))
        >>> candidate_positions(ppl.potential(model), jax.random.key(0), 4, tries=5)["x"].shape
        (4, 5, 3)
    """
    return uniform_candidates(key, potential.sites, num_chains, tries, radius)


def uniform_candidates(key: jax.Array, sites: dict, num_chains: int, tries: int,
                       radius: float) -> Position:
    """Uniform points in ``[-radius, radius]``, shape ``(num_chains, tries, *shape)`` per site.

    Each site's numbers are drawn as one flat vector and reshaped: on CPU, XLA compiles JAX's
    (partitionable) threefry generator ~10x slower for a rank-3 output than for a rank-1 one
    (a (4, 100, 10) draw took 7-9 s to compile, the same 4000 numbers drawn flat 0.9 s), and
    this draw sits in every chain method's first compiled program.

    Example:
        >>> import jax
        >>> uniform_candidates(jax.random.key(0), {"x": (3,)}, 4, 5, 2.0)["x"].shape
        (4, 5, 3)
    """
    keys = jax.random.split(key, max(len(sites), 1))
    out = {}
    for k, (name, shape) in zip(keys, sites.items()):
        full = (num_chains, tries) + tuple(shape)
        size = int(np.prod(full))
        out[name] = jax.random.uniform(k, (size,), minval=-radius, maxval=radius).reshape(full)
    return out


def _is_valid(logdensity_fn: Callable, position: Position) -> jax.Array:
    value, grad = jax.value_and_grad(logdensity_fn)(position)
    ok = jnp.isfinite(value)
    for g in jax.tree.leaves(grad):
        ok = ok & jnp.all(jnp.isfinite(g))
    return ok


def select_initial(logdensity_fn: Callable, candidates: Position) -> tuple[Position, jax.Array]:
    """First candidate per chain with a finite log density and gradient (traceable).

    Tries are evaluated one at a time for all chains and the loop stops as soon as every
    chain has a valid point, so a well-behaved model costs one gradient per chain.
    Returns ``(positions, found)`` with ``found[c]`` False where chain ``c`` has none.
    """
    leaves = jax.tree.leaves(candidates)
    num_chains, tries = leaves[0].shape[:2]
    at = lambda t: jax.tree.map(lambda x: x[:, t], candidates)  # noqa: E731
    check = jax.vmap(lambda p: _is_valid(logdensity_fn, p))

    def cond(carry):
        t, _, found = carry
        return (t < tries) & ~jnp.all(found)

    def body(carry):
        t, chosen, found = carry
        ok = check(at(t)) & ~found
        chosen = jax.tree.map(
            lambda c, x: jnp.where(ok.reshape((-1,) + (1,) * (c.ndim - 1)), x, c), chosen, at(t)
        )
        return t + 1, chosen, found | ok

    init = (jnp.zeros((), jnp.int32), at(0), jnp.zeros((num_chains,), bool))
    _, chosen, found = jax.lax.while_loop(cond, body, init)
    return chosen, found


def raise_no_valid_initial(
    potential: Potential, candidates: Position, found: jax.Array, radius: float = 2.0
) -> None:
    """Raise a :class:`ModelError` naming the sites that were not finite for a failed chain."""
    chain = int(jnp.argmin(found))
    tries = jax.tree.leaves(candidates)[0].shape[1]
    bad: list[str] = []
    for t in range(min(tries, 5)):
        point = jax.tree.map(lambda x: x[chain, t], candidates)
        bad.extend(s for s in potential.nonfinite_sites(point) if s not in bad)
    raise ModelError(
        f"model {model_name(potential.model)}: no finite initial log density in {tries} "
        f"random points (uniform in [-{radius}, {radius}] on the unconstrained scale) for "
        f"chain {chain}. Sites whose log density was not finite: {bad or 'none found'}. "
        "Check those sites' data and parameters (e.g. a scale that can reach 0, data "
        "outside the support), or pass a smaller radius."
    )


def initial_positions(
    potential: Potential,
    key: jax.Array,
    num_chains: int,
    *,
    tries: int = 100,
    radius: float = 2.0,
) -> Position:
    """One valid unconstrained starting point per chain (leading axis ``num_chains``).

    If a chain finds none in ``tries`` points, the error names the sites whose log
    density was not finite there.

    Example:
        >>> import jax, numpyro.distributions as dist, ppl
        >>> def model():
        ...     ppl.sample("x", dist.Normal(0.0, 1.0))
        >>> x0 = initial_positions(ppl.potential(model), jax.random.key(0), 4)
        >>> x0["x"].shape
        (4,)
    """
    candidates = candidate_positions(potential, key, num_chains, tries, radius)
    positions, found = jax.jit(select_initial, static_argnums=0)(potential.logdensity_fn, candidates)
    if not bool(jnp.all(found)):
        raise_no_valid_initial(potential, candidates, found, radius)
    return positions
