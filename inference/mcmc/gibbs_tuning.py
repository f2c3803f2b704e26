"""Step-size tuning of the continuous blocks of :class:`inference.mcmc.gibbs.Gibbs` during warmup.

A block is tunable when its kernel factory takes a ``step_size`` keyword
(:func:`initial_step_size`) and its kernel reports a real acceptance rate
(:func:`has_accept`). :class:`DualAveraging` then moves each chain's step size by Nesterov
dual averaging towards a target acceptance rate (Hoffman & Gelman 2014, section 3.2;
BlackJAX's ``dual_averaging_adaptation``) over the warmup sweeps, and freezes it at the
averaged iterate after the last one (Stan's rule). The conditional a block targets changes
every sweep with the other blocks; the step size adapts to the typical conditional.
"""

from __future__ import annotations

import inspect
from typing import Any, Callable

import jax
import jax.numpy as jnp
from blackjax.adaptation.step_size import dual_averaging_adaptation

from inference.mcmc.combinators import CombinedInfo, CountedInfo, _acceptance

__all__ = ["initial_step_size", "has_accept", "DualAveraging"]


def initial_step_size(spec: Callable) -> float | None:
    """A factory's ``step_size`` keyword default (0.1 if it has none), or None if the factory
    takes no ``step_size`` keyword (its step size cannot be tuned).

    Example:
        >>> import functools
        >>> from inference.mcmc import langevin
        >>> initial_step_size(functools.partial(langevin.mala, step_size=0.3))
        0.3
    """
    try:
        params = inspect.signature(spec).parameters
    except (TypeError, ValueError):
        return None
    p = params.get("step_size")
    if p is None or p.kind not in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY):
        return None
    if p.default is p.empty:
        return 0.1
    try:
        h = float(p.default)
    except (TypeError, ValueError):
        return None
    return h if h > 0.0 else None


def has_accept(info: Any) -> bool:
    """Does a kernel's info report a real acceptance rate? (A combination from
    :mod:`inference.kernels` reports 1.0 when none of its members has an accept step.)

    Example:
        >>> import jax, jax.numpy as jnp
        >>> from inference.mcmc import langevin
        >>> alg = langevin.ula(lambda x: -0.5 * jnp.sum(x**2), 0.1)
        >>> has_accept(alg.step(jax.random.key(0), alg.init(jnp.zeros(2)))[1])
        False
    """
    if isinstance(info, CountedInfo):
        return has_accept(info.info)
    if isinstance(info, CombinedInfo):
        return any(has_accept(i) for i in info.infos)
    return getattr(info, "acceptance_rate", None) is not None


def _cast(tree: Any, fdt: Any) -> Any:
    """Dual-averaging state with fixed dtypes (a scan carry): floats ``fdt``, ints int32."""
    return jax.tree.map(lambda x: jnp.asarray(x).astype(
        fdt if jnp.issubdtype(jnp.result_type(x), jnp.floating) else jnp.int32), tree)


class DualAveraging:
    """Dual averaging of per-block, per-chain step sizes over ``num_warmup`` sweeps.

    Step sizes are a tuple with one entry per block: a ``(chains,)`` array for a tuned block,
    ``None`` for the others.

    Example:
        >>> import jax.numpy as jnp
        >>> da = DualAveraging(target=0.6, num_warmup=10, dtype=jnp.float32)
        >>> state = da.init((None, jnp.full((2,), 1e-3)))
        >>> len(state), state[0] is None
        (2, True)
    """

    def __init__(self, target: float, num_warmup: int, dtype: Any):
        self.W, self.fdt = int(num_warmup), dtype
        self._init, self._update, self._final = dual_averaging_adaptation(target)

    def init(self, steps: tuple) -> tuple:
        return tuple(None if h is None else _cast(jax.vmap(self._init)(h), self.fdt)
                     for h in steps)

    def update(self, t: jax.Array, state: tuple, steps: tuple, infos: tuple) -> tuple[tuple, tuple]:
        """After sweep ``t`` with block infos ``infos``: the new ``(state, steps)``; the
        identity after warmup, the averaged iterate at its last sweep."""
        warm = t < self.W
        new_state, new_steps = [], []
        for d, h, info in zip(state, steps, infos):
            if h is None:
                new_state.append(None), new_steps.append(None)
                continue
            acc = jnp.nan_to_num(_acceptance(info)).astype(self.fdt)
            up = jax.tree.map(lambda u, o: jnp.where(warm, u.astype(o.dtype), o),
                              jax.vmap(self._update)(d, acc), d)
            h = jnp.where(t == self.W - 1, jax.vmap(self._final)(up),
                          jnp.where(warm, jnp.exp(up.log_step_size), h)).astype(self.fdt)
            new_state.append(up), new_steps.append(h)
        return tuple(new_state), tuple(new_steps)
