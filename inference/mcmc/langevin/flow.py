"""Short-run Langevin flow: K differentiable Langevin steps (:func:`flow`)."""

from __future__ import annotations

import math
from typing import Any, Callable

import jax
import jax.numpy as jnp


from inference.mcmc.langevin.common import _check_positive


def flow(
    logdensity_fn: Callable,
    x0: Any,
    key: jax.Array,
    steps: int,
    step_size: float,
    noise: bool = True,
    return_path: bool = False,
    params: Any = None,
    checkpoint: bool = True,
):
    r"""``K = steps`` ULA steps from ``x0``, differentiable in ``x0`` and the energy's parameters.

    .. math::  x_{k+1} = x_k + h\,\nabla_x \log p_\theta(x_k) + \sqrt{2h}\,\xi_k
               \quad(\text{the } \xi \text{ term only with } \texttt{noise=True}).

    Short-run (non-convergent) Langevin flows are the sampler inside energy-based model
    training (Nijkamp et al. 2019, *Learning non-convergent non-persistent short-run MCMC
    toward energy-based model*), amortised inference in latent-variable models, and a
    refinement of variational samples. ``logdensity_fn(x)`` or, with ``params`` given,
    ``logdensity_fn(x, params)``; ``x`` may be a pytree. The result ``x_K`` (and with
    ``return_path=True`` also the path, each leaf stacked as ``(K + 1, ...)`` starting at
    ``x0``) is differentiable by ``jax.grad`` with respect to ``x0``, ``params`` and
    anything ``logdensity_fn`` closes over; the noise is a function of ``key`` only.

    Memory: reverse-mode through ``K`` steps would keep every step's intermediates (for a
    neural energy, its activations). With ``checkpoint=True`` the steps run as
    ``ceil(K / c)`` blocks of ``c = ceil(sqrt(K))`` steps, each block ``jax.checkpoint``-ed
    and each step inside checkpointed too: the backward pass stores ``O(sqrt(K))``
    positions and recomputes the rest (at most ~2 extra forward passes), instead of
    ``O(K)`` steps' intermediates.

    Example:
        >>> import jax, jax.numpy as jnp
        >>> logp = lambda x, mu: -0.5 * jnp.sum((x - mu) ** 2)
        >>> xk = flow(logp, jnp.zeros(2), jax.random.key(0), steps=100, step_size=0.1,
        ...           noise=False, params=jnp.array(3.0))
        >>> [round(float(v), 3) for v in xk]
        [3.0, 3.0]
        >>> dmu = jax.grad(lambda mu: flow(logp, jnp.zeros(2), jax.random.key(0), 100, 0.1,
        ...                                noise=False, params=mu).sum())(3.0)
        >>> round(float(dmu), 3)  # d/dmu of 2 (1 - 0.9^100) mu
        2.0
    """
    K = int(steps)
    if K < 0:
        raise ValueError(f"langevin.flow(steps={steps}): must be >= 0.")
    _check_positive("flow", "step_size", step_size)
    if params is None:
        grad_fn = jax.grad(lambda x, _: logdensity_fn(x))
    else:
        grad_fn = jax.grad(logdensity_fn)
    scale = jnp.sqrt(2.0 * step_size)

    def one(x, k):
        g = grad_fn(x, params)
        leaves, treedef = jax.tree.flatten(x)
        if noise:
            keys = jax.random.split(k, len(leaves))
            xi = [jax.random.normal(kk, jnp.shape(v), jnp.result_type(v)) for kk, v in zip(keys, leaves)]
        else:
            xi = [jnp.zeros_like(v) for v in leaves]
        g_leaves = jax.tree.leaves(g)
        new = [v + step_size * gv + scale * z for v, gv, z in zip(leaves, g_leaves, xi)]
        return jax.tree.unflatten(treedef, new)

    if K == 0:
        return (x0, jax.tree.map(lambda v: jnp.asarray(v)[None], x0)) if return_path else x0
    step = jax.checkpoint(one) if checkpoint else one
    keys = jax.random.split(key, K)

    def run(x, ks, record):
        def body(x, k):
            x = step(x, k)
            return x, (x if record else None)

        return jax.lax.scan(body, x, ks)

    if checkpoint and not return_path and K > 4:
        c = math.isqrt(K)
        c += c * c < K  # ceil(sqrt(K))
        n_blocks, rest = divmod(K, c)
        block = jax.checkpoint(lambda x, ks: run(x, ks, False)[0])
        xk, _ = jax.lax.scan(lambda x, ks: (block(x, ks), None), x0,
                             keys[: n_blocks * c].reshape((n_blocks, c) + keys.shape[1:]))
        if rest:
            xk = run(xk, keys[n_blocks * c:], False)[0]
        return xk
    xk, path = run(x0, keys, return_path)
    if return_path:
        path = jax.tree.map(lambda a, b: jnp.concatenate([jnp.asarray(a)[None], b]), x0, path)
        return xk, path
    return xk
