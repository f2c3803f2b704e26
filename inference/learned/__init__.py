r"""Learned samplers for a model's posterior, with an independent Metropolis correction.

Train a density model of the posterior once, then draw from it cheaply:

1. *Where the draws come from.* Draws of another method (NUTS, any ``infer`` method, a
   :class:`inference.Result`, a dict of constrained samples, or an array of unconstrained
   draws), mapped to the model's flat unconstrained space by :func:`unconstrained_draws`;
   or a flow fitted by VI (``VI(guide="flow")``), read back by :func:`flow_from_vi`.
2. *What is learned.* A normalizing flow fitted by maximum likelihood to the draws
   (:func:`fit_flow_to_draws`, any kind of :mod:`inference.flows`), or a flow-matching
   velocity field (:func:`fit_flow_matching_to_draws`, :mod:`inference.flow_matching`)
   whose ODE is the sampler. Both are :class:`Flow` / :class:`FlowMatchingSampler` objects
   with ``sample``, ``sample_and_log_prob`` and ``log_prob``, over the whitened draws (a
   fixed affine map ``x = loc + L y`` from the draws' mean and covariance, then the learned
   map on ``y``).
3. *How it is used.* Either as i.i.d. draws (``correct=None``: exact only as far as the
   learned density is, diagnosed by the importance weights' Pareto ``k``), or as the
   proposal of an independent Metropolis-Hastings chain (:func:`irmh`), exact for the
   posterior whatever the proposal, as long as the proposal's density is exact for its own
   draws and its tails are not lighter than the posterior's (then ``k < 0.7`` in practice).

The :class:`Learned` method puts the three together behind ``inference.infer``.

IRMH. With proposal ``q`` independent of the current state, the Metropolis-Hastings
acceptance probability of ``x -> x'`` is

.. math::  \min\Big(1, \frac{p(x')\,q(x)}{p(x)\,q(x')}\Big) = \min\big(1, w(x') / w(x)\big),
           \qquad w = p / q,

so the chain moves to a draw of ``q`` with probability growing with its importance weight.
It is uniformly ergodic when ``w`` is bounded (Mengersen & Tweedie 1996), and gets stuck at
points of large ``w`` when ``q``'s tails are too light. No gradients are needed.

Proposal densities. For a :class:`Flow` the forward map gives a draw and its density in
one pass (``log q(x) = log N(z) - log |det dT/dz|``), for every flow kind. For a
:class:`FlowMatchingSampler` the sampler is the fixed-step integrator's map ``Phi`` of the
ODE; ``density="jacobian"`` (default) takes ``log |det dPhi/dz|`` of that very map (``D``
forward-mode passes through the integration: for small ``D``), so the density is exact for
the draws and IRMH is exact; ``density="ode"`` integrates the exact divergence along the
path (:func:`inference.flow_matching.log_density`), which is the density of the exact ODE
flow and is off by the discretisation error for the integrator's draws (IRMH then targets
``p`` up to that error).

Example:
    >>> import jax, jax.numpy as jnp
    >>> target = lambda x: -0.5 * jnp.sum((x - 1.0) ** 2)          # N(1, I)
    >>> proposal = lambda x: -0.5 * jnp.sum(x**2 / 4.0)             # N(0, 4 I), up to a constant
    >>> alg = irmh(target, lambda k: 2.0 * jax.random.normal(k, (2,)), proposal)
    >>> def run(key):
    ...     def body(state, k):
    ...         state, info = alg.step(k, state)
    ...         return state, (state.position, info.acceptance_rate)
    ...     return jax.lax.scan(body, alg.init(jnp.zeros(2)), jax.random.split(key, 2000))[1]
    >>> xs, rate = jax.jit(run)(jax.random.key(0))
    >>> bool(jnp.all(jnp.abs(xs[200:].mean(0) - 1.0) < 0.2)), 0.2 < float(rate.mean()) < 0.9
    (True, True)
"""

from __future__ import annotations

import dataclasses
import functools
import math
import numbers
import time
import warnings
from dataclasses import dataclass
from typing import Any, Callable, ClassVar, NamedTuple

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax
from blackjax.base import SamplingAlgorithm

from inference import flow_matching as fm
from inference import progress as progress_lib
from inference.flows import FlowSpec, check_kind
from inference.langevin import _accept
from inference.method import Method
from ppl.errors import ModelError
from ppl.potential import Potential
from ppl.potential import potential as make_potential

__all__ = [
    "Flow",
    "FlowMatchingSampler",
    "FittedFlow",
    "FittedFlowMatching",
    "IRMHState",
    "IRMHInfo",
    "Learned",
    "irmh",
    "unconstrained_draws",
    "fit_flow_to_draws",
    "fit_flow_matching_to_draws",
    "flow_from_vi",
    "pareto_khat",
    "importance_diagnostics",
]

#: ``Learned(flow=...)`` names that train a flow-matching field instead of a flow.
FLOW_MATCHING_NAMES = ("flow_matching", "cfm", "rectified_flow")
_STANDARDIZE = ("full", "diag", None)
_FIXED_STEP = ("euler", "heun", "rk4")


def _std_normal_log_prob(z: jax.Array) -> jax.Array:
    return -0.5 * jnp.sum(z**2, axis=-1) - 0.5 * z.shape[-1] * math.log(2 * math.pi)


