"""The ``discrete_vi`` benchmark's Gaussian mixture (``models/discrete_vi/gmm.py``).

300 points in 2-D from 3 overlapping clusters, ``K = 3`` components with a known scale, the
whole data set each step, ``optax.adam(0.05)``, the same initial parameters for everyone
(locations at 3 data points, uniform weights, uniform assignment probabilities). The objective
is the ELBO with per-point assignment logits ``q(z_n)``; contestants:

* ours: ``ppl.objectives.elbo`` with the guide's ``"z"`` (a ``(300,)`` Categorical block) at
  the default strategy (``Reinforce()``, one joint choice), ``Reinforce(baseline="mean")``
  (2 draws), ``MVD()`` (one branch per point and category); ``vimco(K=4, plate="data")``;
  ``elbo(plate="data")`` (``plate``: each point's score weighted by its own term, as
  ``TraceGraph_ELBO``) and ``elbo(K=2, plate="data")`` (``plate+loo``: less the other draw's).
  ``ours/enum``: ``log p(x)`` of the enumerated model through the enumeration that
  ``ppl.potential`` builds (:func:`models.discrete_vi.gmm.log_marginal_objective`; ``ppl.Enum`` on the guide would
  enumerate the joint block, ``3^300`` configurations, and ``ppl.objectives.elbo`` refuses
  enumerate-marked model sites).
* NumPyro: ``TraceGraph_ELBO`` (REINFORCE Rao-Blackwellized along the plate) and
  ``TraceEnum_ELBO`` on the enumerated model (``log p(x)``, exact; its guide is the exact
  posterior, which ``params`` fills in for the evaluation).
* hand: each strategy in JAX on the ``(N, K)`` table of ``log p(x_n, k)``; ``hand/enum`` is
  ``log p(x)`` by ``logsumexp``.

``evaluate``: the exact ELBO (closed form, deterministic).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from numpyro.infer import TraceEnum_ELBO, TraceGraph_ELBO

import ppl
from bench.discrete_vi_common import (
    Problem,
    adam_contestant,
    numpyro_contestant,
    ours_loss_grad,
)
from models.discrete_vi import gmm

N = 300
COMPONENTS = 3
LEARNING_RATE = 0.05
VIMCO_K = 4


def _neg(grads):
    return jax.tree_util.tree_map(jnp.negative, grads)


def _f(p, x):
    """``log p(x_n, k) - log q_n(k)``, ``(N, K)``, and ``log q``."""
    log_q = jax.nn.log_softmax(p["assign_logits"], -1)
    return gmm.log_joint_table(p, x) - log_q, log_q


def _draw(params, key, shape=()):
    logits = jax.lax.stop_gradient(params["assign_logits"])
    return jax.random.categorical(key, logits, shape=shape + logits.shape[:1])


def _pick(table, z):
    return jnp.take_along_axis(table, z[..., None], -1)[..., 0]


def hand_reinforce(params, x, key):
    z = _draw(params, key)

    def surrogate(p):
        f, log_q = _f(p, x)
        total, s = jnp.sum(_pick(f, z)), jnp.sum(_pick(log_q, z))
        return total + jax.lax.stop_gradient(total) * (s - jax.lax.stop_gradient(s))

    return _neg(jax.grad(surrogate)(params))


def hand_reinforce_mean(params, x, key, n: int = 2):
    zs = _draw(params, key, (n,))  # (n, N)

    def surrogate(p):
        f, log_q = _f(p, x)
        tot = jnp.sum(_pick(f[None], zs), -1)
        s = jnp.sum(_pick(log_q[None], zs), -1)
        ts = jax.lax.stop_gradient(tot)
        loo = (jnp.sum(ts) - ts) / (n - 1)
        return jnp.mean(tot + (ts - loo) * (s - jax.lax.stop_gradient(s)))

    return _neg(jax.grad(surrogate)(params))


def hand_mvd(params, x, key):
    z = _draw(params, key)
    f0, _ = _f(jax.lax.stop_gradient(params), x)
    delta = f0 - _pick(f0, z)[:, None]  # f_n(j) - f_n(z_n): x+ = j, x- = the draw

    def surrogate(p):
        f, _ = _f(p, x)
        probs = jax.nn.softmax(p["assign_logits"], -1)
        return jnp.sum(_pick(f, z)) + jnp.sum(jax.lax.stop_gradient(delta) * probs)

    return _neg(jax.grad(surrogate)(params))


def hand_vimco(params, x, key, k: int = VIMCO_K):
    zs = _draw(params, key, (k,))  # (k, N)

    def surrogate(p):
        f, log_q = _f(p, x)
        lw, s = _pick(f[None], zs), _pick(log_q[None], zs)  # (k, N)
        L = jax.scipy.special.logsumexp(lw, 0) - jnp.log(k)
        lws = jax.lax.stop_gradient(lw)
        others = (jnp.sum(lws, 0) - lws) / (k - 1)
        loo = jnp.where(jnp.eye(k, dtype=bool)[:, :, None], others[:, None, :], lws[None])
        base = jax.scipy.special.logsumexp(loo, 1) - jnp.log(k)
        signal = jax.lax.stop_gradient(L)[None] - base
        return jnp.sum(L) + jnp.sum(signal * (s - jax.lax.stop_gradient(s)))

    return _neg(jax.grad(surrogate)(params))


def hand_plate(params, x, key, k: int = 1):
    """Each point's score weighted by its own term (less the other draws' mean, k >= 2)."""
    zs = _draw(params, key, (k,))  # (k, N)

    def surrogate(p):
        f, log_q = _f(p, x)
        lw, s = _pick(f[None], zs), _pick(log_q[None], zs)  # (k, N)
        lws = jax.lax.stop_gradient(lw)
        own = lws if k == 1 else lws - (jnp.sum(lws, 0) - lws) / (k - 1)
        return jnp.sum(jnp.mean(lw, 0)) + jnp.sum(own / k * (s - jax.lax.stop_gradient(s)))

    return _neg(jax.grad(surrogate)(params))


def problem(quick: bool = False) -> Problem:
    """The GMM problem; ``quick`` uses 60 points and a 1.5 s budget."""
    n = 60 if quick else N
    x = gmm.make_data(jax.random.key(0), n, COMPONENTS)
    params0 = gmm.init_params(jax.random.key(1), x, COMPONENTS)
    model, guide = gmm.make_gmm(params0)
    enum_model, enum_guide = gmm.make_gmm(params0, enumerate=True)
    evaluate_jit = jax.jit(lambda p: gmm.exact_elbo(p, x))

    def evaluate(params, key):
        return float(evaluate_jit(params))

    def with_posterior(p):
        return {**p, "assign_logits": gmm.posterior_logits(p, x)}

    common = {"data": x, "batch_size": None, "learning_rate": LEARNING_RATE}
    objectives = {
        "default": ppl.objectives.elbo(model, guide),
        "reinforce+mean": ppl.objectives.elbo(
            model, ppl.strategies(guide, z=ppl.Reinforce(baseline="mean"))),
        "mvd": ppl.objectives.elbo(model, ppl.strategies(guide, z=ppl.MVD())),
        "vimco": ppl.objectives.vimco(model, guide, K=VIMCO_K, plate="data"),
        "plate": ppl.objectives.elbo(model, guide, plate="data"),
        "plate+loo": ppl.objectives.elbo(model, guide, K=2, plate="data"),
    }
    contestants = [adam_contestant(f"ours/{s}", "ours", s, ours_loss_grad(obj),
                                   params0=params0, **common)
                   for s, obj in objectives.items()]
    marginal0 = {k: v for k, v in params0.items() if k != "assign_logits"}
    contestants.append(adam_contestant("ours/enum", "ours", "enum",
                                       ours_loss_grad(gmm.log_marginal_objective(enum_model, x)),
                                       params0=marginal0, params_of=with_posterior, **common))
    contestants += [
        numpyro_contestant("numpyro/TraceGraph_ELBO", "reinforce", model, guide,
                           TraceGraph_ELBO(), params0=params0, **common),
        numpyro_contestant("numpyro/TraceEnum_ELBO", "enum", enum_model, enum_guide,
                           TraceEnum_ELBO(), params0=marginal0, params_of=with_posterior,
                           **common),
    ]
    hands = {"reinforce": hand_reinforce, "reinforce+mean": hand_reinforce_mean,
             "mvd": hand_mvd, "vimco": hand_vimco, "plate": hand_plate,
             "plate+loo": lambda p, xx, kk: hand_plate(p, xx, kk, 2)}
    contestants += [adam_contestant(f"hand/{s}", "hand", s, g, params0=params0, **common)
                    for s, g in hands.items()]
    contestants.append(adam_contestant(
        "hand/enum", "hand", "enum", lambda p, xx, k: _neg(jax.grad(gmm.log_marginal)(p, xx)),
        params0=marginal0, params_of=with_posterior, **common))
    return Problem("gmm", evaluate, contestants, float("nan"), 1.5 if quick else 5.0)
