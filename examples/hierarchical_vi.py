"""Hierarchical VI (HVI, IWHVI) with ``ppl.marginal`` on Neal's funnel, vs Gaussian guides.

Neal's funnel in two dimensions is a normalised density, so ``log Z = 0`` and every ELBO
is exactly ``-KL(q || p)``; its moments are known in closed form::

    v ~ Normal(0, 3)            (the log-variance: sd 3, P(v < -2) = P(v > 2) = 0.2525)
    x ~ Normal(0, exp(v / 2))   (a narrow neck for v < 0, a wide mouth for v > 0)

Gaussian guides (mean-field ``inference.guides.normal``, full-rank ``inference.guides.mvn``)
cannot bend into the funnel: they shrink ``v`` and miss the neck. A hierarchical guide

    u ~ Normal(0, I_2),   v, x | u ~ Normal(b + W u, exp(d + C u))   (elementwise)
    q(v, x) = int q(v, x | u) q(u) du

can (take ``u_1 ~ v / 3`` and let the scale of ``x`` grow with ``u_1``), but its density
``q(v, x)`` is intractable. ``ppl.objectives.hvi`` and ``ppl.objectives.iwhvi(particles=K + 1)``
(``IWHVI_K`` in the paper's notation: the guide's own draw and ``K`` reverse draws; the
objectives count particles in total) estimate it with
``ppl.marginal(guide, keep=["v", "x"], proposal=r, particles=K + 1)`` and a learned
reverse model ``r(u | v, x)`` (a small MLP), and stay lower bounds on ``log Z``
(Sobolev and Vetrov, 2019; Becker et al., PLDI 2024):
``HVI = IWHVI_0 <= IWHVI_K <= IWHVI_{K+1} <= ELBO(q) <= log Z``.

The script fits four guides and prints, for each, the final training objective, the ELBO of
the fitted guide (for the hierarchical ones a lower bound from IWHVI with 256 reverse draws,
averaged over many estimates) and moments of ``v`` from 20,000 guide draws against the exact
values; then the ladder of bounds at the IWHVI fit, which must increase towards ``log Z = 0``;
and saves guide draws over the funnel's density as a PNG.

Run (about a minute on a laptop CPU)::

    python examples/hierarchical_vi.py --steps 20000 --out hierarchical_vi.png
"""

from __future__ import annotations

import argparse
import math
import time

import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
import optax
from numpyro import handlers

import inference
import ppl

AUX = 2  # dimension of the auxiliary variable u
HIDDEN = 32  # width of the reverse model's MLP
KEEP = ["v", "x"]
EXACT = {"mean_v": 0.0, "sd_v": 3.0, "p_neck": 0.5 * math.erfc((2 / 3) / math.sqrt(2))}
EXACT["p_mouth"] = EXACT["p_neck"]


def funnel():
    v = numpyro.sample("v", dist.Normal(0.0, 3.0))
    numpyro.sample("x", dist.Normal(0.0, jnp.exp(v / 2)))


def hierarchical_guide():
    """``q(v, x) = int N(v, x; b + W u, diag exp(d + C u)) N(u; 0, I) du``."""
    w = numpyro.param("q.W", lambda k: 0.5 * jax.random.normal(k, (AUX, 2)))
    b = numpyro.param("q.b", jnp.zeros(2))
    c = numpyro.param("q.C", jnp.zeros((AUX, 2)))
    d = numpyro.param("q.d", jnp.zeros(2))
    u = numpyro.sample("u", dist.Normal(0.0, 1.0).expand([AUX]).to_event(1))
    loc, log_scale = b + u @ w, d + u @ c
    numpyro.sample("v", dist.Normal(loc[0], jnp.exp(log_scale[0])))
    numpyro.sample("x", dist.Normal(loc[1], jnp.exp(log_scale[1])))


def _init_mlp(key: jax.Array, sizes: list[int]) -> list:
    keys = jax.random.split(key, len(sizes) - 1)
    return [(jax.random.normal(k, (m, n)) / math.sqrt(m), jnp.zeros(n))
            for k, m, n in zip(keys, sizes[:-1], sizes[1:])]


def _mlp(layers: list, h: jax.Array) -> jax.Array:
    for w, b in layers[:-1]:
        h = jnp.tanh(h @ w + b)
    w, b = layers[-1]
    return h @ w + b


def reverse_model(values: dict):
    """``r(u | v, x)``: a diagonal Normal whose mean and log-scale come from a small MLP."""
    net = numpyro.param("r.net", lambda k: _init_mlp(k, [2, HIDDEN, 2 * AUX]))
    out = _mlp(net, jnp.stack([values["v"] / 3.0, jnp.arcsinh(values["x"])]))
    numpyro.sample("u", dist.Normal(out[:AUX], jnp.exp(out[AUX:])).to_event(1))


def hierarchical_params(key: jax.Array) -> dict:
    """Initial params of the hierarchical guide and the reverse model (one dict)."""
    k1, k2 = jax.random.split(key)
    # The reverse model is called with the dict of kept values: give it dummy ones.
    return {**ppl.init_params(hierarchical_guide, k1),
            **ppl.init_params(reverse_model, k2, {"v": 0.0, "x": 0.0})}