def _positive_int(owner: str, name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
        raise ValueError(f"{owner}: {name} must be a positive int; got {value!r}.")
    return int(value)


def _check_optimizer(owner: str, optimizer: Any) -> None:
    if optimizer is not None and not (callable(getattr(optimizer, "init", None))
                                      and callable(getattr(optimizer, "update", None))):
        raise TypeError(f"{owner}: optimizer must be an optax GradientTransformation; got "
                        f"{optimizer!r}.")


# ----------------------------------------------------------------------------------------
# Draws in the model's flat unconstrained space
# ----------------------------------------------------------------------------------------
def unconstrained_draws(model: Callable, samples: dict, *args: Any, **kwargs: Any) -> jax.Array:
    """Constrained posterior draws of ``model(*args, **kwargs)`` as flat unconstrained points.

    ``samples`` maps each latent site to draws with leading axes, e.g. ``Result.samples`` of
    shape ``(chains, draws, *site_shape)`` or ``(draws, *site_shape)`` (deterministic sites
    are ignored). Each draw goes through the inverse of ``biject_to(support)`` of its site
    (as :meth:`ppl.Potential.to_unconstrained`) and the sites are concatenated in model
    order, the order :func:`inference.guides.flow` stacks them. Returns ``(n, D)``.

    Example:
        >>> import jax.numpy as jnp, numpyro, numpyro.distributions as dist
        >>> def model():
        ...     numpyro.sample("s", dist.HalfNormal(1.0))
        ...     numpyro.sample("m", dist.Normal(0.0, 1.0).expand([2]).to_event(1))
        >>> x = unconstrained_draws(model, {"s": jnp.ones((2, 3)), "m": jnp.zeros((2, 3, 2))})
        >>> x.shape, float(x[0, 0])  # log(1) = 0 for s, then m's two coordinates
        ((6, 3), 0.0)
    """
    pot = make_potential(model, *args, **kwargs)
    return _draws_for(pot, samples, "unconstrained_draws")


def _draws_for(pot: Potential, samples: Any, owner: str) -> jax.Array:
    if not isinstance(samples, dict):
        raise TypeError(f"{owner}: samples must be a dict {{site: draws}}; got "
                        f"{type(samples).__name__}.")
    missing = [n for n in pot.sites if n not in samples]
    if missing:
        raise ModelError(f"{owner}: the samples lack the latent site(s) {missing} of the model "
                         f"(latent sites {list(pot.sites)}).")
    batch = None
    for name in pot.sites:
        value = jnp.asarray(samples[name])
        shape = pot.transforms[name].forward_shape(pot.sites[name])
        lead = value.shape[: value.ndim - len(shape)]
        if tuple(value.shape[value.ndim - len(shape):]) != tuple(shape) or not lead:
            raise ValueError(f"{owner}: draws of site '{name}' have shape {value.shape}; expected "
                             f"(..., *{tuple(shape)}) with at least one leading draw axis.")
        batch = lead if batch is None else batch
        if lead != batch:
            raise ValueError(f"{owner}: sites have different leading (draw) shapes: {batch} and "
                             f"{lead} for '{name}'.")
    n = math.prod(batch)
    flat_values = {name: jnp.reshape(jnp.asarray(samples[name]),
                                     (n,) + tuple(pot.transforms[name].forward_shape(shape)))
                   for name, shape in pot.sites.items()}
    to_u = jax.jit(jax.vmap(lambda v: pot.ravel(pot.to_unconstrained(v))))
    return to_u(flat_values)


def _as_points(owner: str, draws: Any, dim: int | None = None) -> jax.Array:
    """Draws as an ``(n, D)`` float array, checked on the host (no compiled programs)."""
    x = np.asarray(draws)
    if not np.issubdtype(x.dtype, np.floating):
        x = x.astype(jnp.result_type(float))
    if x.ndim < 2:
        raise ValueError(f"{owner}: draws must have shape (n, D) or (chains, draws, D); got "
                         f"{x.shape}.")
    x = x.reshape((-1, x.shape[-1]))
    if dim is not None and x.shape[1] != dim:
        raise ValueError(f"{owner}: draws have dimension {x.shape[1]}, but the model's "
                         f"unconstrained space (or the flow) has dimension {dim}.")
    finite = np.all(np.isfinite(x), axis=1)
    if not finite.all():
        raise ValueError(f"{owner}: {int((~finite).sum())} of {x.shape[0]} draws are not finite "
                         "(NaN/inf on the unconstrained scale; a constrained draw on its "
                         "support's boundary?).")
    return jnp.asarray(x)


# ----------------------------------------------------------------------------------------
# Learned densities
# ----------------------------------------------------------------------------------------
def _whitening(x: Any, standardize: str | None) -> tuple[jax.Array, jax.Array]:
    """``(loc, L)`` with ``x = loc + L y`` whitening the draws ``x`` (on the host, float64)."""
    x64 = np.asarray(x, np.float64)
    n, d = x64.shape
    dtype = jnp.result_type(float)
    if standardize is None:
        return jnp.zeros(d, dtype), jnp.eye(d, dtype=dtype)
    loc = x64.mean(axis=0)
    std = x64.std(axis=0)
    tril = np.diag(np.where(std > 0, std, 1.0))
    if standardize == "full" and n > d:
        cov = np.atleast_2d(np.cov(x64, rowvar=False))
        jitter = 1e-9 * max(np.trace(cov) / d, 1e-12)
        try:
            tril = np.linalg.cholesky(cov + jitter * np.eye(d))
        except np.linalg.LinAlgError:  # degenerate draws: the diagonal scaling
            pass
    return jnp.asarray(loc, dtype), jnp.asarray(tril, dtype)


class _Affine:
    """Shared pieces of the fixed whitening map ``x = loc + L y``."""

    loc: jax.Array | None
    scale_tril: jax.Array | None

    def _to_x(self, y: jax.Array) -> jax.Array:
        if self.scale_tril is not None:
            y = y @ self.scale_tril.T
        return y if self.loc is None else y + self.loc

    def _to_y(self, x: jax.Array) -> jax.Array:
        if self.loc is not None:
            x = x - self.loc
        if self.scale_tril is None:
            return x
        flat = x.reshape((-1, x.shape[-1]))
        y = jax.scipy.linalg.solve_triangular(self.scale_tril, flat.T, lower=True).T
        return y.reshape(x.shape)

    def _log_det_scale(self) -> jax.Array:
        if self.scale_tril is None:
            return jnp.zeros(())
        return jnp.sum(jnp.log(jnp.abs(jnp.diag(self.scale_tril))))


def _check_affine(owner: str, dim: int, loc: Any, scale_tril: Any):
    if loc is not None:
        loc = jnp.asarray(loc, jnp.result_type(float))
        if loc.shape != (dim,):
            raise ValueError(f"{owner}: loc must have shape ({dim},); got {loc.shape}.")
    if scale_tril is not None:
        scale_tril = jnp.asarray(scale_tril, jnp.result_type(float))
        if scale_tril.shape != (dim, dim):
            raise ValueError(f"{owner}: scale_tril must have shape ({dim}, {dim}); got "
                             f"{scale_tril.shape}.")
        scale_tril = jnp.tril(scale_tril)
    return loc, scale_tril


@dataclass(frozen=True, eq=False)
class Flow(_Affine):
    """A normalizing flow as a distribution on ``R^D``: ``x = loc + L T_theta(z)``, ``z ~ N(0, I)``.

    Args:
        spec: the flow's structure (:class:`inference.flows.FlowSpec`).
        theta: its weights, shape ``(spec.size,)``.
        loc, scale_tril: a fixed affine map applied after the flow (the whitening of the
            draws it was fitted to); ``None`` for none (a VI flow guide's flow).
        base_scale: the base is ``N(0, base_scale^2 I)``: above 1 it fattens the tails of a
            fitted flow (its training used 1), which bounds the importance weights ``p / q``
            where the fit's tails are too light, at some cost in acceptance.

    Methods take one point ``(D,)`` or a batch ``(..., D)``. ``sample_and_log_prob`` runs the
    flow forward only (one pass per layer for every kind but ``"maf"``), ``log_prob`` inverts
    it (one pass per layer for every kind but ``"iaf"``).

    Example:
        >>> import jax, jax.numpy as jnp
        >>> spec = FlowSpec("affine_coupling", dim=2, layers=1, width=4)
        >>> q = Flow(spec, spec.init(jax.random.key(0)), loc=jnp.array([1.0, 2.0]))
        >>> x, lq = q.sample_and_log_prob(jax.random.key(1), 5)
        >>> x.shape, bool(jnp.allclose(lq, q.log_prob(x), atol=1e-5))
        ((5, 2), True)
    """

    spec: FlowSpec
    theta: jax.Array
    loc: jax.Array | None = None
    scale_tril: jax.Array | None = None
    base_scale: float = 1.0

    def __post_init__(self):
        if not (isinstance(self.base_scale, (int, float)) and not isinstance(self.base_scale, bool)
                and self.base_scale > 0):
            raise ValueError(f"Flow(base_scale={self.base_scale!r}): must be a positive number.")
        if not isinstance(self.spec, FlowSpec):
            raise TypeError(f"Flow(spec={self.spec!r}): must be an inference.flows.FlowSpec.")
        theta = jnp.asarray(self.theta)
        if theta.shape != (self.spec.size,):
            raise ValueError(f"Flow: theta has shape {theta.shape}; the spec needs "
                             f"({self.spec.size},).")
        loc, tril = _check_affine("Flow", self.spec.dim, self.loc, self.scale_tril)
        object.__setattr__(self, "theta", theta)
        object.__setattr__(self, "loc", loc)
        object.__setattr__(self, "scale_tril", tril)

    @property
    def dim(self) -> int:
        """The dimension ``D``."""
        return self.spec.dim

    def sample_and_log_prob(self, key: jax.Array, n: int | None = None
                            ) -> tuple[jax.Array, jax.Array]:
        """``n`` draws ``(n, D)`` (one ``(D,)`` when ``n`` is None) and their log densities."""
        shape = () if n is None else (int(n),)
        return _flow_sample(self.spec, shape, self.theta, self.loc, self.scale_tril,
                            float(self.base_scale), key)

    def sample(self, key: jax.Array, n: int | None = None) -> jax.Array:
        """``n`` draws ``(n, D)``, or one ``(D,)`` when ``n`` is None."""
        return self.sample_and_log_prob(key, n)[0]

    def log_prob(self, x: jax.Array) -> jax.Array:
        """Log density at ``x`` of shape ``(..., D)``; shape ``x.shape[:-1]``."""
        return _flow_log_prob(self.spec, self.theta, self.loc, self.scale_tril,
                              float(self.base_scale), jnp.asarray(x))


def _affine_parts(loc, tril) -> _Affine:
    a = _Affine()
    a.loc, a.scale_tril = loc, tril
    return a


def _base_log_prob(z: jax.Array, base_scale: float) -> jax.Array:
    return _std_normal_log_prob(z / base_scale) - z.shape[-1] * math.log(base_scale)


@functools.partial(jax.jit, static_argnums=(0, 1, 5))
def _flow_sample(spec, shape, theta, loc, tril, base_scale, key):
    affine = _affine_parts(loc, tril)
    z = base_scale * jax.random.normal(key, shape + (spec.dim,), theta.dtype)
    flat = z.reshape((-1, spec.dim))
    y, log_det = jax.vmap(lambda e: spec.forward(theta, e))(flat)
    x = affine._to_x(y).reshape(z.shape)
    log_q = _base_log_prob(flat, base_scale) - log_det - affine._log_det_scale()
    return x, log_q.reshape(shape)


@functools.partial(jax.jit, static_argnums=(0, 4))
def _flow_log_prob(spec, theta, loc, tril, base_scale, x):
    affine = _affine_parts(loc, tril)
    if x.shape[-1:] != (spec.dim,):
        raise ValueError(f"Flow.log_prob: points must have shape (..., {spec.dim}); got {x.shape}.")
    flat = affine._to_y(x.reshape((-1, spec.dim)))
    z, log_det = jax.vmap(lambda y: spec.inverse(theta, y))(flat)
    lp = _base_log_prob(z, base_scale) + log_det - affine._log_det_scale()
    return lp.reshape(x.shape[:-1])


@dataclass(frozen=True, eq=False)
class FlowMatchingSampler(_Affine):
    """A flow-matching sampler as a distribution: ``x = loc + L Phi(z)``, ``z ~ N(0, I)``.

    ``Phi`` is ``steps`` fixed steps of ``method`` (``"euler"``, ``"heun"``, ``"rk4"``) of
    ``dy/dt = v(y, t)`` from ``t = 0`` to ``1`` (:func:`inference.flow_matching.sample`).

    Args:
        field: the velocity field ``v(y, t)`` on one point ``(D,)``.
        dim: ``D``.
        steps, method: the integrator.
        density: ``"jacobian"`` -- ``log q = log N(z) - log |det dPhi/dz|`` of the integrator's
            own map (``D`` forward-mode passes; exact for the draws); ``"ode"`` -- the
            instantaneous change of variables with the exact divergence
            (:func:`inference.flow_matching.log_density`; exact for the ODE's flow, off by the
            discretisation error for the draws); ``None`` -- no density (``sample`` only, not
            usable by IRMH).
        loc, scale_tril: the fixed affine map after ``Phi`` (the draws' whitening).
        newton_steps: ``log_prob`` at a point ``x`` (``density="jacobian"``) needs
            ``z = Phi^{-1}(x)``: the backward integration gives it to the integrator's error,
            then this many Newton steps on ``Phi(z) = x`` (each ``D + 1`` passes through the
            integration) make it exact to round-off where ``Phi`` is invertible.

    ``sample_and_log_prob`` never inverts anything: it is what IRMH uses for its proposals;
    ``log_prob`` is needed only for the initial states (see :func:`irmh`).

    Example:
        >>> import jax, jax.numpy as jnp
        >>> v = fm.gaussian_velocity(jnp.zeros(2), 2.0)   # N(0, I) -> N(0, 4 I)
        >>> q = FlowMatchingSampler(v, dim=2, steps=8)
        >>> x, lq = q.sample_and_log_prob(jax.random.key(0), 3)
        >>> exact = -0.5 * jnp.sum(x**2, -1) / 4 - jnp.log(2 * jnp.pi * 4)
        >>> bool(jnp.allclose(lq, exact, atol=1e-3))
        True
    """

    field: Any
    dim: int
    steps: int = 16
    method: str = "rk4"
    density: str | None = "jacobian"
    loc: jax.Array | None = None
    scale_tril: jax.Array | None = None
    newton_steps: int = 4

    def __post_init__(self):
        _positive_int("FlowMatchingSampler", "dim", self.dim)
        if isinstance(self.newton_steps, bool) or not isinstance(self.newton_steps, int) \
                or self.newton_steps < 0:
            raise ValueError(f"FlowMatchingSampler(newton_steps={self.newton_steps!r}): must be "
                             "a non-negative int.")
        _positive_int("FlowMatchingSampler", "steps", self.steps)
        if self.method not in _FIXED_STEP:
            raise ValueError(f"FlowMatchingSampler(method={self.method!r}): use one of "
                             f"{list(_FIXED_STEP)} (a fixed-step map, so that the density of its "
                             "draws is defined by its Jacobian).")
        if self.density not in ("jacobian", "ode", None):
            raise ValueError(f"FlowMatchingSampler(density={self.density!r}): use 'jacobian', "
                             "'ode' or None.")
        if not callable(self.field):
            raise TypeError("FlowMatchingSampler(field=...): must be a velocity field v(x, t).")
        fm._check_field("FlowMatchingSampler", self.field, self.dim, jnp.result_type(float))
        loc, tril = _check_affine("FlowMatchingSampler", self.dim, self.loc, self.scale_tril)
        object.__setattr__(self, "loc", loc)
        object.__setattr__(self, "scale_tril", tril)

    @property
    def has_density(self) -> bool:
        return self.density is not None

    def _no_density(self, what: str):
        raise ValueError(f"FlowMatchingSampler(density=None).{what}: this sampler has no "
                         "density; build it with density='jacobian' or 'ode'.")

    def _y_and_log_q(self, z: jax.Array) -> tuple[jax.Array, jax.Array]:
        """``Phi(z)`` and ``log q_y`` for a batch ``z`` of shape ``(n, D)``."""
        if self.density == "ode":
            r = fm.log_density(self.field, z, self.steps, self.method, given="x0")
            return r.x1, r.log_prob
        return _fm_jacobian_density(self.field, z, self.steps, self.method)

    def sample_and_log_prob(self, key: jax.Array, n: int | None = None
                            ) -> tuple[jax.Array, jax.Array]:
        """``n`` draws ``(n, D)`` (one ``(D,)`` when ``n`` is None) and their log densities."""
        if self.density is None:
            self._no_density("sample_and_log_prob")
        shape = () if n is None else (int(n),)
        z = jax.random.normal(key, shape + (self.dim,), jnp.result_type(float))
        y, log_q = self._y_and_log_q(z.reshape((-1, self.dim)))
        return self._to_x(y).reshape(z.shape), (log_q - self._log_det_scale()).reshape(shape)

    def sample(self, key: jax.Array, n: int | None = None) -> jax.Array:
        """``n`` draws ``(n, D)``, or one ``(D,)`` when ``n`` is None."""
        shape = () if n is None else (int(n),)
        z = jax.random.normal(key, shape + (self.dim,), jnp.result_type(float))
        y = fm.sample(self.field, z.reshape((-1, self.dim)), self.steps, self.method)[0]
        return self._to_x(y).reshape(z.shape)

    def log_prob(self, x: jax.Array) -> jax.Array:
        """Log density at ``x`` of shape ``(..., D)``, through the backward ODE (see above)."""
        if self.density is None:
            self._no_density("log_prob")
        x = jnp.asarray(x)
        y = self._to_y(x.reshape((-1, self.dim)))
        if self.density == "ode":
            lq = fm.log_density(self.field, y, self.steps, self.method, given="x1").log_prob
        else:
            lq = _fm_jacobian_log_prob(self.field, y, self.steps, self.method, self.newton_steps)
        return (lq - self._log_det_scale()).reshape(x.shape[:-1])


def _fm_map(field, steps, method, t0=0.0, t1=1.0):
    return lambda z: fm._odeint_fixed(lambda y, t: field(y, t), z, t0, t1, steps, method)[0]


@eqx.filter_jit
def _fm_jacobian_density(field, z, steps, method):
    phi = _fm_map(field, steps, method)

    def one(zi):
        y = phi(zi)
        jac = jax.jacfwd(phi)(zi)
        return y, _std_normal_log_prob(zi) - jnp.linalg.slogdet(jac)[1]

    return jax.vmap(one)(z)


@eqx.filter_jit
def _fm_jacobian_log_prob(field, y, steps, method, newton_steps):
    """``log q`` at points ``y`` (n, D) of the integrator's map: ``z = Phi^{-1}(y)`` from the
    backward integration, refined by Newton steps on ``Phi(z) = y``; then the Jacobian density."""
    phi = _fm_map(field, steps, method)
    back = _fm_map(field, steps, method, 1.0, 0.0)

    def one(yi):
        def newton(_, z):
            value, jac = phi(z), jax.jacfwd(phi)(z)
            return z - jnp.linalg.solve(jac, value - yi)

        z = jax.lax.fori_loop(0, newton_steps, newton, back(yi))
        return _std_normal_log_prob(z) - jnp.linalg.slogdet(jax.jacfwd(phi)(z))[1]

    return jax.vmap(one)(y)


def _proposal_has_density(proposal: Any) -> bool:
    if not callable(getattr(proposal, "log_prob", None)):
        return False
    return getattr(proposal, "has_density", True)


class FittedFlow(NamedTuple):
    """What :func:`fit_flow_to_draws` returns.

    Attributes:
        flow: the fitted :class:`Flow` (the weights with the lowest held-out negative
            log-likelihood when draws were held out; the last ones otherwise).
        losses: per-step training loss (mean negative log-likelihood of each minibatch, on
            the whitened scale), shape ``(steps,)``.
        val_losses: held-out negative log-likelihood at each evaluation (every
            ``steps // 50`` steps), or ``None`` without held-out draws.
        best_step: the number of steps behind ``flow`` (0: the whitening alone was best).
    """

    flow: Flow
    losses: jax.Array
    val_losses: jax.Array | None = None
    best_step: int = 0


class FittedFlowMatching(NamedTuple):
    """What :func:`fit_flow_matching_to_draws` returns: the :class:`FlowMatchingSampler`
    and the per-step flow-matching losses."""

    flow: FlowMatchingSampler
    losses: jax.Array


def fit_flow_to_draws(
    draws: Any,
    flow: str | FlowSpec | Flow = "spline_coupling",
    *,
    key: jax.Array | int = 0,
    steps: int = 2000,
    batch_size: int = 256,
    optimizer: optax.GradientTransformation | None = None,
    standardize: str | None = "full",
    flow_options: dict | None = None,
    validation: float = 0.1,
    progress: bool = False,
) -> FittedFlow:
    """Fit a normalizing flow to draws by maximum likelihood (minibatch Adam on ``-log q``).

    Args:
        draws: points ``(n, D)`` (or ``(chains, draws, D)``), e.g. :func:`unconstrained_draws`
            of a NUTS run.
        flow: a kind of :data:`inference.flows.KINDS` (built with ``flow_options``), a
            :class:`inference.flows.FlowSpec` of dimension ``D`` (fresh weights), or a
            :class:`Flow` to start from (its weights and affine map are kept: e.g. a flow
            fitted by VI, :func:`flow_from_vi`, refined on draws).
        key: randomness of the initial weights and the minibatches.
        steps, batch_size: optimizer steps; draws per minibatch (drawn with replacement).
        optimizer: an optax transformation; default Adam with a cosine-decayed learning
            rate from ``3e-3`` and gradient clipping.
        standardize: whitening of the draws before the flow (the flow starts at the
            identity, i.e. at ``N(mean, cov)`` of the draws): ``"full"`` (mean and Cholesky
            factor of the covariance), ``"diag"`` (mean and standard deviations) or ``None``.
            Ignored when starting from a :class:`Flow`.
        flow_options: keyword arguments of :class:`inference.flows.FlowSpec` (``layers``,
            ``width``, ``depth``, ``knots``, ``interval``, ...) for a kind.
        validation: the fraction of the draws held out (at random); their negative
            log-likelihood is evaluated 50 times during the fit and the best weights are
            kept (early stopping: a flexible flow overfits a few thousand draws, and an
            overfitted proposal has light tails between the draws). 0 trains on all draws
            and keeps the last weights.
        progress: show a progress bar.

    Returns:
        :class:`FittedFlow` ``(flow, losses, val_losses, best_step)``.

    Example:
        >>> import jax, jax.numpy as jnp
        >>> x = 3.0 + 0.5 * jax.random.normal(jax.random.key(0), (2000, 2))
        >>> r = fit_flow_to_draws(x, "affine_coupling", steps=100, flow_options={"layers": 1,
        ...                       "width": 8})
        >>> r.flow.sample(jax.random.key(1), 4000).mean(0).round(1).tolist()
        [3.0, 3.0]
    """
    owner = "fit_flow_to_draws"
    key = jax.random.key(key) if isinstance(key, int) and not isinstance(key, bool) else key
    steps = _positive_int(owner, "steps", steps)
    batch_size = _positive_int(owner, "batch_size", batch_size)
    _check_optimizer(owner, optimizer)
    if standardize not in _STANDARDIZE:
        raise ValueError(f"{owner}(standardize={standardize!r}): use 'full', 'diag' or None.")
    k_init, k_fit = jax.random.split(key)
    if isinstance(flow, Flow):
        if flow_options:
            raise ValueError(f"{owner}: flow_options apply to a flow kind, not to a Flow to "
                             "start from.")
        x = _as_points(owner, draws, flow.dim)
        spec, theta0, loc, tril = flow.spec, flow.theta, flow.loc, flow.scale_tril
    else:
        x = _as_points(owner, draws)
        if isinstance(flow, FlowSpec):
            if flow_options:
                raise ValueError(f"{owner}: flow_options apply to a flow kind; a FlowSpec "
                                 "already fixes them.")
            spec = flow
            if spec.dim != x.shape[1]:
                raise ValueError(f"{owner}: the FlowSpec has dim={spec.dim} but the draws have "
                                 f"dimension {x.shape[1]}.")
        elif isinstance(flow, str):
            spec = FlowSpec(check_kind(flow, owner), x.shape[1], **dict(flow_options or {}))
        else:
            raise TypeError(f"{owner}(flow={flow!r}): use a flow kind, a FlowSpec or a Flow.")
        theta0 = jax.jit(spec.init)(k_init)  # one program, not one per flowjax init op
        loc, tril = _whitening(x, standardize)
    if not (isinstance(validation, (int, float)) and not isinstance(validation, bool)
            and 0.0 <= validation < 1.0):
        raise ValueError(f"{owner}(validation={validation!r}): must be a fraction in [0, 1).")
    n_val = int(round(validation * x.shape[0]))
    if x.shape[0] - n_val < 2 or (validation > 0 and n_val < 1):
        raise ValueError(f"{owner}: need at least 2 training draws (and 1 held out with "
                         f"validation={validation}); got {x.shape[0]} draws.")
    y, y_val, k_fit = _split_whitened(x, loc, tril, k_fit, n_val)
    if optimizer is None:
        optimizer = optax.chain(optax.clip_by_global_norm(10.0),
                                optax.adam(optax.cosine_decay_schedule(3e-3, steps, alpha=0.05)))

    def loss_fn(theta, batch):
        return -jnp.mean(jax.vmap(lambda v: spec.log_prob(theta, v))(batch))

    n = y.shape[0]
    every = max(1, steps // 50)
    n_evals = steps // every

    def body(carry, i):
        theta, opt_state, losses, _, best = carry
        idx = jax.random.randint(jax.random.fold_in(k_fit, i), (batch_size,), 0, n)
        loss, grad = jax.value_and_grad(loss_fn)(theta, y[idx])
        updates, new_state = optimizer.update(grad, opt_state, theta)
        ok = jnp.isfinite(loss) & jnp.all(jnp.isfinite(grad))
        theta = jnp.where(ok, optax.apply_updates(theta, updates), theta)
        opt_state = jax.tree.map(lambda a, b: jnp.where(ok, a, b), new_state, opt_state)
        if y_val is not None:  # held-out NLL every `every` steps; keep the best weights

            def evaluate(best):
                best_theta, best_val, best_step, vals = best
                v = loss_fn(theta, y_val)
                better = v < best_val  # a NaN is never better
                return (jnp.where(better, theta, best_theta), jnp.where(better, v, best_val),
                        jnp.where(better, i + 1, best_step), vals.at[(i + 1) // every - 1].set(v))

            best = jax.lax.cond((i + 1) % every == 0, evaluate, lambda b: b, best)
        return (theta, opt_state, losses.at[i].set(loss), loss, best), None

    bar = progress_lib.ProgressBar(steps, desc="flow fit", enabled=bool(progress))

    @jax.jit
    def run(theta):
        dtype = theta.dtype
        start = loss_fn(theta, y_val) if y_val is not None else jnp.asarray(jnp.inf, dtype)
        best = (theta, start, jnp.zeros((), jnp.int32), jnp.full(n_evals, jnp.nan, dtype))
        carry = (theta, optimizer.init(theta), jnp.zeros(steps, dtype), jnp.zeros((), dtype),
                 best)
        return progress_lib.scan(body, carry, jnp.arange(steps), steps, bar=bar,
                                 postfix_fn=lambda c: {"nll": c[3], "held-out": c[4][1]})

    try:
        theta, _, losses, _, (best_theta, _, best_step, val_losses) = run(theta0)
    finally:
        bar.close()
    finite = np.isfinite(np.asarray(losses))
    if not finite.all():
        raise FloatingPointError(
            f"{owner}: non-finite negative log-likelihood from step {int(np.argmax(~finite))} on "
            "(those steps were skipped); lower the learning rate, or standardize the draws.")
    if y_val is None:
        return FittedFlow(Flow(spec, theta, loc, tril), losses, None, steps)
    return FittedFlow(Flow(spec, best_theta, loc, tril), losses, val_losses, int(best_step))


def _split_whitened(x, loc, tril, key, n_val):
    """The whitened draws, split at random into training and held-out ones (``None`` when
    ``n_val`` is 0), and the key for the fit. (The split is drawn on the host.)"""
    k_split, k_fit = jax.random.split(key)
    y = jax.jit(lambda v, m, t: _affine_parts(m, t)._to_y(v))(x, loc, tril)
    if not n_val:
        return y, None, k_fit
    seed = np.asarray(jax.random.key_data(k_split)).ravel()
    perm = np.random.default_rng(seed).permutation(x.shape[0])
    return y[perm[n_val:]], y[perm[:n_val]], k_fit


def fit_flow_matching_to_draws(
    draws: Any,
    *,
    key: jax.Array | int = 0,
    steps: int = 2000,
    batch_size: int = 256,
    optimizer: optax.GradientTransformation | None = None,
    standardize: str | None = "full",
    width: int = 64,
    depth: int = 2,
    time_frequencies: int = 4,
    ode_steps: int = 16,
    ode_method: str = "rk4",
    density: str | None = "jacobian",
    path: str = "straight",
    progress: bool = False,
) -> FittedFlowMatching:
    """Train a flow-matching field on (whitened) draws: a sampler from ``N(0, I)`` by its ODE.

    A :class:`inference.flow_matching.VelocityMLP` (``width``, ``depth``,
    ``time_frequencies``) is trained with :func:`inference.flow_matching.train` (``path``,
    ``steps``, ``batch_size``, ``optimizer``) on the draws whitened as in
    :func:`fit_flow_to_draws`; the result samples with ``ode_steps`` steps of ``ode_method``
    and has the density ``density`` (see :class:`FlowMatchingSampler`).

    Example:
        >>> import jax, jax.numpy as jnp
        >>> x = 3.0 + 0.5 * jax.random.normal(jax.random.key(0), (2000, 1))
        >>> r = fit_flow_matching_to_draws(x, steps=100, width=16, ode_steps=4)
        >>> round(float(r.flow.sample(jax.random.key(1), 4000).mean()), 1)
        3.0
    """
    owner = "fit_flow_matching_to_draws"
    key = jax.random.key(key) if isinstance(key, int) and not isinstance(key, bool) else key
    if standardize not in _STANDARDIZE:
        raise ValueError(f"{owner}(standardize={standardize!r}): use 'full', 'diag' or None.")
    _check_optimizer(owner, optimizer)
    x = _as_points(owner, draws)
    loc, tril = _whitening(x, standardize)
    sampler = FlowMatchingSampler(lambda y, t: y, x.shape[1], ode_steps, ode_method, density,
                                  loc, tril)
    y = sampler._to_y(x)
    k_init, k_fit = jax.random.split(key)
    v = fm.VelocityMLP(x.shape[1], k_init, width=width, depth=depth,
                       time_frequencies=time_frequencies)
    if optimizer is None:
        optimizer = optax.adam(optax.cosine_decay_schedule(3e-3, steps, alpha=0.05))
    result = fm.train(v, k_fit, y, steps=steps, batch_size=batch_size, optimizer=optimizer,
                      path=path, progress=progress)
    return FittedFlowMatching(
        FlowMatchingSampler(result.field, x.shape[1], ode_steps, ode_method, density, loc, tril),
        result.losses)


def flow_from_vi(result: Any) -> Flow:
    """The flow of a VI fit with the flow guide, as a :class:`Flow` on the unconstrained space.

    ``result`` is the :class:`inference.Result` of ``infer(model, ..., method=VI(guide="flow",
    guide_options={...}))`` (its fitted weights are ``result.tuning["params"]["guide.flow"]``
    and its kind and sizes are those of ``guide_options``). The flow's coordinates are the
    model's unconstrained sites in model order, as :func:`unconstrained_draws`.

    Example:
        >>> import jax.numpy as jnp, numpyro, numpyro.distributions as dist, inference
        >>> def model(y=None):
        ...     mu = numpyro.sample("mu", dist.Normal(0.0, 10.0))
        ...     numpyro.sample("y", dist.Normal(mu, 1.0), obs=y)
        >>> vi = inference.VI(guide="flow", steps=200, guide_options={"layers": 1, "width": 4})
        >>> r = inference.infer(model, y=1.0, method=vi, num_samples=10, num_chains=1,
        ...                     progress=False)
        >>> q = flow_from_vi(r)
        >>> q.dim, q.spec.kind
        (1, 'affine_coupling')
    """
    from inference.vi import VI

    method = getattr(result, "method", None)
    if not (isinstance(method, VI) and method.guide == "flow"):
        raise TypeError(
            "flow_from_vi: expects the Result of infer(..., method=VI(guide='flow', ...)); got "
            f"a result of {type(method).__name__ if method is not None else type(result).__name__}"
            + (f" (guide={method.guide!r})" if isinstance(method, VI) else "") + ".")
    options = dict(method.guide_options or {})
    prefix = options.pop("prefix", "guide")
    kind = check_kind(options.pop("kind", "affine_coupling"), "flow_from_vi")
    theta = result.tuning["params"][f"{prefix}.flow"]
    pot = make_potential(result.model, *result.model_args, **result.model_kwargs)
    return Flow(FlowSpec(kind, pot.dimension, **options), theta)


# ----------------------------------------------------------------------------------------
# The IRMH kernel
# ----------------------------------------------------------------------------------------
class IRMHState(NamedTuple):
    """IRMH state: the position, ``log p`` and the proposal's ``log q`` there."""

    position: Any
    logdensity: jax.Array
    proposal_logdensity: jax.Array


class IRMHInfo(NamedTuple):
    """One IRMH step: ``acceptance_rate`` (the MH probability), ``is_accepted``,
    ``log_weight`` (``log p - log q`` of the proposed point: draws of ``q`` with their
    importance weights, for diagnostics) and ``n_grad`` (always 0)."""

    acceptance_rate: jax.Array
    is_accepted: jax.Array
    log_weight: jax.Array
    n_grad: jax.Array


def irmh(
    logdensity_fn: Callable[[Any], jax.Array],
    proposal_sample: Callable[[jax.Array], Any],
    proposal_logdensity: Callable[[Any], jax.Array] | None,
    *,
    sample_returns_logdensity: bool = False,
) -> SamplingAlgorithm:
    r"""Independent Metropolis-Hastings (IRMH) as a BlackJAX-protocol kernel.

    Each step draws ``x' = proposal_sample(key)`` independently of the state and moves there
    with probability ``min(1, p(x') q(x) / (p(x) q(x')))`` (module docstring). ``p`` and ``q``
    may be unnormalised (constants cancel). The state caches ``log p`` and ``log q`` at the
    current point, so a step costs one draw, one ``log p`` and (unless the sampler returns
    it) one ``log q``. ``init``/``step`` are pure, jittable and ``vmap``-able over chains;
    positions may be any pytree the three functions agree on.

    Args:
        logdensity_fn: ``log p`` of the target at one position.
        proposal_sample: ``key -> x'`` (one position); with
            ``sample_returns_logdensity=True``, ``key -> (x', log q(x'))`` (a flow gives
            both in one forward pass: :meth:`Flow.sample_and_log_prob`).
        proposal_logdensity: ``log q`` at one position: needed by ``init`` (and by ``step``
            unless the sampler returns it). ``None`` is an error: IRMH needs the density.

    Exactness needs ``log q`` to be the density of the draws at the draws, and at the initial
    position (an error there biases a chain's decisions until its first accepted move, after
    which the state holds a draw and the density that came with it; starting from a draw of
    ``q`` with its own density avoids the question). A NaN or ``+inf`` log weight at the proposal
    rejects it; from a state with ``p(x) = 0`` (or a NaN weight) any proposal of finite
    weight is accepted.

    Example:
        >>> import jax, jax.numpy as jnp
        >>> alg = irmh(lambda x: -0.5 * x**2, lambda k: jax.random.normal(k),
        ...            lambda x: -0.5 * x**2)                     # q = p: always accepted
        >>> state, info = alg.step(jax.random.key(0), alg.init(jnp.array(3.0)))
        >>> float(info.acceptance_rate), int(info.n_grad)
        (1.0, 0)
    """
    if not callable(logdensity_fn):
        raise TypeError(f"irmh: logdensity_fn must be callable; got {logdensity_fn!r}.")
    if not callable(proposal_sample):
        raise TypeError(f"irmh: proposal_sample must be callable (key -> point); got "
                        f"{proposal_sample!r}.")
    if proposal_logdensity is None:
        raise ValueError(
            "irmh: the proposal has no density (proposal_logdensity=None). The independent "
            "Metropolis correction needs log q at the proposed and current points; use a "
            "proposal with a density (a normalizing flow, or a flow-matching sampler with "
            "density='jacobian'), or draw from the proposal without correction.")
    if not callable(proposal_logdensity):
        raise TypeError(f"irmh: proposal_logdensity must be callable (point -> log q); got "
                        f"{proposal_logdensity!r}.")

    def init(position: Any, rng_key: jax.Array | None = None) -> IRMHState:
        del rng_key
        return IRMHState(position, jnp.asarray(logdensity_fn(position)),
                         jnp.asarray(proposal_logdensity(position)))

    def step(rng_key: jax.Array, state: IRMHState) -> tuple[IRMHState, IRMHInfo]:
        k_prop, k_acc = jax.random.split(rng_key)
        if sample_returns_logdensity:
            proposal, log_q = proposal_sample(k_prop)
        else:
            proposal = proposal_sample(k_prop)
            log_q = proposal_logdensity(proposal)
        log_p = jnp.asarray(logdensity_fn(proposal))
        log_q = jnp.asarray(log_q, log_p.dtype)
        log_w_new = log_p - log_q
        log_w_old = state.logdensity - state.proposal_logdensity
        new_ok = ~(jnp.isnan(log_w_new) | (log_w_new == jnp.inf))
        old_ok = ~jnp.isnan(log_w_old) & (log_w_old > -jnp.inf)
        log_ratio = jnp.where(
            new_ok,
            jnp.where(old_ok, log_w_new - jnp.where(old_ok, log_w_old, 0.0),
                      jnp.where(log_w_new > -jnp.inf, 0.0, -jnp.inf)),
            -jnp.inf)
        rate, accepted = _accept(k_acc, log_ratio)
        pick = lambda a, b: jnp.where(accepted, a, b)  # noqa: E731
        new_state = IRMHState(
            jax.tree.map(pick, proposal, state.position),
            pick(log_p, state.logdensity),
            pick(log_q, state.proposal_logdensity),
        )
        return new_state, IRMHInfo(rate, accepted, log_w_new, jnp.zeros((), jnp.int32))

    return SamplingAlgorithm(init, step)


# ----------------------------------------------------------------------------------------
# Importance diagnostics
# ----------------------------------------------------------------------------------------
def _generalized_pareto_shape(x: np.ndarray) -> float:
    """Shape ``k`` of a generalized Pareto fit to exceedances ``x`` (sorted, ascending, > 0 at
    the top), by Zhang & Stephens' (2009) profile-likelihood empirical Bayes estimate, then
    the weakly informative prior of PSIS (Vehtari et al. 2024): ``k <- (n k + 5) / (n + 10)``.

    In the parameterisation ``1 + k x / sigma = 1 - b x``, the profile MLE of ``k`` at ``b`` is
    ``mean(log(1 - b x))`` and the profile log-likelihood is ``n (log(-b / k) - k - 1)``; the
    estimate of ``b`` is the posterior mean over a grid of ``30 + sqrt(n)`` values below
    ``1 / max(x)`` set from the first quartile.
    """
    n = x.size
    grid_size = 30 + int(math.sqrt(n))
    quartile = x[int(n / 4 + 0.5) - 1]
    j = np.arange(1, grid_size + 1, dtype=np.float64)
    b = 1.0 / x[-1] + (1.0 - np.sqrt(grid_size / (j - 0.5))) / (3.0 * quartile)
    k_of_b = np.mean(np.log1p(-b[:, None] * x[None, :]), axis=1)
    with np.errstate(divide="ignore", invalid="ignore"):
        profile = n * (np.log(-b / k_of_b) - k_of_b - 1.0)
    profile = np.where(np.isfinite(profile), profile, -np.inf)
    post = np.exp(profile - np.max(profile))
    post /= post.sum()
    b_hat = float(np.sum(post * b))
    k = float(np.mean(np.log1p(-b_hat * x)))
    return (n * k + 10 * 0.5) / (n + 10)


def pareto_khat(log_weights: Any) -> float:
    """PSIS's Pareto ``k`` of importance weights, from their logs (any shape; flattened).

    The largest ``M = ceil(min(n / 5, 3 sqrt(n)))`` weights, less the next largest, are fitted
    by a generalized Pareto distribution (see :func:`_generalized_pareto_shape`). ``k < 0.5``:
    the weights have a finite variance; ``k < 0.7``: importance sampling (and an independent
    Metropolis chain with this proposal) is reliable; above, the proposal's tails are too
    light for the target. ``-inf`` weights (target density 0) are allowed; NaN is an error.
    Returns ``inf`` when fewer than 5 weights are in the tail.

    Example:
        >>> import numpy as np
        >>> w = np.random.default_rng(0).pareto(2.0, 20000) + 1.0   # tail index 2: k = 1/2
        >>> round(pareto_khat(np.log(w)), 1)
        0.5
    """
    lw = np.asarray(log_weights, dtype=np.float64).ravel()
    if np.any(np.isnan(lw)):
        raise ValueError(f"pareto_khat: {int(np.isnan(lw).sum())} log weights are NaN.")
    if np.any(lw == np.inf):
        return math.inf
    n = lw.size
    tail = int(math.ceil(min(0.2 * n, 3.0 * math.sqrt(n))))
    if tail < 5 or n <= tail:
        return math.inf
    lw = np.sort(lw)
    top = lw[-1]
    if top == -np.inf:
        raise ValueError("pareto_khat: every weight is zero (log weight -inf).")
    threshold = lw[-tail - 1]
    x = np.exp(lw[-tail:] - top) - (np.exp(threshold - top) if threshold > -np.inf else 0.0)
    if x[-1] <= 0:  # the top weights are all equal: bounded weights
        return -math.inf
    x = np.maximum(x, 0.0)
    return _generalized_pareto_shape(x)


def importance_diagnostics(log_weights: Any) -> dict[str, float]:
    """Diagnostics of importance weights ``w = p / q`` of draws of ``q``, from their logs.

    Returns ``pareto_k`` (:func:`pareto_khat`), ``ess`` (Kish's effective sample size
    ``(sum w)^2 / sum w^2``), ``ess_fraction`` (``ess / n``) and ``log_z`` (the log of the
    mean weight: ``log`` of the normalising constant of ``p`` when ``q`` is normalised, e.g.
    the model's log marginal likelihood for ``p`` its unconstrained joint density).

    Example:
        >>> import numpy as np
        >>> d = importance_diagnostics(np.zeros(1000))   # equal weights
        >>> d["ess_fraction"], d["log_z"]
        (1.0, 0.0)
    """
    lw = np.asarray(log_weights, dtype=np.float64).ravel()
    n = lw.size
    top = np.max(lw)
    w = np.exp(lw - top)
    ess = float(w.sum() ** 2 / np.sum(w**2))
    return {"pareto_k": pareto_khat(lw), "ess": ess, "ess_fraction": ess / n,
            "log_z": float(top + np.log(w.mean()))}


# ----------------------------------------------------------------------------------------
# The infer method
# ----------------------------------------------------------------------------------------
def _is_method(obj: Any) -> bool:
    return isinstance(obj, Method)


@dataclass(frozen=True, eq=False)
class Learned(Method):
    """Learn a sampler of the posterior from another method's draws, then draw cheaply from it.

    ``infer(model, ..., method=Learned(source=NUTS(), flow="spline_coupling", correct="irmh"))``:

    1. *source*: an ``infer`` method object run on the model (``NUTS()`` by default, with
       ``source_samples`` draws after ``source_warmup`` warmup in each of ``source_chains``
       chains); a :class:`inference.Result` or a dict of constrained draws of the model's
       latent sites; or an array ``(n, D)`` of flat unconstrained draws (sites in model
       order, :func:`unconstrained_draws`). ``VI(guide="flow")`` is special: its fitted flow
       is the learned sampler (no fit to draws).
    2. *flow*: a kind of :data:`inference.flows.KINDS` fitted by maximum likelihood
       (:func:`fit_flow_to_draws`, ``flow_options`` for :class:`~inference.flows.FlowSpec`;
       default ``"spline_coupling"``, or with ``source=VI(guide="flow")`` that fit's flow),
       ``"flow_matching"`` (:func:`fit_flow_matching_to_draws`, ``flow_options`` for it:
       ``width``, ``depth``, ``ode_steps``, ``ode_method``, ``density``, ``path``), or an
       already fitted :class:`Flow` / :class:`FlowMatchingSampler` (any object with
       ``sample_and_log_prob(key, n)``/``log_prob``, or ``sample`` only with
       ``correct=None``), used as is (``source`` is then not run).
    3. *correct*: ``"irmh"`` -- ``num_chains`` independent Metropolis chains (:func:`irmh`)
       started at proposal draws, ``num_warmup`` steps of burn-in, then ``num_samples`` kept
       per chain: exact for the posterior; ``None`` -- ``num_chains x num_samples`` i.i.d.
       proposal draws (the "chains" are a layout), exact only as far as the flow is.

    ``steps``, ``batch_size``, ``optimizer``, ``standardize``, ``validation`` (held-out
    fraction for early stopping; normalizing flows only) go to the fit; ``base_scale``
    (a normalizing flow's base ``N(0, base_scale^2 I)`` when drawing, see :class:`Flow`)
    fattens the proposal's tails.

    The :class:`inference.Result`: ``samples`` of every latent and deterministic site,
    ``(chains, draws, *shape)``; ``stats``: ``lp`` (log density on the unconstrained space,
    as NUTS reports it), ``log_q`` (the proposal's there), ``n_grad`` (0), and with IRMH
    ``acceptance_rate``, ``is_accepted`` and ``proposal_log_weight`` (the log importance
    weight of each step's proposal), without it ``log_weight``. ``tuning``: ``pareto_k`` and
    ``log_z`` (the importance estimate of the log marginal likelihood), and ``importance``,
    all of :func:`importance_diagnostics` of the proposals drawn after burn-in (with IRMH)
    or of the draws (without; absent for a proposal without a density); ``flow`` (the
    proposal object, reusable as ``Learned(flow=...)``), ``flow_losses`` (the fit's per-step
    negative log-likelihood; for a VI flow, VI's objective) and ``source`` (the source's
    Result, when it was run). ``timing``: ``source``, ``fit``, ``sample`` seconds
    (``sample`` includes compilation).

    A ``pareto_k`` above 0.7 warns: the flow's tails are lighter than the posterior's; i.i.d.
    draws are then unreliable and IRMH chains mix slowly (check ESS).

    Example:
        >>> import jax.numpy as jnp, numpyro, numpyro.distributions as dist, inference
        >>> def model(y=None):
        ...     mu = numpyro.sample("mu", dist.Normal(0.0, 10.0))
        ...     numpyro.sample("y", dist.Normal(mu, 1.0).expand([3]).to_event(1), obs=y)
        >>> draws = 2.0 + 0.58 * jax.random.normal(jax.random.key(0), (1000, 1))
        >>> method = Learned(source=draws, flow="affine_coupling", steps=100,
        ...                  flow_options={"layers": 1, "width": 4})
        >>> r = inference.infer(model, y=jnp.array([1.0, 2.0, 3.0]), method=method,
        ...                     num_samples=200, num_warmup=50, num_chains=2, progress=False)
        >>> r.samples["mu"].shape, float(r.stats["acceptance_rate"].mean()) > 0.5
        ((2, 200), True)
    """

    source: Any = None
    flow: Any = None
    correct: str | None = "irmh"
    steps: int = 2000
    batch_size: int = 256
    optimizer: Any = None
    standardize: str | None = "full"
    flow_options: dict | None = None
    source_samples: int = 1000
    source_warmup: int = 1000
    source_chains: int = 4
    base_scale: float = 1.0
    validation: float = 0.1

    handles_discrete: ClassVar[bool] = False

    def __post_init__(self):
        from inference.nuts import NUTS
        from inference.result import Result
        from inference.vi import VI

        source = NUTS() if self.source is None else self.source
        object.__setattr__(self, "source", source)
        if not (_is_method(source) or isinstance(source, (Result, dict))):
            arr = np.asarray(source) if isinstance(source, (np.ndarray, jax.Array, list)) else None
            if arr is None or arr.ndim < 2:
                raise TypeError(
                    f"Learned(source={source!r}): use an infer method object (e.g. "
                    "inference.NUTS(), inference.VI(guide='flow')), a Result, a dict of "
                    "constrained draws, or an array (n, D) of unconstrained draws.")
        if self.correct not in ("irmh", None):
            raise ValueError(f"Learned(correct={self.correct!r}): use 'irmh' (independent "
                             "Metropolis correction, exact) or None (i.i.d. flow draws).")
        for name in ("steps", "batch_size", "source_samples", "source_chains"):
            _positive_int("Learned", name, getattr(self, name))
        if isinstance(self.source_warmup, bool) or not isinstance(self.source_warmup, int) \
                or self.source_warmup < 0:
            raise ValueError(f"Learned: source_warmup must be a non-negative int; got "
                             f"{self.source_warmup!r}.")
        _check_optimizer("Learned", self.optimizer)
        if not (isinstance(self.base_scale, (int, float)) and not isinstance(self.base_scale, bool)
                and self.base_scale > 0):
            raise ValueError(f"Learned(base_scale={self.base_scale!r}): must be a positive number.")
        if self.base_scale != 1.0 and (self.flow in FLOW_MATCHING_NAMES or not (
                self.flow is None or isinstance(self.flow, (Flow, str)))):
            raise ValueError("Learned(base_scale=...): applies to normalizing flows (a flow kind "
                             "or a Flow), not to flow-matching samplers.")
        if self.standardize not in _STANDARDIZE:
            raise ValueError(f"Learned(standardize={self.standardize!r}): use 'full', 'diag' "
                             "or None.")
        if self.flow_options is not None and not isinstance(self.flow_options, dict):
            raise TypeError(f"Learned(flow_options={self.flow_options!r}): must be a dict.")
        vi_flow = isinstance(source, VI) and source.guide == "flow"
        if vi_flow and (self.flow is not None or self.flow_options):
            raise ValueError("Learned(source=VI(guide='flow')): the VI fit's flow is the learned "
                             "sampler; leave flow and flow_options unset and choose the flow with "
                             "VI(guide_options={'kind': ..., 'layers': ...}).")
        if self.flow is None:
            object.__setattr__(self, "flow", "vi" if vi_flow else "spline_coupling")
        flow = self.flow
        if flow == "vi":
            if not vi_flow:
                raise ValueError("Learned(flow='vi'): needs source=VI(guide='flow', ...).")
        elif isinstance(flow, str):
            if flow in FLOW_MATCHING_NAMES:
                options = dict(self.flow_options or {})
                allowed = {"width", "depth", "time_frequencies", "ode_steps", "ode_method",
                           "density", "path"}
                unknown = set(options) - allowed
                if unknown:
                    raise ValueError(f"Learned(flow={flow!r}, flow_options=...): unknown "
                                     f"option(s) {sorted(unknown)}; use {sorted(allowed)}.")
                density = options.get("density", "jacobian")
                FlowMatchingSampler(lambda y, t: y, 1, options.get("ode_steps", 16),
                                    options.get("ode_method", "rk4"), density)
                if density is None and self.correct == "irmh":
                    raise ValueError(_NO_DENSITY.format(what="flow_matching with density=None"))
            else:
                object.__setattr__(self, "flow", check_kind(flow, "Learned"))
                try:
                    FlowSpec(self.flow, 2, **dict(self.flow_options or {}))
                except TypeError as err:
                    raise ValueError(f"Learned(flow_options={self.flow_options!r}): {err}; see "
                                     "inference.flows.FlowSpec.") from None
        else:
            has_sample = callable(getattr(flow, "sample_and_log_prob", None)) or \
                callable(getattr(flow, "sample", None))
            if not has_sample:
                raise TypeError(
                    f"Learned(flow={flow!r}): use a flow kind ({', '.join(_kinds())}), "
                    "'flow_matching', or a fitted proposal with sample(key, n) (and "
                    "log_prob(x) for IRMH), such as a Flow or FlowMatchingSampler.")
            if self.correct == "irmh" and not _proposal_has_density(flow):
                raise ValueError(_NO_DENSITY.format(what=type(flow).__name__))

    # -- pieces ------------------------------------------------------------------------
    def _source_draws(self, model, args, kwargs, pot, key, progress):
        """``(draws (n, D) or None, source Result or None, a VI flow or None)``."""
        from inference.infer import infer
        from inference.result import Result
        from inference.vi import VI

        source = self.source
        if isinstance(source, Result):
            return _draws_for(pot, source.samples, "Learned(source=Result)"), source, None
        if isinstance(source, dict):
            return _draws_for(pot, source, "Learned(source=dict)"), None, None
        if not _is_method(source):
            return _as_points("Learned(source=array)", source, pot.dimension), None, None
        result = infer(model, *args, method=source, num_samples=self.source_samples,
                       num_warmup=self.source_warmup, num_chains=self.source_chains, key=key,
                       progress=progress, **kwargs)
        if isinstance(source, VI) and source.guide == "flow":
            return None, result, flow_from_vi(result)
        return _draws_for(pot, result.samples, "Learned(source)"), result, None

    def _fit(self, draws, key, progress):
        if self.flow in FLOW_MATCHING_NAMES:
            options = dict(self.flow_options or {})
            r = fit_flow_matching_to_draws(
                draws, key=key, steps=self.steps, batch_size=self.batch_size,
                optimizer=self.optimizer, standardize=self.standardize, progress=progress,
                **options)
        else:
            r = fit_flow_to_draws(draws, self.flow, key=key, steps=self.steps,
                                  batch_size=self.batch_size, optimizer=self.optimizer,
                                  standardize=self.standardize, flow_options=self.flow_options,
                                  validation=self.validation, progress=progress)
        return r.flow, r.losses

    # -- the infer hook ----------------------------------------------------------------
    def run(
        self,
        model: Callable,
        args: tuple,
        kwargs: dict,
        *,
        key: jax.Array,
        num_samples: int,
        num_chains: int,
        num_warmup: int = 1000,
        progress: bool = True,
        devices: Any = None,
        trace: dict | None = None,
    ) -> tuple[dict, dict, dict, dict]:
        """Source, fit, draw: ``(samples, stats, tuning, timing)`` for :class:`inference.Result`."""
        if devices is not None:
            raise ValueError(
                f"infer: {type(self).__name__} does not split its work over devices; "
                "leave devices=None (its chains, if any, run on the default device)."
            )
        pot = make_potential(model, *args, **kwargs)
        k_src, k_fit, k_run = jax.random.split(key, 3)
        timing: dict[str, float] = {}
        tuning: dict[str, Any] = {}
        t0 = time.perf_counter()
        if isinstance(self.flow, str):
            draws, source_result, vi_flow = self._source_draws(model, args, kwargs, pot, k_src,
                                                               progress)
            t1 = time.perf_counter()
            timing["source"] = t1 - t0
            if source_result is not None:
                tuning["source"] = source_result
            if vi_flow is not None:
                proposal, losses = vi_flow, source_result.tuning.get("objective")
            else:
                proposal, losses = self._fit(draws, k_fit, progress)
            timing["fit"] = time.perf_counter() - t1
            tuning["flow_losses"] = losses
        else:
            proposal = self.flow
        if isinstance(proposal, Flow) and self.base_scale != 1.0:
            proposal = dataclasses.replace(proposal, base_scale=float(self.base_scale))
        dim = getattr(proposal, "dim", None)
        if dim is not None and dim != pot.dimension:
            raise ValueError(f"Learned: the flow has dimension {dim}, but the model's "
                             f"unconstrained space has dimension {pot.dimension} "
                             f"(sites {pot.sites}).")
        tuning["flow"] = proposal

        t2 = time.perf_counter()
        logdensity = pot.flat_logdensity_fn
        constrain = jax.vmap(jax.vmap(lambda x: pot.to_constrained(pot.unravel(x))))
        if self.correct is None:
            samples, stats, log_w = _iid(proposal, logdensity, constrain, k_run, num_chains,
                                         num_samples)
        else:
            samples, stats, log_w = _irmh_chains(proposal, logdensity, constrain, k_run,
                                                 num_chains, num_warmup, num_samples, progress)
        timing["sample"] = time.perf_counter() - t2
        if log_w is None:  # uncorrected draws of a proposal without a density
            return samples, stats, tuning, timing
        diagnostics = importance_diagnostics(np.asarray(log_w))
        tuning.update(pareto_k=diagnostics["pareto_k"], log_z=diagnostics["log_z"],
                      importance=diagnostics)
        if diagnostics["pareto_k"] > 0.7:
            warnings.warn(
                f"Learned: the importance weights p/q of the flow's draws have Pareto k = "
                f"{diagnostics['pareto_k']:.2f} > 0.7: the flow's tails are lighter than the "
                "posterior's. " + ("IRMH is still exact but may mix slowly: check the ESS."
                                   if self.correct else "The i.i.d. draws are unreliable; use "
                                   "correct='irmh'."), stacklevel=3)
        return samples, stats, tuning, timing


_NO_DENSITY = ("Learned(correct='irmh'): the proposal ({what}) has no density; the independent "
               "Metropolis correction needs log q. Use a normalizing flow, a flow-matching "
               "sampler with density='jacobian' or 'ode', or correct=None for uncorrected draws.")


def _kinds() -> list[str]:
    from inference.flows import KINDS

    return list(KINDS)


def _sample_with_log_q(proposal: Any):
    """``key -> (x, log q(x))`` for one point, from whatever the proposal offers."""
    if callable(getattr(proposal, "sample_and_log_prob", None)) and \
            getattr(proposal, "has_density", True):
        return lambda k: proposal.sample_and_log_prob(k, None)
    if not _proposal_has_density(proposal):
        return None
    return lambda k: (lambda x: (x, proposal.log_prob(x)))(proposal.sample(k, None))


def _iid(proposal, logdensity, constrain, key, num_chains, num_samples):
    """``num_chains x num_samples`` independent proposal draws; their log weights (``None``
    for a proposal without a density)."""
    joint = _sample_with_log_q(proposal)

    @jax.jit
    def run(key):
        keys = jax.random.split(key, (num_chains, num_samples))
        if joint is None:
            x = jax.vmap(jax.vmap(lambda k: proposal.sample(k, None)))(keys)
            lq = None
        else:
            x, lq = jax.vmap(jax.vmap(joint))(keys)
        return constrain(x), jax.vmap(jax.vmap(logdensity))(x), lq

    samples, lp, lq = jax.block_until_ready(run(key))
    stats = {"lp": lp, "n_grad": jnp.zeros(lp.shape, jnp.int32)}
    if lq is None:
        return samples, stats, None
    stats.update(log_q=lq, log_weight=lp - lq)
    return samples, stats, lp - lq


def _irmh_chains(proposal, logdensity, constrain, key, num_chains, num_warmup, num_samples,
                 progress):
    joint = _sample_with_log_q(proposal)
    if joint is None:
        raise ValueError(_NO_DENSITY.format(what=type(proposal).__name__))
    alg = irmh(logdensity, joint, proposal.log_prob, sample_returns_logdensity=True)
    total = num_warmup + num_samples
    bar = progress_lib.ProgressBar(total, desc="Learned IRMH", enabled=progress,
                                   phases=[("warmup", num_warmup), ("sample", num_samples)])
    step = jax.vmap(alg.step)

    def body(carry, xs):
        state, draws, stats = carry
        t, keys = xs
        state, info = step(keys, state)
        row = {"lp": state.logdensity, "log_q": state.proposal_logdensity,
               "acceptance_rate": info.acceptance_rate, "is_accepted": info.is_accepted,
               "proposal_log_weight": info.log_weight, "n_grad": info.n_grad}
        slot = jnp.maximum(t - num_warmup, 0)
        put = lambda buf, v: jax.lax.dynamic_update_index_in_dim(buf, v, slot, 0)  # noqa: E731
        return (state, put(draws, state.position), jax.tree.map(put, stats, row)), None

    @jax.jit
    def run(key):
        k_init, k_steps = jax.random.split(key)
        x0, lq0 = jax.vmap(joint)(jax.random.split(k_init, num_chains))
        state = IRMHState(x0, jax.vmap(logdensity)(x0), lq0)
        like = lambda dtype: jnp.zeros((num_samples, num_chains), dtype)  # noqa: E731
        stats = {"lp": like(state.logdensity.dtype), "log_q": like(state.logdensity.dtype),
                 "acceptance_rate": like(state.logdensity.dtype), "is_accepted": like(bool),
                 "proposal_log_weight": like(state.logdensity.dtype), "n_grad": like(jnp.int32)}
        draws = jnp.zeros((num_samples,) + x0.shape, x0.dtype)
        keys = jax.random.split(k_steps, (total, num_chains))
        _, draws, stats = progress_lib.scan(
            body, (state, draws, stats), (jnp.arange(total), keys), total, bar=bar,
            postfix_fn=lambda c: {"accept": jnp.mean(c[2]["is_accepted"])})
        swap = lambda a: jnp.swapaxes(a, 0, 1)  # noqa: E731
        draws, stats = swap(draws), jax.tree.map(swap, stats)
        return constrain(draws), stats

    try:
        samples, stats = jax.block_until_ready(run(key))
    finally:
        bar.close()
    return samples, stats, stats["proposal_log_weight"]
