"""Initial positions for chains: random points where the log density and its gradient are finite."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from ppl.errors import ModelError
from ppl.potential import Position, Potential
from ppl.tracing import model_name


def _is_valid(potential: Potential, position: Position) -> jax.Array:
    value, grad = jax.value_and_grad(potential.logdensity_fn)(position)
    finite_grad = jnp.all(jnp.array([jnp.all(jnp.isfinite(g)) for g in jax.tree.leaves(grad)] or [True]))
    return jnp.isfinite(value) & finite_grad


def initial_positions(
    potential: Potential,
    key: jax.Array,
    num_chains: int,
    *,
    tries: int = 100,
    radius: float = 2.0,
) -> Position:
    """One valid unconstrained starting point per chain (leading axis ``num_chains``).

    Each chain draws uniform points in ``[-radius, radius]`` (Stan's rule) until the log
    density and its gradient are finite, up to ``tries`` points. If a chain finds none,
    the error names the sites whose log density was not finite at the points tried.

    Example:
        >>> import jax, numpyro.distributions as dist, ppl
        >>> def model():
        ...     ppl.sample("x", dist.Normal(0.0, 1.0))
        >>> x0 = initial_positions(ppl.potential(model), jax.random.key(0), 4)
        >>> x0["x"].shape
        (4,)
    """
    chain_keys = jax.random.split(key, num_chains)
    # One draw per (chain, try); most models accept the first, so evaluate the first try
    # for all chains and only fall back to the full set of tries when needed.
    try_keys = jax.vmap(lambda k: jax.random.split(k, tries))(chain_keys)

    @jax.jit
    def draw_and_check(keys):
        points = jax.vmap(jax.vmap(lambda k: potential.init_position(k, radius)))(keys)
        return points, jax.vmap(jax.vmap(lambda p: _is_valid(potential, p)))(points)

    first, ok = draw_and_check(try_keys[:, :1])
    if bool(jnp.all(ok)):
        return jax.tree.map(lambda x: x[:, 0], first)
    candidates, ok = draw_and_check(try_keys)
    has_valid = jnp.any(ok, axis=1)
    if not bool(jnp.all(has_valid)):
        chain = int(jnp.argmin(has_valid))
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
    first_valid = jnp.argmax(ok, axis=1)
    return jax.tree.map(lambda x: x[jnp.arange(num_chains), first_valid], candidates)