def draw(guide, params: dict, key: jax.Array, n: int) -> dict:
    """``n`` draws of the fitted guide's sites ``v`` and ``x``."""
    q = ppl.with_params(guide, params)

    def one(k):
        trace = handlers.trace(handlers.seed(q, k)).get_trace()
        return {name: trace[name]["value"] for name in KEEP}

    return jax.jit(jax.vmap(one))(jax.random.split(key, n))


def mean_and_se(objective: ppl.Expectation, params: dict, key: jax.Array, n: int):
    """Mean of ``n`` independent estimates and its standard error."""
    values = jax.jit(jax.vmap(lambda k: objective.estimate(k, params)))(jax.random.split(key, n))
    return float(jnp.mean(values)), float(jnp.std(values) / math.sqrt(n))


def main(steps: int = 20000, K: int = 8, eval_particles: int = 256, n_eval: int = 2000,
         n_draws: int = 20000, learning_rate: float = 3e-3, seed: int = 0,
         out: str | None = "hierarchical_vi.png", progress: bool = False,
         methods: tuple[str, ...] = ("mean-field", "full-rank", "HVI", "IWHVI"),
         ladder_particles: tuple[int, ...] | None = None,
         diwhvi_particles: tuple[int, int] | None = (16, 64)) -> dict:
    """Fit the guides, print the comparison and the bound ladder; return both as dicts.

    ``methods``: which of ``"mean-field"``, ``"full-rank"``, ``"HVI"``, ``"IWHVI"`` to fit
    (the ladder needs ``"IWHVI"``). ``K``, ``eval_particles``, ``ladder_particles``: reverse
    draws of the IWHVI bounds (``IWHVI_K``, i.e. ``iwhvi(particles=K + 1)``); the ladder's
    default ``1, K, 64, eval_particles``. ``diwhvi_particles``: ``(K, M)`` of its DIWHVI bound
    (``K`` outer particles, ``M`` reverse draws each: ``inner_particles=M + 1``), or ``None``.

    Returns ``{"fits": {method: row}, "ladder": {bound: (mean, se)}}``; each row has
    ``objective`` (mean training estimate over the last 10% of steps), ``elbo`` and
    ``elbo_se`` (ELBO of the fitted guide, ``-KL(q || p)``), ``mean_v``, ``sd_v``, ``p_neck``
    (``P(v < -2)``), ``p_mouth`` (``P(v > 2)``) and ``seconds``.
    """
    key = jax.random.key(seed)
    k_init, k_fit, k_eval, k_draw = jax.random.split(key, 4)
    mean_field = inference.guides.normal(funnel, init_loc="zeros", init_scale=1.0)
    full_rank = inference.guides.mvn(funnel, init_loc="zeros", init_scale=1.0)
    hvi = ppl.objectives.hvi(funnel, hierarchical_guide, reverse_model, keep=KEEP)
    iwhvi = ppl.objectives.iwhvi(funnel, hierarchical_guide, reverse_model, keep=KEEP,
                                 particles=K + 1)
    # The yardstick for hierarchical guides: IWHVI with many reverse draws (-> ELBO(q)).
    yardstick = ppl.objectives.iwhvi(funnel, hierarchical_guide, reverse_model, keep=KEEP,
                                     particles=eval_particles + 1)
    families = {
        # name: (training objective, guide to draw from, initial params, evaluation objective)
        "ELBO, mean-field": (ppl.objectives.elbo(funnel, mean_field), mean_field,
                             ppl.init_params(mean_field, k_init), None),
        "ELBO, full-rank": (ppl.objectives.elbo(funnel, full_rank), full_rank,
                            ppl.init_params(full_rank, k_init), None),
        "HVI": (hvi, hierarchical_guide, hierarchical_params(k_init), yardstick),
        f"IWHVI (K={K})": (iwhvi, hierarchical_guide, hierarchical_params(k_init), yardstick),
    }
    wanted = {"mean-field": "ELBO, mean-field", "full-rank": "ELBO, full-rank", "HVI": "HVI",
              "IWHVI": f"IWHVI (K={K})"}
    families = {wanted[m]: families[wanted[m]] for m in methods}

    rows, fitted = {}, {}
    for name, (objective, guide, params0, evaluate) in families.items():
        t0 = time.perf_counter()
        result = inference.fit(objective, params0, optimizer=optax.adam(learning_rate),
                               steps=steps, key=k_fit, progress=progress)
        seconds = time.perf_counter() - t0
        fitted[name] = (guide, result.params)
        elbo, elbo_se = mean_and_se(evaluate or objective, result.params, k_eval, n_eval)
        v = np.asarray(draw(guide, result.params, k_draw, n_draws)["v"])
        rows[name] = {
            "objective": float(jnp.mean(result.values[-max(1, steps // 10):])),
            "elbo": elbo, "elbo_se": elbo_se,
            "mean_v": float(v.mean()), "sd_v": float(v.std()),
            "p_neck": float((v < -2).mean()), "p_mouth": float((v > 2).mean()),
            "seconds": seconds,
        }

    print(f"Neal's funnel (log Z = 0, so ELBO = -KL(q || p)); {steps} Adam steps (lr "
          f"{learning_rate}) per guide; moments from {n_draws} guide draws.\n")
    header = (f"{'method':<19}{'train obj':>10}{'ELBO(q)':>15}{'E[v]':>7}{'sd(v)':>7}"
              f"{'P(v<-2)':>9}{'P(v>2)':>8}{'fit s':>7}")
    print(header + "\n" + "-" * len(header))
    for name, r in rows.items():
        elbo = f"{r['elbo']:.3f} ± {r['elbo_se']:.3f}"
        print(f"{name:<19}{r['objective']:>10.3f}{elbo:>15}{r['mean_v']:>7.2f}{r['sd_v']:>7.2f}"
              f"{r['p_neck']:>9.3f}{r['p_mouth']:>8.3f}{r['seconds']:>7.1f}")
    print(f"{'exact':<19}{0.0:>10.3f}{'0 (log Z)':>15}{EXACT['mean_v']:>7.2f}{EXACT['sd_v']:>7.2f}"
          f"{EXACT['p_neck']:>9.3f}{EXACT['p_mouth']:>8.3f}")
    print(f"(ELBO(q) of the hierarchical guides: IWHVI with {eval_particles} reverse draws, a "
          f"lower bound on it; ± one standard error over {n_eval} estimates.)")

    # The ladder of bounds at the IWHVI fit: each at most the next, all at most log Z = 0.
    ladder = {}
    if "IWHVI" in methods:
        params = fitted[f"IWHVI (K={K})"][1]
        ladder_objectives = {"HVI": hvi}
        for k in sorted(set(ladder_particles or (1, K, 64, eval_particles))):
            ladder_objectives[f"IWHVI (K={k})"] = ppl.objectives.iwhvi(
                funnel, hierarchical_guide, reverse_model, keep=KEEP, particles=k + 1)
        if diwhvi_particles is not None:
            dk, dm = diwhvi_particles
            ladder_objectives[f"DIWHVI (K={dk}, M={dm})"] = ppl.objectives.diwhvi(
                funnel, hierarchical_guide, reverse_model, keep=KEEP, K=dk,
                inner_particles=dm + 1)
        ladder = {name: mean_and_se(obj, params, k_eval, n_eval)
                  for name, obj in ladder_objectives.items()}
        print(f"\nBounds at the IWHVI (K={K}) fit (mean ± se over {n_eval} estimates; "
              "exact log Z = 0):")
        for name, (m, se) in ladder.items():
            print(f"  {name:<22}{m:>8.3f} ± {se:.3f}")

    if out:
        _plot(fitted, k_draw, out)
        print(f"saved {out}")
    return {"fits": rows, "ladder": ladder}


def _plot(fitted: dict, key: jax.Array, out: str, n: int = 2000) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    kv, kx = jax.random.split(key)
    v = 3.0 * jax.random.normal(kv, (n,))
    panels = {"exact": {"v": v, "x": jnp.exp(v / 2) * jax.random.normal(kx, (n,))}}
    panels.update({name: draw(guide, params, key, n) for name, (guide, params) in fitted.items()})
    xs, vs = np.meshgrid(np.linspace(-15, 15, 300), np.linspace(-9, 9, 300))
    log_p = (-0.5 * (vs / 3) ** 2 - 0.5 * xs ** 2 * np.exp(-vs) - vs / 2)
    fig, axes = plt.subplots(1, len(panels), figsize=(3.2 * len(panels), 3.6), sharey=True)
    for ax, (name, d) in zip(axes, panels.items()):
        ax.contour(xs, vs, log_p, levels=np.linspace(-8, 1, 10), colors="0.7", linewidths=0.6)
        ax.scatter(np.asarray(d["x"]), np.asarray(d["v"]), s=2, alpha=0.4)
        ax.set_xlim(-15, 15)
        ax.set_ylim(-9, 9)
        ax.set_title(name, fontsize=10)
        ax.set_xlabel("x")
    axes[0].set_ylabel("v")
    fig.suptitle("Neal's funnel: draws of each fitted guide")
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=20000, help="Adam steps per guide")
    parser.add_argument("--K", type=int, default=8, help="reverse draws of IWHVI in training")
    parser.add_argument("--eval-particles", type=int, default=256,
                        help="reverse draws of the IWHVI used to evaluate hierarchical guides")
    parser.add_argument("--n-eval", type=int, default=2000, help="estimates per evaluation")
    parser.add_argument("--n-draws", type=int, default=20000, help="guide draws for moments")
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="hierarchical_vi.png", help="PNG path ('' for none)")
    parser.add_argument("--progress", action="store_true", help="show progress bars")
    a = parser.parse_args()
    main(steps=a.steps, K=a.K, eval_particles=a.eval_particles, n_eval=a.n_eval,
         n_draws=a.n_draws, learning_rate=a.lr, seed=a.seed, out=a.out or None,
         progress=a.progress)
