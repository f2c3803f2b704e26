"""An attend-infer-repeat-like model at CPU scale: 0-3 digit sprites on a 20x20 canvas.

The generative model of one canvas (Eslami et al. 2016, much reduced):

* ``count ~ Categorical(1/4, 1/4, 1/4, 1/4)``: how many objects, 0 to :data:`SLOTS` = 3;
* per slot ``i`` (sites ``where_i``, ``what_i``): ``where_i ~ N(0, I_3)`` (log-scale, x and
  y shift, see :func:`placement`) and ``what_i ~ N(0, I_4)``, decoded by a small MLP
  (Equinox) into an 8x8 grey sprite;
* the canvas mean is the sum of the first ``count`` sprites, each written onto the canvas
  by a Gaussian-window attention (:func:`render`, differentiable in the where latents);
  pixels ``x ~ N(mean, 0.25)``. Slots past ``count`` are drawn but not drawn on the canvas.

The guide (inference network) draws the count from an MLP on the canvas, then the slots
one after the other (attend, infer, repeat): slot ``i``'s where/what locations and scales
come from the same MLP applied to the residual canvas, the canvas minus the slots before
``i`` rendered (:func:`attend`); sharing the network across steps is what lets a guide that
has learned to find one digit find the second and the third. Slots past the drawn count
get the prior itself, so their terms of ``log p - log q`` are exactly zero.

Both programs are plain NumPyro programs over a batch of canvases in the plate
``"images"``; the networks enter as param sites ``"encoder$params"`` and
``"decoder$params"`` (``numpyro.contrib.module.eqx_module``). The count site ``"count"``
can be given any gradient strategy of :mod:`ppl` (``ppl.strategies(guide,
count=ppl.Enum())``), trained by NumPyro's ``TraceGraph_ELBO`` as it is, or enumerated by
``TraceEnum_ELBO`` (``make_air(..., enumerate_count=True)``).

:func:`log_weight` is the same ``log p(x, n, z) - log q(n, z | x)`` written out in JAX for a
given count and given standard-normal noise; :func:`exact_count_elbo` sums it over the
count exactly (hand-written estimators and the benchmark's evaluation use them), and
:func:`summed_over_canvases` trains with any :mod:`ppl` objective one canvas at a time.

Data: :func:`make_data` places 0-3 sklearn digits (grey, 8x8, scaled to [0, 1]) at random
scales and positions with the same renderer, and returns the true counts.

Example:
    >>> import jax, numpy as np
    >>> data = make_data(8, seed=0)
    >>> data.canvases.shape, data.counts.shape
    ((8, 400), (8,))
    >>> encoder, decoder = make_networks(jax.random.key(0))
    >>> model, guide = make_air(encoder, decoder)
    >>> params = init_params(encoder, decoder)
    >>> sorted(params)
    ['decoder$params', 'encoder$params']
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import NamedTuple

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
from numpyro.contrib.module import eqx_module

__all__ = [
    "CANVAS",
    "SIGMA_X",
    "SLOTS",
    "SPRITE",
    "WHAT",
    "AirData",
    "attend",
    "count_logits",
    "count_probs",
    "decode_canvas",
    "exact_count_elbo",
    "init_params",
    "layer",
    "load_sprites",
    "log_weight",
    "log_weight_from_encoding",
    "make_air",
    "make_data",
    "make_networks",
    "networks",
    "placement",
    "render",
]

CANVAS = 20  #: canvas side, pixels
SPRITE = 8  #: sprite side, pixels (sklearn digits)
SLOTS = 3  #: at most this many objects
WHERE = 3  #: where latents per slot: log-scale, x shift, y shift
WHAT = 4  #: what latents per slot (decoder input)
SIGMA_X = 0.25  #: pixel noise of the likelihood
HIDDEN = 128  #: hidden units of the encoder
DECODER_HIDDEN = 64  #: hidden units of the decoder
SCALE0 = 1.1  #: sprite pixel spacing on the canvas at where[0] = 0
LOG_SCALE_STEP = 0.15  #: log spacing per unit of where[0]
SHIFT = 5.0  #: canvas pixels per unit of where[1], where[2]
_OUT = (SLOTS + 1) + 2 * (WHERE + WHAT)  #: encoder outputs: count logits, one slot


# ---------------------------------------------------------------------------------------
# rendering
# ---------------------------------------------------------------------------------------


def placement(where: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
    """``(spacing, cx, cy)`` of a sprite on the canvas from unconstrained ``where (..., 3)``.

    The spacing of sprite pixels is ``SCALE0 * exp(0.15 * where[0])``; the centre is
    ``(CANVAS - 1) / 2 + SHIFT * where[1:]``.

    Example:
        >>> s, cx, cy = placement(jnp.zeros(3))
        >>> float(s), float(cx), float(cy)
        (1.100000023841858, 9.5, 9.5)
    """
    where = jnp.asarray(where)
    s = SCALE0 * jnp.exp(LOG_SCALE_STEP * where[..., 0])
    centre = (CANVAS - 1) / 2.0
    return s, centre + SHIFT * where[..., 1], centre + SHIFT * where[..., 2]


def _filterbank(centre: jax.Array, spacing: jax.Array) -> jax.Array:
    """``F[..., a, j]``: weight of sprite column ``j`` at canvas column ``a``; ``(..., 20, 8)``.

    Gaussian windows at the sprite pixel centres ``mu_j = centre + spacing (j - 3.5)`` with
    standard deviation ``spacing / 2``, scaled by ``spacing`` so that the windows sum to ~1
    across ``j`` (a smooth interpolation: a sprite of ones renders as ones).
    """
    j = jnp.arange(SPRITE, dtype=spacing.dtype) - (SPRITE - 1) / 2.0
    a = jnp.arange(CANVAS, dtype=spacing.dtype)
    mu = centre[..., None] + spacing[..., None] * j  # (..., SPRITE)
    sigma = 0.5 * spacing[..., None, None]
    d = a[:, None] - mu[..., None, :]  # (..., CANVAS, SPRITE)
    return jnp.exp(-0.5 * (d / sigma) ** 2) / (math.sqrt(2 * math.pi) * 0.5)


def render(sprite: jax.Array, where: jax.Array) -> jax.Array:
    """Write ``sprite (..., 8, 8)`` onto a blank canvas at ``where (..., 3)``: ``(..., 20, 20)``.

    Differentiable in ``where`` and ``sprite``; leading axes broadcast.

    Example:
        >>> img = render(jnp.ones((8, 8)), jnp.zeros(3))
        >>> img.shape, round(float(img[9, 9]), 1)
        ((20, 20), 1.0)
    """
    sprite, where = jnp.asarray(sprite), jnp.asarray(where)
    lead = jnp.broadcast_shapes(sprite.shape[:-2], where.shape[:-1])
    sprite = jnp.broadcast_to(sprite, lead + sprite.shape[-2:])
    where = jnp.broadcast_to(where, lead + where.shape[-1:])
    s, cx, cy = placement(where)
    fx, fy = _filterbank(cx, s), _filterbank(cy, s)
    return jnp.einsum("...aj,...jk,...bk->...ab", fy, sprite, fx)


# ---------------------------------------------------------------------------------------
# data
# ---------------------------------------------------------------------------------------


class AirData(NamedTuple):
    """Canvases ``(n, 400)`` (float32), true counts ``(n,)`` and true where latents ``(n, 3, 3)``
    (zeros for absent slots)."""

    canvases: np.ndarray
    counts: np.ndarray
    wheres: np.ndarray


def load_sprites() -> np.ndarray:
    """The 1797 sklearn digits as grey 8x8 sprites in [0, 1], float32 ``(1797, 8, 8)``.

    Example:
        >>> load_sprites().shape
        (1797, 8, 8)
    """
    from sklearn.datasets import load_digits

    return (load_digits().images / 16.0).astype(np.float32)


def make_data(n: int, seed: int = 0, max_count: int = SLOTS) -> AirData:
    """``n`` canvases with ``0..max_count`` digits each (count uniform), placed by :func:`render`.

    Where latents: log-scale ``where[0] ~ U(-1, 1)``, shifts ``where[1:] ~ U(-1, 1)`` (the
    centre within 5 pixels of the canvas centre); digits drawn at random from sklearn's set.

    Example:
        >>> d = make_data(4, seed=1)
        >>> d.canvases.dtype, int(d.counts.max()) <= 3
        (dtype('float32'), True)
    """
    if int(n) < 1:
        raise ValueError(f"make_data: n (the number of canvases) must be >= 1, got {n!r}.")
    if not 0 <= int(max_count) <= SLOTS:
        raise ValueError(f"make_data: max_count must be in 0..{SLOTS}, got {max_count!r}.")
    rng = np.random.default_rng(seed)
    sprites = load_sprites()
    counts = rng.integers(0, max_count + 1, size=n)
    wheres = rng.uniform(-1.0, 1.0, size=(n, SLOTS, WHERE)).astype(np.float32)
    present = np.arange(SLOTS)[None, :] < counts[:, None]
    wheres = np.where(present[..., None], wheres, 0.0).astype(np.float32)
    chosen = sprites[rng.integers(0, sprites.shape[0], size=(n, SLOTS))]
    layers = np.asarray(jax.jit(render)(chosen, wheres))  # (n, SLOTS, 20, 20)
    canvases = np.sum(np.where(present[..., None, None], layers, 0.0), axis=1)
    return AirData(canvases.reshape(n, CANVAS * CANVAS).astype(np.float32),
                   counts.astype(np.int32), wheres)


# ---------------------------------------------------------------------------------------
# networks
# ---------------------------------------------------------------------------------------


def make_networks(key: jax.Array, hidden: int = HIDDEN,
                  decoder_hidden: int = DECODER_HIDDEN) -> tuple[eqx.nn.MLP, eqx.nn.MLP]:
    """``(encoder, decoder)``: 400 -> hidden -> 4 count logits and one slot's where/what
    locations and log-scales (18 outputs); 4 -> decoder_hidden -> 64 sprite logits.

    The encoder's last layer starts at a tenth of Equinox's initial weights, so every
    scale starts near 1 and the count near uniform.

    Example:
        >>> enc, dec = make_networks(jax.random.key(0))
        >>> enc(jnp.zeros(400)).shape, dec(jnp.zeros(4)).shape
        ((18,), (64,))
    """
    k_enc, k_dec = jax.random.split(key)
    dtype = jnp.result_type(float)
    encoder = eqx.nn.MLP(CANVAS * CANVAS, _OUT, hidden, depth=1, activation=jax.nn.relu,
                         key=k_enc, dtype=dtype)
    encoder = eqx.tree_at(lambda m: m.layers[-1].weight, encoder, encoder.layers[-1].weight * 0.1)
    decoder = eqx.nn.MLP(WHAT, SPRITE * SPRITE, decoder_hidden, depth=1, activation=jax.nn.relu,
                         key=k_dec, dtype=dtype)
    return encoder, decoder


def init_params(encoder: eqx.nn.MLP, decoder: eqx.nn.MLP) -> dict:
    """The networks' arrays in the layout of the param sites (``"encoder$params"``,
    ``"decoder$params"``).

    Example:
        >>> enc, dec = make_networks(jax.random.key(0))
        >>> p = init_params(enc, dec)
        >>> p["decoder$params"].layers[0].weight.shape
        (64, 4)
    """
    return {"encoder$params": eqx.filter(encoder, eqx.is_inexact_array),
            "decoder$params": eqx.filter(decoder, eqx.is_inexact_array)}


def networks(params: dict, encoder: eqx.nn.MLP, decoder: eqx.nn.MLP) -> tuple:
    """``(encoder, decoder)`` with the arrays of ``params`` (the layout of :func:`init_params`).

    Example:
        >>> enc, dec = make_networks(jax.random.key(0))
        >>> networks(init_params(enc, dec), enc, dec)[1](jnp.zeros(4)).shape
        (64,)
    """
    return (eqx.combine(params["encoder$params"], encoder),
            eqx.combine(params["decoder$params"], decoder))


def _apply(net: Callable, x: jax.Array, event: int) -> jax.Array:
    """``net`` over every leading axis of ``x`` (its last axis, of size ``event``, the input)."""
    lead = x.shape[:-1]
    out = jax.vmap(net)(x.reshape((-1, event)))
    return out.reshape(lead + out.shape[-1:])


def _used(count: jax.Array) -> jax.Array:
    """``(..., SLOTS)``: slot ``i`` is drawn on the canvas iff ``i < count``."""
    return jnp.arange(SLOTS) < jnp.asarray(count)[..., None]


def layer(decoder: Callable, where: jax.Array, what: jax.Array) -> jax.Array:
    """One object's contribution to the canvas, ``(..., 400)``: the decoded sprite rendered.

    Example:
        >>> _, dec = make_networks(jax.random.key(0))
        >>> layer(dec, jnp.zeros((2, 3)), jnp.zeros((2, 4))).shape
        (2, 400)
    """
    sprite = jax.nn.sigmoid(_apply(decoder, what, WHAT)).reshape(what.shape[:-1] + (SPRITE, SPRITE))
    img = render(sprite, where)
    return img.reshape(img.shape[:-2] + (CANVAS * CANVAS,))


def decode_canvas(decoder: Callable, count: jax.Array, where: jax.Array,
                  what: jax.Array) -> jax.Array:
    """The canvas mean ``(..., 400)``: the first ``count`` slots' sprites rendered and summed.

    ``where (..., SLOTS, 3)``, ``what (..., SLOTS, 4)``.

    Example:
        >>> _, dec = make_networks(jax.random.key(0))
        >>> m = decode_canvas(dec, jnp.array(0), jnp.zeros((3, 3)), jnp.zeros((3, 4)))
        >>> m.shape, float(jnp.abs(m).max())
        ((400,), 0.0)
    """
    layers = layer(decoder, where, what)  # (..., SLOTS, 400)
    return jnp.sum(jnp.where(_used(count)[..., None], layers, 0.0), axis=-2)


def count_logits(encoder: Callable, x: jax.Array) -> tuple[jax.Array, jax.Array]:
    """``(logits (..., 4), h (..., 18))``: the guide's count logits, and the encoder's output on
    the canvas (whose slot part gives slot 0, see :func:`attend`).

    Example:
        >>> enc, _ = make_networks(jax.random.key(0))
        >>> count_logits(enc, jnp.zeros((2, 400)))[0].shape
        (2, 4)
    """
    h = _apply(encoder, x, CANVAS * CANVAS)
    return h[..., :SLOTS + 1], h


def attend(encoder: Callable, decoder: Callable, x: jax.Array, h0: jax.Array, used: jax.Array,
           draw: Callable) -> tuple[jax.Array, jax.Array]:
    """The guide's slots, one after the other (attend, infer, repeat): slot ``i``'s where/what
    distribution is the encoder's on the residual canvas ``x - (slots before i, rendered)``.

    ``draw(kind, i, used_i, loc, scale) -> value`` draws ``kind`` (``"where"`` or ``"what"``)
    of slot ``i``; ``used (..., SLOTS)`` says which slots are drawn on the canvas. The same
    encoder serves every step, so a network that has learned to find one digit finds the next
    one in the residual. Returns ``(where (..., SLOTS, 3), what (..., SLOTS, 4))``.

    Example (the locations themselves, as :func:`inferred` does):
        >>> enc, dec = make_networks(jax.random.key(0))
        >>> x = jnp.zeros((2, 400))
        >>> used = jnp.array([[True, False, False], [True, True, False]])
        >>> where, what = attend(enc, dec, x, count_logits(enc, x)[1], used,
        ...                      lambda kind, i, u, loc, scale: loc)
        >>> where.shape, what.shape
        ((2, 3, 3), (2, 3, 4))
    """
    residual, h = x, h0
    wheres, whats = [], []
    for i in range(SLOTS):
        if i:
            h = _apply(encoder, residual, CANVAS * CANVAS)
        part = h[..., SLOTS + 1:]
        wl, ws = part[..., :WHERE], jnp.exp(part[..., WHERE:2 * WHERE])
        hl = part[..., 2 * WHERE:2 * WHERE + WHAT]
        hs = jnp.exp(part[..., 2 * WHERE + WHAT:])
        wheres.append(draw("where", i, used[..., i], wl, ws))
        whats.append(draw("what", i, used[..., i], hl, hs))
        if i + 1 < SLOTS:
            drawn = layer(decoder, wheres[-1], whats[-1])
            residual = residual - jnp.where(used[..., i, None], drawn, 0.0)
    return jnp.stack(wheres, -2), jnp.stack(whats, -2)


def _slot_dist(used: jax.Array, loc: jax.Array, scale: jax.Array) -> dist.Distribution:
    """A slot's latent in the guide: the network's Normal if the slot is used, else the prior."""
    u = used[..., None]
    return dist.Normal(jnp.where(u, loc, 0.0), jnp.where(u, scale, 1.0)).to_event(1)


# ---------------------------------------------------------------------------------------
# model and guide
# ---------------------------------------------------------------------------------------


def make_air(encoder: eqx.nn.MLP, decoder: eqx.nn.MLP, *,
             enumerate_count: bool = False) -> tuple[Callable, Callable]:
    """``(model, guide)``: NumPyro programs over canvases ``x (B, 400)`` in the plate ``"images"``.

    Sites: ``"count"`` (Categorical over 0..3, shape ``(B,)``), then per slot ``i`` in 0..2
    ``"where_i"`` ``(B, 3)`` and ``"what_i"`` ``(B, 4)``, and the observed ``"x"``. With
    ``enumerate_count`` the guide's count site is marked ``infer={"enumerate": "parallel"}``
    for NumPyro's ``TraceEnum_ELBO`` (with ``max_plate_nesting=1``); our strategies are set
    with ``ppl.strategies(guide, count=...)``.

    Example:
        >>> import jax, numpyro
        >>> enc, dec = make_networks(jax.random.key(0))
        >>> model, guide = make_air(enc, dec)
        >>> seeded = numpyro.handlers.seed(guide, 0)
        >>> tr = numpyro.handlers.trace(seeded).get_trace(jnp.zeros((2, 400)))
        >>> tr["count"]["value"].shape, tr["where_2"]["value"].shape, tr["what_0"]["value"].shape
        ((2,), (2, 3), (2, 4))
    """
    count_infer = {"enumerate": "parallel"} if enumerate_count else {}

    def model(x):
        decode = eqx_module("decoder", decoder)
        zero = jnp.zeros((), x.dtype)
        with numpyro.plate("images", x.shape[0]):
            probs = jnp.full((SLOTS + 1,), 1.0 / (SLOTS + 1), dtype=x.dtype)
            count = numpyro.sample("count", dist.Categorical(probs=probs))
            wheres, whats = [], []
            for i in range(SLOTS):
                wheres.append(numpyro.sample(
                    f"where_{i}", dist.Normal(zero, 1.0).expand([WHERE]).to_event(1)))
                whats.append(numpyro.sample(
                    f"what_{i}", dist.Normal(zero, 1.0).expand([WHAT]).to_event(1)))
            where, what = jnp.stack(jnp.broadcast_arrays(*wheres), -2), jnp.stack(
                jnp.broadcast_arrays(*whats), -2)
            mean = decode_canvas(decode, count, where, what)
            numpyro.sample("x", dist.Normal(mean, SIGMA_X).to_event(1), obs=x)

    def guide(x):
        encode = eqx_module("encoder", encoder)
        decode = eqx_module("decoder", decoder)
        logits, h0 = count_logits(encode, x)
        with numpyro.plate("images", x.shape[0]):
            count = numpyro.sample("count", dist.Categorical(logits=logits), infer=count_infer)

            def draw(kind, i, used_i, loc, scale):
                return numpyro.sample(f"{kind}_{i}", _slot_dist(used_i, loc, scale))

            attend(encode, decode, x, h0, _used(count), draw)

    return model, guide


# ---------------------------------------------------------------------------------------
# the same density written out (hand-written estimators, evaluation)
# ---------------------------------------------------------------------------------------

_HALF_LOG_2PI = 0.5 * math.log(2 * math.pi)


def _std_normal_lp(z: jax.Array, axes: int) -> jax.Array:
    return jnp.sum(-0.5 * z**2 - _HALF_LOG_2PI, axis=tuple(range(-axes, 0)))


def log_weight(params: dict, x: jax.Array, count: jax.Array, eps_where: jax.Array,
               eps_what: jax.Array, encoder: eqx.nn.MLP, decoder: eqx.nn.MLP) -> jax.Array:
    """``log p(x, n, z) - log q(n, z | x)`` of each canvas, ``z`` reparameterized from ``eps``.

    ``x (..., 400)``, ``count (...)``, ``eps_where (..., 3, 3)``, ``eps_what (..., 3, 4)``
    (leading axes broadcast); the where/what latents are ``loc + scale * eps`` for used slots
    and ``eps`` (the prior) for the others, as the guide of :func:`make_air` draws them.

    Example:
        >>> enc, dec = make_networks(jax.random.key(0))
        >>> p, x = init_params(enc, dec), jnp.zeros((5, 400))
        >>> eps_where, eps_what = jnp.zeros((3, 3)), jnp.zeros((3, 4))
        >>> lw = eqx.filter_jit(log_weight)  # one compile instead of many eager operations
        >>> lw(p, x, jnp.zeros(5, int), eps_where, eps_what, enc, dec).shape
        (5,)
    """
    enc, dec = networks(params, encoder, decoder)
    logits, h0 = count_logits(enc, x)
    return log_weight_from_encoding(enc, dec, x, logits, h0, count, eps_where, eps_what)


def log_weight_from_encoding(enc: Callable, dec: Callable, x: jax.Array, logits: jax.Array,
                             h0: jax.Array, count: jax.Array, eps_where: jax.Array,
                             eps_what: jax.Array) -> jax.Array:
    """:func:`log_weight` with the networks ``enc``, ``dec`` (params combined) and the encoder's
    output on the canvas, ``(logits, h0) = count_logits(enc, x)`` (computed once per canvas by
    estimators that also need the count's logits).

    Example:
        >>> enc, dec = make_networks(jax.random.key(0))
        >>> x = jnp.zeros((2, 400))
        >>> logits, h0 = count_logits(enc, x)
        >>> log_weight_from_encoding(enc, dec, x, logits, h0, 1, jnp.zeros((3, 3)),
        ...                          jnp.zeros((3, 4))).shape
        (2,)
    """
    log_q = [jnp.zeros((), x.dtype)]

    def draw(kind, i, used_i, loc, scale):
        eps = (eps_where if kind == "where" else eps_what)[..., i, :]
        u = used_i[..., None]
        log_scale = jnp.sum(jnp.where(u, jnp.log(scale), 0.0), -1)
        log_q[0] = log_q[0] + _std_normal_lp(eps, 1) - log_scale
        return jnp.where(u, loc + scale * eps, eps)

    where, what = attend(enc, dec, x, h0, _used(count), draw)
    log_softmax = jax.nn.log_softmax(logits)
    lead = jnp.broadcast_shapes(jnp.shape(count), log_softmax.shape[:-1])
    log_q_n = jnp.take_along_axis(
        jnp.broadcast_to(log_softmax, lead + log_softmax.shape[-1:]),
        jnp.broadcast_to(count, lead).astype(jnp.int32)[..., None], -1)[..., 0]
    mean = decode_canvas(dec, count, where, what)
    log_lik = _std_normal_lp((x - mean) / SIGMA_X, 1) - x.shape[-1] * math.log(SIGMA_X)
    log_p = (-math.log(SLOTS + 1) + _std_normal_lp(where, 2) + _std_normal_lp(what, 2)
             + log_lik)
    return log_p - log_q_n - log_q[0]


def count_probs(params: dict, x: jax.Array, encoder: eqx.nn.MLP) -> jax.Array:
    """The guide's ``q(count | x)``, ``(..., 4)``.

    Example:
        >>> enc, dec = make_networks(jax.random.key(0))
        >>> count_probs(init_params(enc, dec), jnp.zeros((2, 400)), enc).shape
        (2, 4)
    """
    enc = eqx.combine(params["encoder$params"], encoder)
    return jax.nn.softmax(count_logits(enc, x)[0])


def exact_count_elbo(params: dict, x: jax.Array, eps_where: jax.Array, eps_what: jax.Array,
                     encoder: eqx.nn.MLP, decoder: eqx.nn.MLP) -> jax.Array:
    """``sum_n q(n | x) [log p(x, n, z_n) - log q(n, z_n | x)]`` per canvas, the count summed
    out exactly, one draw of the noise ``eps`` shared by every ``n`` (as ``ppl.Enum`` does).

    Its derivative is the enumeration estimator of the ELBO's gradient.

    Example:
        >>> enc, dec = make_networks(jax.random.key(0))
        >>> p, x = init_params(enc, dec), jnp.zeros((5, 400))
        >>> elbo = eqx.filter_jit(exact_count_elbo)
        >>> elbo(p, x, jnp.zeros((3, 3)), jnp.zeros((3, 4)), enc, dec).shape
        (5,)
    """
    enc, dec = networks(params, encoder, decoder)
    logits, h0 = count_logits(enc, x)
    q = jax.nn.softmax(logits)  # (..., 4)
    f = jax.vmap(
        lambda n: log_weight_from_encoding(enc, dec, x, logits, h0, n, eps_where, eps_what),
        out_axes=-1)(jnp.arange(SLOTS + 1))
    return jnp.sum(q * f, axis=-1)


# ---------------------------------------------------------------------------------------
# training with ppl objectives, and what the guide infers
# ---------------------------------------------------------------------------------------


def summed_over_canvases(objective: Callable) -> Callable:
    """``f(params, x, key) -> (loss, grads)`` for a :mod:`ppl` objective of ``(params, x)``:
    ``loss = -sum_b objective(params, x_b[None])`` and the sum of the per-canvas gradient
    estimates (``value_and_grad_estimate`` of each canvas alone, one key each).

    Per canvas, so that each canvas's count is credited with its own ELBO: in one objective
    over the whole minibatch the count site would be one joint choice (``Reinforce``: the
    minibatch's ELBO times the joint score; ``Enum``: ``4^B`` configurations). The canvases go
    through a ``jax.lax.scan`` that sums the gradients as it goes (the scan is outside the
    objective, whose random choices stay at its top level); ``jax.vmap`` gives the same
    numbers but was 6-10x slower per step here (it materialises every canvas's gradient).

    Example:
        >>> import ppl
        >>> enc, dec = make_networks(jax.random.key(0), 8, 8)
        >>> model, guide = make_air(enc, dec)
        >>> objective = ppl.objectives.elbo(model, ppl.strategies(guide, count="enum"))
        >>> f = summed_over_canvases(objective)
        >>> loss, grads = jax.jit(f)(init_params(enc, dec), jnp.zeros((2, 400)), jax.random.key(1))
        >>> loss.shape
        ()
    """
    import ppl

    def body(params, acc, xi, key):
        per = ppl.expectation(lambda p: objective(p, xi[None]))
        value, (grads,) = per.value_and_grad_estimate(key, params)
        return acc[0] - value, jax.tree.map(jnp.subtract, acc[1], grads)

    def loss_grad(params, x, key):
        zero = (jnp.zeros((), x.dtype), jax.tree.map(jnp.zeros_like, params))
        keys = jax.random.split(key, x.shape[0])
        out, _ = jax.lax.scan(lambda acc, xk: (body(params, acc, *xk), None), zero, (x, keys))
        return out

    return loss_grad


class Inferred(NamedTuple):
    """What the guide infers for canvases ``(..., 400)``: the most probable count, the
    where/what means of every slot, and the reconstruction (canvas mean at those values)."""

    count: jax.Array
    where: jax.Array
    what: jax.Array
    reconstruction: jax.Array


def inferred(params: dict, x: jax.Array, encoder: eqx.nn.MLP, decoder: eqx.nn.MLP) -> Inferred:
    """The guide's most probable count and, given it, the where/what means (slot by slot).

    Example:
        >>> enc, dec = make_networks(jax.random.key(0))
        >>> out = inferred(init_params(enc, dec), jnp.zeros((2, 400)), enc, dec)
        >>> out.count.shape, out.where.shape, out.reconstruction.shape
        ((2,), (2, 3, 3), (2, 400))
    """
    enc, dec = networks(params, encoder, decoder)
    logits, h0 = count_logits(enc, x)
    count = jnp.argmax(logits, -1)
    where, what = attend(enc, dec, x, h0, _used(count), lambda kind, i, u, loc, scale: loc)
    return Inferred(count, where, what, decode_canvas(dec, count, where, what))
