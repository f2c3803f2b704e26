r"""CoopFlow: an energy-based model and a normalizing flow learned together.

Xie et al. (ICLR 2022), *A Tale of Two Flows: Cooperative Learning of Langevin Flow and
Normalizing Flow Toward Energy-Based Model*. Two models of the data law:

* the energy-based model (EBM) ``p_theta(x) ∝ exp(-E_theta(x))``, with ``E_theta`` an
  Equinox network (by default :class:`Energy`, an MLP), and
* a normalizing flow ``q_alpha``: ``x = T_alpha(z)``, ``z ~ N(0, I)``
  (:class:`inference.flows.FlowSpec`, weights one flat vector).

Each training iteration (:func:`train_step`, run by :func:`fit`):

1. the flow proposes ``x_0 = T_alpha(z)``, ``z ~ N(0, I)``;
2. ``K`` steps of short-run Langevin on ``log p_theta = -E_theta``
   (:func:`inference.langevin.flow`: ``x_{k+1} = x_k - h grad E(x_k) + sqrt(2 h T) xi_k``,
   ``T = 1`` the plain unadjusted Langevin algorithm, ``T < 1`` damped noise) revise
   ``x_0 -> x_K``; the revised samples are held fixed (no gradient through the chain);
3. the EBM descends the maximum-likelihood (contrastive-divergence) loss with the data
   against ``x_K`` (:func:`energy_loss`),

   .. math::  L(\theta) = E_{data}[E_\theta(x)] - E_{x_K}[E_\theta(x_K)]
              + \alpha\,(E_{data}[E_\theta^2] + E_{x_K}[E_\theta^2]),

   the small ``alpha`` penalty keeping the energy's free offset from drifting (as in
   ``examples/ebm_short_run.py``);
4. the flow takes a maximum-likelihood step on the revised samples: it minimises
   ``-E[log q_alpha(x_K)]`` (:func:`flow_loss`), so it learns to absorb the Langevin
   revision and its own proposals move towards the EBM's short-run law.

Sampling afterwards (:func:`sample`) is the same cooperative chain: a flow draw, then ``K``
Langevin steps; ``langevin_steps=0`` gives the flow alone.

The flow's density is needed in the data direction (``log q(x)`` through ``T^{-1}``) and
its samples in the other, so use a kind that is one pass both ways: ``"affine_coupling"``
(the default) or ``"spline_coupling"``.

Practical notes (from the runs in ``examples/coopflow.py``):

* The flow learns whatever the revision adds, noise included: it fits ``x_K``, which is
  ``x_0`` plus ``K`` steps of Langevin noise, so unless the energy's restoring drift holds
  the samples, the flow's spread grows from one iteration to the next and the pair runs
  away (seen on 2-D data with small steps, and on 64-D digits at ``T = 1``). What holds it
  here: the reference quadratic of :class:`Energy` (``reference_scale``), an EBM that
  learns faster than the flow (:func:`default_optimizers`), and in high dimension a
  temperature below 1.
* Short-run Langevin moves mass locally. It sharpens modes the flow has blurred, but it
  cannot carry mass between well separated modes, so the mode weights are the flow's and
  are corrected only slowly, through the energy's tilt.
* The learned energy is a short-run energy (Nijkamp et al. 2019): its ``K``-step sampler
  from the flow matches the data; ``exp(-E)`` itself need not be a good density.

Training is ``model, history = fit(model, data, key, steps)`` (``data`` an array of points
or a sampler such as :func:`models.toy2d.eight_gaussians`); ``examples/coopflow.py`` runs
it on 2-D data and on digits.

Example:
    >>> import jax
    >>> from models import coopflow
    >>> model = coopflow.init(jax.random.key(0), 2, flow_layers=2, flow_width=8,
    ...                       energy_width=16, energy_depth=1, langevin_steps=5)
    >>> x = coopflow.sample(model, jax.random.key(1), 3)  # flow draws + 5 Langevin steps
    >>> x.shape, coopflow.flow_log_prob(model, x).shape
    ((3, 2), (3,))
"""

from __future__ import annotations

from typing import Any, Callable, NamedTuple

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax

from inference import langevin
from inference.arguments import check_int, check_number
from inference.fit import FitResult, NonFiniteError, all_finite
from inference.flows import FlowSpec, check_kind
from inference.progress import ProgressBar, chunk_sizes

