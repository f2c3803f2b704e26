"""Training a score network by a score-matching loss (:func:`fit_score`)."""

from __future__ import annotations

from typing import Any

import equinox as eqx
import jax
import optax

from inference.score.losses import _check_batch, dsm_loss, ssm_loss
from inference.score.predictions import _check_prediction
from inference.score.processes import Process, _check_process
from inference.training import minimize

__all__ = ["fit_score"]


def fit_score(net: eqx.Module, proc: Process, data: jax.Array, key: jax.Array, *,
              steps: int = 2000, batch_size: int = 256, learning_rate: float = 2e-3,
              loss: str = "dsm", prediction: str = "noise", weighting: Any = "standard",
              chunk: int = 200) -> tuple[eqx.Module, jax.Array]:
    """Train ``net`` by ``loss`` (``"dsm"`` or ``"ssm"``) with Adam (cosine-decayed rate).

    Minibatches of ``batch_size`` rows of ``data`` drawn with replacement; about ``chunk``
    steps per jit-compiled ``lax.scan`` of the library's training loop
    (:mod:`inference.training`); step ``i`` uses ``fold_in(key, i)``. Returns ``(trained net,
    loss per step)``. Raises :class:`inference.NonFiniteError` naming the network's leaf at
    the first step whose loss, gradient or update is not finite.

    Example:
        >>> from inference.score import VP
        >>> import jax, jax.numpy as jnp
        >>> from models.score_net import ScoreMLP
        >>> net = ScoreMLP(2, hidden=16, depth=1, key=jax.random.key(0))
        >>> data = jax.random.normal(jax.random.key(1), (100, 2))
        >>> net, losses = fit_score(net, VP(), data, jax.random.key(2), steps=20, chunk=10)
        >>> losses.shape
        (20,)
    """
    _check_prediction("fit_score", prediction)
    proc = _check_process("fit_score", proc)
    data = _check_batch("fit_score", data)
    if loss not in ("dsm", "ssm"):
        raise ValueError(f"fit_score: unknown loss {loss!r}; expected 'dsm' or 'ssm'.")
    steps, chunk = int(steps), max(1, min(int(chunk), int(steps)))
    if steps < 1:
        raise ValueError(f"fit_score: steps must be >= 1; got {steps}.")
    loss_fn = dsm_loss if loss == "dsm" else ssm_loss
    sched = optax.cosine_decay_schedule(learning_rate, steps, alpha=0.05)
    opt = optax.adam(sched)
    params, static = eqx.partition(net, eqx.is_inexact_array)

    def objective(p, k, data):
        kb, kl = jax.random.split(k)
        idx = jax.random.randint(kb, (batch_size,), 0, data.shape[0])
        return loss_fn(eqx.combine(p, static), proc, data[idx], kl,
                       prediction=prediction, weighting=weighting)

    # The one training loop (inference.training): about steps / chunk compiled chunks.
    result = minimize(objective, params, optimizer=opt, steps=steps, key=key, data=data,
                      updates=-(-steps // chunk), label="fit_score",
                      advice=f"check the data and the {loss} loss's weighting")
    return eqx.combine(result.params, static), result.values
