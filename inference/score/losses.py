"""Score-matching losses: denoising (:func:`dsm_loss`) and sliced (:func:`ssm_loss`), and the
relative error of a network's score against an exact one."""

from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp

from inference.score.predictions import _check_prediction, _to_noise, convert
from inference.score.processes import Process, _check_process

__all__ = ["dsm_loss", "ssm_loss", "relative_score_error"]


def _weight(weighting, prediction: str, t, proc: Process):
    """lambda(t) for the loss lambda(t) |score_hat - score_target|^2."""
    (a, s), (da, ds) = proc.marginal_and_derivative(t)
    if callable(weighting):
        return weighting(t)
    if weighting == "standard":
        return s**2
    if weighting == "native":  # (d prediction / d score)^2: the MSE in the prediction's space
        return {"score": jnp.ones_like(s), "noise": s**2, "data": s**4 / a**2,
                "velocity": (da * s**2 / a - ds * s) ** 2}[prediction]
    raise ValueError(f"unknown weighting {weighting!r}; expected 'standard', 'native' or a "
                     "callable t -> lambda(t).")


def _check_batch(fn: str, x0) -> jax.Array:
    x0 = jnp.asarray(x0)
    if x0.ndim < 2:
        raise ValueError(f"{fn}: x0 must be a batch of shape (batch, ...); got {x0.shape}.")
    return x0


def _sample_t(key, n, proc, t_min):
    lo = proc.t_min if t_min is None else t_min
    lo = max(lo, 1e-5)
    return jax.random.uniform(key, (n,), minval=lo, maxval=proc.t_max)


def _bcast(v, x):
    return jnp.reshape(v, v.shape + (1,) * (x.ndim - v.ndim))


def dsm_loss(net: Callable, proc: Process, x0: jax.Array, key: jax.Array, *,
             prediction: str = "noise", weighting: Any = "standard",
             t_min: float | None = None) -> jax.Array:
    r"""Denoising score matching: ``E_t E_{x0, eps} lambda(t) |score_hat(x_t, t) + eps / s(t)|^2``.

    ``net(x, t)`` is a per-example network predicting ``prediction``; ``t ~ U(t_min, t_max)``.
    ``weighting="standard"`` is ``lambda = s^2`` (the loss is then ``|eps_hat - eps|^2``
    whatever the parameterisation), ``"native"`` the MSE in the prediction's own space,
    or a callable ``t -> lambda(t)``. Minimised (over all functions) by the exact score of
    ``p_t``; the result is the batch mean of the per-example sum over dimensions.

    Example:
        >>> from inference.score import VP
        >>> import jax, jax.numpy as jnp
        >>> x0 = jnp.zeros((512, 1))  # data at 0: the exact eps predictor is x_t / s
        >>> exact = lambda x, t: x / VP().marginal(t)[1]
        >>> round(float(dsm_loss(exact, VP(), x0, jax.random.key(0))), 6)
        0.0
    """
    _check_prediction("dsm_loss", prediction)
    proc = _check_process("dsm_loss", proc)
    x0 = _check_batch("dsm_loss", x0)
    kt, ke = jax.random.split(key)
    t = _sample_t(kt, x0.shape[0], proc, t_min)
    eps = jax.random.normal(ke, x0.shape, x0.dtype)
    a, s = proc.marginal(t)
    xt = _bcast(a, x0) * x0 + _bcast(s, x0) * eps
    out = jax.vmap(net)(xt, t)
    if out.shape != xt.shape:
        raise ValueError(f"dsm_loss: net(x, t) returned shape {out.shape[1:]} for x of shape "
                         f"{xt.shape[1:]}; it must return the shape of x.")
    eps_hat = jax.vmap(lambda o, x, tt: _to_noise(o, x, tt, proc, prediction))(out, xt, t)
    lam = _weight(weighting, prediction, t, proc)
    sq = jnp.sum((eps_hat - eps).reshape(x0.shape[0], -1) ** 2, axis=1)
    return jnp.mean(lam / s**2 * sq)