__all__ = [
    "Energy", "CoopFlow", "Metrics", "CoopFlowNonFiniteError", "init", "energies",
    "flow_sample", "flow_log_prob", "revise", "sample", "energy_loss", "flow_loss",
    "default_optimizers", "init_opt_state", "train_step", "fit",
]

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


# ----------------------------------------------------------------------------------------
# Densities and samplers
# ----------------------------------------------------------------------------------------
def energies(model: CoopFlow, x: jax.Array) -> jax.Array:
    """``E_theta(x)`` for a batch ``x`` of shape ``(n, dim)``; shape ``(n,)``.

    Example:
        >>> import jax, jax.numpy as jnp
        >>> m = init(jax.random.key(0), 2, flow_layers=1, flow_width=4, energy_width=4)
        >>> energies(m, jnp.zeros((5, 2))).shape
        (5,)
    """
    _check_model("energies", model)
    return _energies(model.energy, _points("energies", "x", x, model.dim))


@eqx.filter_jit
def _energies(energy: Any, x: jax.Array) -> jax.Array:
    return jax.vmap(energy)(x)


def flow_sample(model: CoopFlow, key: jax.Array, n: int) -> jax.Array:
    """``n`` draws ``T_alpha(z)``, ``z ~ N(0, I)`` of the flow alone; shape ``(n, dim)``.

    Example:
        >>> import jax
        >>> m = init(jax.random.key(0), 2, flow_layers=1, flow_width=4, energy_width=4)
        >>> flow_sample(m, jax.random.key(1), 4).shape
        (4, 2)
    """
    _check_model("flow_sample", model)
    n = _int("flow_sample", "n", n)
    return _flow_sample_jit(model, key, n)


def _flow_sample(model: CoopFlow, key: jax.Array, n: int) -> jax.Array:
    z = jax.random.normal(key, (n, model.dim))
    return jax.vmap(lambda zi: model.spec.forward(model.theta, zi)[0])(z)


def flow_log_prob(model: CoopFlow, x: jax.Array) -> jax.Array:
    """``log q_alpha(x)`` for a batch ``x`` of shape ``(n, dim)``; shape ``(n,)``.

    Example:
        >>> import jax, jax.numpy as jnp
        >>> m = init(jax.random.key(0), 2, flow_layers=1, flow_width=4, energy_width=4)
        >>> round(float(flow_log_prob(m, jnp.zeros((1, 2)))[0]), 4)  # fresh flow: N(0, I)
        -1.8379
    """
    _check_model("flow_log_prob", model)
    x = _points("flow_log_prob", "x", x, model.dim)
    return _flow_log_prob_jit(model.spec, model.theta, x)


def _flow_log_prob(spec: FlowSpec, theta: jax.Array, x: jax.Array) -> jax.Array:
    return jax.vmap(lambda xi: spec.log_prob(theta, xi))(x)


def _revise(model: CoopFlow, key: jax.Array, x0: jax.Array, steps: int) -> jax.Array:
    energy, t = model.energy, model.temperature
    # ULA on -E / T with step h T: x - h grad E + sqrt(2 h T) xi (T = 0: no noise, step h).
    scale = 1.0 / t if t > 0 else 1.0
    logdensity = lambda x: -scale * jnp.sum(jax.vmap(energy)(x))  # noqa: E731 (points independent)
    return langevin.flow(logdensity, x0, key, steps=steps, step_size=model.step_size / scale,
                         noise=t > 0, checkpoint=False)


def revise(model: CoopFlow, key: jax.Array, x0: jax.Array, steps: int | None = None) -> jax.Array:
    """Short-run Langevin on ``-E_theta`` from ``x0`` (``(n, dim)``): ``steps`` ULA steps
    (default ``model.langevin_steps``) of size ``model.step_size``.

    Example:
        >>> import jax, jax.numpy as jnp
        >>> m = init(jax.random.key(0), 2, flow_layers=1, flow_width=4, energy_width=4)
        >>> bool(jnp.all(revise(m, jax.random.key(1), jnp.ones((3, 2)), steps=0) == 1.0))
        True
    """
    _check_model("revise", model)
    steps = model.langevin_steps if steps is None else _int("revise", "steps", steps, 0)
    return _revise_jit(model, key, _points("revise", "x0", x0, model.dim), steps)


