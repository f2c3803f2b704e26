"""Suite ``vae``: one VAE training step, ours vs NumPyro's SVI vs hand-written JAX.

The VAE, data and networks are those of ``examples/vae_digits.py`` (imported from it):
binarized sklearn digits, Equinox MLPs 64-256-256-16 / 8-256-256-64, minibatches of 128.
Every contestant runs the same minibatches (indices drawn once from a fixed seed) with
``optax.adam(1e-3)`` from the same initial networks:

* ELBO: ``ours`` (``ppl.objectives.elbo``, the step as ``inference.fit`` runs it:
  ``estimate`` + ``grad_estimate``, negate, Adam, finiteness checks), ``ours_grad_only``
  (``grad_estimate`` + Adam, nothing else), ``numpyro`` (``SVI(model, guide, adam,
  Trace_ELBO()).update``), ``hand`` (reparameterized ELBO written in JAX,
  ``jax.value_and_grad`` + Adam);
* IWAE-8 per image: ``ours`` (``ppl.objectives.iwae(model, guide, 8, plate="batch")``, the
  per-element bound, as the example trains it), ``ours_grad_only``, ``ours_per_image_vmap``
  (the former workaround: the non-plate ``iwae`` of each image alone, ``jax.vmap``-ed over
  the images and summed, see :func:`per_image`), ``numpyro`` (``RenyiELBO(alpha=0,
  num_particles=8)``: NumPyro computes the bound separately along the plates that enclose
  every sample site, here the batch plate, so it is the same per-image bound), ``hand``.

Each contestant is one ``jax.jit``-ed ``lax.scan`` over ``block_steps`` steps (the way
``inference.fit`` runs chunks of steps); it is compiled once (trace+lower and XLA compile
timed separately), run once to warm up, then timed ``reps`` times with
``block_until_ready``, the contestants interleaved in rotating order so that load from other
jobs on the machine hits all of them alike. ``ms_per_step`` is the median over blocks.
``profile`` gives, for one step, XLA's cost analysis (flops, bytes accessed) of the compiled
step, the number of dot ops in the optimized HLO, and the number of equations in the jaxpr.
"""

from __future__ import annotations

import importlib.util
import math
import re
import statistics
import sys
import time
from pathlib import Path
from typing import Any, Callable

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.scipy.special import logsumexp
from numpyro.infer import SVI, RenyiELBO, Trace_ELBO

import ppl

ROOT = Path(__file__).resolve().parent.parent


def load_example():
    """``examples/vae_digits.py`` as a module (examples/ is not a package)."""
    name = "vae_digits_example"
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, ROOT / "examples" / "vae_digits.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


# ---------------------------------------------------------------------------------------
# hand-written objectives (the same networks, distributions written out)
# ---------------------------------------------------------------------------------------

_LOG_2PI = math.log(2 * math.pi)


def hand_log_weights(params: dict, x: jax.Array, eps: jax.Array, encoder, decoder) -> jax.Array:
    """``log p(x, z) - log q(z | x)`` per particle and image, ``z = loc + scale * eps``.

    ``eps`` has shape ``(K, B, latent)``; the result ``(K, B)``.
    """
    enc = eqx.combine(params["encoder$params"], encoder)
    dec = eqx.combine(params["decoder$params"], decoder)
    latent = eps.shape[-1]
    loc, log_scale = jnp.split(jax.vmap(enc)(x), 2, axis=-1)
    z = loc + jnp.exp(log_scale) * eps
    log_q = jnp.sum(-0.5 * eps**2 - log_scale, -1) - 0.5 * latent * _LOG_2PI
    log_prior = -0.5 * jnp.sum(z**2, -1) - 0.5 * latent * _LOG_2PI
    logits = jax.vmap(jax.vmap(dec))(z)
    log_lik = jnp.sum(x * logits - jax.nn.softplus(logits), -1)
    return log_prior + log_lik - log_q


def hand_elbo(params, x, key, encoder, decoder, latent):
    eps = jax.random.normal(key, (1, x.shape[0], latent))
    return jnp.sum(hand_log_weights(params, x, eps, encoder, decoder))


def hand_iwae(params, x, key, encoder, decoder, latent, K):
    eps = jax.random.normal(key, (K, x.shape[0], latent))
    log_w = hand_log_weights(params, x, eps, encoder, decoder)
    return jnp.sum(logsumexp(log_w, axis=0) - math.log(K))


