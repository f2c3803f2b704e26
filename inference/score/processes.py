"""Forward noising processes ``x_t = a(t) x0 + s(t) eps`` and their SDE coefficients.

:class:`Process` is the protocol (``marginal``, ``t_from_log_snr``; drift and diffusion follow
from the marginal); :class:`VP`, :class:`VE` and :class:`Linear` are the three shipped ones,
:func:`process` builds one by name.
"""

from __future__ import annotations

import abc
import math
from typing import Any, Sequence

import equinox as eqx
import jax
import jax.numpy as jnp

__all__ = ["Process", "VP", "VE", "Linear", "process"]


class Process(eqx.Module):
    """A forward noising process ``x_t = a(t) x0 + s(t) eps``, ``t in [t_min, t_max]``.

    Subclasses define :meth:`marginal` and :meth:`t_from_log_snr`; the SDE coefficients
    follow from the marginal (``f = d log a/dt``, ``g^2 = d s^2/dt - 2 f s^2``).
    """

    t_min: float
    t_max: float

    @abc.abstractmethod
    def marginal(self, t) -> tuple[jax.Array, jax.Array]:
        """``(a(t), s(t))``: the mean scale and the std of ``x_t`` given ``x0``."""

    @abc.abstractmethod
    def t_from_log_snr(self, lam) -> jax.Array:
        """The inverse of :meth:`log_snr`."""

    def log_snr(self, t) -> jax.Array:
        """``lambda(t) = log(a / s)``, decreasing in ``t``."""
        a, s = self.marginal(t)
        return jnp.log(a) - jnp.log(s)

    def marginal_and_derivative(self, t):
        """``((a, s), (da/dt, ds/dt))``."""
        t = jnp.asarray(t, jnp.float32)
        return jax.jvp(self.marginal, (t,), (jnp.ones_like(t),))

    def drift(self, x, t) -> jax.Array:
        """``f(t) x``, the forward SDE's drift."""
        (a, _), (da, _) = self.marginal_and_derivative(t)
        return (da / a) * x

    def diffusion(self, t) -> jax.Array:
        """``g(t)``, the forward SDE's diffusion coefficient."""
        (a, s), (da, ds) = self.marginal_and_derivative(t)
        return jnp.sqrt(jnp.maximum(2.0 * s * ds - 2.0 * (da / a) * s**2, 0.0))

    def prior_std(self) -> jax.Array:
        return self.marginal(jnp.asarray(self.t_max, jnp.float32))[1]

    def prior_sample(self, key: jax.Array, shape: Sequence[int]) -> jax.Array:
        """Draws of the reference law at ``t_max``: ``N(0, s(t_max)^2 I)``."""
        return self.prior_std() * jax.random.normal(key, tuple(shape))


class VP(Process):
    """Variance preserving: ``beta(t) = beta_min + t (beta_max - beta_min)``,
    ``a = exp(-int beta / 2)``, ``s = sqrt(1 - a^2)``.

    Example:
        >>> a, s = VP().marginal(0.5)
        >>> round(float(a**2 + s**2), 6)
        1.0
    """

    beta_min: float = 0.1
    beta_max: float = 20.0
    t_min: float = 1e-3
    t_max: float = 1.0

    def _int_beta(self, t):
        return self.beta_min * t + 0.5 * (self.beta_max - self.beta_min) * t**2

    def marginal(self, t):
        ib = self._int_beta(jnp.asarray(t, jnp.float32))
        return jnp.exp(-0.5 * ib), jnp.sqrt(-jnp.expm1(-ib))

    def t_from_log_snr(self, lam):
        ib = jax.nn.softplus(-2.0 * jnp.asarray(lam, jnp.float32))  # log(1 + e^{-2 lam})
        db = self.beta_max - self.beta_min
        return 2.0 * ib / (self.beta_min + jnp.sqrt(self.beta_min**2 + 2.0 * db * ib))


class VE(Process):
    """Variance exploding: ``a = 1``, ``s = sigma_min (sigma_max / sigma_min)^t``.

    Example:
        >>> [round(float(v), 3) for v in VE(sigma_min=0.01, sigma_max=10.0).marginal(1.0)]
        [1.0, 10.0]
    """

    sigma_min: float = 0.01
    sigma_max: float = 10.0
    t_min: float = 0.0
    t_max: float = 1.0

    def marginal(self, t):
        t = jnp.asarray(t, jnp.float32)
        return jnp.ones_like(t), self.sigma_min * (self.sigma_max / self.sigma_min) ** t

    def t_from_log_snr(self, lam):
        return (-jnp.asarray(lam, jnp.float32) - math.log(self.sigma_min)) / math.log(
            self.sigma_max / self.sigma_min)


class Linear(Process):
    """The linear interpolant ``x_t = (1 - t) x0 + t eps`` (rectified flow's path).

    ``t_max < 1`` keeps the drift ``-x / (1 - t)`` finite; the prior ``N(0, t_max^2 I)``
    then ignores the ``(1 - t_max) x0`` remainder.

    Example:
        >>> [round(float(v), 3) for v in Linear().marginal(0.25)]
        [0.75, 0.25]
    """

    t_min: float = 1e-3
    t_max: float = 0.999

    def marginal(self, t):
        t = jnp.asarray(t, jnp.float32)
        return 1.0 - t, t

    def t_from_log_snr(self, lam):
        return jax.nn.sigmoid(-jnp.asarray(lam, jnp.float32))


_PROCESSES = {"vp": VP, "ve": VE, "linear": Linear}


def process(name: str | Process, **kwargs: Any) -> Process:
    """A process by name (``"vp"``, ``"ve"``, ``"linear"``) or passed through.

    Example:
        >>> process("ve", sigma_max=5.0).sigma_max
        5.0
    """
    if isinstance(name, Process):
        return name
    if not isinstance(name, str) or name.lower() not in _PROCESSES:
        raise ValueError(f"unknown process {name!r}; expected one of {sorted(_PROCESSES)} or a "
                         "Process instance (VP(), VE(), Linear()).")
    return _PROCESSES[name.lower()](**kwargs)


def _check_process(fn: str, proc: Any) -> Process:
    if not isinstance(proc, Process):
        raise TypeError(f"{fn}: process must be a Process (VP(), VE(), Linear()) or built by "
                        f"inference.score.process(name); got {type(proc).__name__}.")
    return proc
