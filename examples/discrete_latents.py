"""Discrete latents: one model, one guide, five gradient strategies for the discrete choices.

A mixture of ``K`` Gaussians (known scale) with one Categorical assignment per data point::

    z_i ~ Categorical(softmax(mix_logits))          i = 1..N
    x_i ~ Normal(locs[z_i], 0.7)

The component locations and mixture logits are model parameters (``numpyro.param``, fitted
by maximum marginal likelihood as in EM), and the guide has free per-datum logits
``q(z_i) = Categorical(softmax(assign_logits[i]))``. The ELBO is maximized with
``ppl.objectives.elbo``; only the gradient strategy of the guide's site ``"z"`` changes, with
``ppl.strategies(guide, z=...)`` and no edit of the model or guide:

- ``ppl.Reinforce()``: score function, ``f(z) * d log q(z)``; one run of the rest of the
  program (the "continuation") per estimate.
- ``ppl.Reinforce(baseline="mean")``: REINFORCE leave-one-out with 2 (and 4) draws.
- ``ppl.MVD()``: measure-valued derivative; one extra continuation run per datum and
  category (``N * K``), with common random numbers.
- ``ppl.Enum()``: sums over the joint support, ``K ** N`` continuation runs (batched with
  ``vmap``). Exact: with every random choice enumerated the gradient has zero variance.
  Enum enumerates the *joint* configurations of the site, so it only fits small ``N``
  (here ``3 ** 7 = 2187``, limit 4096); for many data points use MVD or baselines.

It prints, per strategy, the variance of the gradient (the trace of its covariance, over
``n_keys`` independent ``grad_estimate`` calls vmapped at the *same* params, at the initial
params and at the Enum fit's optimum), a bias check against Enum's exact gradient, and the
final ELBO of a fit of ``steps`` Adam steps (computed exactly, in closed form) next to the
exact ``log p(x)`` at the fitted model parameters; and it saves training curves and the
variances as a PNG.

Run (about a minute or two on a laptop CPU)::

    python examples/discrete_latents.py --steps 1500 --out discrete_latents.png

Theory says: Enum's variance is 0; baselines reduce Reinforce's variance (the LOO baseline
removes the large mean of ``log p - log q``); MVD, which differentiates one datum's choice at
a time, has far lower variance than Reinforce; at the optimum, where ``log p(x, z) - log
q(z) = log p(x)`` for every ``z``, the LOO baseline's and MVD's guide gradients vanish while
plain Reinforce's do not (the Enum fit's guide is close to, not exactly at, the posterior,
so they are small, not 0). Every strategy is unbiased (the bias check's ``max |z|`` is the
largest deviation from the exact gradient over all parameter coordinates, in standard
errors: a few units at most). Enum's variance prints as float32 rounding (~1e-11), i.e. 0.
Note that ``.estimate`` (and so the training curve) still *samples* an Enum site: only the
gradient enumerates.
"""

from __future__ import annotations

import argparse
import time

import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
import optax
from jax.scipy.special import logsumexp

import inference
import ppl
from ppl.strategy import MAX_ENUM_CONFIGS

SCALE = 0.7  # known component scale


def make_data(key: jax.Array, n_data: int, n_components: int) -> jax.Array:
    """``n_data`` points from ``n_components`` well-separated clusters (round-robin labels)."""
    locs = jnp.linspace(-3.0, 3.0, n_components)
    z = jnp.arange(n_data) % n_components
    return locs[z] + SCALE * jax.random.normal(key, (n_data,))


def make_model(n_components: int):
    def model(x):
        # Initial locations at the data's quantiles (a common, symmetric-breaking start).
        qs = (jnp.arange(n_components) + 0.5) / n_components
        locs = numpyro.param("locs", jnp.quantile(x, qs))
        mix_logits = numpyro.param("mix_logits", jnp.zeros(n_components))
        with numpyro.plate("data", x.shape[0]):
            z = numpyro.sample("z", dist.Categorical(logits=mix_logits))
            numpyro.sample("x", dist.Normal(locs[z], SCALE), obs=x)

    def guide(x):
        logits = numpyro.param("assign_logits", jnp.zeros((x.shape[0], n_components)))
        with numpyro.plate("data", x.shape[0]):
            numpyro.sample("z", dist.Categorical(logits=logits))

    return model, guide


def exact_elbo(params: dict, x: jax.Array) -> jax.Array:
    """``sum_i sum_k q_ik [log pi_k + log N(x_i; locs_k, s) - log q_ik]`` in closed form."""
    log_joint = jax.nn.log_softmax(params["mix_logits"]) + dist.Normal(
        params["locs"], SCALE).log_prob(x[:, None])
    log_q = jax.nn.log_softmax(params["assign_logits"], axis=-1)
    return jnp.sum(jnp.exp(log_q) * (log_joint - log_q))


