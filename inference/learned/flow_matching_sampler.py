"""A flow-matching field's fixed-step ODE map as a distribution, with the exact density of
its draws (the integrator's Jacobian) or the ODE's (the instantaneous change of variables)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp

from inference import flow_matching as fm
from inference.learned.checks import _FIXED_STEP, _positive_int, _std_normal_log_prob
from inference.learned.whitening import _Affine, _check_affine

__all__ = ["FlowMatchingSampler"]


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
