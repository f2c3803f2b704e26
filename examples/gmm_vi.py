"""Variational inference in a 2-D Gaussian mixture with discrete assignments.

    python examples/gmm_vi.py                       # ~1-2 minutes on 2 CPU cores
    python examples/gmm_vi.py --quick --out /tmp/g  # a few seconds of training

The model (``models/discrete_vi/gmm.py``): 300 points from 3 overlapping clusters, ``K = 3``
components with a known scale, locations and mixture weights as parameters, and a guide
with one Categorical ``q(z_n)`` per point. The same model and guide are trained with
different gradient strategies for the assignments, set with ``ppl.strategies(guide, z=...)``
and no edit of the programs:

* ``enum``: the assignments summed out (the model's ``z`` marked
  ``infer={"enumerate": "parallel"}``; the objective is ``log p(x)``, whose optimal guide is
  the exact posterior), :func:`models.discrete_vi.gmm.log_marginal_objective`;
* ``mvd``: measure-valued derivative, one branch per point and category;
* ``reinforce+mean``: REINFORCE with the leave-one-out baseline of 2 draws;
* ``vimco``: IWAE-4 per point with VIMCO's per-point baselines;
* ``reinforce``: plain REINFORCE (the default for a discrete site: very noisy, since the
  300 assignments form one joint choice).

It prints the exact ELBO and ``log p(x)`` as training goes, and saves one panel per strategy:
the points coloured by their most probable assignment under ``q``, and each fitted component
(its location and a 2-sd circle), to ``--out`` (a directory; default a temporary one).
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

import inference
import ppl
from models.discrete_vi import gmm

STRATEGIES = ("enum", "mvd", "reinforce+mean", "vimco", "reinforce")


def objective_for(name: str, params0: dict, x: jax.Array) -> ppl.Expectation:
    """The objective that trains with strategy ``name`` (one of :data:`STRATEGIES`)."""
    model, guide = gmm.make_gmm(params0)
    if name == "enum":
        return gmm.log_marginal_objective(gmm.make_gmm(params0, enumerate=True)[0], x)
    if name == "vimco":
        return ppl.objectives.vimco(model, guide, K=4, plate="data")
    strategy = {"mvd": ppl.MVD(), "reinforce+mean": ppl.Reinforce(baseline="mean"),
                "reinforce": ppl.Reinforce()}.get(name)
    if strategy is None:
        raise ValueError(f"gmm_vi: unknown strategy {name!r}; choose from {list(STRATEGIES)}.")
    return ppl.objectives.elbo(model, ppl.strategies(guide, z=strategy))


def train(name: str, x: jax.Array, params0: dict, steps: int, rounds: int,
          learning_rate: float = 0.05, seed: int = 0) -> tuple[dict, float]:
    """Adam on the objective of ``name``; prints the exact ELBO after each of ``rounds``."""
    trainable = ({k: v for k, v in params0.items() if k != "assign_logits"}
                 if name == "enum" else params0)
    objective = objective_for(name, params0, x)
    result, seconds = trainable, 0.0
    per_round = max(1, steps // rounds)
    for r in range(rounds):
        t0 = time.perf_counter()
        result = inference.fit(objective, result, x, optimizer=optax.adam(learning_rate),
                               steps=per_round, key=seed, progress=False)
        seconds += time.perf_counter() - t0
        params = finish(name, result.params, x)
        print(f"  {name:<15} step {(r + 1) * per_round:>5}: ELBO {float(gmm.exact_elbo(params, x)):9.2f}"
              f"  log p(x) {float(gmm.log_marginal(params, x)):9.2f}  ({seconds:.1f}s)")
    return finish(name, result.params, x), seconds


def finish(name: str, params: dict, x: jax.Array) -> dict:
    """Trained parameters with the guide filled in (the exact posterior for ``enum``)."""
    if name == "enum":
        return {**params, "assign_logits": gmm.posterior_logits(params, x)}
    return dict(params)


def plot(path: str, x: np.ndarray, fitted: dict[str, dict]) -> None:
    """One panel per strategy: points by most probable assignment, components as circles."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(fitted), figsize=(4 * len(fitted), 4), squeeze=False)
    theta = np.linspace(0, 2 * np.pi, 100)
    for ax, (name, params) in zip(axes[0], fitted.items()):
        labels = np.argmax(np.asarray(params["assign_logits"]), -1)
        ax.scatter(x[:, 0], x[:, 1], c=labels, s=8, cmap="tab10", vmin=0, vmax=9)
        for loc in np.asarray(params["locs"]):
            ax.plot(loc[0] + 2 * gmm.SCALE * np.cos(theta), loc[1] + 2 * gmm.SCALE * np.sin(theta),
                    "k-", lw=1)
            ax.plot(*loc, "k+", ms=12)
        ax.set_title(f"{name}: ELBO {float(gmm.exact_elbo(params, jnp.asarray(x))):.1f}",
                     fontsize=9)
        ax.set_aspect("equal")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main(steps: int = 1500, out: str | None = None, strategies: tuple[str, ...] = STRATEGIES,
         n: int = 300, rounds: int = 5, seed: int = 0, quick: bool = False) -> dict[str, dict]:
    """Train with each strategy, print progress, save the plot; returns
    ``{strategy: {"elbo", "log_px", "seconds"}}``.

    Example (a few seconds)::

        metrics = main(steps=40, n=60, rounds=1, strategies=("enum", "mvd"), quick=True)
    """
    if quick:
        steps, n, rounds = min(steps, 60), min(n, 60), 2
    out = out or tempfile.mkdtemp(prefix="gmm_vi_")
    os.makedirs(out, exist_ok=True)
    x = gmm.make_data(jax.random.key(seed), n)
    params0 = gmm.init_params(jax.random.key(seed + 1), x)
    print(f"{n} points, {gmm.CENTERS[:3]} +- {gmm.SCALE}; initial ELBO "
          f"{float(gmm.exact_elbo(params0, x)):.2f}")
    fitted, metrics = {}, {}
    for name in strategies:
        params, seconds = train(name, x, params0, steps, rounds, seed=seed)
        fitted[name] = params
        metrics[name] = {"elbo": float(gmm.exact_elbo(params, x)),
                         "log_px": float(gmm.log_marginal(params, x)), "seconds": seconds}
    path = os.path.join(out, "gmm_vi.png")
    plot(path, np.asarray(x), fitted)
    print(f"fitted clusters written to {os.path.abspath(path)}")
    return metrics


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=1500)
    parser.add_argument("--out", default=None, help="output directory (default: a temp dir)")
    parser.add_argument("--strategies", nargs="*", default=list(STRATEGIES),
                        help=", ".join(STRATEGIES))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--quick", action="store_true", help="a few steps on 60 points")
    args = parser.parse_args()
    main(args.steps, args.out, tuple(args.strategies), seed=args.seed, quick=args.quick)