def per_image(objective: ppl.Expectation) -> ppl.Expectation:
    """``sum_i objective(params, x[i:i+1])``: the objective of each image alone, summed.

    The way the example wrote the per-image IWAE before ``iwae(..., plate=...)`` existed; kept
    here as a contestant (``ours_per_image_vmap``) to compare with the plate-aware objective.
    """

    @ppl.expectation
    def summed(params, x):
        return jnp.sum(jax.vmap(lambda xi: objective(params, xi[None]))(x))

    return summed


# ---------------------------------------------------------------------------------------
# contestants: (init_state, step(state, key, x) -> (state, objective value))
# ---------------------------------------------------------------------------------------


def ours_fit_step(objective: ppl.Expectation, optimizer) -> Callable:
    """The body of ``inference.fit``'s step (``fast_step`` in ``inference/vi/fit.py``).

    fit checks finiteness once per chunk of steps (not per step) and replays a chunk with
    a guarded step only when that check fails, so its per-step work is this.
    """

    def step(state, key, x):
        params, opt_state = state
        value, (grads, _) = objective.value_and_grad_estimate(key, params, x)
        upd, opt_state = optimizer.update(jax.tree.map(jnp.negative, grads), opt_state, params)
        return (optax.apply_updates(params, upd), opt_state), value

    return step


def ours_grad_only_step(objective: ppl.Expectation, optimizer) -> Callable:
    """``grad_estimate`` + Adam and nothing else (no value estimate, no checks)."""

    def step(state, key, x):
        params, opt_state = state
        grads = objective.grad_estimate(key, params, x)[0]
        upd, new_state = optimizer.update(jax.tree.map(jnp.negative, grads), opt_state, params)
        return (optax.apply_updates(params, upd), new_state), jnp.zeros(())

    return step


def hand_step(loss_fn: Callable, optimizer) -> Callable:
    """``jax.value_and_grad`` of a hand-written objective + Adam."""

    def step(state, key, x):
        params, opt_state = state
        value, grads = jax.value_and_grad(loss_fn)(params, x, key)
        upd, new_state = optimizer.update(jax.tree.map(jnp.negative, grads), opt_state, params)
        return (optax.apply_updates(params, upd), new_state), value

    return step


def numpyro_step(svi: SVI) -> Callable:
    def step(state, key, x):  # SVI keeps its own key in its state
        state, loss = svi.update(state, x)
        return state, -loss

    return step


# ---------------------------------------------------------------------------------------
# measurement
# ---------------------------------------------------------------------------------------


def _count_eqns(jaxpr) -> int:
    n = 0
    for eqn in jaxpr.eqns:
        n += 1
        for v in eqn.params.values():
            for item in v if isinstance(v, (tuple, list)) else (v,):
                inner = getattr(item, "jaxpr", None)
                if inner is not None and hasattr(inner, "eqns"):
                    n += _count_eqns(inner)
                elif hasattr(item, "eqns"):
                    n += _count_eqns(item)
    return n


def profile_step(step: Callable, state, key, x) -> dict[str, Any]:
    """XLA cost analysis and op counts of one jitted step."""
    jaxpr = jax.make_jaxpr(step)(state, key, x)
    compiled = jax.jit(step).lower(state, key, x).compile()
    cost = compiled.cost_analysis()
    if isinstance(cost, (list, tuple)):
        cost = cost[0] if cost else {}
    hlo = compiled.as_text()
    dot_primitives = sum(1 for e in jaxpr.jaxpr.eqns if e.primitive.name == "dot_general")
    return {
        "flops": float(cost.get("flops", float("nan"))),
        "bytes_accessed": float(cost.get("bytes accessed", float("nan"))),
        "hlo_dot_ops": len(re.findall(r"\bdot\(", hlo)),
        "hlo_fusions": len(re.findall(r"\bfusion\(", hlo)),
        "jaxpr_eqns": _count_eqns(jaxpr.jaxpr),
        "jaxpr_top_level_dot_general": dot_primitives,
    }


