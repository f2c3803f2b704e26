"""The ``discrete_vi`` benchmark's sigmoid belief network (``models/discrete_vi/sbn.py``).

32 Bernoulli latent units, linear encoder and decoder, binarized sklearn digits (the 1437
training images), minibatches of 32 images, ``optax.adam(3e-3)``, the same initial parameters
for every contestant. The objective is the ELBO of a minibatch (a sum over its images);
contestants:

* ours: ``ppl.objectives.elbo`` with the guide's site ``"z"`` left to the default strategy
  (``Reinforce()``: the ``(B, H)`` block is one joint choice), ``Reinforce()`` set explicitly,
  ``Reinforce(baseline="mean")`` (leave-one-out, 2 draws), ``MVD()``; and
  ``ppl.objectives.vimco(K=4, plate="batch")`` (IWAE-4 per image, per-image leave-one-out
  baselines); ``ppl.objectives.elbo(plate="batch")`` (``plate``: each image's score weighted
  by its own terms, as ``TraceGraph_ELBO``) and ``elbo(K=2, plate="batch")`` (``plate+loo``:
  two draws, each image's score less the other draw's terms for that image).
* NumPyro: ``SVI`` with ``TraceGraph_ELBO`` (REINFORCE without baselines, Rao-Blackwellized
  along the plate: each image's score is weighted by that image's terms only).
  ``TraceEnum_ELBO`` would enumerate ``2^32`` configurations per image: skipped.
* hand: each of our strategies written directly in JAX on :func:`models.discrete_vi.sbn.log_weight`
  (MVD exploits the per-image structure: flipping unit ``h`` of image ``b`` changes only image
  ``b``'s terms, so its ``2BH`` branch values cost one ``(B, H, 64)`` array).

``evaluate``: the mean over the training images of the per-image ELBO, 4 draws each, with a
fixed key (common random numbers across contestants and evaluations).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from numpyro.infer import TraceGraph_ELBO

import ppl
from bench.discrete_vi_common import (
    Problem,
    adam_contestant,
    numpyro_contestant,
    ours_loss_grad,
)
from models.discrete_vi import sbn

HIDDEN = 32
BATCH = 32
LEARNING_RATE = 3e-3
VIMCO_K = 4


def _bern(value, logits):
    return value * logits - jax.nn.softplus(logits)


def _log_q(params, x, z):
    return jnp.sum(_bern(z, x @ params["enc_w"] + params["enc_b"]), -1)  # (B,)


def _neg(grads):
    return jax.tree_util.tree_map(jnp.negative, grads)


def hand_reinforce(params, x, key):
    """Score function of the whole minibatch (one joint choice), no baseline."""
    z = sbn.sample_z(jax.lax.stop_gradient(params), x, key)

    def surrogate(p):
        f = jnp.sum(sbn.log_weight(p, x, z))
        s = jnp.sum(_log_q(p, x, z))
        return f + jax.lax.stop_gradient(f) * (s - jax.lax.stop_gradient(s))

    return _neg(jax.grad(surrogate)(params))


def hand_reinforce_mean(params, x, key, n: int = 2):
    """``n`` joint draws, each scored against the mean of the others (leave-one-out)."""
    zs = jax.vmap(lambda k: sbn.sample_z(jax.lax.stop_gradient(params), x, k))(
        jax.random.split(key, n))

    def surrogate(p):
        f = jax.vmap(lambda z: jnp.sum(sbn.log_weight(p, x, z)))(zs)  # (n,)
        s = jax.vmap(lambda z: jnp.sum(_log_q(p, x, z)))(zs)
        fs = jax.lax.stop_gradient(f)
        loo = (jnp.sum(fs) - fs) / (n - 1)
        return jnp.mean(f + (fs - loo) * (s - jax.lax.stop_gradient(s)))

    return _neg(jax.grad(surrogate)(params))


def hand_vimco(params, x, key, k: int = VIMCO_K):
    """IWAE-k per image with VIMCO's per-image leave-one-out baselines."""
    zs = jax.vmap(lambda kk: sbn.sample_z(jax.lax.stop_gradient(params), x, kk))(
        jax.random.split(key, k))  # (k, B, H)

    def surrogate(p):
        lw = jax.vmap(lambda z: sbn.log_weight(p, x, z))(zs)  # (k, B)
        s = jax.vmap(lambda z: _log_q(p, x, z))(zs)
        L = jax.scipy.special.logsumexp(lw, 0) - jnp.log(k)  # (B,)
        lws = jax.lax.stop_gradient(lw)
        others = (jnp.sum(lws, 0) - lws) / (k - 1)
        eye = jnp.eye(k, dtype=bool)[:, :, None]
        loo = jnp.where(eye, others[:, None, :], lws[None])  # (k, k, B)
        base = jax.scipy.special.logsumexp(loo, 1) - jnp.log(k)  # (k, B)
        signal = jax.lax.stop_gradient(L)[None] - base
        return jnp.sum(L) + jnp.sum(signal * (s - jax.lax.stop_gradient(s)))

    return _neg(jax.grad(surrogate)(params))