def ssm_loss(net: Callable, proc: Process, x0: jax.Array, key: jax.Array, *,
             prediction: str = "score", num_projections: int = 1,
             variance_reduction: bool = True, weighting: Any = "standard",
             t_min: float | None = None) -> jax.Array:
    r"""Sliced score matching on the noised data: ``E lambda(t) [v^T J v + |score|^2 / 2]``.

    ``J`` is the Jacobian of the predicted score of ``p_t`` at a draw ``x_t``; ``v`` standard
    normal projections (``num_projections`` per example). With ``variance_reduction=True`` the
    ``(v^T score)^2 / 2`` term is replaced by its expectation ``|score|^2 / 2`` (SSM-VR).
    Equals ``E lambda |score_hat - score|^2 / 2`` up to a constant, so it needs no noise
    knowledge beyond samples of ``p_t``; one Jacobian-vector product per projection.

    Example:
        >>> from inference.score import VP
        >>> import jax, jax.numpy as jnp
        >>> x0 = jax.random.normal(jax.random.key(1), (256, 2))  # N(0, I): p_t = N(0, (a^2+s^2) I)
        >>> def exact(x, t):
        ...     a, s = VP().marginal(t); return -x / (a**2 + s**2)
        >>> bool(ssm_loss(exact, VP(), x0, jax.random.key(0)) < 0)  # -E lam |score|^2 / 2
        True
    """
    _check_prediction("ssm_loss", prediction)
    proc = _check_process("ssm_loss", proc)
    x0 = _check_batch("ssm_loss", x0)
    if int(num_projections) < 1:
        raise ValueError(f"ssm_loss: num_projections must be >= 1; got {num_projections}.")
    kt, ke, kv = jax.random.split(key, 3)
    t = _sample_t(kt, x0.shape[0], proc, t_min)
    a, s = proc.marginal(t)
    xt = _bcast(a, x0) * x0 + _bcast(s, x0) * jax.random.normal(ke, x0.shape, x0.dtype)
    v = jax.random.normal(kv, (num_projections,) + x0.shape, x0.dtype)

    def one(x, tt, vs):
        score = lambda y: convert(net(y, tt), y, tt, proc, prediction, "score")  # noqa: E731

        def proj(vv):
            sc, jv = jax.jvp(score, (x,), (vv,))
            quad = 0.5 * jnp.sum(sc**2) if variance_reduction else 0.5 * jnp.sum(vv * sc) ** 2
            return jnp.sum(vv * jv) + quad

        return jnp.mean(jax.vmap(proj)(vs))

    per = jax.vmap(one, in_axes=(0, 0, 1))(xt, t, v)
    return jnp.mean(_weight(weighting, prediction, t, proc) * per)


def relative_score_error(net: Callable, exact: Callable, proc: Process, x0: jax.Array,
                         key: jax.Array, *, prediction: str = "noise") -> jax.Array:
    """``E s^2 |score_net - score| ^2 / E s^2 |score|^2`` over ``t ~ U``, ``x_t`` from ``x0``.

    ``net`` per example (predicting ``prediction``), ``exact(x, t)`` the true score
    (batched, as for the samplers). In noise units: ``E|eps_net - eps*|^2 / E|eps*|^2``.

    Example:
        >>> from inference.score import VP
        >>> import jax
        >>> from models.score_gmm import ring_mixture
        >>> g = ring_mixture(3); f = g.score_fn(VP())
        >>> float(relative_score_error(lambda x, t: f(x, t), f, VP(), g.sample(jax.random.key(0), 64),
        ...                            jax.random.key(1), prediction="score"))
        0.0
    """
    x0 = _check_batch("relative_score_error", x0)

    @jax.jit  # one program, not one per operation
    def error(x0, key):
        kt, ke = jax.random.split(key)
        t = _sample_t(kt, x0.shape[0], proc, None)
        a, s = proc.marginal(t)
        xt = _bcast(a, x0) * x0 + _bcast(s, x0) * jax.random.normal(ke, x0.shape)
        got = jax.vmap(lambda x, tt: convert(net(x, tt), x, tt, proc, prediction, "score"))(xt, t)
        want = jax.vmap(lambda x, tt: exact(x[None], tt)[0])(xt, t)
        w = _bcast(s**2, x0)
        return jnp.sum(w * (got - want) ** 2) / jnp.sum(w * want**2)

    return error(x0, key)