def sample(model: CoopFlow, key: jax.Array, n: int, langevin_steps: int | None = None
           ) -> jax.Array:
    """``n`` CoopFlow samples: flow draws revised by ``langevin_steps`` Langevin steps
    (default ``model.langevin_steps``; ``0`` gives the flow alone). Shape ``(n, dim)``.

    Example:
        >>> import jax, jax.numpy as jnp
        >>> m = init(jax.random.key(0), 2, flow_layers=1, flow_width=4, energy_width=4)
        >>> k = jax.random.key(1)
        >>> flow_only = sample(m, k, 4, langevin_steps=0)  # the flow uses split(k)[0]
        >>> bool(jnp.all(flow_only == flow_sample(m, jax.random.split(k)[0], 4)))
        True
    """
    _check_model("sample", model)
    n = _int("sample", "n", n)
    steps = model.langevin_steps if langevin_steps is None else _int(
        "sample", "langevin_steps", langevin_steps, 0)
    return _sample_jit(model, key, n, steps)


@eqx.filter_jit
def _sample_jit(model: CoopFlow, key: jax.Array, n: int, steps: int) -> jax.Array:
    k_flow, k_run = jax.random.split(key)
    return _revise(model, k_run, _flow_sample(model, k_flow, n), steps)


_flow_sample_jit = eqx.filter_jit(_flow_sample)
_flow_log_prob_jit = eqx.filter_jit(_flow_log_prob)
_revise_jit = eqx.filter_jit(_revise)


# ----------------------------------------------------------------------------------------
# Losses
# ----------------------------------------------------------------------------------------
def energy_loss(energy: Callable[[jax.Array], jax.Array], x_data: jax.Array,
                x_samples: jax.Array, alpha: float = 0.1) -> tuple[jax.Array, jax.Array]:
    """``(loss, cd)``: the EBM's maximum-likelihood loss on data against model samples.

    ``cd = mean E(x_data) - mean E(x_samples)``, whose gradient in the energy's weights is
    the contrastive-divergence estimate of the negative log-likelihood's gradient (the
    samples count as draws from ``p_theta``; they are not differentiated through), and
    ``loss = cd + alpha (mean E(x_data)^2 + mean E(x_samples)^2)``. Descending it lowers
    the energy of the data and raises that of the samples.

    Example:
        >>> import jax.numpy as jnp
        >>> quad = lambda x: 0.5 * jnp.sum(x**2)
        >>> loss, cd = energy_loss(quad, jnp.zeros((2, 1)), jnp.full((2, 1), 2.0), alpha=0.0)
        >>> float(loss), float(cd)
        (-2.0, -2.0)
    """
    x_samples = jax.lax.stop_gradient(x_samples)
    e_data = jax.vmap(energy)(x_data)
    e_samples = jax.vmap(energy)(x_samples)
    cd = jnp.mean(e_data) - jnp.mean(e_samples)
    return cd + alpha * (jnp.mean(e_data**2) + jnp.mean(e_samples**2)), cd


def flow_loss(model: CoopFlow, x: jax.Array) -> jax.Array:
    """``-mean log q_alpha(x)`` over a batch ``x`` (``(n, dim)``): the flow's
    maximum-likelihood loss, differentiable in ``model.theta``.

    Example:
        >>> import jax, jax.numpy as jnp
        >>> m = init(jax.random.key(0), 2, flow_layers=1, flow_width=4, energy_width=4)
        >>> round(float(flow_loss(m, jnp.zeros((3, 2)))), 4)  # log(2 pi)
        1.8379
    """
    _check_model("flow_loss", model)
    x = _points("flow_loss", "x", x, model.dim)
    return -jnp.mean(_flow_log_prob_jit(model.spec, model.theta, x))


# ----------------------------------------------------------------------------------------
# Training
# ----------------------------------------------------------------------------------------
class Metrics(NamedTuple):
    """Per-step training values (scalars for :func:`train_step`, ``(steps,)`` from :func:`fit`).

    Attributes:
        cd: ``mean E(data) - mean E(x_K)`` (negative: the data sit lower than the samples).
        energy_loss: ``cd`` plus the ``alpha`` penalty (what the EBM step descends).
        flow_nll: ``-mean log q_alpha(x_K)`` before the flow step (what it descends).
        revision: root-mean-square per coordinate of ``x_K - x_0``: how far Langevin moved
            the flow's proposals.
    """

    cd: jax.Array
    energy_loss: jax.Array
    flow_nll: jax.Array
    revision: jax.Array


