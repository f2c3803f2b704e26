"""Flow matching and rectified flow: learn a velocity field, sample with a few-step ODE, reflow.

A velocity field ``v(x, t)`` (one point ``x`` of shape ``(d,)``, a scalar time ``t`` in
``[0, 1]``) transports a source ``x0 ~ p0`` (by default ``N(0, I)``) at ``t = 0`` to the
data ``x1 ~ p1`` at ``t = 1`` through ``dx/dt = v(x, t)``.

Conditional flow matching (Lipman et al. 2023; Liu et al. 2023; Albergo & Vanden-Eijnden
2023) regresses ``v`` on the velocity of a path between a pair ``(x0, x1)``:

    x_t = (1 - t) x0 + t x1 + gamma(t) z,    u_t = x1 - x0 + gamma'(t) z,    z ~ N(0, I)
    loss(v) = E_{t ~ U(0, 1), (x0, x1), z} |v(x_t, t) - u_t|^2

* ``path="straight"`` -- the rectified / OT-displacement path, ``gamma(t) = sigma``
  (constant; ``sigma = 0`` by default, the plain rectified flow; ``sigma > 0`` is the
  constant-width Gaussian path, which blurs the endpoints by ``sigma``).
* ``path="interpolant"`` -- a stochastic interpolant with ``gamma(t) = sigma sin(pi t)``
  (``sigma = 0.5`` by default): the noise vanishes at both ends (the endpoint laws are
  exactly ``p0`` and ``p1``) and peaks at ``sigma`` at ``t = 1/2``. Its derivative
  ``pi sigma cos(pi t)`` is bounded; the Brownian-bridge choice ``sqrt(t (1 - t))`` has a
  regression target of infinite variance at the ends, which is why it is not used here.

The minimiser is the marginal velocity ``v*(x, t) = E[u_t | x_t = x]``, whose flow maps
``p0`` to ``p1`` (:func:`gaussian_velocity` is its closed form for a Gaussian target).

Public pieces:

* :class:`VelocityMLP` -- an Equinox MLP ``v(x, t)`` on ``[x, time features]``.
* :func:`cfm_loss` -- the loss above on a batch of pairs (pure, jittable).
* :func:`train` -- Adam (any optax optimizer) on :func:`cfm_loss`, ``eqx.filter_jit``-ed
  chunks of ``lax.scan`` steps with a progress bar; independent pairs (``x0`` drawn fresh)
  or fixed couplings (for reflow).
* :func:`sample` -- integrate the ODE with ``"euler"``, ``"heun"``, ``"rk4"`` at a chosen
  number of steps, or ``"adaptive"`` (diffrax's Tsit5 with a PID controller, when diffrax is
  installed); returns the samples and the number of field evaluations (NFE).
* :func:`reflow` -- the second rectification: couple ``x0`` with ``ODE(x0)`` under the
  current field and train a new field on these pairs, which straightens the trajectories
  so that one or two Euler steps suffice.
* :func:`straightness` -- ``S(v) = int_0^1 E|x1 - x0 - v(x_t, t)|^2 dt`` along the ODE
  trajectories (zero iff they are straight lines travelled at constant speed).
* :func:`log_density` -- ``log p1(x1) = log p0(x0) - int_0^1 div v(x_t, t) dt``
  (instantaneous change of variables), with the exact divergence (trace of the Jacobian)
  or Hutchinson's unbiased estimate ``eps^T J eps`` (Rademacher ``eps``, fixed along each
  trajectory).

Example:
    >>> import jax, jax.numpy as jnp
    >>> v = gaussian_velocity(mean=jnp.array([2.0, 1.0]), scale=0.5)
    >>> x0 = jax.random.normal(jax.random.key(0), (2000, 2))
    >>> x1, nfe = sample(v, x0, steps=8, method="rk4")
    >>> nfe, [round(float(a), 1) for a in x1.mean(0)], [round(float(a), 1) for a in x1.std(0)]
    (32, [2.0, 1.0], [0.5, 0.5])
"""

from __future__ import annotations

import math
import numbers
from typing import Any, Callable, Literal, NamedTuple

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax

from inference.progress import ProgressBar, chunk_sizes

__all__ = [
    "VelocityMLP",
    "cfm_loss",
    "gaussian_velocity",
    "train",
    "TrainResult",
    "sample",
    "reflow",
    "ReflowResult",
    "straightness",
    "log_density",
    "FlowDensity",
    "PATHS",
    "METHODS",
]

#: Probability paths understood by :func:`cfm_loss`.
PATHS = ("straight", "interpolant")
#: ODE integrators understood by :func:`sample` and :func:`log_density`.
METHODS = ("euler", "heun", "rk4", "adaptive")
#: Field evaluations per step of each fixed-step integrator.
_EVALS = {"euler": 1, "heun": 2, "rk4": 4}
_DEFAULT_SIGMA = {"straight": 0.0, "interpolant": 0.5}

