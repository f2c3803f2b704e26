"""CoopFlow: an energy-based model and a normalizing flow trained together, on 2-D data and digits.

    python examples/coopflow.py                      # 8 Gaussians (the default)
    python examples/coopflow.py --data rings         # or checkerboard, two_moons
    python examples/coopflow.py --data digits        # sklearn's 8x8 digits (64-D)
    python examples/coopflow.py --quick              # smoke run
    python examples/coopflow.py --out coopflow.png

Xie et al. (ICLR 2022), *A Tale of Two Flows* (:mod:`models.coopflow`): every iteration the
flow proposes ``x_0 ~ q_alpha``, ``K = 30`` short-run Langevin steps on ``-E_theta`` revise
it to ``x_K``, the EBM takes a contrastive-divergence step (data against ``x_K``) and the
flow a maximum-likelihood step on ``x_K``. Samples afterwards: flow draw + ``K`` steps.

Models. 2-D: a rational-quadratic spline coupling flow (4 layers, width 64) and an MLP
energy (2 -> 128 x 3 -> 1, SiLU) plus the reference quadratic ``|x|^2 / (2 * 3^2)``;
Langevin at temperature 1 (plain ULA, ``h = 0.01``); Adam 3e-3 (``b1 = 0.5``) for the EBM,
3e-4 for the flow, ``alpha = 0.1``, batch 128, 1500 iterations. (With ``alpha = 0.01``
the 8 Gaussians came out a little better, but on the rings, whose width 0.1 asks for a
steep energy, the energy sharpened faster than ``h = 0.01`` can follow, Langevin threw
the samples out, the flow followed them and never came back.) Digits (pixels scaled to
``[-1, 1]`` and dequantised with uniform noise): an affine coupling flow (8 layers, width
128), an MLP energy 64 -> 256 x 2 -> 1 plus ``|x|^2 / 2``; Langevin at temperature 0.1
(step ``h = 0.01``, noise ``sqrt(2 h 0.1)``: at temperature 1 the revision's noise, which
the flow learns to reproduce, made the flow's spread grow without end); Adam 1e-3 for
both, ``alpha = 0.1``, 1000 iterations.

Score: the energy distance ``2 E|X - Y| - E|X - X'| - E|Y - Y'|`` to held-out data (2-D:
1000 fresh draws; digits: the 360 held-out images) of (a) the flow alone, (b) the flow plus
``K`` Langevin steps (the same flow draws, revised), (c) the untrained model (``N(0, I)``
plus ``K`` steps on the untrained energy), and (d) the floor: an independent data set of
the same size (fresh draws; digits: 360 training images).

What to expect (about 35-45 s each on 2 CPU cores, seed 0):

============  =========  =========  ===============  ======
data          untrained  flow only  flow + Langevin  floor
============  =========  =========  ===============  ======
8gaussians    0.124      0.035      0.027            0.006
rings         0.055      0.034      0.029            0.008
checkerboard  0.017      0.0055     0.0046           0.0019
two_moons     0.058      0.0069     0.0047           0.0046
digits        3.44       0.128      0.109            0.028
============  =========  =========  ===============  ======

On the 8 Gaussians the revised samples show the eight modes, the flow alone shows them
blurred (wider, with mass between them); the mode weights drift (short-run Langevin
cannot move mass between separated modes, so only the energy's slow tilt corrects the
flow's weights). More training does not help there: ``--quick`` (200 iterations) scores
0.018 (flow alone 0.023), and seeds 1 and 2 of the full run 0.021 and 0.025. Langevin
revision improves on the flow alone everywhere, but only two moons reaches the floor.
On digits both are far better than untrained, but the samples are blurry, digit-like
strokes, about 4x the floor; training longer (2000 iterations) made them worse (0.15),
as the energy kept pulling away from the samples.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # the sibling example
from ebm_short_run import INIT_RANGE, rings  # noqa: E402

from inference.metrics import energy_distance  # noqa: E402
from models import coopflow, toy2d  # noqa: E402

DATASETS_2D = {"8gaussians": toy2d.eight_gaussians, "rings": rings,
               "checkerboard": toy2d.checkerboard, "two_moons": toy2d.two_moons}
DATASETS = sorted(DATASETS_2D) + ["digits"]

#: Settings per kind of data (see the module docstring).
CONFIG = {
    "2d": dict(
        model=dict(flow_kind="spline_coupling", flow_layers=4, flow_width=64,
                   energy_width=128, energy_depth=3, reference_scale=3.0, temperature=1.0,
                   langevin_steps=30, step_size=0.01),
        energy_lr=3e-3, flow_lr=3e-4, alpha=0.1, batch=128, iterations=1500, quick=200),
    "digits": dict(
        model=dict(flow_kind="affine_coupling", flow_layers=8, flow_width=128,
                   energy_width=256, energy_depth=2, reference_scale=1.0, temperature=0.1,
                   langevin_steps=30, step_size=0.01),
        energy_lr=1e-3, flow_lr=1e-3, alpha=0.1, batch=128, iterations=1000, quick=100),
}

N_EVAL_2D = 1000
N_TEST_DIGITS = 360


def dequantise(key: jax.Array, pixels: jax.Array) -> jax.Array:
    """Digits' integer pixels ``0..16`` to ``(pixel + U(0, 1)) / 17`` scaled to ``[-1, 1]``."""
    return (pixels + jax.random.uniform(key, pixels.shape)) / 17.0 * 2.0 - 1.0