class CoopFlowNonFiniteError(NonFiniteError):
    """A training step of :func:`fit` went non-finite.

    Attributes (beyond :class:`~inference.fit.NonFiniteError`'s ``step``, ``leaf``,
    ``result``):
        part: ``"langevin"`` (the revised samples), ``"energy"`` (the EBM's loss, gradient
            or update) or ``"flow"`` (the flow's loss, gradient or update).
        model: the last finite :class:`CoopFlow` (before ``step``; also ``result.params``).
        history: the :class:`Metrics` of the ``step`` steps before it (``result.values`` is
            its ``energy_loss``).
    """

    def __init__(self, message: str, step: int, part: str, model: CoopFlow, history: Metrics):
        leaf = {"energy": "model.energy", "flow": "model.theta"}.get(part)
        super().__init__(message, step, leaf, FitResult(model, history.energy_loss))
        self.part, self.model, self.history = part, model, history


def default_optimizers() -> tuple[optax.GradientTransformation, optax.GradientTransformation]:
    """``(energy_optimizer, flow_optimizer)``: Adam(3e-3, b1 = 0.5) for the EBM (``b1 = 0.5``
    as in short-run EBM training) and Adam(3e-4), gradients clipped to global norm 10, for
    the flow (its log-determinant makes rare large gradients). The EBM learns faster than
    the flow: a flow that follows its own revised samples too eagerly also follows their
    noise (on 2-D data, equal rates of 1e-3 gave blurrier samples).

    Example:
        >>> [type(o).__name__ for o in default_optimizers()]
        ['GradientTransformationExtraArgs', 'GradientTransformationExtraArgs']
    """
    return (optax.adam(3e-3, b1=0.5),
            optax.chain(optax.clip_by_global_norm(10.0), optax.adam(3e-4)))


def init_opt_state(model: CoopFlow, energy_optimizer: optax.GradientTransformation,
                   flow_optimizer: optax.GradientTransformation) -> tuple[Any, Any]:
    """``(energy_state, flow_state)``: the two optimizers' states for :func:`train_step`.

    Example:
        >>> import jax
        >>> m = init(jax.random.key(0), 2, flow_layers=1, flow_width=4, energy_width=4)
        >>> len(init_opt_state(m, *default_optimizers()))
        2
    """
    _check_model("init_opt_state", model)
    return (energy_optimizer.init(eqx.filter(model.energy, eqx.is_inexact_array)),
            flow_optimizer.init(model.theta))


def _step(model, opt_state, key, x_data, energy_optimizer, flow_optimizer, alpha):
    """One CoopFlow iteration; also returns a status code (0 ok, 1 langevin, 2 energy, 3 flow)."""
    k_flow, k_run = jax.random.split(key)
    n = x_data.shape[0]
    x0 = jax.lax.stop_gradient(_flow_sample(model, k_flow, n))
    xk = jax.lax.stop_gradient(_revise(model, k_run, x0, model.langevin_steps))
    e_state, f_state = opt_state

    # (3) the EBM's maximum-likelihood step, data against the revised samples
    e_params, e_static = eqx.partition(model.energy, eqx.is_inexact_array)
    (e_loss, cd), e_grad = jax.value_and_grad(
        lambda p: energy_loss(eqx.combine(p, e_static), x_data, xk, alpha), has_aux=True)(e_params)
    e_upd, e_state = energy_optimizer.update(e_grad, e_state, e_params)
    e_params = optax.apply_updates(e_params, e_upd)

    # (4) the flow's maximum-likelihood step on the revised samples
    spec = model.spec
    f_loss, f_grad = jax.value_and_grad(
        lambda th: -jnp.mean(_flow_log_prob(spec, th, xk)))(model.theta)
    f_upd, f_state = flow_optimizer.update(f_grad, f_state, model.theta)
    theta = optax.apply_updates(model.theta, f_upd)

    ok_langevin = jnp.all(jnp.isfinite(xk))
    ok_energy = jnp.isfinite(e_loss) & all_finite(e_grad) & all_finite(e_params)
    ok_flow = jnp.isfinite(f_loss) & all_finite(f_grad) & jnp.all(jnp.isfinite(theta))
    status = jnp.where(~ok_langevin, 1, jnp.where(~ok_energy, 2, jnp.where(~ok_flow, 3, 0)))
    new_model = eqx.tree_at(lambda m: (m.energy, m.theta), model,
                            (eqx.combine(e_params, e_static), theta))
    revision = jnp.sqrt(jnp.mean((xk - x0) ** 2))
    return new_model, (e_state, f_state), Metrics(cd, e_loss, f_loss, revision), status


