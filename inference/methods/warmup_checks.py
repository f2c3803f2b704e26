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
    if x.size == 1 or np.all(x == x.reshape(-1)[0]):
        return f"{float(x.reshape(-1)[0]):.3g}"
    return f"{float(np.min(x)):.3g}..{float(np.max(x)):.3g}"


def _frozen(samples: dict, min_draws: int = 20) -> dict[str, np.ndarray]:
    """Per site: the chains (a bool per chain) in which some element of its draws never
    changes over at least ``min_draws`` draws. A Langevin chain moves every coordinate at
    every accepted step; one that never changes moves by less than the float resolution of
    its value (a MALA chain that rejected all of 20 proposals at acceptance ~0.5 has
    probability ~1e-6)."""
    out = {}
    for name, draws in samples.items():
        x = np.asarray(draws)
        if x.ndim >= 2 and x.shape[1] >= min_draws:
            same = np.all(x == x[:, :1], axis=1).reshape(x.shape[0], -1)
            out[name] = same.any(axis=1)
    return out


def warn_collapsed(owner: str, tuning: dict, samples: dict,
                   sites: dict[str, tuple] | Callable[[], dict[str, tuple]],
                   stacklevel: int = 3) -> list[int]:
    """Warn (:class:`WarmupWarning`) if warmup left any chain unable to move; return those.

    A chain is named if its tuned step size collapsed (:func:`collapsed_chains`) or if the
    draws of one of its latent sites never change (a mass matrix estimated from a chain
    that did not move hides the collapse from the step size: its moves fall below the
    float resolution of the values). ``tuning`` is a Langevin method's ``result.tuning``
    (``step_size``, ``inverse_mass_matrix``, for unadjusted kernels ``warmup_step_size``,
    that of the MALA warmup that tuned them), ``samples`` the constrained draws, ``sites``
    the unconstrained shapes of the latent sites (or a function returning them, called
    only when there may be something to warn about).

    Example:
        >>> import numpy as np
        >>> tuning = {"step_size": np.array([0.5, 1e-7]), "inverse_mass_matrix": np.ones((2, 1))}
        >>> import warnings
        >>> with warnings.catch_warnings(record=True):
        ...     warn_collapsed("MALA", tuning, {"y": np.random.randn(2, 3)}, {"y": ()})
        [1]
    """
    h = np.asarray(tuning.get("warmup_step_size", tuning["step_size"]), dtype=float)
    h = h.reshape(-1)
    imm = np.asarray(tuning["inverse_mass_matrix"], dtype=float)
    dim = imm.shape[-1]
    step_bad = ~(np.isfinite(h) & (h >= collapse_threshold(dim)))
    frozen_sites = _frozen(samples)
    if not step_bad.any() and not any(f.any() for f in frozen_sites.values()):
        return []
    if callable(sites):
        sites = sites()
    frozen_sites = {n: f for n, f in frozen_sites.items() if n in sites and f.any()}
    frozen = np.zeros_like(step_bad)
    for f in frozen_sites.values():
        frozen |= f
    bad = np.flatnonzero(step_bad | frozen)
    if bad.size == 0:
        return []
    diag = imm if imm.ndim == 2 else np.diagonal(imm, axis1=-2, axis2=-1)
    # Per coordinate: the proposal sd of one MALA step, sqrt(2 h M_ii), over the bad chains.
    move = np.sqrt(np.maximum(2.0 * h[bad, None] * diag[bad], 0.0)).max(axis=0)
    ranked = sorted(((name not in frozen_sites, float(move[a:b].max()), name)
                     for name, a, b in _flat_sites(sites) if b > a))
    named = []
    for still, m, name in ranked[:4]:
        where = ""
        if name in samples:
            where = f", at {_value(np.asarray(samples[name])[bad, 0])}"
        how = "" if still else "its draws never change; "
        named.append(f"'{name}' ({how}moves ~{m:.2g} per step on the unconstrained "
                     f"scale{where})")
    why = []
    if step_bad.any():
        why.append(f"chain(s) {np.flatnonzero(step_bad).tolist()} tuned a step size of "
                   f"{_value(h[step_bad])}, below {collapse_threshold(dim):.2g} (1/100 of "
                   f"the scale a {dim}-dimensional posterior needs)")
    if frozen.any():
        why.append(f"in chain(s) {np.flatnonzero(frozen).tolist()} the draws of "
                   f"{sorted(frozen_sites)} never change")
    warnings.warn(
        f"{owner}: warmup left chain(s) {bad.tolist()} unable to move: {'; '.join(why)}. "
        "Such chains only jitter in place, and chains frozen at the same point even agree: "
        f"their R-hat and ESS cannot be trusted. The sites that barely move: "
        f"{', '.join(named)}. This is the neck of a funnel or a degenerate mode (a "
        "hierarchical scale going to 0, a concentration going to infinity): reparameterize "
        "the model (non-centred), give init_params away from it, or use inference.NUTS().",
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
