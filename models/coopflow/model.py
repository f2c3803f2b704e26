"""The CoopFlow model: an energy network and a normalizing flow (:func:`init`), and argument checks."""

from __future__ import annotations

from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp

from inference.arguments import check_int, check_number
from inference.flows import FlowSpec, check_kind


#: Flow kinds with a one-pass inverse *and* forward (density and sampling both cheap).
FAST_KINDS = ("affine_coupling", "spline_coupling")


# ----------------------------------------------------------------------------------------
# Checks
# ----------------------------------------------------------------------------------------
def _int(fn: str, name: str, value: Any, minimum: int = 1) -> int:
    return check_int(f"coopflow.{fn}", name, value, minimum)


def _positive(fn: str, name: str, value: Any) -> float:
    return check_number(f"coopflow.{fn}", name, value)


def _nonnegative(fn: str, name: str, value: Any) -> float:
    return check_number(f"coopflow.{fn}", name, value, allow_zero=True)


def _check_model(fn: str, model: Any) -> "CoopFlow":
    if not isinstance(model, CoopFlow):
        raise TypeError(f"coopflow.{fn}: model must be a CoopFlow (from coopflow.init); "
                        f"got {type(model).__name__}.")
    return model


def _points(fn: str, name: str, x: Any, dim: int) -> jax.Array:
    x = jnp.asarray(x)
    if x.ndim != 2 or x.shape[1] != dim or x.shape[0] < 1:
        raise ValueError(f"coopflow.{fn}: {name} must have shape (n, {dim}) with n >= 1; "
                         f"got {x.shape}.")
    if not jnp.issubdtype(x.dtype, jnp.floating):
        x = x.astype(jnp.float32)
    return x


# ----------------------------------------------------------------------------------------
# The models
# ----------------------------------------------------------------------------------------
class Energy(eqx.Module):
    """An MLP energy ``E(x)`` (SiLU): one point of shape ``(dim,)`` to a scalar.

    With ``reference_scale=s`` the energy is ``mlp(x) + |x|^2 / (2 s^2)``: the EBM is an
    exponential tilt of the reference ``N(0, s^2 I)``. The quadratic keeps ``exp(-E)``
    normalisable and gives Langevin a restoring force far from the data, where an MLP's
    energy is at most linear and may decrease without bound (the chain, and the flow that
    follows it, could then drift off). ``None``: the MLP alone.

    Example:
        >>> import jax, jax.numpy as jnp
        >>> e = Energy(2, width=8, depth=1, reference_scale=2.0, key=jax.random.key(0))
        >>> x = jnp.array([3.0, 4.0])
        >>> round(float(e(x) - e.mlp(x)), 4)  # |x|^2 / (2 s^2) = 25 / 8
        3.125
    """

    mlp: eqx.nn.MLP
    reference_scale: float | None = eqx.field(static=True)

    def __init__(self, dim: int, width: int = 128, depth: int = 3,
                 reference_scale: float | None = None, *, key: jax.Array):
        for name, value in (("dim", dim), ("width", width), ("depth", depth)):
            _int("Energy", name, value)
        if reference_scale is not None:
            reference_scale = _positive("Energy", "reference_scale", reference_scale)
        self.mlp = eqx.nn.MLP(dim, "scalar", width, depth, activation=jax.nn.silu, key=key)
        self.reference_scale = reference_scale

    def __call__(self, x: jax.Array) -> jax.Array:
        e = self.mlp(x)
        if self.reference_scale is not None:
            e = e + 0.5 * jnp.sum(x**2) / self.reference_scale**2
        return e


