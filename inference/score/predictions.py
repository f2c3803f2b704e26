"""What a network predicts (score, noise, data or velocity) and the maps between them."""

from __future__ import annotations

from typing import Callable

import equinox as eqx
import jax

from inference.score.processes import Process

__all__ = ["PREDICTIONS", "convert", "batched"]

PREDICTIONS = ("score", "noise", "data", "velocity")


def _check_prediction(fn: str, prediction: str) -> None:
    if prediction not in PREDICTIONS:
        raise ValueError(f"{fn}: unknown prediction {prediction!r}; expected one of {PREDICTIONS}.")


def _to_noise(out, x, t, proc: Process, source: str):
    (a, s), (da, ds) = proc.marginal_and_derivative(t)
    if source == "noise":
        return out
    if source == "score":
        return -s * out
    if source == "data":
        return (x - a * out) / s
    return (a * out - da * x) / (a * ds - s * da)  # velocity


def _from_noise(eps, x, t, proc: Process, target: str):
    (a, s), (da, ds) = proc.marginal_and_derivative(t)
    if target == "noise":
        return eps
    if target == "score":
        return -eps / s
    x0 = (x - s * eps) / a
    if target == "data":
        return x0
    return da * x0 + ds * eps  # velocity


def convert(output, x, t, proc: Process, source: str, target: str) -> jax.Array:
    """Convert a network's ``source`` prediction at ``(x, t)`` into the ``target`` one.

    With ``x = a x0 + s eps``: ``score = -eps / s``, ``data = (x - s eps) / a``,
    ``velocity = a' x0 + s' eps``. ``t`` is a scalar or broadcasts against ``x``.

    Example:
        >>> from inference.score import VP
        >>> import jax.numpy as jnp
        >>> p, x, eps = VP(), jnp.array([0.3, -1.0]), jnp.array([1.0, 2.0])
        >>> v = convert(eps, x, 0.4, p, "noise", "velocity")
        >>> back = convert(v, x, 0.4, p, "velocity", "noise")
        >>> bool(jnp.allclose(back, eps, atol=1e-5))
        True
    """
    _check_prediction("convert", source)
    _check_prediction("convert", target)
    if source == target:
        return output
    return _from_noise(_to_noise(output, x, t, proc, source), x, t, proc, target)


class batched(eqx.Module):
    """``batched(net)(x, t) = vmap(net)(x, t)`` over ``x``'s first axis, ``t`` a scalar.

    What the samplers need from a per-example Equinox network ``net(x, t)``.

    Example:
        >>> import jax.numpy as jnp
        >>> batched(lambda x, t: x * t)(jnp.ones((3, 2)), 2.0).shape
        (3, 2)
    """

    net: Callable

    def __call__(self, x, t):
        return jax.vmap(self.net, in_axes=(0, None))(x, t)