class Contestant:
    """One step function run as jitted blocks of ``block_steps`` steps over fixed batches."""

    def __init__(self, name: str, step: Callable, state, x_train: jax.Array,
                 batch_idx: np.ndarray, keys: jax.Array, batch_size: int):
        self.name, self.step, self.state = name, step, state
        self.x_train, self.keys = x_train, keys
        self.batch_idx = jnp.asarray(batch_idx)
        self.batch_size = batch_size
        self.block_s: list[float] = []
        self.last_values = None

        def block(state, x_train, idx, keys):
            def body(s, inputs):
                i, k = inputs
                return step(s, k, x_train[i])

            return jax.lax.scan(body, state, (idx, keys))

        self.block = block

    def compile(self) -> dict[str, float]:
        idx, keys = self.batch_idx[0], self.keys[0]
        t0 = time.perf_counter()
        lowered = jax.jit(self.block).lower(self.state, self.x_train, idx, keys)
        t1 = time.perf_counter()
        self.compiled = lowered.compile()
        t2 = time.perf_counter()
        return {"trace_lower_s": t1 - t0, "xla_compile_s": t2 - t1, "compile_s": t2 - t0}

    def run_block(self, b: int, timed: bool = True) -> None:
        idx, keys = self.batch_idx[b], self.keys[b]
        t0 = time.perf_counter()
        self.state, values = self.compiled(self.state, self.x_train, idx, keys)
        jax.block_until_ready((self.state, values))
        if timed:
            self.block_s.append(time.perf_counter() - t0)
        self.last_values = values


def _measure(group: str, contestants: list[Contestant], reps: int, block_steps: int,
             profiles: dict[str, dict]) -> dict[str, Any]:
    records: dict[str, dict[str, Any]] = {}
    for c in contestants:
        records[c.name] = c.compile()
        print(f"[vae] {group} {c.name}: compile {records[c.name]['compile_s']:.2f}s "
              f"(trace+lower {records[c.name]['trace_lower_s']:.2f}s)", file=sys.stderr,
              flush=True)
    for c in contestants:  # warm-up block, same batches (block 0) for all
        c.run_block(0, timed=False)
    for r in range(reps):
        shift = r % len(contestants)
        for c in contestants[shift:] + contestants[:shift]:
            c.run_block(1 + r)
        print(f"[vae] {group} round {r}: " + ", ".join(
            f"{c.name} {1000 * c.block_s[-1] / block_steps:.2f}" for c in contestants
        ) + " ms/step", file=sys.stderr, flush=True)
    for c in contestants:
        ms = [1000.0 * s / block_steps for s in c.block_s]
        records[c.name].update({
            "ms_per_step": statistics.median(ms),
            "ms_per_step_min": min(ms),
            "ms_per_step_per_block": ms,
            # sanity: every contestant optimizes the same objective from the same start
            "objective_per_image_last_block": float(jnp.mean(c.last_values)) / c.batch_size
            if not c.name.endswith("grad_only") else None,
            "profile": profiles[c.name],
        })
    ours, np_, hand = (records[n]["ms_per_step"] for n in ("ours", "numpyro", "hand"))
    ours_g = records["ours_grad_only"]["ms_per_step"]
    extra = {}
    if "ours_per_image_vmap" in records:
        extra["ours/ours_per_image_vmap"] = ours / records["ours_per_image_vmap"]["ms_per_step"]
    return {
        **records,
        "ratio": {
            "ours/numpyro": ours / np_,
            "ours/hand": ours / hand,
            "ours_grad_only/hand": ours_g / hand,
            "numpyro/hand": np_ / hand,
            "flops ours/hand": records["ours"]["profile"]["flops"]
            / records["hand"]["profile"]["flops"],
            **extra,
        },
        "target_met": {"ours <= 1.10 * hand": ours <= 1.10 * hand, "ours < numpyro": ours < np_},
    }


def bound_tightness(model, guide, params: dict, x: jax.Array, K: int, draws: int = 64,
                    seed: int = 3) -> dict[str, float]:
    """Per image (nats), at ``params`` on the minibatch ``x``: the mean over ``draws`` keys of
    the ELBO, our per-image IWAE-K (``plate="batch"``), our joint IWAE-K of the whole minibatch
    (``plate=None``), NumPyro's ``RenyiELBO(alpha=0, num_particles=K)`` (minus its loss), and
    the per-image workaround, with their standard errors (``*_se``)."""
    ours = {
        "elbo": ppl.objectives.elbo(model, guide),
        "iwae_plate": ppl.objectives.iwae(model, guide, K=K, plate="batch"),
        "iwae_joint": ppl.objectives.iwae(model, guide, K=K),
        "iwae_per_image_vmap": per_image(ppl.objectives.iwae(model, guide, K=K)),
    }
    renyi = RenyiELBO(alpha=0.0, num_particles=K)
    keys = jax.random.split(jax.random.key(seed), draws)
    out: dict[str, float] = {}

    @jax.jit
    def values(k):
        v = {name: obj.estimate(k, params, x) for name, obj in ours.items()}
        v["numpyro_renyi_alpha0"] = -renyi.loss(k, params, model, guide, x)
        return v

    per_key = jax.lax.map(values, keys)
    for name, v in per_key.items():
        v = np.asarray(v, np.float64) / x.shape[0]
        out[name] = float(v.mean())
        out[name + "_se"] = float(v.std(ddof=1) / math.sqrt(draws))
    return out