class CoopFlow(eqx.Module):
    """An EBM and a flow over ``R^dim``, with the short-run Langevin settings that join them.

    Attributes:
        energy: an Equinox module ``E(x)``, one point ``(dim,)`` to a scalar.
        theta: the flow's flat weights (``spec.init``).
        spec: the flow's structure (static).
        langevin_steps: ``K``, Langevin steps per revision (training and :func:`sample`).
        step_size: the Langevin step size ``h``.
        temperature: ``T >= 0``: each Langevin step is
            ``x <- x - h grad E(x) + sqrt(2 h T) xi``, i.e. ULA on ``p_theta^(1/T)``. ``T = 1``
            targets ``p_theta`` itself; ``T < 1`` damps the noise (short-run EBM practice);
            ``T = 0`` is gradient descent on ``E``.
    """

    energy: eqx.Module
    theta: jax.Array
    spec: FlowSpec = eqx.field(static=True)
    langevin_steps: int = eqx.field(static=True)
    step_size: float = eqx.field(static=True)
    temperature: float = eqx.field(static=True, default=1.0)

    @property
    def dim(self) -> int:
        return self.spec.dim


def init(
    key: jax.Array,
    dim: int,
    *,
    flow_kind: str = "affine_coupling",
    flow_layers: int = 6,
    flow_width: int = 64,
    flow_depth: int = 1,
    energy_width: int = 128,
    energy_depth: int = 3,
    reference_scale: float | None = 3.0,
    energy: eqx.Module | None = None,
    langevin_steps: int = 30,
    step_size: float = 0.01,
    temperature: float = 1.0,
    **flow_options: Any,
) -> CoopFlow:
    """A fresh :class:`CoopFlow`: an identity flow (so ``q = N(0, I)``) and a random energy.

    Args:
        key: a ``jax.random.key`` for both sets of weights.
        dim: the data dimension.
        flow_kind: ``"affine_coupling"`` or ``"spline_coupling"`` (both directions one
            pass; the autoregressive kinds would make one direction ``dim`` passes).
        flow_layers, flow_width, flow_depth: the flow's coupling layers and conditioner MLPs.
        energy_width, energy_depth, reference_scale: the default :class:`Energy` (an MLP
            of that width and depth plus ``|x|^2 / (2 reference_scale^2)``; ``None`` for
            the MLP alone). The default scale 3 suits data of unit order (a few units
            across, like :mod:`models.toy2d` or pixels in ``[-1, 1]``).
        energy: an Equinox module ``E(x)`` to use instead of the default MLP.
        langevin_steps: ``K`` (>= 1), step_size: ``h``, temperature: ``T``; see
            :class:`CoopFlow`.
        **flow_options: more :class:`~inference.flows.FlowSpec` arguments (``knots``,
            ``interval``, ``activation``, ...).

    Example:
        >>> import jax
        >>> m = init(jax.random.key(0), 3, flow_layers=2, flow_width=8, energy_width=8)
        >>> m.dim, m.langevin_steps, m.theta.shape == (m.spec.size,)
        (3, 30, True)
    """
    dim = _int("init", "dim", dim)
    kind = check_kind(flow_kind, "coopflow.init")
    if kind not in FAST_KINDS:
        raise ValueError(f"coopflow.init(flow_kind={flow_kind!r}): use one of {list(FAST_KINDS)}; "
                         f"{kind!r} needs {dim} sequential passes in one of the two directions "
                         "CoopFlow uses every step (sampling and density).")
    langevin_steps = _int("init", "langevin_steps", langevin_steps)
    step_size = _positive("init", "step_size", step_size)
    k_flow, k_energy = jax.random.split(key)
    spec = FlowSpec(kind, dim=dim, layers=flow_layers, width=flow_width, depth=flow_depth,
                    **flow_options)
    if energy is None:
        energy = Energy(dim, energy_width, energy_depth, reference_scale, key=k_energy)
    elif not isinstance(energy, eqx.Module):
        raise TypeError(f"coopflow.init: energy must be an Equinox module E(x) -> scalar; got "
                        f"{type(energy).__name__}.")
    probe = jax.eval_shape(energy, jax.ShapeDtypeStruct((dim,), jnp.float32))
    if probe.shape != ():
        raise ValueError(f"coopflow.init: energy(x) must return a scalar for x of shape ({dim},); "
                         f"got shape {probe.shape}.")
    temperature = _nonnegative("init", "temperature", temperature)
    return CoopFlow(energy, spec.init(k_flow), spec, langevin_steps, step_size, temperature)
