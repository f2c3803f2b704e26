"""The shapes shared by the ``discrete_vi`` benchmark's problems (see ``bench/discrete_vi.py``).

A :class:`Problem` is one model with its data and an evaluator of the ELBO; its
:class:`Contestant` s are gradient estimators (ours, NumPyro's, hand-written JAX) that train
the same networks from the same initial parameters with the same optimizer.
"""

from __future__ import annotations

import statistics
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax


class Contestant(NamedTuple):
    """One way of training a problem's parameters.

    Attributes:
        name: e.g. ``"ours/reinforce+baseline"``, ``"numpyro/TraceGraph_ELBO"``, ``"hand/enum"``.
        library: ``"ours"``, ``"numpyro"`` or ``"hand"``.
        strategy: the gradient strategy (``"reinforce"``, ``"vimco"``, ``"enum"``, ``"mvd"``,
            ``"default"``...), so the hand-written peer of each of ours can be found.
        init: ``init() -> state``: training state (parameters and optimizer state) at the
            problem's common initial parameters.
        step: ``step(state, key) -> state``: one optimizer step (jit-compiled by the harness).
        params: ``params(state) -> dict``: the parameters in the problem's common layout.
        grad: ``grad(params, key) -> dict``: one estimate of the loss's gradient at ``params``
            (common layout), for gradient variances.
    """

    name: str
    library: str
    strategy: str
    init: Callable[[], Any]
    step: Callable[[Any, jax.Array], Any]
    params: Callable[[Any], dict]
    grad: Callable[[dict, jax.Array], dict]


class Problem(NamedTuple):
    """A model, its data, and the estimators that train it.

    Attributes:
        name: the model's name in the JSON (``"sbn"``, ``"gmm"``, ``"air"``).
        evaluate: ``evaluate(params, key) -> float``: a low-variance ELBO estimate (many
            particles, or exact sums), the same for every contestant.
        contestants: the estimators.
        target_elbo: the ELBO level whose wall time to reach is reported; ``nan`` lets the
            harness derive it from the runs (see ``bench/discrete_vi.py``).
        budget_s: wall-time budget per contestant.
        skipped: ``(name, reason)`` pairs: contestants that do not apply to this model (the
            JSON lists them with the reason).
    """

    name: str
    evaluate: Callable[[dict, jax.Array], float]
    contestants: list
    target_elbo: float
    budget_s: float
    skipped: tuple = ()


# ---------------------------------------------------------------------------------------
# building contestants: the same data, initial parameters and optimizer for everyone
# ---------------------------------------------------------------------------------------

#: ``loss_grad(params, x, key) -> grads``: one estimate of the gradient of the loss to
#: *minimize* (minus the objective), in the problem's common parameter layout.
LossGrad = Callable[[dict, jax.Array, jax.Array], dict]


def minibatch(data: jax.Array, batch_size: int | None, key: jax.Array) -> jax.Array:
    """``batch_size`` rows of ``data`` drawn uniformly with replacement (all rows if ``None``)."""
    if batch_size is None or batch_size >= data.shape[0]:
        return data
    return data[jax.random.randint(key, (batch_size,), 0, data.shape[0])]


def adam_contestant(name: str, library: str, strategy: str, loss_grad: LossGrad,
                    params0: dict, data: jax.Array, batch_size: int | None,
                    learning_rate: float, params_of: Callable[[dict], dict] | None = None,
                    ) -> Contestant:
    """A contestant that steps ``optax.adam(learning_rate)`` along ``loss_grad`` on minibatches.

    ``grad`` (for gradient variances) uses the fixed first ``batch_size`` rows of ``data``, so
    that its spread is the estimator's own, not the minibatch's. ``params_of`` maps the
    trained parameters to the common layout (e.g. fills in an exact posterior).

    Example:
        >>> import jax, jax.numpy as jnp
        >>> c = adam_contestant("hand/quad", "hand", "reparam",
        ...                     lambda p, x, k: {"a": 2 * (p["a"] - x.mean())},
        ...                     {"a": jnp.zeros(())}, jnp.ones((4, 1)), None, 0.1)
        >>> float(c.params(c.step(c.init(), jax.random.key(0)))["a"]) > 0
        True
    """
    optimizer = optax.adam(learning_rate)
    fixed = data if batch_size is None else data[:batch_size]
    finish = params_of or (lambda p: p)

    def init():
        return params0, optimizer.init(params0)

    def step(state, key):
        params, opt_state = state
        k_batch, k_grad = jax.random.split(key)
        grads = loss_grad(params, minibatch(data, batch_size, k_batch), k_grad)
        updates, opt_state = optimizer.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state

    return Contestant(name, library, strategy, init, step, lambda s: finish(s[0]),
                      lambda params, key: loss_grad(params, fixed, key))