def exact_log_px(params: dict, x: jax.Array) -> jax.Array:
    """``log p(x) = sum_i logsumexp_k (log pi_k + log N(x_i; locs_k, s))``."""
    log_joint = jax.nn.log_softmax(params["mix_logits"]) + dist.Normal(
        params["locs"], SCALE).log_prob(x[:, None])
    return jnp.sum(logsumexp(log_joint, axis=-1))


def strategy_table(n_data: int, n_components: int) -> dict[str, tuple[ppl.Strategy, int]]:
    """Strategy per name, with its number of continuation runs per estimate (its cost)."""
    table = {
        "Reinforce": (ppl.Reinforce(), 1),
        "Reinforce + LOO (2)": (ppl.Reinforce(baseline="mean"), 2),
        "Reinforce + LOO (4)": (ppl.Reinforce(baseline="mean", num_samples=4), 4),
        "MVD": (ppl.MVD(), 1 + n_data * n_components),
    }
    if n_components ** n_data <= MAX_ENUM_CONFIGS:
        table["Enum"] = (ppl.Enum(), n_components ** n_data)
    else:
        print(f"(Enum skipped: {n_components}^{n_data} joint configurations exceed "
              f"{MAX_ENUM_CONFIGS}.)")
    return table


def gradient_samples(objective: ppl.Expectation, params: dict, x: jax.Array,
                     keys: jax.Array) -> dict:
    """``len(keys)`` independent gradient estimates at each of a stack of params.

    ``params`` has a leading axis (several parameter points); the result's leaves have shape
    ``(points, len(keys), ...)``: vmapped over keys at the same params, then over points.
    """
    at = lambda p: jax.vmap(lambda k: objective.grad_estimate(k, p, x)[0])(keys)  # noqa: E731
    return jax.jit(jax.vmap(at))(params)


def total_variance(grads: dict, names: list[str]) -> float:
    """Trace of the covariance of the gradient estimates of the leaves ``names``."""
    return float(sum(jnp.sum(jnp.var(grads[n], axis=0, ddof=1)) for n in names))


def max_z(grads: dict, exact: dict) -> float:
    """Largest ``|mean - exact| / standard error`` over all coordinates (bias check)."""
    out = 0.0
    for name, g in grads.items():
        n = g.shape[0]
        se = jnp.std(g, axis=0, ddof=1) / np.sqrt(n)
        dev = jnp.abs(jnp.mean(g, axis=0) - exact[name])
        z = jnp.where(se > 1e-6, dev / jnp.maximum(se, 1e-12), jnp.where(dev > 1e-4 * (1 + jnp.abs(exact[name])), jnp.inf, 0.0))
        out = max(out, float(jnp.max(z)))
    return out


