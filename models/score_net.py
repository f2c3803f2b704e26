"""Small score networks ``net(x, t)`` (Equinox) for 2-D data and for 8x8 digits.

Both are residual MLPs conditioned on ``t`` through random Fourier features of ``t``
(added to every block), mapping one example ``x`` of shape ``(d,)`` to ``(d,)``. What the
output means (noise, score, data or velocity) is chosen by the loss and the sampler
(``prediction=``); ``"noise"`` is the well-conditioned default. For the samplers wrap them
in :func:`inference.score.batched`.

Example:
    >>> import jax, jax.numpy as jnp
    >>> net = ScoreMLP(2, hidden=32, depth=2, key=jax.random.key(0))
    >>> net(jnp.zeros(2), 0.5).shape
    (2,)
"""

from __future__ import annotations

import math

import equinox as eqx
import jax
import jax.numpy as jnp

__all__ = ["ScoreMLP", "mlp_2d", "digits_net"]


class _Block(eqx.Module):
    norm: eqx.nn.LayerNorm
    lin1: eqx.nn.Linear
    lin2: eqx.nn.Linear
    temb: eqx.nn.Linear

    def __init__(self, hidden: int, emb: int, key):
        k1, k2, k3 = jax.random.split(key, 3)
        self.norm = eqx.nn.LayerNorm(hidden)
        self.lin1 = eqx.nn.Linear(hidden, hidden, key=k1)
        self.lin2 = eqx.nn.Linear(hidden, hidden, key=k2)
        self.temb = eqx.nn.Linear(emb, hidden, key=k3)

    def __call__(self, h, e):
        z = jax.nn.silu(self.lin1(self.norm(h)) + self.temb(e))
        return h + self.lin2(z)


class ScoreMLP(eqx.Module):
    """Residual MLP ``(x (d,), t scalar) -> (d,)`` with Fourier time features.

    Args:
        dim: data dimension ``d``.
        hidden: width; depth: number of residual blocks; emb: time-feature size (even).
        key: PRNG key for the initial weights (the output layer starts at zero, so the
            untrained net predicts 0).
    """

    freqs: jax.Array
    inp: eqx.nn.Linear
    emb_lin: eqx.nn.Linear
    blocks: tuple
    out_norm: eqx.nn.LayerNorm
    out: eqx.nn.Linear

    def __init__(self, dim: int, hidden: int = 128, depth: int = 3, emb: int = 32, *, key):
        if dim < 1 or hidden < 1 or depth < 0 or emb < 2 or emb % 2:
            raise ValueError(f"ScoreMLP(dim={dim}, hidden={hidden}, depth={depth}, emb={emb}): "
                             "need dim, hidden >= 1, depth >= 0 and an even emb >= 2.")
        ki, ke, ko, *kb = jax.random.split(key, 3 + depth)
        # log-spaced frequencies 1 .. 100 (times 2 pi): resolve t from coarse to fine
        self.freqs = 2 * math.pi * jnp.exp(jnp.linspace(0.0, math.log(100.0), emb // 2))
        self.inp = eqx.nn.Linear(dim, hidden, key=ki)
        self.emb_lin = eqx.nn.Linear(emb, emb, key=ke)
        self.blocks = tuple(_Block(hidden, emb, k) for k in kb)
        self.out_norm = eqx.nn.LayerNorm(hidden)
        out = eqx.nn.Linear(hidden, dim, key=ko)
        self.out = eqx.tree_at(lambda m: (m.weight, m.bias), out,
                               (jnp.zeros_like(out.weight), jnp.zeros_like(out.bias)))

    def __call__(self, x: jax.Array, t) -> jax.Array:
        if x.ndim != 1:
            raise ValueError(f"ScoreMLP: expected one example of shape ({self.inp.in_features},); "
                             f"got {x.shape} (vmap over a batch, or use inference.score.batched).")
        ang = jnp.asarray(t, jnp.float32) * self.freqs
        e = jax.nn.silu(self.emb_lin(jnp.concatenate([jnp.sin(ang), jnp.cos(ang)])))
        h = self.inp(x)
        for b in self.blocks:
            h = b(h, e)
        return self.out(jax.nn.silu(self.out_norm(h)))


def mlp_2d(key: jax.Array) -> ScoreMLP:
    """The 2-D network of the tests and benchmark: width 128, 3 blocks (~110k weights).

    Example:
        >>> import jax
        >>> mlp_2d(jax.random.key(0)).inp.out_features
        128
    """
    return ScoreMLP(2, hidden=128, depth=3, key=key)


def digits_net(key: jax.Array, hidden: int = 512, depth: int = 3) -> ScoreMLP:
    """The digits network (flattened 8x8 images, 64 inputs): width 512, 3 blocks.

    Example:
        >>> import jax
        >>> digits_net(jax.random.key(0), hidden=32, depth=1).out.out_features
        64
    """
    return ScoreMLP(64, hidden=hidden, depth=depth, emb=64, key=key)
