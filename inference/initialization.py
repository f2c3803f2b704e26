"""Initial positions for chains: random points where the log density and its gradient are finite.

Stan's rule: draw each unconstrained coordinate uniformly in ``[-radius, radius]`` and
retry (up to ``tries`` times) until the log density and its gradient are finite. The
candidates are drawn on the host side of the program (cheap, no compilation), and the
selection is a traced function, so ``infer`` runs it inside its one compiled program.
"""

from __future__ import annotations

from typing import Callable, NamedTuple

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


class InitialSearch(NamedTuple):
    """What :func:`search_initial` found, per chain (leading axis ``num_chains``).

    Attributes:
        position: the first valid candidate (the first candidate where none is valid).
        found: whether the chain has a valid candidate.
        logdensity, gradient: the log density and its gradient at ``position`` (a sampler
            can start from them without evaluating the gradient again).
        n_grad: gradients evaluated for the chain: one per candidate tried up to and
            including its valid one (all ``limit`` where none is valid), as if it ran alone.
    """

    position: Position
    found: jax.Array
    logdensity: jax.Array
    gradient: Position
    n_grad: jax.Array


def search_initial(logdensity_fn: Callable, candidates: Position,
                   limit: jax.Array | int | None = None,
                   fixed: tuple[str, ...] = ()) -> InitialSearch:
    """First candidate per chain with a finite log density and gradient (traceable).

    ``candidates``: shape ``(num_chains, tries, *site_shape)`` per site. Tries are evaluated
    one at a time for all chains, and the loop stops as soon as every chain has a valid
    point (or after ``limit`` tries, default all of them), so a well-behaved model costs one
    gradient per chain. The log density's gradient appears once in the program.
    ``fixed``: sites not differentiated (e.g. Gibbs's discrete sites): chosen with the
    others, left out of ``gradient``.

    Example:
        >>> import jax.numpy as jnp
        >>> f = lambda p: jnp.where(p["x"] < 1.0, -p["x"] ** 2, -jnp.inf)
        >>> out = search_initial(f, {"x": jnp.array([[0.5, 0.0], [3.0, 0.25]])})
        >>> out.position["x"].tolist(), out.found.tolist(), out.n_grad.tolist()
        ([0.5, 0.25], [True, True], [1, 2])
    """
    leaves = jax.tree.leaves(candidates)
    num_chains, tries = leaves[0].shape[:2]
    limit = tries if limit is None else limit
    at = lambda t: jax.tree.map(lambda x: x[:, t], candidates)  # noqa: E731
    moving = lambda x: {n: v for n, v in x.items() if n not in fixed}  # noqa: E731

    def value_and_grad(x):
        rest = {n: x[n] for n in fixed}
        return jax.value_and_grad(lambda m: logdensity_fn({**rest, **m}))(moving(x))

    # One jitted function, traced once: eval_shape below and the loop body reuse its trace.
    evaluate = jax.jit(jax.vmap(value_and_grad))
    value_shape = jax.eval_shape(evaluate, at(0))[0]

    def cond(carry):
        t, found = carry[0], carry[2]
        return (t < limit) & ~jnp.all(found)

    def body(carry):
        t, chosen, found, value, grad, n = carry
        new_value, new_grad = evaluate(at(t))
        ok = jnp.isfinite(new_value)
        for g in jax.tree.leaves(new_grad):
            ok = ok & jnp.all(jnp.isfinite(g), axis=tuple(range(1, jnp.ndim(g))))
        ok = ok & ~found
        pick = lambda new, old: jnp.where(  # noqa: E731
            ok.reshape((-1,) + (1,) * (jnp.ndim(old) - 1)), new, old)
        return (t + 1, jax.tree.map(pick, at(t), chosen), found | ok, pick(new_value, value),
                jax.tree.map(pick, new_grad, grad), n + (~found).astype(n.dtype))

    init = (jnp.zeros((), jnp.int32), at(0), jnp.zeros((num_chains,), bool),
            jnp.zeros(value_shape.shape, value_shape.dtype),
            jax.tree.map(jnp.zeros_like, moving(at(0))),
            jnp.zeros((num_chains,), jnp.int32))
    _, chosen, found, value, grad, n = jax.lax.while_loop(cond, body, init)
    return InitialSearch(chosen, found, value, grad, n)


def select_initial(logdensity_fn: Callable, candidates: Position) -> tuple[Position, jax.Array]:
    """First candidate per chain with a finite log density and gradient (traceable):
    ``(positions, found)`` with ``found[c]`` False where chain ``c`` has none (see
    :func:`search_initial`, which also returns the values and the gradients counted).

    Example:
        >>> import jax.numpy as jnp
        >>> f = lambda p: jnp.where(p["x"] < 1.0, 0.0, jnp.nan)
        >>> x, found = select_initial(f, {"x": jnp.array([[2.0, 0.5]])})
        >>> x["x"].tolist(), found.tolist()
        ([0.5], [True])
    """
    out = search_initial(logdensity_fn, candidates)
    return out.position, out.found


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