def load_digits_data(n_test: int = N_TEST_DIGITS) -> tuple[jax.Array, jax.Array]:
    """``(train, test)`` integer pixel arrays (float32, ``(n, 64)``), a fixed random split."""
    from sklearn.datasets import load_digits

    raw = jnp.asarray(load_digits().data, jnp.float32)
    raw = raw[jax.random.permutation(jax.random.key(0), raw.shape[0])]
    return raw[n_test:], raw[:n_test]


def make_data(name: str, key: jax.Array):
    """``(sampler, x_eval, x_floor)``: training sampler ``(key, n) -> (n, d)``, held-out
    data, and an independent data set of the same size (for the noise floor)."""
    k1, k2 = jax.random.split(key)
    if name == "digits":
        train, test = load_digits_data()

        def sampler(k, n):
            ki, kd = jax.random.split(k)
            return dequantise(kd, train[jax.random.randint(ki, (n,), 0, train.shape[0])])

        return sampler, dequantise(k1, test), dequantise(k2, train[: test.shape[0]])
    sampler = DATASETS_2D[name]
    return sampler, sampler(k1, N_EVAL_2D), sampler(k2, N_EVAL_2D)


def plot_2d(panels, model, out: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(panels) + 1, figsize=(4 * (len(panels) + 1), 4))
    lim = INIT_RANGE
    for ax, (title, pts) in zip(axes, panels):
        ax.scatter(pts[:, 0], pts[:, 1], s=2, alpha=0.5)
        ax.set_title(title)
    g = np.linspace(-lim, lim, 120)
    xx, yy = np.meshgrid(g, g)
    grid = jnp.asarray(np.stack([xx.ravel(), yy.ravel()], 1), jnp.float32)
    e = np.asarray(coopflow.energies(model, grid)).reshape(xx.shape)
    axes[-1].contourf(xx, yy, -np.minimum(e - e.min(), 12.0), levels=30)
    axes[-1].set_title("-E, trained EBM (12 units below the top)")
    for ax in axes:
        ax.set_xlim(-lim, lim)
        ax.set_ylim(-lim, lim)
        ax.set_aspect("equal")
    fig.tight_layout()
    fig.savefig(out, dpi=100)
    plt.close(fig)


def plot_digits(panels, out: str, rows: int = 6) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(panels), figsize=(3.5 * len(panels), 3.8))
    for ax, (title, pts) in zip(axes, panels):
        imgs = np.clip(np.asarray(pts[: rows * rows]), -1.0, 1.0).reshape(rows * rows, 8, 8)
        canvas = np.full((9 * rows - 1, 9 * rows - 1), -1.0)  # a blank pixel between images
        for i, img in enumerate(imgs):
            r, c = divmod(i, rows)
            canvas[9 * r: 9 * r + 8, 9 * c: 9 * c + 8] = img
        ax.imshow(canvas, cmap="gray_r", vmin=-1.0, vmax=1.0)
        ax.set_title(title)
        ax.axis("off")
    fig.tight_layout()
    fig.savefig(out, dpi=100)
    plt.close(fig)