def ours_loss_grad(objective: Any) -> LossGrad:
    """``loss_grad`` of one of our objectives (``ppl.Expectation`` of ``(params, x)``, maximized)."""

    def loss_grad(params, x, key):
        (grads, _) = objective.grad_estimate(key, params, x)
        return jax.tree_util.tree_map(jnp.negative, grads)

    return loss_grad


def numpyro_contestant(name: str, strategy: str, model: Callable, guide: Callable, loss: Any,
                       params0: dict, data: jax.Array, batch_size: int | None,
                       learning_rate: float, params_of: Callable[[dict], dict] | None = None,
                       ) -> Contestant:
    """NumPyro's ``SVI(model, guide, optax.adam(learning_rate), loss)`` from ``params0``.

    ``step`` is ``SVI.update`` on a minibatch (its estimator's randomness comes from the SVI
    state's key); ``grad`` is ``jax.grad`` of ``loss.loss`` (what ``SVI.update`` differentiates)
    on the fixed first ``batch_size`` rows. Every parameter must be unconstrained (as in
    these problems), so NumPyro's parameters are the common layout.
    """
    from numpyro.infer import SVI

    svi = SVI(model, guide, optax.adam(learning_rate), loss)
    fixed = data if batch_size is None else data[:batch_size]
    finish = params_of or (lambda p: p)

    def init():
        return svi.init(jax.random.key(0), fixed, init_params=dict(params0))

    def step(state, key):
        return svi.update(state, minibatch(data, batch_size, key))[0]

    def grad(params, key):
        return jax.grad(lambda p: loss.loss(key, p, model, guide, fixed))(params)

    return Contestant(name, "numpyro", strategy, init, step,
                      lambda s: finish(svi.get_params(s)), grad)


# ---------------------------------------------------------------------------------------
# measuring
# ---------------------------------------------------------------------------------------


def gradient_variance(grad: Callable[[dict, jax.Array], dict], params: dict, key: jax.Array,
                      num_estimates: int = 64) -> dict[str, Any]:
    """Spread of ``num_estimates`` gradient estimates at fixed ``params``, per top-level group.

    Per group: ``variance`` is the mean over the group's coordinates of each coordinate's
    sample variance (ddof 1), ``mean_sq_norm`` the mean squared norm of the mean gradient per
    coordinate (signal), ``snr`` their ratio. ``total`` pools every coordinate.

    Example:
        >>> import jax, jax.numpy as jnp
        >>> g = lambda p, k: {"a": p["a"] + jax.random.normal(k, (3,))}
        >>> out = gradient_variance(g, {"a": jnp.zeros(3)}, jax.random.key(0), 400)
        >>> 0.8 < out["a"]["variance"] < 1.2
        True
    """
    one = jax.jit(grad)
    draws = [one(params, k) for k in jax.random.split(key, num_estimates)]
    out: dict[str, Any] = {}
    pooled_var, pooled_sig = [], []
    for group in sorted(draws[0]):
        # a group may be a nested pytree (e.g. a network's arrays): pool its float leaves
        per_draw = [[np.asarray(x, np.float64).reshape(-1)
                     for x in jax.tree_util.tree_leaves(d[group])
                     if jnp.issubdtype(jnp.result_type(x), jnp.floating)] for d in draws]
        if not per_draw[0]:
            continue
        flat = np.stack([np.concatenate(leaves) for leaves in per_draw])
        var = flat.var(axis=0, ddof=1)
        sig = flat.mean(axis=0) ** 2
        pooled_var.append(var)
        pooled_sig.append(sig)
        out[group] = _spread(var, sig)
    out["total"] = _spread(np.concatenate(pooled_var), np.concatenate(pooled_sig))
    out["num_estimates"] = num_estimates
    return out


def _spread(var: np.ndarray, sig: np.ndarray) -> dict[str, float]:
    v, s = float(var.mean()), float(sig.mean())
    return {"variance": v, "mean_sq_norm": s, "snr": s / v if v > 0 else None,
            "coordinates": int(var.size)}


def median_or_none(values: list) -> float | None:
    """Median of the values that are not ``None`` (``None`` if there are none)."""
    kept = [v for v in values if v is not None]
    return statistics.median(kept) if kept else None
