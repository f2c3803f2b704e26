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

Modules: ``checks`` (names and input checks), ``fields``, ``loss``, ``training``, ``ode``,
``reflow`` (with :func:`straightness`), ``density``; every public name is importable from here.

Example:
    >>> import jax, jax.numpy as jnp
    >>> v = gaussian_velocity(mean=jnp.array([2.0, 1.0]), scale=0.5)
    >>> x0 = jax.random.normal(jax.random.key(0), (2000, 2))
    >>> x1, nfe = sample(v, x0, steps=8, method="rk4")
    >>> nfe, [round(float(a), 1) for a in x1.mean(0)], [round(float(a), 1) for a in x1.std(0)]
    (32, [2.0, 1.0], [0.5, 0.5])
"""

from __future__ import annotations

# _check_field and _odeint_fixed: used by inference.learned (and its tests) through this package.
from inference.flow_matching.checks import METHODS, PATHS, Field, _check_field  # noqa: F401
from inference.flow_matching.density import FlowDensity, log_density
from inference.flow_matching.fields import VelocityMLP, gaussian_velocity
from inference.flow_matching.loss import cfm_loss
from inference.flow_matching.ode import _odeint_fixed, sample  # noqa: F401
from inference.flow_matching.reflow import ReflowResult, reflow, straightness
from inference.flow_matching.training import TrainResult, train

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