Field = Callable[[jax.Array, jax.Array], jax.Array]


# ---------------------------------------------------------------------------------------
# input checks
# ---------------------------------------------------------------------------------------


def _positive_int(fn: str, name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
        raise ValueError(f"{fn}: {name} must be an int >= 1; got {value!r}.")
    return int(value)


def _check_method(fn: str, method: str, allowed: tuple[str, ...] = METHODS) -> str:
    if method not in allowed:
        raise ValueError(f"{fn}: unknown method {method!r}; choose one of {', '.join(allowed)}.")
    return method


def _check_path(fn: str, path: str, sigma: Any) -> tuple[str, float]:
    if path not in PATHS:
        raise ValueError(f"{fn}: unknown path {path!r}; choose one of {', '.join(PATHS)}.")
    if sigma is None:
        sigma = _DEFAULT_SIGMA[path]
    if isinstance(sigma, bool) or not isinstance(sigma, numbers.Real) or not sigma >= 0:
        raise ValueError(f"{fn}: sigma must be a number >= 0 (the noise scale); got {sigma!r}.")
    return path, float(sigma)


def _points(fn: str, name: str, x: Any) -> jax.Array:
    """``x`` as an ``(n, d)`` float array (a single point ``(d,)`` becomes ``(1, d)``)."""
    x = jnp.asarray(x)
    if not jnp.issubdtype(x.dtype, jnp.floating):
        x = x.astype(jnp.result_type(float))
    if x.ndim == 1:
        x = x[None]
    if x.ndim != 2 or x.shape[0] < 1 or x.shape[1] < 1:
        raise ValueError(f"{fn}: {name} must have shape (n, d) or (d,); got {x.shape}.")
    return x


def _check_field(fn: str, v: Field, d: int, dtype) -> None:
    """The field takes one point ``(d,)`` and a scalar time and returns ``(d,)``."""
    point, time = jax.ShapeDtypeStruct((d,), dtype), jax.ShapeDtypeStruct((), dtype)
    field_dim = getattr(v, "dim", None)
    if isinstance(field_dim, int) and field_dim != d:
        raise ValueError(
            f"{fn}: the velocity field is for points of dimension {field_dim}, but the points "
            f"have dimension {d} (shape (n, {d})); pass draws of shape (n, {field_dim}) or "
            f"build the field with dim={d}."
        )
    try:
        out = jax.eval_shape(v, point, time)
    except Exception as err:  # the field's own error, reported with the shapes involved
        raise ValueError(
            f"{fn}: the velocity field cannot be called as v(x, t) with x of shape ({d},) "
            f"and a scalar t: {type(err).__name__}: {err}"
        ) from err
    if getattr(out, "shape", None) != (d,):
        raise ValueError(
            f"{fn}: v(x, t) must return the velocity at x, shape ({d},); got "
            f"{getattr(out, 'shape', out)} for x of shape ({d},)."
        )


# ---------------------------------------------------------------------------------------
# the velocity field
# ---------------------------------------------------------------------------------------


class VelocityMLP(eqx.Module):
    """An MLP velocity field ``v(x, t)`` on ``[x, t, sin(pi 2^k t), cos(pi 2^k t)]``.

    ``depth`` hidden layers of ``width`` units with SiLU, ``time_frequencies`` Fourier
    frequencies ``pi 2^k`` (``k = 0, 1, ...``) for the time embedding, a linear output.
    ``x`` of shape ``(dim,)`` with a scalar ``t`` gives ``(dim,)``; a batch ``(n, dim)``
    with a scalar ``t`` or ``t`` of shape ``(n,)`` gives ``(n, dim)``.

    Example:
        >>> import jax, jax.numpy as jnp
        >>> v = VelocityMLP(2, jax.random.key(0), width=32, depth=2)
        >>> v(jnp.zeros(2), 0.5).shape, v(jnp.zeros((7, 2)), 0.5).shape
        ((2,), (7, 2))
    """

    layers: tuple[eqx.nn.Linear, ...]
    dim: int = eqx.field(static=True)
    time_frequencies: int = eqx.field(static=True)

    def __init__(self, dim: int, key: jax.Array, width: int = 128, depth: int = 3,
                 time_frequencies: int = 4):
        dim = _positive_int("VelocityMLP", "dim", dim)
        width = _positive_int("VelocityMLP", "width", width)
        depth = _positive_int("VelocityMLP", "depth", depth)
        if isinstance(time_frequencies, bool) or not isinstance(time_frequencies, numbers.Integral) \
                or time_frequencies < 0:
            raise ValueError(f"VelocityMLP: time_frequencies must be an int >= 0; got "
                             f"{time_frequencies!r}.")
        self.dim, self.time_frequencies = dim, int(time_frequencies)
        sizes = [dim + 1 + 2 * self.time_frequencies] + [width] * depth + [dim]
        keys = jax.random.split(key, len(sizes) - 1)
        self.layers = tuple(eqx.nn.Linear(a, b, key=k) for a, b, k in zip(sizes[:-1], sizes[1:], keys))

    def _embed(self, t: jax.Array) -> jax.Array:
        freqs = math.pi * 2.0 ** jnp.arange(self.time_frequencies, dtype=t.dtype)
        return jnp.concatenate([t[None], jnp.sin(freqs * t), jnp.cos(freqs * t)])

    def _one(self, x: jax.Array, t: jax.Array) -> jax.Array:
        h = jnp.concatenate([x, self._embed(t.astype(x.dtype))])
        for layer in self.layers[:-1]:
            h = jax.nn.silu(layer(h))
        return self.layers[-1](h)

    def __call__(self, x: jax.Array, t: Any) -> jax.Array:
        x, t = jnp.asarray(x), jnp.asarray(t)
        if x.shape[-1:] != (self.dim,) or x.ndim > 2:
            raise ValueError(f"VelocityMLP: x must have shape ({self.dim},) or (n, {self.dim}); "
                             f"got {x.shape}.")
        if x.ndim == 1:
            if t.ndim != 0:
                raise ValueError(f"VelocityMLP: t must be a scalar for one point; got {t.shape}.")
            return self._one(x, t)
        if t.ndim == 0:
            return jax.vmap(self._one, in_axes=(0, None))(x, t)
        if t.shape != x.shape[:1]:
            raise ValueError(f"VelocityMLP: t must be a scalar or of shape ({x.shape[0]},) for "
                             f"x of shape {x.shape}; got {t.shape}.")
        return jax.vmap(self._one)(x, t)


def gaussian_velocity(mean: Any, scale: Any = 1.0, path: str = "straight",
                      sigma: float | None = None) -> Field:
    """The optimal (marginal) velocity from ``N(0, I)`` to ``N(mean, diag(scale^2))``.

    For independent ``x0 ~ N(0, I)``, ``x1 ~ N(m, s^2)`` (per coordinate) and the path
    ``x_t = (1 - t) x0 + t x1 + gamma(t) z`` (see the module docstring), ``x_t`` and the
    target ``u_t = x1 - x0 + gamma'(t) z`` are jointly Gaussian with

        E x_t = t m,   Var x_t = (1 - t)^2 + t^2 s^2 + gamma^2,
        E u_t = m,     Cov(u_t, x_t) = t s^2 - (1 - t) + gamma gamma',

    so ``v*(x, t) = E[u_t | x_t = x] = m + Cov / Var * (x - t m)``. (At ``t = 0`` with
    ``gamma = 0`` this is ``m - x = E[x1 - x0 | x0 = x]``; at ``t = 1`` it is ``x``.)

    Example:
        >>> import jax.numpy as jnp
        >>> v = gaussian_velocity(jnp.array([1.0]), 2.0)
        >>> float(v(jnp.array([0.0]), 0.0)[0]), float(v(jnp.array([3.0]), 1.0)[0])
        (1.0, 3.0)
    """
    path, sigma = _check_path("gaussian_velocity", path, sigma)
    m = jnp.asarray(mean, jnp.result_type(float))
    s2 = jnp.asarray(scale, m.dtype) ** 2
    if jnp.any(s2 <= 0):
        raise ValueError(f"gaussian_velocity: scale must be positive; got {scale!r}.")

    def v(x: jax.Array, t: Any) -> jax.Array:
        t = jnp.asarray(t, m.dtype)
        g, dg = _gamma(path, sigma, t)
        var = (1 - t) ** 2 + t**2 * s2 + g**2
        cov = t * s2 - (1 - t) + g * dg
        return m + cov / var * (x - t * m)

    return v


# ---------------------------------------------------------------------------------------
# the loss and training
# ---------------------------------------------------------------------------------------


def _gamma(path: str, sigma: float, t: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Noise scale ``gamma(t)`` and its derivative."""
    if path == "straight":
        return jnp.full_like(t, sigma), jnp.zeros_like(t)
    return sigma * jnp.sin(math.pi * t), math.pi * sigma * jnp.cos(math.pi * t)


def cfm_loss(v: Field, key: jax.Array, x0: Any, x1: Any, path: str = "straight",
             sigma: float | None = None) -> jax.Array:
    """Conditional flow-matching loss on the pairs ``(x0[i], x1[i])`` (mean over pairs).

    ``t ~ U(0, 1)`` and ``z ~ N(0, I)`` per pair from ``key``; the loss is the mean of
    ``|v(x_t, t) - u_t|^2`` (summed over coordinates) with ``x_t, u_t`` of ``path`` (module
    docstring). Independent ``x0, x1`` give (1-)rectified flow; coupled pairs reflow.

    Example:
        >>> import jax, jax.numpy as jnp
        >>> x0 = jax.random.normal(jax.random.key(0), (4096, 2)); x1 = x0 + 3.0
        >>> v = lambda x, t: jnp.full(2, 3.0)  # the exact velocity of this coupling
        >>> round(float(cfm_loss(v, jax.random.key(1), x0, x1)), 6)
        0.0
    """
    path, sigma = _check_path("cfm_loss", path, sigma)
    x0, x1 = _points("cfm_loss", "x0", x0), _points("cfm_loss", "x1", x1)
    if x0.shape != x1.shape:
        raise ValueError(f"cfm_loss: x0 and x1 must be pairs of the same shape (n, d); got "
                         f"{x0.shape} and {x1.shape}.")
    _check_field("cfm_loss", v, x0.shape[1], x0.dtype)
    return _cfm_loss(v, key, x0, x1, path, sigma)


def _cfm_loss(v, key, x0, x1, path, sigma):
    kt, kz = jax.random.split(key)
    t = jax.random.uniform(kt, (x0.shape[0],), x0.dtype)
    g, dg = _gamma(path, sigma, t)
    xt = (1 - t)[:, None] * x0 + t[:, None] * x1
    target = x1 - x0
    if path == "interpolant" or sigma > 0:
        z = jax.random.normal(kz, x0.shape, x0.dtype)
        xt = xt + g[:, None] * z
        target = target + dg[:, None] * z
    pred = jax.vmap(v)(xt, t)
    return jnp.mean(jnp.sum((pred - target) ** 2, axis=-1))


class TrainResult(NamedTuple):
    """What :func:`train` returns: the trained ``field`` and the per-step ``losses``."""

    field: Any
    losses: jax.Array


Sampler = Callable[[jax.Array, int], jax.Array]


def train(
    v: eqx.Module,
    key: jax.Array,
    data: Any,
    *,
    x0: Any = None,
    steps: int = 2000,
    batch_size: int = 256,
    optimizer: optax.GradientTransformation | None = None,
    path: str = "straight",
    sigma: float | None = None,
    progress: bool | ProgressBar = False,
    updates: int = 20,
) -> TrainResult:
    """Train the velocity field ``v`` (an Equinox module) on :func:`cfm_loss`.

    Args:
        v: the initial field; its inexact-array leaves are trained.
        key: a ``jax.random.key``; step ``i`` uses ``fold_in(key, i)``.
        data: the target draws ``x1``: an array ``(n, d)`` (minibatches drawn with
            replacement) or a sampler ``data(key, batch_size) -> (batch_size, d)``
            (fresh draws each step, e.g. :mod:`models.toy2d`).
        x0: the source: ``None`` (fresh ``N(0, I)`` draws each step, independent of
            ``x1``), a sampler ``x0(key, batch_size)``, or an array ``(n, d)`` paired row
            by row with an array ``data`` (fixed couplings, as :func:`reflow` uses).
        steps: optimizer steps; batch_size: pairs per step.
        optimizer: an optax transformation; default ``optax.adam(1e-3)``.
        path, sigma: the probability path of :func:`cfm_loss`.
        progress: show a progress bar (or a :class:`~inference.progress.ProgressBar`).
        updates: how many host round trips (bar updates, finiteness checks) per run.

    Returns:
        :class:`TrainResult` ``(field, losses)``, ``losses`` of shape ``(steps,)``.

    Raises:
        FloatingPointError: when a chunk of steps produced a non-finite loss (the message
            names the chunk; lower the learning rate).

    Example:
        >>> import jax, jax.numpy as jnp
        >>> target = lambda k, n: 2.0 + 0.5 * jax.random.normal(k, (n, 1))
        >>> v = VelocityMLP(1, jax.random.key(0), width=32, depth=2)
        >>> r = train(v, jax.random.key(1), target, steps=300, batch_size=128)
        >>> bool(r.losses[-50:].mean() < r.losses[:50].mean())
        True
    """
    path, sigma = _check_path("train", path, sigma)
    steps = _positive_int("train", "steps", steps)
    batch_size = _positive_int("train", "batch_size", batch_size)
    updates = _positive_int("train", "updates", updates)
    optimizer = optax.adam(1e-3) if optimizer is None else optimizer
    if not (callable(getattr(optimizer, "init", None)) and callable(getattr(optimizer, "update", None))):
        raise TypeError(f"train: optimizer must be an optax GradientTransformation; got {optimizer!r}.")

    data_fn = data if callable(data) else None
    data_arr = None if data_fn else _points("train", "data", data)
    source_fn = x0 if callable(x0) else None
    x0_arr = None if (x0 is None or source_fn) else _points("train", "x0", x0)
    if x0_arr is not None:
        if data_arr is None or data_arr.shape != x0_arr.shape:
            raise ValueError(
                "train: an array x0 is a fixed coupling with an array data of the same shape "
                f"(n, d); got x0 {x0_arr.shape} and data "
                f"{'a sampler' if data_arr is None else data_arr.shape}. Pass x0=None or a "
                "sampler x0(key, n) for independent pairs."
            )
    if data_arr is not None:
        d, dtype = data_arr.shape[1], data_arr.dtype
    else:
        probe = jax.eval_shape(lambda k: data_fn(k, batch_size), jax.random.key(0))
        if len(probe.shape) != 2 or probe.shape[0] != batch_size:
            raise ValueError(f"train: data(key, {batch_size}) must return ({batch_size}, d); "
                             f"got {probe.shape}.")
        d, dtype = probe.shape[1], probe.dtype
    if source_fn is not None:
        probe = jax.eval_shape(lambda k: source_fn(k, batch_size), jax.random.key(0))
        if probe.shape != (batch_size, d):
            raise ValueError(f"train: x0(key, {batch_size}) must return ({batch_size}, {d}) "
                             f"like the data; got {probe.shape}.")
    _check_field("train", v, d, dtype)

    params, static = eqx.partition(v, eqx.is_inexact_array)
    if not jax.tree_util.tree_leaves(params):
        raise ValueError("train: the velocity field has no float array leaves to train.")

    def batch(k):
        kd, ks, ki = jax.random.split(k, 3)
        if data_arr is not None:
            idx = jax.random.randint(ki, (batch_size,), 0, data_arr.shape[0])
            x1b = data_arr[idx]
        else:
            idx, x1b = None, data_fn(kd, batch_size)
        if x0_arr is not None:
            x0b = x0_arr[idx]
        elif source_fn is not None:
            x0b = source_fn(ks, batch_size)
        else:
            x0b = jax.random.normal(ks, (batch_size, d), dtype)
        return x0b, x1b

    def loss_fn(p, k):
        kb, kl = jax.random.split(k)
        x0b, x1b = batch(kb)
        return _cfm_loss(eqx.combine(p, static), kl, x0b, x1b, path, sigma)

    n_chunks, chunk = chunk_sizes(steps, updates)
    padded = n_chunks * chunk > steps

    @eqx.filter_jit
    def run_chunk(p, opt_state, start):
        def step(carry, i):
            p, s = carry
            loss, g = jax.value_and_grad(loss_fn)(p, jax.random.fold_in(key, i))
            upd, s = optimizer.update(g, s, p)
            return (optax.apply_updates(p, upd), s), loss

        def body(carry, i):
            if not padded:
                return step(carry, i)
            # steps past the end (padding of the last chunk) leave everything untouched
            nan = jnp.full((), jnp.nan, dtype)
            return jax.lax.cond(i < steps, step, lambda c, i: (c, nan), carry, i)

        (p, opt_state), losses = jax.lax.scan(body, (p, opt_state), start + jnp.arange(chunk))
        return p, opt_state, losses

    opt_state = optimizer.init(params)
    bar = progress if isinstance(progress, ProgressBar) else ProgressBar(
        steps, desc="flow matching", enabled=bool(progress))
    chunks = []
    try:
        for c in range(n_chunks):
            new_params, new_state, losses = run_chunk(params, opt_state, jnp.asarray(c * chunk))
            valid = losses[: max(0, min(chunk, steps - c * chunk))]
            if not bool(jnp.all(jnp.isfinite(valid))):
                first = c * chunk + int(np.argmax(~np.isfinite(np.asarray(valid))))
                raise FloatingPointError(
                    f"train: non-finite loss at step {first} (0-based); the field returned "
                    f"holds no result -- lower the learning rate or check the data "
                    f"(finite, of moderate scale)."
                )
            params, opt_state = new_params, new_state
            chunks.append(valid)
            bar.update(min((c + 1) * chunk, steps), {"loss": float(jnp.mean(valid))})
    finally:
        bar.close()
    return TrainResult(eqx.combine(params, static), jnp.concatenate(chunks))


# ---------------------------------------------------------------------------------------
# ODE integration
# ---------------------------------------------------------------------------------------


def _tree_axpy(a, x, y):
    """``y + a * x`` leafwise."""
    return jax.tree.map(lambda xi, yi: yi + a * xi, x, y)


def _rk_step(f, method: str, y, t, h):
    if method == "euler":
        return _tree_axpy(h, f(y, t), y)
    if method == "heun":
        k1 = f(y, t)
        k2 = f(_tree_axpy(h, k1, y), t + h)
        return jax.tree.map(lambda yi, a, b: yi + 0.5 * h * (a + b), y, k1, k2)
    k1 = f(y, t)
    k2 = f(_tree_axpy(0.5 * h, k1, y), t + 0.5 * h)
    k3 = f(_tree_axpy(0.5 * h, k2, y), t + 0.5 * h)
    k4 = f(_tree_axpy(h, k3, y), t + h)
    return jax.tree.map(lambda yi, a, b, c, d: yi + h / 6 * (a + 2 * b + 2 * c + d), y, k1, k2, k3, k4)


def _odeint_fixed(f, y0, t0: float, t1: float, steps: int, method: str, save_path: bool = False):
    """Fixed-step integration of ``dy/dt = f(y, t)``; the states at every grid time when
    ``save_path`` (stacked, including ``y0``)."""
    h = (t1 - t0) / steps

    def body(y, k):
        y = _rk_step(f, method, y, t0 + k * h, h)
        return y, (y if save_path else None)

    dtype = jax.tree_util.tree_leaves(y0)[0].dtype
    y, path = jax.lax.scan(body, y0, jnp.arange(steps, dtype=dtype))
    if save_path:
        path = jax.tree.map(lambda a, b: jnp.concatenate([a[None], b]), y0, path)
    return y, path


def _odeint_adaptive(f, y0, t0: float, t1: float, steps: int, rtol: float, atol: float,
                     max_steps: int):
    try:
        import diffrax
    except ImportError as err:  # pragma: no cover - depends on the environment
        raise ImportError("method='adaptive' needs diffrax (pip install diffrax); the fixed-step "
                          "methods 'euler', 'heun' and 'rk4' need nothing else.") from err
    term = diffrax.ODETerm(lambda t, y, args: f(y, t))
    sol = diffrax.diffeqsolve(
        term, diffrax.Tsit5(), t0, t1, dt0=(t1 - t0) / steps, y0=y0,
        stepsize_controller=diffrax.PIDController(rtol=rtol, atol=atol),
        max_steps=max_steps, saveat=diffrax.SaveAt(t1=True),
    )
    y = jax.tree.map(lambda a: a[-1], sol.ys)
    # Tsit5 has 7 stages, the last reused by the next step (FSAL): 6 new evaluations per
    # attempted step (accepted or rejected) plus the first.
    nfe = 6 * sol.stats["num_steps"] + 1
    return y, nfe


def _batch_field(v: Field):
    return lambda x, t: jax.vmap(v, in_axes=(0, None))(x, t)


@eqx.filter_jit
def _sample(v, x0, steps, method, t0, t1, rtol, atol, max_steps):
    f = _batch_field(v)
    if method == "adaptive":
        return _odeint_adaptive(f, x0, t0, t1, steps, rtol, atol, max_steps)
    return _odeint_fixed(f, x0, t0, t1, steps, method)[0], steps * _EVALS[method]


def sample(
    v: Field,
    x0: Any,
    steps: int,
    method: Literal["euler", "heun", "rk4", "adaptive"] = "euler",
    *,
    t0: float = 0.0,
    t1: float = 1.0,
    rtol: float = 1e-4,
    atol: float = 1e-4,
    max_steps: int = 4096,
) -> tuple[jax.Array, Any]:
    """Integrate ``dx/dt = v(x, t)`` from ``t0`` to ``t1`` (default 0 -> 1) from ``x0``.

    Args:
        v: the velocity field ``v(x, t)`` on one point ``(d,)`` and a scalar ``t``.
        x0: starting points ``(n, d)`` (or one point ``(d,)``).
        steps: number of steps (``>= 1``); for ``"adaptive"``, the first step is
            ``(t1 - t0) / steps`` and the controller takes it from there.
        method: ``"euler"`` (1 evaluation per step), ``"heun"`` (2), ``"rk4"`` (4) or
            ``"adaptive"`` (diffrax Tsit5, error control ``rtol``/``atol``, at most
            ``max_steps`` steps).

    Returns:
        ``(x1, nfe)``: the end points (shape of ``x0``) and the number of field evaluations
        per point (an int; a JAX scalar for ``"adaptive"``, which decides it at run time).

    Example:
        >>> import jax.numpy as jnp
        >>> x1, nfe = sample(lambda x, t: -x, jnp.ones((3, 1)), steps=10, method="heun")
        >>> nfe, round(float(x1[0, 0]), 2)  # exp(-1) = 0.368
        (20, 0.37)
    """
    steps = _positive_int("sample", "steps", steps)
    method = _check_method("sample", method)
    single = jnp.ndim(x0) == 1
    x = _points("sample", "x0", x0)
    _check_field("sample", v, x.shape[1], x.dtype)
    x1, nfe = _sample(v, x, steps, method, float(t0), float(t1), float(rtol), float(atol),
                      int(max_steps))
    return (x1[0] if single else x1), nfe


def straightness(v: Field, x0: Any, steps: int = 100, method: str = "rk4") -> jax.Array:
    """``S(v) = int_0^1 E|x1 - x0 - v(x_t, t)|^2 dt`` along the ODE paths from ``x0``.

    ``x_t`` is the ODE solution from ``x0`` (``steps`` steps of ``method``) and ``x1``
    its end point; the time integral is the trapezoid rule over the step grid. ``S = 0``
    exactly when every path is a straight line run at constant speed, which is what lets
    one Euler step (``x1 = x0 + v(x0, 0)``) be exact; reflow lowers it.

    Example:
        >>> import jax.numpy as jnp
        >>> round(float(straightness(lambda x, t: jnp.ones_like(x), jnp.zeros((4, 2)))), 6)
        0.0
    """
    steps = _positive_int("straightness", "steps", steps)
    method = _check_method("straightness", method, ("euler", "heun", "rk4"))
    x = _points("straightness", "x0", x0)
    _check_field("straightness", v, x.shape[1], x.dtype)
    return _straightness(v, x, steps, method)


@eqx.filter_jit
def _straightness(v, x0, steps, method):
    f = _batch_field(v)
    x1, path = _odeint_fixed(f, x0, 0.0, 1.0, steps, method, save_path=True)
    ts = jnp.linspace(0.0, 1.0, steps + 1, dtype=x0.dtype)
    vel = jax.vmap(f)(path, ts)  # (steps + 1, n, d)
    dev = jnp.mean(jnp.sum((x1 - x0 - vel) ** 2, axis=-1), axis=-1)
    return jnp.trapezoid(dev, ts)


# ---------------------------------------------------------------------------------------
# reflow
# ---------------------------------------------------------------------------------------


class ReflowResult(NamedTuple):
    """What :func:`reflow` returns: the new ``field``, the couplings ``(x0, x1)`` it was
    trained on (``x1 = ODE(x0)`` under the old field) and the training ``losses``."""

    field: Any
    x0: jax.Array
    x1: jax.Array
    losses: jax.Array


def reflow(
    v: Field,
    key: jax.Array,
    x0: Any,
    *,
    init: eqx.Module | None = None,
    ode_steps: int = 32,
    method: str = "rk4",
    steps: int = 2000,
    batch_size: int = 256,
    optimizer: optax.GradientTransformation | None = None,
    progress: bool | ProgressBar = False,
    updates: int = 20,
) -> ReflowResult:
    """The next rectification: train a field on the couplings ``(x0, ODE_v(x0))``.

    ``x1 = sample(v, x0, ode_steps, method)`` pairs each source draw with where the
    current flow sends it; a new field is trained on these fixed pairs with the straight
    path (:func:`train` with an array ``x0``). The pairs' marginals are those of ``v``'s
    flow, but the coupling is deterministic, so the rectified field's paths cross less and
    are straighter (Liu et al. 2023): :func:`straightness` drops and few-step Euler
    sampling improves, at the price of inheriting ``v``'s errors in the marginal of ``x1``.

    Args:
        v: the current field (the 1-rectified flow for 2-rectified, and so on).
        key: randomness for training.
        x0: source draws ``(n, d)`` to couple (use many: the new field sees only these).
        init: the field to start training from; default ``v`` itself (warm start).
        ode_steps, method: the integrator that produces the couplings.
        steps, batch_size, optimizer, progress, updates: as in :func:`train`.

    Example:
        >>> import jax, jax.numpy as jnp
        >>> v1 = gaussian_velocity(jnp.array([2.0, 0.0]), 0.3)  # curved paths
        >>> x0 = jax.random.normal(jax.random.key(0), (2048, 2))
        >>> new = VelocityMLP(2, jax.random.key(1), width=32, depth=2)
        >>> r = reflow(v1, jax.random.key(2), x0, init=new, steps=400)
        >>> bool(straightness(r.field, x0[:256]) < straightness(v1, x0[:256]))
        True
    """
    ode_steps = _positive_int("reflow", "ode_steps", ode_steps)
    method = _check_method("reflow", method)
    x0 = _points("reflow", "x0", x0)
    init = v if init is None else init
    if not isinstance(init, eqx.Module):
        raise TypeError("reflow: the field to train must be an Equinox module (pass "
                        f"init=VelocityMLP(...) when v is a plain function); got {type(init).__name__}.")
    x1, _ = sample(v, x0, ode_steps, method)
    x1 = jax.lax.stop_gradient(x1)
    result = train(init, key, x1, x0=x0, steps=steps, batch_size=batch_size, optimizer=optimizer,
                   path="straight", sigma=0.0, progress=progress, updates=updates)
    return ReflowResult(result.field, x0, x1, result.losses)


# ---------------------------------------------------------------------------------------
# log density
# ---------------------------------------------------------------------------------------


class FlowDensity(NamedTuple):
    """What :func:`log_density` returns: the source points ``x0``, the data points ``x1``
    (one of them the input), ``log_prob`` = log density of the flow's law at ``x1``, and
    ``nfe`` (field-plus-divergence evaluations per point)."""

    x0: jax.Array
    x1: jax.Array
    log_prob: jax.Array
    nfe: Any


def _standard_normal_log_prob(x: jax.Array) -> jax.Array:
    return -0.5 * jnp.sum(x**2, axis=-1) - 0.5 * x.shape[-1] * math.log(2 * math.pi)


def log_density(
    v: Field,
    x: Any,
    steps: int,
    method: Literal["euler", "heun", "rk4", "adaptive"] = "rk4",
    *,
    given: Literal["x1", "x0"] = "x1",
    divergence: Literal["exact", "hutchinson"] = "exact",
    key: jax.Array | None = None,
    probes: int = 1,
    source_log_prob: Callable[[jax.Array], jax.Array] | None = None,
    rtol: float = 1e-4,
    atol: float = 1e-4,
    max_steps: int = 4096,
) -> FlowDensity:
    """Log density of the flow's law at data points, by the instantaneous change of variables.

    ``d/dt log p_t(x_t) = -div v(x_t, t)`` along ``dx/dt = v``, so
    ``log p1(x1) = log p0(x0) - int_0^1 div v(x_t, t) dt``. With ``given="x1"`` the points
    are data and the ODE runs backward (1 -> 0) to find ``x0``; with ``given="x0"`` they are
    source points and it runs forward, giving ``x1`` and its log density.

    Args:
        v, steps, method: the field and integrator (as in :func:`sample`).
        x: points ``(n, d)`` (or ``(d,)``), data (``given="x1"``) or source (``"x0"``).
        divergence: ``"exact"`` (trace of the Jacobian, ``d`` forward-mode passes) or
            ``"hutchinson"``: ``mean_p eps_p^T J eps_p`` with ``probes`` Rademacher vectors per
            point drawn from ``key`` and held fixed along the path, one forward-mode pass
            each. The ``x`` path does not depend on ``eps``, so the estimate is unbiased for
            the exact-divergence value of the same discretisation.
        source_log_prob: ``log p0`` on ``(n, d) -> (n,)``; default standard normal.

    Returns:
        :class:`FlowDensity` ``(x0, x1, log_prob, nfe)``.

    Example:
        >>> import jax, jax.numpy as jnp
        >>> v = gaussian_velocity(jnp.zeros(1), 2.0)  # N(0, 1) -> N(0, 4)
        >>> r = log_density(v, jnp.array([[0.0]]), steps=16)
        >>> round(float(r.log_prob[0]), 4), round(-0.5 * math.log(2 * math.pi * 4), 4)
        (-1.6121, -1.6121)
    """
    steps = _positive_int("log_density", "steps", steps)
    method = _check_method("log_density", method)
    if given not in ("x1", "x0"):
        raise ValueError(f"log_density: given must be 'x1' (data points) or 'x0' (source "
                         f"points); got {given!r}.")
    if divergence not in ("exact", "hutchinson"):
        raise ValueError(f"log_density: unknown divergence {divergence!r}; choose 'exact' or "
                         "'hutchinson'.")
    probes = _positive_int("log_density", "probes", probes)
    single = jnp.ndim(x) == 1
    pts = _points("log_density", "x", x)
    _check_field("log_density", v, pts.shape[1], pts.dtype)
    if divergence == "hutchinson":
        if key is None:
            raise ValueError("log_density: divergence='hutchinson' needs key=jax.random.key(...) "
                             "for the probe vectors.")
        eps = jax.random.rademacher(key, (probes,) + pts.shape, pts.dtype)
    else:
        eps = None
    source_log_prob = _standard_normal_log_prob if source_log_prob is None else source_log_prob
    x0, x1, log_prob, nfe = _log_density(v, pts, eps, steps, method, given, source_log_prob,
                                         float(rtol), float(atol), int(max_steps))
    if single:
        x0, x1, log_prob = x0[0], x1[0], log_prob[0]
    return FlowDensity(x0, x1, log_prob, nfe)


@eqx.filter_jit
def _log_density(v, pts, eps, steps, method, given, source_log_prob, rtol, atol, max_steps):
    def exact(x, t):
        fx = lambda y: v(y, t)  # noqa: E731
        return fx(x), jnp.trace(jax.jacfwd(fx)(x))

    def hutchinson(x, e, t):  # e: (probes, d)
        fx = lambda y: v(y, t)  # noqa: E731
        val, jv = jax.vmap(lambda ei: jax.jvp(fx, (x,), (ei,)))(e)
        return val[0], jnp.mean(jnp.sum(e * jv, axis=-1))

    def f(y, t):
        x = y[0]
        if eps is None:
            dx, div = jax.vmap(exact, in_axes=(0, None))(x, t)
        else:
            dx, div = jax.vmap(hutchinson, in_axes=(0, 1, None))(x, eps, t)
        return dx, div

    y0 = (pts, jnp.zeros(pts.shape[0], pts.dtype))
    t0, t1 = (1.0, 0.0) if given == "x1" else (0.0, 1.0)
    if method == "adaptive":
        (x_end, acc), nfe = _odeint_adaptive(f, y0, t0, t1, steps, rtol, atol, max_steps)
    else:
        (x_end, acc), _ = _odeint_fixed(f, y0, t0, t1, steps, method)
        nfe = steps * _EVALS[method]
    # acc = int_{t0}^{t1} div dt: -int_0^1 div when running backward, +int_0^1 forward.
    if given == "x1":
        x0, x1 = x_end, pts
        log_prob = source_log_prob(x0) + acc
    else:
        x0, x1 = pts, x_end
        log_prob = source_log_prob(x0) - acc
    return x0, x1, log_prob, nfe