def suite_vae(reps: int = 7, block_steps: int = 200, seed: int = 0,
              groups: tuple[str, ...] = ("elbo", "iwae8"), **_ignored: Any) -> dict[str, Any]:
    """Steady-state ms/step of one VAE training step: ours, NumPyro SVI, hand-written JAX."""
    ex = load_example()
    x_train_np, _ = ex.load_data(seed)
    x_train = jnp.asarray(x_train_np)
    batch = ex.BATCH
    encoder, decoder = ex.make_networks(jax.random.key(seed))
    model, guide = ex.make_vae(encoder, decoder)
    params0 = ppl.init_params((model, guide), jax.random.key(seed), x_train[:batch])
    optimizer = optax.adam(1e-3)

    n_blocks = reps + 1
    rng = np.random.default_rng(seed)
    batch_idx = np.stack([
        np.stack([rng.choice(x_train.shape[0], batch, replace=False) for _ in range(block_steps)])
        for _ in range(n_blocks)
    ])
    keys = jax.random.split(jax.random.key(seed + 1), n_blocks * block_steps).reshape(
        n_blocks, block_steps)
    x0, k0 = x_train[batch_idx[0, 0]], keys[0, 0]

    K = 8
    definitions = {
        "elbo": (ppl.objectives.elbo(model, guide),
                 lambda p, x, k: hand_elbo(p, x, k, encoder, decoder, ex.LATENT),
                 Trace_ELBO()),
        "iwae8": (ppl.objectives.iwae(model, guide, K=K, plate="batch"),
                  lambda p, x, k: hand_iwae(p, x, k, encoder, decoder, ex.LATENT, K),
                  RenyiELBO(alpha=0.0, num_particles=K)),
    }
    out: dict[str, Any] = {}
    for group in groups:
        objective, hand_fn, numpyro_loss = definitions[group]
        svi = SVI(model, guide, optimizer, numpyro_loss)
        # eqx_module's initial values are the networks' arrays: the same start as ours.
        svi_state = svi.init(jax.random.key(seed + 2), x0)
        ours_state = (params0, optimizer.init(params0))
        steps = {
            "ours": (ours_fit_step(objective, optimizer), ours_state),
            "ours_grad_only": (ours_grad_only_step(objective, optimizer), ours_state),
            "numpyro": (numpyro_step(svi), svi_state),
            "hand": (hand_step(hand_fn, optimizer), ours_state),
        }
        if group == "iwae8":
            workaround = per_image(ppl.objectives.iwae(model, guide, K=K))
            steps["ours_per_image_vmap"] = (ours_fit_step(workaround, optimizer), ours_state)
        profiles = {name: profile_step(step, state, k0, x0) for name, (step, state) in steps.items()}
        contestants = [Contestant(name, step, state, x_train, batch_idx, keys, batch)
                       for name, (step, state) in steps.items()]
        out[group] = _measure(group, contestants, reps, block_steps, profiles)
        if group == "iwae8":
            # how tight each bound is, at the start and at the params "ours" trained to
            trained = contestants[0].state[0]
            out[group]["bounds_per_image"] = {
                "at_init": bound_tightness(model, guide, params0, x0, K),
                f"after_{n_blocks * block_steps}_steps": bound_tightness(model, guide, trained,
                                                                         x0, K),
            }
            print(f"[vae] bounds per image: {out[group]['bounds_per_image']}", file=sys.stderr,
                  flush=True)
        r = out[group]["ratio"]
        print(f"[vae] {group}: ours/numpyro {r['ours/numpyro']:.3f}, ours/hand "
              f"{r['ours/hand']:.3f}, flops ours/hand {r['flops ours/hand']:.3f}",
              file=sys.stderr, flush=True)
    return {
        "suite": "vae",
        "config": {"batch": batch, "latent": ex.LATENT, "hidden": ex.HIDDEN,
                   "train_images": int(x_train.shape[0]), "optimizer": "adam(1e-3)",
                   "block_steps": block_steps, "timed_blocks": reps, "iwae_particles": K,
                   "iwae_bound": "per image: ours iwae(K, plate='batch'); NumPyro RenyiELBO(0) "
                                 "is per element of the batch plate too",
                   "seed": seed},
        "results": out,
    }