def train_step(
    model: CoopFlow,
    opt_state: tuple[Any, Any],
    key: jax.Array,
    x_data: jax.Array,
    energy_optimizer: optax.GradientTransformation,
    flow_optimizer: optax.GradientTransformation,
    alpha: float = 0.1,
) -> tuple[CoopFlow, tuple[Any, Any], Metrics]:
    """One CoopFlow iteration on the data batch ``x_data`` (``(n, dim)``), pure and
    jittable (e.g. under ``eqx.filter_jit``): propose ``n`` flow draws, revise them with
    ``K`` Langevin steps, take one EBM step (:func:`energy_loss`) and one flow step
    (:func:`flow_loss` on the revised draws). No finiteness checks (see :func:`fit`).

    Returns:
        ``(model, opt_state, metrics)``, ``metrics`` a :class:`Metrics` of scalars.

    Example:
        >>> import jax, jax.numpy as jnp
        >>> m = init(jax.random.key(0), 2, flow_layers=1, flow_width=4, energy_width=4,
        ...          langevin_steps=2)
        >>> opts = default_optimizers()
        >>> m2, state, metrics = train_step(m, init_opt_state(m, *opts), jax.random.key(1),
        ...                                 jnp.ones((8, 2)), *opts)
        >>> bool(jnp.isfinite(metrics.flow_nll)), bool(jnp.any(m2.theta != m.theta))
        (True, True)
    """
    _check_model("train_step", model)
    x_data = _points("train_step", "x_data", x_data, model.dim)
    new_model, opt_state, metrics, _ = _step_jit(model, opt_state, key, x_data,
                                                 energy_optimizer, flow_optimizer, float(alpha))
    return new_model, opt_state, metrics


_step_jit = eqx.filter_jit(_step)


_PARTS = {1: "langevin", 2: "energy", 3: "flow"}
_WHAT = {
    "langevin": "the Langevin-revised samples x_K went non-finite (the energy's gradient "
                "blew up: lower step_size or the energy's learning rate, or raise alpha)",
    "energy": "the energy's loss, gradient or update went non-finite (lower the energy "
              "optimizer's learning rate or raise alpha)",
    "flow": "the flow's loss, gradient or update went non-finite (lower the flow optimizer's "
            "learning rate, or clip its gradients)",
}