def hand_plate(params, x, key, k: int = 1):
    """Each image's score weighted by its own log weight (less the other draws' mean, k >= 2)."""
    zs = jax.vmap(lambda kk: sbn.sample_z(jax.lax.stop_gradient(params), x, kk))(
        jax.random.split(key, k))  # (k, B, H)

    def surrogate(p):
        lw = jax.vmap(lambda z: sbn.log_weight(p, x, z))(zs)  # (k, B)
        s = jax.vmap(lambda z: _log_q(p, x, z))(zs)
        lws = jax.lax.stop_gradient(lw)
        own = lws if k == 1 else lws - (jnp.sum(lws, 0) - lws) / (k - 1)
        return jnp.sum(jnp.mean(lw, 0)) + jnp.sum(own / k * (s - jax.lax.stop_gradient(s)))

    return _neg(jax.grad(surrogate)(params))


def hand_mvd(params, x, key):
    """Measure-valued derivative w.r.t. each unit's probability, one image at a time."""
    z = sbn.sample_z(jax.lax.stop_gradient(params), x, key)
    p0 = jax.lax.stop_gradient(params)
    a = z @ p0["dec_w"] + p0["dec_b"]  # (B, 64)
    w = p0["dec_w"][None]  # (1, H, 64)
    up = a[:, None, :] + (1 - z)[..., None] * w  # unit h set to 1
    down = a[:, None, :] - z[..., None] * w  # unit h set to 0
    lik_diff = jnp.sum(_bern(x[:, None, :], up) - _bern(x[:, None, :], down), -1)  # (B, H)
    enc_logits = x @ p0["enc_w"] + p0["enc_b"]
    # f(z with z_bh = 1) - f(z with z_bh = 0): likelihood, prior and -log q terms of unit h
    delta = lik_diff + p0["prior_logits"] - enc_logits

    def surrogate(p):
        probs = jax.nn.sigmoid(x @ p["enc_w"] + p["enc_b"])
        return jnp.sum(sbn.log_weight(p, x, z)) + jnp.sum(jax.lax.stop_gradient(delta) * probs)

    return _neg(jax.grad(surrogate)(params))


def problem(quick: bool = False) -> Problem:
    """The SBN problem; ``quick`` uses 256 images, 8 latent units and a 2 s budget."""
    x_train, _ = sbn.load_binary_digits()
    hidden = 8 if quick else HIDDEN
    x = jnp.asarray(x_train[:256] if quick else x_train)
    params0 = sbn.init_params(jax.random.key(0), x, hidden)
    model, guide = sbn.make_sbn(params0)
    eval_x = x

    @jax.jit
    def _evaluate(params, key):
        return jnp.mean(sbn.elbo_per_image(params, eval_x, key, samples=4))

    def evaluate(params, key):
        return float(_evaluate(params, key))

    objectives = {
        "default": ppl.objectives.elbo(model, guide),
        "reinforce": ppl.objectives.elbo(model, ppl.strategies(guide, z=ppl.Reinforce())),
        "reinforce+mean": ppl.objectives.elbo(
            model, ppl.strategies(guide, z=ppl.Reinforce(baseline="mean"))),
        "vimco": ppl.objectives.vimco(model, guide, K=VIMCO_K, plate="batch"),
        "plate": ppl.objectives.elbo(model, guide, plate="batch"),
        "plate+loo": ppl.objectives.elbo(model, guide, K=2, plate="batch"),
        "mvd": ppl.objectives.elbo(model, ppl.strategies(guide, z=ppl.MVD())),
    }
    common = {"params0": params0, "data": x, "batch_size": BATCH,
              "learning_rate": LEARNING_RATE}
    contestants = [adam_contestant(f"ours/{s}", "ours", s, ours_loss_grad(obj), **common)
                   for s, obj in objectives.items()]
    contestants.append(numpyro_contestant("numpyro/TraceGraph_ELBO", "reinforce", model, guide,
                                          TraceGraph_ELBO(), **common))
    hands = {"reinforce": hand_reinforce, "reinforce+mean": hand_reinforce_mean,
             "vimco": hand_vimco, "mvd": hand_mvd, "plate": hand_plate,
             "plate+loo": lambda p, xx, kk: hand_plate(p, xx, kk, 2)}
    contestants += [adam_contestant(f"hand/{s}", "hand", s, g, **common) for s, g in hands.items()]
    skipped = (
        ("numpyro/TraceEnum_ELBO",
         f"2^{hidden} latent configurations per image: enumeration does not apply"),
        ("ours/enum",
         f"ppl.Enum enumerates the joint (B, {hidden}) block: 2^({BATCH}*{hidden}) configurations"),
    )
    return Problem("sbn", evaluate, contestants, float("nan"), 2.0 if quick else 12.0, skipped)