def main(steps: int = 1500, n_keys: int = 500, n_data: int = 7, n_components: int = 3,
         learning_rate: float = 0.05, seed: int = 0, out: str | None = "discrete_latents.png",
         progress: bool = False, strategies: tuple[str, ...] | None = None) -> dict:
    """Fit the mixture with each strategy; print and return the comparison table.

    ``strategies``: names from the table below to run (default: all; "Reinforce" is needed
    for the variance ratios).

    Returns a dict ``{strategy name: row}`` where each row holds ``var_guide_init``,
    ``var_model_init``, ``var_guide_opt``, ``max_z``, ``final_elbo``, ``log_px``, ``cost``
    and ``seconds``.
    """
    key_data, key_init, key_grad, key_fit = jax.random.split(jax.random.key(seed), 4)
    x = make_data(key_data, n_data, n_components)
    model, guide = make_model(n_components)
    params0 = ppl.init_params((model, guide), key_init, x)
    table = strategy_table(n_data, n_components)
    if strategies is not None:
        table = {name: table[name] for name in strategies}
    objectives = {name: ppl.objectives.elbo(model, ppl.strategies(guide, z=s))
                  for name, (s, _) in table.items()}
    print(f"Gaussian mixture: N = {n_data} points, K = {n_components} components, "
          f"x = [{', '.join(f'{v:.2f}' for v in np.asarray(x))}]")

    # 1. Fit with each strategy from the same initial params.
    fits, seconds = {}, {}
    for name, objective in objectives.items():
        t0 = time.perf_counter()
        fits[name] = inference.fit(objective, params0, x, optimizer=optax.adam(learning_rate),
                                   steps=steps, key=key_fit, progress=progress)
        seconds[name] = time.perf_counter() - t0

    # 2. Gradient variance at the same params: at the start, and at the optimum (the exact
    #    Enum fit when Enum runs; else the best fit).
    reference = "Enum" if "Enum" in fits else max(
        fits, key=lambda n: float(exact_elbo(fits[n].params, x)))
    optimum = fits[reference].params
    keys = jax.random.split(key_grad, n_keys)
    exact_grad = jax.grad(exact_elbo)(params0, x)  # the exact gradient, in closed form
    guide_leaves, model_leaves = ["assign_logits"], ["locs", "mix_logits"]
    rows = {}
    both = jax.tree.map(lambda a, b: jnp.stack([a, b]), params0, optimum)
    for name, objective in objectives.items():
        grads = gradient_samples(objective, both, x, keys)  # one compiled call for both
        at_init = jax.tree.map(lambda g: g[0], grads)
        at_opt = jax.tree.map(lambda g: g[1], grads)
        rows[name] = {
            "cost": table[name][1],
            "var_guide_init": total_variance(at_init, guide_leaves),
            "var_model_init": total_variance(at_init, model_leaves),
            "var_guide_opt": total_variance(at_opt, guide_leaves),
            "max_z": max_z(at_init, exact_grad),
            "final_elbo": float(exact_elbo(fits[name].params, x)),
            "log_px": float(exact_log_px(fits[name].params, x)),
            "seconds": seconds[name],
        }

    print(f"\nGradient of the ELBO: variance (trace of the covariance) over {n_keys} estimates "
          f"at the same params;\nfit: {steps} Adam steps (lr {learning_rate}); ELBO and "
          "log p(x) at the fitted params, exact (closed form).\n")
    header = (f"{'strategy':<21}{'runs/est':>9}{'Var guide':>12}{'Var model':>11}"
              f"{'Var guide':>12}{'bias':>7}{'final':>9}{'log p(x)':>10}{'fit':>7}")
    sub = (f"{'':<21}{'':>9}{'@init':>12}{'@init':>11}{'@optimum':>12}{'max|z|':>7}"
           f"{'ELBO':>9}{'':>10}{'s':>7}")
    print(header + "\n" + sub + "\n" + "-" * len(header))
    for name, r in rows.items():
        print(f"{name:<21}{r['cost']:>9d}{r['var_guide_init']:>12.4g}{r['var_model_init']:>11.4g}"
              f"{r['var_guide_opt']:>12.4g}{r['max_z']:>7.2f}{r['final_elbo']:>9.3f}"
              f"{r['log_px']:>10.3f}{r['seconds']:>7.1f}")
    base = rows.get("Reinforce", {}).get("var_guide_init", float("nan"))
    ratios = ", ".join(f"{n}: {base / max(r['var_guide_init'], 1e-30):.3g}x"
                       for n, r in rows.items() if n != "Reinforce")
    print(f"\nVariance reduction vs plain Reinforce (guide params, at init): {ratios}")
    print(f"(Variances at the optimum use the params of the {reference} fit. ELBO <= log p(x); "
          "the gap is KL(q || p(z | x)).)")

    if out:
        _plot(fits, rows, out)
        print(f"saved {out}")
    return rows


def _plot(fits: dict, rows: dict, out: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(12, 4.5))
    for name, result in fits.items():
        values = np.asarray(result.values)
        window = max(1, len(values) // 30)
        smooth = np.convolve(values, np.ones(window) / window, mode="valid")
        ax1.plot(np.arange(len(smooth)) + window, smooth, label=name)
    ax1.set_xlabel("step")
    ax1.set_ylabel("ELBO estimate (moving average)")
    ax1.set_title("Training curves")
    lows = [np.percentile(np.asarray(r.values), 5) for r in fits.values()]
    ax1.set_ylim(bottom=min(lows))
    ax1.legend()
    names = list(rows)
    pos = np.arange(len(names))
    floor = 1e-12  # Enum's zero variance shown at the floor of the log axis
    ax2.bar(pos - 0.2, [max(rows[n]["var_guide_init"], floor) for n in names], 0.4, label="at init")
    ax2.bar(pos + 0.2, [max(rows[n]["var_guide_opt"], floor) for n in names], 0.4,
            label="at optimum")
    ax2.set_yscale("log")
    ax2.set_xticks(pos, names, rotation=20, ha="right")
    ax2.set_ylabel("variance of the guide gradient")
    ax2.set_title("Gradient variance per strategy")
    ax2.legend()
    fig.tight_layout()
    fig.savefig(out, dpi=120)
    plt.close(fig)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=1500, help="Adam steps per strategy")
    parser.add_argument("--n-keys", type=int, default=500,
                        help="gradient estimates per variance measurement")
    parser.add_argument("--n-data", type=int, default=7)
    parser.add_argument("--n-components", type=int, default=3)
    parser.add_argument("--lr", type=float, default=0.05)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="discrete_latents.png", help="PNG path ('' for none)")
    parser.add_argument("--progress", action="store_true", help="show progress bars")
    a = parser.parse_args()
    main(steps=a.steps, n_keys=a.n_keys, n_data=a.n_data, n_components=a.n_components,
         learning_rate=a.lr, seed=a.seed, out=a.out or None, progress=a.progress)
