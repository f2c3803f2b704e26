"""Two-dimensional toy targets for flow and score samplers, with exact samplers.

Each target is a function ``sampler(key, n) -> (n, 2)`` that draws ``n`` exact samples
(the ground truth a learned sampler is compared with, e.g. by
:func:`inference.metrics.energy_distance`). All are scaled to lie roughly in ``[-3, 3]^2``,
comparable with a standard normal source.

* :func:`eight_gaussians` -- an equal mixture of 8 isotropic Gaussians (sd ``scale``)
  whose means sit evenly on a circle of radius ``radius``.
* :func:`two_moons` -- two interleaved half circles (radius 1, the second shifted by
  ``(1, -0.5)`` and flipped), with Gaussian noise of sd ``noise``, centred and scaled by
  ``1.5``.
* :func:`checkerboard` -- uniform on the "black" squares of a ``cells x cells`` board
  covering ``[-width/2, width/2]^2`` (square ``(i, j)`` is black when ``i + j`` is even,
  counting from the lower-left corner).

:data:`TARGETS` maps names to samplers; :func:`sample` draws by name with a clear error
for unknown names.

Example:
    >>> import jax
    >>> sample("two_moons", jax.random.key(0), 5).shape
    (5, 2)
"""

from __future__ import annotations

import math
import numbers
from typing import Callable

import jax
import jax.numpy as jnp

__all__ = ["eight_gaussians", "two_moons", "checkerboard", "TARGETS", "sample"]


def _check_n(fn: str, n) -> int:
    if isinstance(n, bool) or not isinstance(n, numbers.Integral) or n < 1:
        raise ValueError(f"{fn}: n must be a positive int (the number of draws); got {n!r}.")
    return int(n)


def _check_positive(fn: str, name: str, value) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not value > 0:
        raise ValueError(f"{fn}: {name} must be a positive number; got {value!r}.")
    return float(value)


def eight_gaussians(key: jax.Array, n: int, radius: float = 2.0, scale: float = 0.2) -> jax.Array:
    """``n`` draws from an equal mixture of 8 Gaussians on a circle, shape ``(n, 2)``.

    Component ``k`` has mean ``radius * (cos(k pi / 4), sin(k pi / 4))`` and sd ``scale``
    in each coordinate.

    Example:
        >>> import jax, jax.numpy as jnp
        >>> x = eight_gaussians(jax.random.key(0), 4000)
        >>> round(float(jnp.mean(jnp.linalg.norm(x, axis=1))), 1)  # close to the radius
        2.0
    """
    n = _check_n("eight_gaussians", n)
    radius = _check_positive("eight_gaussians", "radius", radius)
    scale = _check_positive("eight_gaussians", "scale", scale)
    kc, kz = jax.random.split(key)
    angle = jax.random.randint(kc, (n,), 0, 8) * (math.pi / 4)
    centres = radius * jnp.stack([jnp.cos(angle), jnp.sin(angle)], axis=1)
    return centres + scale * jax.random.normal(kz, (n, 2))


def two_moons(key: jax.Array, n: int, noise: float = 0.1) -> jax.Array:
    """``n`` draws from the two-moons distribution, shape ``(n, 2)``.

    A fair coin picks a moon; the angle is uniform on ``[0, pi]``; the upper moon is
    ``(cos a, sin a)``, the lower ``(1 - cos a, 0.5 - sin a)``; Gaussian noise of sd
    ``noise`` is added, then the points are centred (``- (0.5, 0.25)``) and scaled by 1.5.

    Example:
        >>> import jax
        >>> two_moons(jax.random.key(1), 3).shape
        (3, 2)
    """
    n = _check_n("two_moons", n)
    noise = _check_positive("two_moons", "noise", noise)
    kb, ka, kz = jax.random.split(key, 3)
    lower = jax.random.bernoulli(kb, 0.5, (n,))
    a = jax.random.uniform(ka, (n,), minval=0.0, maxval=math.pi)
    upper_pts = jnp.stack([jnp.cos(a), jnp.sin(a)], axis=1)
    lower_pts = jnp.stack([1.0 - jnp.cos(a), 0.5 - jnp.sin(a)], axis=1)
    x = jnp.where(lower[:, None], lower_pts, upper_pts) + noise * jax.random.normal(kz, (n, 2))
    return 1.5 * (x - jnp.array([0.5, 0.25]))


def checkerboard(key: jax.Array, n: int, cells: int = 4, width: float = 4.0) -> jax.Array:
    """``n`` draws uniform on the black squares of a checkerboard, shape ``(n, 2)``.

    The board has ``cells x cells`` squares (``cells`` even) covering
    ``[-width/2, width/2]^2``; square ``(i, j)`` (column ``i``, row ``j`` from the
    lower-left) is black when ``i + j`` is even, so every column holds ``cells / 2``
    black squares and the density is ``2 / width^2`` on them.

    Example:
        >>> import jax, jax.numpy as jnp
        >>> x = checkerboard(jax.random.key(0), 1000)
        >>> cols, rows = jnp.floor(x[:, 0] + 2), jnp.floor(x[:, 1] + 2)
        >>> bool(jnp.all((cols + rows) % 2 == 0))
        True
    """
    n = _check_n("checkerboard", n)
    if isinstance(cells, bool) or not isinstance(cells, numbers.Integral) or cells < 2 or cells % 2:
        raise ValueError(f"checkerboard: cells must be an even int >= 2; got {cells!r}.")
    width = _check_positive("checkerboard", "width", width)
    kx, kr, ky = jax.random.split(key, 3)
    side = width / cells
    u = jax.random.uniform(kx, (n,), minval=0.0, maxval=float(cells))  # in square units
    col = jnp.floor(u)
    # black rows in column i: j = (i mod 2) + 2k, k = 0..cells/2 - 1
    row = jnp.mod(col, 2) + 2 * jax.random.randint(kr, (n,), 0, cells // 2)
    v = row + jax.random.uniform(ky, (n,))
    return side * jnp.stack([u, v], axis=1) - width / 2


#: Target name -> exact sampler ``(key, n) -> (n, 2)`` with the default parameters.
TARGETS: dict[str, Callable[[jax.Array, int], jax.Array]] = {
    "8gaussians": eight_gaussians,
    "two_moons": two_moons,
    "checkerboard": checkerboard,
}


def sample(name: str, key: jax.Array, n: int) -> jax.Array:
    """``n`` exact draws from the toy target ``name`` (a key of :data:`TARGETS`).

    Example:
        >>> import jax
        >>> sample("8gaussians", jax.random.key(0), 2).shape
        (2, 2)
    """
    if name not in TARGETS:
        raise ValueError(f"toy2d.sample: unknown target {name!r}; available: {', '.join(TARGETS)}.")
    return TARGETS[name](key, n)