def fit(
    model: CoopFlow,
    data: Any,
    key: jax.Array,
    steps: int,
    *,
    batch_size: int = 128,
    alpha: float = 0.1,
    energy_optimizer: optax.GradientTransformation | None = None,
    flow_optimizer: optax.GradientTransformation | None = None,
    updates: int = 20,
    progress: bool | ProgressBar = False,
) -> tuple[CoopFlow, Metrics]:
    """Train a :class:`CoopFlow` for ``steps`` iterations of :func:`train_step`.

    One jit-compiled step (compiled once per call) runs ``steps`` times from a host loop, in
    ~``updates`` chunks; after each chunk the host checks finiteness and moves the progress
    bar. Step ``i`` uses ``jax.random.fold_in(key, i)``, so the chunking does not change
    the result.

    Args:
        model: the initial model (:func:`init`).
        data: an array ``(n, dim)`` (each step a minibatch of ``batch_size`` rows drawn with
            replacement) or a sampler ``data(key, batch_size) -> (batch_size, dim)`` (fresh
            draws each step, e.g. :mod:`models.toy2d`, or a dequantising sampler).
        key: a ``jax.random.key``.
        steps: training iterations (>= 1).
        batch_size: data points (and flow proposals) per step.
        alpha: the energy's magnitude penalty (:func:`energy_loss`).
        energy_optimizer, flow_optimizer: optax transformations; defaults from
            :func:`default_optimizers`.
        updates: host round trips per run (finiteness checks, bar updates).
        progress: show a progress bar (or pass a :class:`~inference.progress.ProgressBar`).

    Returns:
        ``(model, history)``: the trained model and a :class:`Metrics` of ``(steps,)`` arrays.

    Raises:
        CoopFlowNonFiniteError: (a :class:`~inference.fit.NonFiniteError`) when a step's
            revised samples, energy step or flow step went non-finite; the message names
            the part and the step, and ``err.model`` / ``err.history`` hold the last
            finite model and the history before that step (no update of that step or after
            it is applied).

    Example:
        >>> import jax, jax.numpy as jnp
        >>> m = init(jax.random.key(0), 1, flow_layers=1, flow_width=4, energy_width=8,
        ...          energy_depth=1, langevin_steps=3)
        >>> m, h = fit(m, jnp.full((10, 1), 2.0), jax.random.key(1), steps=3, batch_size=8)
        >>> h.flow_nll.shape
        (3,)
    """
    model = _check_model("fit", model)
    steps = _int("fit", "steps", steps)
    batch_size = _int("fit", "batch_size", batch_size)
    updates = _int("fit", "updates", updates)
    alpha = _nonnegative("fit", "alpha", alpha)
    defaults = default_optimizers()
    energy_optimizer = defaults[0] if energy_optimizer is None else energy_optimizer
    flow_optimizer = defaults[1] if flow_optimizer is None else flow_optimizer
    for name, opt in (("energy_optimizer", energy_optimizer), ("flow_optimizer", flow_optimizer)):
        if not (callable(getattr(opt, "init", None)) and callable(getattr(opt, "update", None))):
            raise TypeError(f"coopflow.fit: {name} must be an optax GradientTransformation; "
                            f"got {opt!r}.")
    dim = model.dim
    if callable(data):
        sampler = data
        try:
            probe = jax.eval_shape(lambda k: sampler(k, batch_size), jax.random.key(0))
        except Exception as err:  # the sampler's own error, with our context
            raise ValueError(
                f"coopflow.fit: calling data(key, {batch_size}) failed: {err}") from err
        if getattr(probe, "shape", None) != (batch_size, dim):
            raise ValueError(f"coopflow.fit: data(key, {batch_size}) must return shape "
                             f"({batch_size}, {dim}); got {getattr(probe, 'shape', probe)}.")
        batch_fn = sampler
    else:
        arr = _points("fit", "data", data, dim)
        if not bool(jnp.all(jnp.isfinite(arr))):
            raise ValueError("coopflow.fit: data contains non-finite values.")

        def batch_fn(k, b):
            return arr[jax.random.randint(k, (b,), 0, arr.shape[0])]

    n_chunks, chunk = chunk_sizes(steps, updates)
    params, static = eqx.partition(model, eqx.is_array)

    # One compiled step, called from a host loop: an outer lax.scan over steps would double
    # the XLA compile time (seconds on a CPU) for no gain at these step costs. Dispatch is
    # asynchronous; the host syncs once per chunk, to check finiteness.
    @jax.jit
    def one_step(params, opt_state, bad, i):
        k_data, k_step = jax.random.split(jax.random.fold_in(key, i))
        x_data = batch_fn(k_data, batch_size).astype(jnp.float32)
        new_model, new_state, metrics, status = _step(
            eqx.combine(params, static), opt_state, k_step, x_data, energy_optimizer,
            flow_optimizer, alpha)
        ok = (status == 0) & (bad[0] < 0)  # after a bad step nothing more is applied
        pick = lambda new, old: jax.tree.map(  # noqa: E731
            lambda a, b: jnp.where(ok, a, b), new, old)
        params = pick(eqx.filter(new_model, eqx.is_array), params)
        opt_state = pick(new_state, opt_state)
        bad = jnp.where((status != 0) & (bad[0] < 0), jnp.stack([i, status]), bad)
        return params, opt_state, bad, jnp.stack(metrics)

    opt_state = init_opt_state(model, energy_optimizer, flow_optimizer)
    bad = jnp.array([-1, 0], jnp.int32)
    bar = progress if isinstance(progress, ProgressBar) else ProgressBar(
        steps, desc="coopflow", enabled=bool(progress))
    history: list[np.ndarray] = []
    bad_step = status = -1
    try:
        for c in range(n_chunks):
            rows = []
            for i in range(c * chunk, min((c + 1) * chunk, steps)):
                params, opt_state, bad, row = one_step(params, opt_state, bad, np.int32(i))
                rows.append(row)
            if not rows:
                break
            history.append(np.asarray(jnp.stack(rows)))
            bad_step, status = (int(v) for v in np.asarray(bad))
            if bad_step >= 0:
                break
            bar.update(c * chunk + len(rows), {"cd": float(history[-1][:, 0].mean()),
                                               "flow_nll": float(history[-1][:, 2].mean())})
    finally:
        bar.close()
    model = eqx.combine(params, static)
    values = np.concatenate(history)
    if bad_step >= 0:
        part = _PARTS[status]
        good = Metrics(*(jnp.asarray(v) for v in values[:bad_step].T))
        raise CoopFlowNonFiniteError(
            f"coopflow.fit: step {bad_step} (0-based): {_WHAT[part]}. err.model holds the last "
            f"finite model (after {bad_step} steps) and err.history its {bad_step} steps.",
            bad_step, part, model, good)
    return model, Metrics(*(jnp.asarray(v) for v in values.T))
