"""Training a score network by a score-matching loss (:func:`fit_score`)."""

from __future__ import annotations

from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import optax

from inference.score.losses import _check_batch, dsm_loss, ssm_loss
from inference.score.predictions import _check_prediction
from inference.score.processes import Process, _check_process

__all__ = ["fit_score"]


def fit_score(net: eqx.Module, proc: Process, data: jax.Array, key: jax.Array, *,
              steps: int = 2000, batch_size: int = 256, learning_rate: float = 2e-3,
              loss: str = "dsm", prediction: str = "noise", weighting: Any = "standard",
              chunk: int = 200) -> tuple[eqx.Module, jax.Array]:
    """Train ``net`` by ``loss`` (``"dsm"`` or ``"ssm"``) with Adam (cosine-decayed rate).

    Minibatches of ``batch_size`` rows of ``data`` drawn with replacement; ``chunk`` steps per
    jit-compiled ``lax.scan``. Returns ``(trained net, loss per step)``.

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
    opt_state = opt.init(params)

    @jax.jit
    def run(params, opt_state, keys):
        def step(carry, k):
            params, opt_state = carry
            kb, kl = jax.random.split(k)
            idx = jax.random.randint(kb, (batch_size,), 0, data.shape[0])

            def objective(p):
                return loss_fn(eqx.combine(p, static), proc, data[idx], kl,
                               prediction=prediction, weighting=weighting)

            value, grads = jax.value_and_grad(objective)(params)
            upd, opt_state = opt.update(grads, opt_state, params)
            return (optax.apply_updates(params, upd), opt_state), value

        return jax.lax.scan(step, (params, opt_state), keys)

    keys = jax.random.split(key, steps)
    history = []
    for start in range(0, steps, chunk):  # a ragged last chunk compiles once more
        (params, opt_state), vals = run(params, opt_state, keys[start:start + chunk])
        history.append(vals)
    losses = jnp.concatenate(history)
    if not bool(jnp.all(jnp.isfinite(losses))):
        bad = int(jnp.argmax(~jnp.isfinite(losses)))
        raise FloatingPointError(f"fit_score: the {loss} loss became non-finite at step {bad}; "
                                 "lower learning_rate.")
    return eqx.combine(params, static), losses
