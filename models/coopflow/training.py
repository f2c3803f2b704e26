"""Training: one CoopFlow iteration (:func:`train_step`) and :func:`fit`."""

from __future__ import annotations

from typing import Any, NamedTuple

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax

from inference.progress import ProgressBar
from inference.training import FitResult, NonFiniteError, all_finite, run_steps

from models.coopflow.losses import energy_loss
from models.coopflow.model import CoopFlow, _check_model, _int, _nonnegative, _points
from models.coopflow.sampling import _flow_log_prob, _flow_sample, _revise


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

    Attributes (beyond :class:`~inference.vi.fit.NonFiniteError`'s ``step``, ``leaf``,
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
        >>> from models.coopflow import init
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
        >>> from models.coopflow import init
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

    The steps run in the library's one training loop (:func:`inference.training.run_steps`):
    ~``updates`` compiled chunks, a finiteness check and a progress-bar update after each,
    Ctrl-C returning the model reached (with a warning). Step ``i`` uses
    ``jax.random.fold_in(key, i)``, so the chunking does not change the result.

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
        CoopFlowNonFiniteError: (a :class:`~inference.vi.fit.NonFiniteError`) when a step's
            revised samples, energy step or flow step went non-finite; the message names
            the part and the step, and ``err.model`` / ``err.history`` hold the last
            finite model and the history before that step (no update of that step or after
            it is applied).

    Example:
        >>> from models.coopflow import init
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
        batch_fn, data_arg = (lambda k, b, data: sampler(k, b)), ()
    else:
        arr = _points("fit", "data", data, dim)
        if not bool(jnp.all(jnp.isfinite(arr))):
            raise ValueError("coopflow.fit: data contains non-finite values.")

        def batch_fn(k, b, data):
            return data[jax.random.randint(k, (b,), 0, data.shape[0])]

        data_arg = arr

    params, static = eqx.partition(model, eqx.is_array)

    def step(state, i, key, data, guard):
        params, opt_state = state
        k_data, k_step = jax.random.split(jax.random.fold_in(key, i))
        x_data = batch_fn(k_data, batch_size, data).astype(jnp.float32)
        new_model, new_opt, metrics, status = _step(
            eqx.combine(params, static), opt_state, k_step, x_data, energy_optimizer,
            flow_optimizer, alpha)
        ok = jnp.stack([status != code for code in _PARTS]) if guard else None
        return (eqx.filter(new_model, eqx.is_array), new_opt), metrics, ok

    def postfix(history: Metrics) -> dict:
        return {"cd": float(jnp.mean(history.cd)), "flow_nll": float(jnp.mean(history.flow_nll))}

    state = (params, init_opt_state(model, energy_optimizer, flow_optimizer))
    trained = run_steps(step, state, steps=steps, key=key, data=data_arg, updates=updates,
                        progress=progress, label="coopflow", postfix=postfix)
    history = trained.outputs
    if trained.stopped is not None:
        bad = trained.stopped
        part = _PARTS[1 + int(np.argmin(np.asarray(bad.ok)))]
        good = jax.tree.map(lambda v: v[:bad.step], history)
        raise CoopFlowNonFiniteError(
            f"coopflow.fit: step {bad.step} (0-based): {_WHAT[part]}. err.model holds the last "
            f"finite model (after {bad.step} steps) and err.history its {bad.step} steps.",
            bad.step, part, eqx.combine(bad.state[0], static), good)
    return eqx.combine(trained.state[0], static), history
