"""Did a Langevin warmup end in a state its chains can sample from? (collapsed step sizes)

A chain whose warmup ends in a degenerate region -- the neck of a funnel, the mode of a
hierarchical model where a scale went to 0 or a concentration to infinity -- tunes a step
size so small that it no longer moves, while its acceptance rate still looks healthy and
chains frozen at the same point even agree (R-hat 1.0). This module names that state:

* :func:`collapse_threshold`: the step size (in the units of the tuned mass matrix) below
  which a chain is *collapsed*: ``1/100`` of ``d^{-1/3}``. On a ``d``-dimensional Gaussian
  with the right mass matrix MALA's optimal step size is about ``1.4 d^{-1/3}`` (its
  proposal sd ``sqrt(2h)`` is ``1.65 d^{-1/6}``; Roberts & Rosenthal 1998), OBABO's is
  larger (``~ d^{-1/4}``). A chain 100 times below that needs ~10^4 times as many steps as
  on a Gaussian of the scale warmup itself estimated: in a run of ordinary length it only
  jitters in place.
* :func:`collapsed_chains`: the traced test, per chain.
* :func:`warn_collapsed`: on the host, after a run: a warning naming the chains, the sites
  that barely move, where they are and what to do.

Example:
    >>> round(collapse_threshold(8), 4)
    0.005
"""

from __future__ import annotations

import warnings
from typing import Any, Callable

import jax.numpy as jnp
import numpy as np

__all__ = ["WarmupWarning", "collapse_threshold", "collapsed_chains", "warn_collapsed",
           "warn_restarted"]


class WarmupWarning(UserWarning):
    """Warmup ended (or first ended) in a state the chains cannot sample from."""


def collapse_threshold(dim: int) -> float:
    """The tuned step size below which a chain counts as collapsed: ``0.01 * dim**(-1/3)``.

    Example:
        >>> collapse_threshold(1)
        0.01
    """
    return 0.01 * float(max(int(dim), 1)) ** (-1.0 / 3.0)


def collapsed_chains(step_size: Any, dim: int) -> Any:
    """Per chain: the adjusted kernel's tuned ``step_size`` is below :func:`collapse_threshold`
    or not finite (traceable; ``step_size`` has a leading chain axis).

    Example:
        >>> import jax.numpy as jnp
        >>> collapsed_chains(jnp.array([0.5, 1e-6, jnp.nan]), 10).tolist()
        [False, True, True]
    """
    h = jnp.asarray(step_size)
    return ~(jnp.isfinite(h) & (h >= collapse_threshold(dim)))


def _flat_sites(sites: dict[str, tuple]) -> list[tuple[str, int, int]]:
    """(site, start, stop) in the flat position vector (``ravel_pytree`` of the site dict:
    sites in sorted order)."""
    out, start = [], 0
    for name in sorted(sites):
        size = int(np.prod(sites[name], dtype=int))
        out.append((name, start, start + size))
        start += size
    return out


def _value(x: Any) -> str:
    x = np.asarray(x, dtype=float)
    if x.size == 1:
        return f"{float(x.reshape(())):.3g}"
    return f"{float(np.min(x)):.3g}..{float(np.max(x)):.3g}"


def warn_collapsed(owner: str, tuning: dict, samples: dict,
                   sites: dict[str, tuple] | Callable[[], dict[str, tuple]],
                   stacklevel: int = 3) -> list[int]:
    """Warn (:class:`WarmupWarning`) if warmup left any chain collapsed; return those chains.

    ``tuning`` is a Langevin method's ``result.tuning`` (``step_size``,
    ``inverse_mass_matrix``, for unadjusted kernels ``warmup_step_size``, that of the MALA
    warmup that tuned them), ``samples``
    the constrained draws, ``sites`` the unconstrained shapes of the latent sites (or a
    function returning them, called only when there is something to warn about).

    Example:
        >>> import numpy as np
        >>> tuning = {"step_size": np.array([0.5, 1e-7]), "inverse_mass_matrix": np.ones((2, 1))}
        >>> import warnings
        >>> with warnings.catch_warnings(record=True):
        ...     warn_collapsed("MALA", tuning, {"y": np.zeros((2, 3))}, {"y": ()})
        [1]
    """
    h = np.asarray(tuning.get("warmup_step_size", tuning["step_size"]), dtype=float)
    h = h.reshape(-1)
    imm = np.asarray(tuning["inverse_mass_matrix"], dtype=float)
    dim = imm.shape[-1]
    bad = np.flatnonzero(~(np.isfinite(h) & (h >= collapse_threshold(dim))))
    if bad.size == 0:
        return []
    if callable(sites):
        sites = sites()
    diag = imm if imm.ndim == 2 else np.diagonal(imm, axis1=-2, axis2=-1)
    # Per coordinate: the proposal sd of one MALA step, sqrt(2 h M_ii), over the bad chains.
    move = np.sqrt(np.maximum(2.0 * h[bad, None] * diag[bad], 0.0)).max(axis=0)
    ranked = sorted(((float(move[a:b].max()), name) for name, a, b in _flat_sites(sites)
                     if b > a))
    named = []
    for m, name in ranked[:4]:
        where = ""
        if name in samples:
            where = f", at {_value(np.asarray(samples[name])[bad, 0])}"
        named.append(f"'{name}' (moves ~{m:.2g} per step on the unconstrained scale{where})")
    warnings.warn(
        f"{owner}: warmup ended with a collapsed step size in chain(s) {bad.tolist()} "
        f"(step size {_value(h[bad])}; below {collapse_threshold(dim):.2g}, 1/100 of the "
        f"scale a {dim}-dimensional posterior needs, a chain only jitters in place, and "
        f"chains frozen at the same point even agree: their R-hat and ESS cannot be "
        f"trusted). The sites that barely move: {', '.join(named)}. This is the neck of a "
        "funnel or a degenerate mode (a hierarchical scale going to 0, a concentration "
        "going to infinity): reparameterize the model (non-centred), give init_params "
        "away from it, or use inference.NUTS().",
        WarmupWarning, stacklevel=stacklevel)
    return bad.tolist()


def warn_restarted(owner: str, tuning: dict, find_mode: int, stacklevel: int = 3) -> list[int]:
    """Warn (:class:`WarmupWarning`) about chains whose warmup was run a second time because
    the L-BFGS climb before it (``find_mode``) ended in a degenerate mode; return them.

    Example:
        >>> import numpy as np, warnings
        >>> with warnings.catch_warnings(record=True):
        ...     warn_restarted("MALA", {"warmup_restarted": np.array([False, True])}, 100)
        [1]
    """
    restarted = np.flatnonzero(np.asarray(tuning.get("warmup_restarted", False)).reshape(-1))
    if restarted.size:
        warnings.warn(
            f"{owner}: in chain(s) {restarted.tolist()} the L-BFGS climb before warmup "
            f"(find_mode={find_mode}) ended in a degenerate mode of the model (warmup's step "
            "size collapsed there, as in a funnel's neck or where a hierarchical scale goes "
            "to 0); their warmup was run again from their initial points without the climb "
            f"(its gradients are in tuning['warmup_n_grad']). {owner}(find_mode=0) skips the "
            "climb.", WarmupWarning, stacklevel=stacklevel)
    return restarted.tolist()