def main(data: str = "8gaussians", quick: bool = False, out: str | None = "coopflow.png",
         seed: int = 0, iterations: int | None = None, progress: bool = False
         ) -> dict[str, float]:
    if data not in DATASETS:
        raise ValueError(f"coopflow example: unknown data {data!r}; use one of {DATASETS}.")
    t_start = time.perf_counter()
    cfg = CONFIG["digits" if data == "digits" else "2d"]
    iterations = iterations or (cfg["quick"] if quick else cfg["iterations"])
    k_model, k_train, k_data, k_eval = jax.random.split(jax.random.key(seed), 4)
    sampler, x_eval, x_floor = make_data(data, k_data)
    n_eval, dim = x_eval.shape
    model = coopflow.init(k_model, dim, **cfg["model"])
    untrained_model = model

    floor = float(energy_distance(x_floor, x_eval))
    untrained = coopflow.sample(untrained_model, k_eval, n_eval)
    score_untrained = float(energy_distance(untrained, x_eval))

    m = cfg["model"]
    print(f"CoopFlow on {data} (dim {dim}): {m['flow_kind']} flow ({m['flow_layers']} layers), "
          f"MLP energy, K={m['langevin_steps']} Langevin steps of h={m['step_size']} at "
          f"temperature {m['temperature']}, {iterations} iterations, batch {cfg['batch']}")
    energy_opt = optax.adam(cfg["energy_lr"], b1=0.5)
    flow_opt = optax.chain(optax.clip_by_global_norm(10.0), optax.adam(cfg["flow_lr"]))
    t0 = time.perf_counter()
    model, history = coopflow.fit(model, sampler, k_train, iterations, batch_size=cfg["batch"],
                                  alpha=cfg["alpha"], energy_optimizer=energy_opt,
                                  flow_optimizer=flow_opt, progress=progress)
    jax.block_until_ready(model.theta)
    train_s = time.perf_counter() - t0
    fifth = max(1, iterations // 5)
    for start in range(0, iterations, fifth):
        part = slice(start, start + fifth)
        print(f"  iterations {start + 1:5d}-{min(start + fifth, iterations):5d}: "
              f"E_data - E_samples {float(history.cd[part].mean()):+.3f}, "
              f"flow NLL of x_K {float(history.flow_nll[part].mean()):.3f}, "
              f"Langevin revision (rms) {float(history.revision[part].mean()):.3f}")

    flow_only = coopflow.sample(model, k_eval, n_eval, langevin_steps=0)
    revised = coopflow.sample(model, k_eval, n_eval)  # the same flow draws, revised
    score_flow = float(energy_distance(flow_only, x_eval))
    score_revised = float(energy_distance(revised, x_eval))

    print(f"\nenergy distance to held-out data ({n_eval} points; lower is better)")
    print(f"  untrained model : {score_untrained:.4f}")
    print(f"  flow only       : {score_flow:.4f}")
    print(f"  flow + Langevin : {score_revised:.4f}")
    print(f"  data vs data    : {floor:.4f}  (sampling-noise floor)")
    print(f"training {train_s:.1f}s (incl. compile)")
    if out:
        panels = [(f"held-out data ({data})", x_eval), ("untrained: N(0, I) + Langevin", untrained),
                  ("trained flow only", flow_only), ("trained flow + Langevin", revised)]
        if data == "digits":
            plot_digits(panels, out)
        else:
            plot_2d([(t, np.asarray(p)) for t, p in panels], model, out)
        print(f"plot written to {out}")
    total_s = time.perf_counter() - t_start
    print(f"total time {total_s:.1f}s")
    return {"untrained": score_untrained, "flow": score_flow, "flow_langevin": score_revised,
            "floor": floor, "train_s": train_s, "total_s": total_s}


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", choices=DATASETS, default="8gaussians")
    parser.add_argument("--quick", action="store_true", help="few iterations (smoke test)")
    parser.add_argument("--out", default="coopflow.png", help="PNG path ('' for no plot)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--iterations", type=int, default=None)
    parser.add_argument("--progress", action="store_true", help="show a progress bar")
    args = parser.parse_args()
    os.environ.setdefault("MPLBACKEND", "Agg")
    main(data=args.data, quick=args.quick, out=args.out or None, seed=args.seed,
         iterations=args.iterations, progress=args.progress)
