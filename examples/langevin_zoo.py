"""A zoo of Langevin kernels (and NUTS) on two hard targets, compared per gradient.

    python examples/langevin_zoo.py                # ~1.5 minutes on a 2-core laptop CPU
    python examples/langevin_zoo.py --quick        # smoke run: 10x shorter chains (but
                                                   # compiling 12 samplers dominates: ~1 min)
    python examples/langevin_zoo.py --out zoo.png

Kernels: ULA, MALA, underdamped Langevin (BAOAB), OBABO (Metropolis-adjusted kinetic
Langevin), the randomized midpoint method (all from ``inference.langevin``) and NUTS
(BlackJAX, with its window adaptation). Targets:

* ``gauss100``: ``N(0, Q diag(lam) Q^T)`` in 100 dimensions, ``lam`` log-spaced in
  ``[1, 100]``, ``Q`` a random rotation (so a diagonal mass matrix cannot undo it);
* ``funnel10``: Neal's funnel, ``v ~ N(0, 3^2)``, ``x_1..x_9 | v ~ N(0, e^v)``.

Each kernel is tuned per chain by ``langevin.adapt`` (NUTS: ``blackjax.window_adaptation``),
then runs 4 chains for the same number of gradient evaluations (NUTS: a fixed number of
draws, its gradients counted). The kinetic kernels (BAOAB, OBABO, randomized midpoint)
use the friction rule ``gamma = 1 / sqrt(lam_max)``, ``lam_max`` the largest eigenvalue of
the preconditioned covariance, estimated as ``1 / mu_min`` of the preconditioned Hessian
``S^T (-grad^2 log p) S`` at the end of MALA's warmup (median over chains; exact on a
Gaussian).

The table gives ESS per 1000 gradient evaluations (ArviZ ``method="mean"``, all chains, of
every ``x_i`` and ``x_i^2``; the minimum over coordinates) and the errors of the Monte
Carlo estimates: Gaussian, ``max_i |E x_i| / sd_i`` and ``max_i |E x_i^2 / Sigma_ii - 1|``;
funnel, the same for the neck coordinate ``v`` (``|E v| / 3``, ``|E v^2 / 9 - 1|``), since
the ``x_i^2`` (mean ``e^{4.5}``) are too heavy-tailed for a useful error. Unadjusted kernels
(ULA, BAOAB, randomized midpoint) are biased; ESS alone would flatter them, hence the
errors next to it. On the funnel no kernel is reliable at this length (NUTS included: its
step size, like the Langevin kernels' single global one, is too large for the neck, ``v``
well below 0), which shows up in the errors of ``E[v]`` and ``E[v^2]`` even where an ESS
looks fine.
"""

from __future__ import annotations

import argparse
import math
import os
import time
from typing import Any, Callable

import arviz
import blackjax
import jax
import jax.numpy as jnp
import numpy as np

from inference.mcmc import adaptation, langevin

NUM_CHAINS = 4
KERNELS = ("ULA", "MALA", "BAOAB", "OBABO", "RandMidpoint", "NUTS")
FACTORIES: dict[str, Callable] = {
    "ULA": langevin.ula,
    "MALA": langevin.mala,
    "BAOAB": langevin.underdamped,
    "OBABO": langevin.obabo,
    "RandMidpoint": langevin.randomized_midpoint,
}
KINETIC = ("BAOAB", "OBABO", "RandMidpoint")


# ---------------------------------------------------------------------------------------
# targets
# ---------------------------------------------------------------------------------------


def gaussian_target(dim: int = 100, cond: float = 100.0, seed: int = 0) -> dict[str, Any]:
    rng = np.random.default_rng(seed)
    lam = np.logspace(0.0, np.log10(cond), dim)
    q, r = np.linalg.qr(rng.standard_normal((dim, dim)))
    q = q * np.sign(np.diag(r))
    cov = (q * lam) @ q.T
    prec = jnp.asarray((q / lam) @ q.T, jnp.float32)
    return {
        "name": "gauss100",
        "dim": dim,
        "logdensity": lambda x: -0.5 * jnp.dot(x, prec @ x),
        "mean": np.zeros(dim),
        "second_moment": np.diag(cov).copy(),
        "coords": np.arange(dim),  # the coordinates the errors are taken over
    }


def funnel_target(dim: int = 10) -> dict[str, Any]:
    def logdensity(z):
        v, x = z[0], z[1:]
        return (-v**2 / 18.0 - 0.5 * jnp.sum(x**2) * jnp.exp(-v) - 0.5 * (dim - 1) * v)

    return {
        "name": f"funnel{dim}",
        "dim": dim,
        "logdensity": logdensity,
        "mean": np.zeros(dim),
        "second_moment": np.array([9.0] + [math.exp(4.5)] * (dim - 1)),
        "coords": np.array([0]),  # v
    }


# ---------------------------------------------------------------------------------------
# running one kernel
# ---------------------------------------------------------------------------------------


def friction_rule(logdensity: Callable, positions: jax.Array, imm: jax.Array) -> float:
    """``1 / sqrt(lam_max)`` of the preconditioned covariance, from Hessians at ``positions``.

    ``lam_max = 1 / mu_min``, ``mu_min`` the smallest eigenvalue of ``S^T (-H) S`` (``S S^T =
    M`` the diagonal inverse mass matrix), the median over chains; floored at
    ``1e-4 mu_max`` for targets whose Hessian is not everywhere negative definite.
    """

    def mus(x, m):
        s = jnp.sqrt(m)
        h = -jax.hessian(logdensity)(x)
        mu = jnp.linalg.eigvalsh(s[:, None] * h * s[None, :])
        return mu[0], mu[-1]

    mu_min, mu_max = jax.jit(jax.vmap(mus))(positions, imm)
    mu = np.maximum(np.asarray(mu_min), 1e-4 * np.asarray(mu_max))
    return float(np.sqrt(np.median(mu)))


def run_langevin(name: str, target: dict, positions: jax.Array, key: jax.Array,
                 num_warmup: int, grads_per_chain: int, friction: float) -> dict[str, Any]:
    factory = FACTORIES[name]
    logdensity = target["logdensity"]
    kwargs = {"friction": friction} if name in KINETIC else {}
    n_grad_step = 2 if name == "RandMidpoint" else 1
    num_steps = grads_per_chain // n_grad_step

    def one(x, k):
        k_adapt, k_run = jax.random.split(k)
        state, params = langevin.adapt(factory, logdensity, x, k_adapt, num_warmup, **kwargs)
        alg = factory(logdensity, **adaptation.kernel_params(params))

        def body(carry, k):
            state, n_grad = carry
            state, info = alg.step(k, state)
            return (state, n_grad + info.n_grad), state.position

        (_, n_grad), xs = jax.lax.scan(body, (state, jnp.zeros((), jnp.int32)),
                                       jax.random.split(k_run, num_steps))
        return xs, n_grad, params["step_size"], state.position, params["inverse_mass_matrix"]

    xs, n_grad, step, warm_x, imm = jax.jit(jax.vmap(one))(
        positions, jax.random.split(key, positions.shape[0]))
    return {"draws": np.asarray(xs), "n_grad": int(np.asarray(n_grad).sum()),
            "step_size": float(np.median(np.asarray(step))),
            "warmup_positions": warm_x, "inverse_mass_matrix": imm}


def run_nuts(target: dict, positions: jax.Array, key: jax.Array, num_warmup: int,
             num_draws: int) -> dict[str, Any]:
    logdensity = target["logdensity"]

    def one(x, k):
        k_adapt, k_run = jax.random.split(k)
        warmup = blackjax.window_adaptation(blackjax.nuts, logdensity)
        (state, params), _ = warmup.run(k_adapt, x, num_warmup)
        alg = blackjax.nuts(logdensity, **params)

        def body(carry, k):
            state, n_grad = carry
            state, info = alg.step(k, state)
            return (state, n_grad + info.num_integration_steps), state.position

        (_, n_grad), xs = jax.lax.scan(body, (state, jnp.zeros((), jnp.int32)),
                                       jax.random.split(k_run, num_draws))
        return xs, n_grad, params["step_size"]

    xs, n_grad, step = jax.jit(jax.vmap(one))(positions, jax.random.split(key, positions.shape[0]))
    return {"draws": np.asarray(xs), "n_grad": int(np.asarray(n_grad).sum()),
            "step_size": float(np.median(np.asarray(step)))}


def _ess(draws: np.ndarray) -> np.ndarray:
    with np.errstate(invalid="ignore"):
        return np.asarray(arviz.ess(arviz.convert_to_dataset(draws), method="mean")["x"].values)


def evaluate(target: dict, draws: np.ndarray, n_grad: int) -> dict[str, float]:
    x = draws.astype(np.float64)
    finite = bool(np.all(np.isfinite(x)))
    if not finite:  # a diverged chain: report it instead of numbers that mean nothing
        nan = float("nan")
        return {"ess_per_1000_grad": nan, "ess_x": nan, "ess_x2": nan, "err_mean": nan,
                "err_m2": nan, "finite": False}
    ess_x, ess_x2 = _ess(x), _ess(x**2)
    c = target["coords"]
    sd = np.sqrt(target["second_moment"] - target["mean"] ** 2)
    mean = x.mean(axis=(0, 1))
    m2 = (x**2).mean(axis=(0, 1))
    per = 1000.0 / n_grad
    return {
        "ess_per_1000_grad": per * float(min(ess_x.min(), ess_x2.min())),
        "ess_x": per * float(ess_x.min()),
        "ess_x2": per * float(ess_x2.min()),
        "err_mean": float(np.max(np.abs(mean[c] - target["mean"][c]) / sd[c])),
        "err_m2": float(np.max(np.abs(m2[c] / target["second_moment"][c] - 1.0))),
        "finite": True,
    }


# ---------------------------------------------------------------------------------------
# main
# ---------------------------------------------------------------------------------------


def run_target(target: dict, key: jax.Array, quick: bool) -> dict[str, dict]:
    num_warmup = 300 if quick else 1500
    grads = 2000 if quick else 20000
    nuts_draws = 100 if quick else 1000
    k_pos, k_run = jax.random.split(key)
    positions = jax.random.normal(k_pos, (NUM_CHAINS, target["dim"]))
    rows, friction = {}, None
    # MALA first: its warmup (end positions, mass matrix) gives the kinetic kernels' friction.
    for name in ("MALA",) + tuple(k for k in KERNELS if k != "MALA"):
        t0 = time.perf_counter()
        k = jax.random.fold_in(k_run, KERNELS.index(name))
        if name == "NUTS":
            res = run_nuts(target, positions, k, num_warmup, nuts_draws)
        else:
            res = run_langevin(name, target, positions, k, num_warmup, grads, friction or 1.0)
        if name == "MALA":
            friction = friction_rule(target["logdensity"], res["warmup_positions"],
                                     res["inverse_mass_matrix"])
        row = evaluate(target, res["draws"], res["n_grad"])
        row.update(step_size=res["step_size"], n_grad=res["n_grad"],
                   friction=friction if name in KINETIC else None,
                   seconds=time.perf_counter() - t0, draws=res["draws"])
        rows[name] = row
    return {name: rows[name] for name in KERNELS}


def print_table(name: str, rows: dict[str, dict]) -> None:
    print(f"\n{name}: ESS per 1000 gradient evaluations (min over coordinates of x and x^2) "
          "and errors of E[x], E[x^2]")
    header = (f"{'kernel':<13} {'ESS/1k grad':>11} {'(x)':>8} {'(x^2)':>8} {'err E[x]':>9} "
              f"{'err E[x^2]':>10} {'step':>8} {'friction':>8} {'grads':>8} {'time s':>7}")
    print(header)
    print("-" * len(header))
    for k, r in rows.items():
        fr = "-" if r["friction"] is None else f"{r['friction']:.3f}"
        print(f"{k:<13} {r['ess_per_1000_grad']:>11.3f} {r['ess_x']:>8.3f} {r['ess_x2']:>8.3f} "
              f"{r['err_mean']:>9.3f} {r['err_m2']:>10.3f} {r['step_size']:>8.4f} {fr:>8} "
              f"{r['n_grad']:>8d} {r['seconds']:>7.1f}")


def plot(results: dict[str, dict[str, dict]], out: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(15, 4.5))
    width = 0.38
    idx = np.arange(len(KERNELS))
    for j, (tname, rows) in enumerate(results.items()):
        ess = [rows[k]["ess_per_1000_grad"] for k in KERNELS]
        err = [rows[k]["err_m2"] for k in KERNELS]
        axes[0].bar(idx + (j - 0.5) * width, ess, width, label=tname)
        axes[1].bar(idx + (j - 0.5) * width, err, width, label=tname)
    for ax, title in ((axes[0], "ESS per 1000 gradients (min over x, x^2)"),
                      (axes[1], "error of E[x^2] (Gaussian: max rel.; funnel: v)")):
        ax.set_xticks(idx, KERNELS, rotation=30)
        ax.set_yscale("log")
        ax.set_title(title)
        ax.legend()
    funnel = [r for n, r in results.items() if n.startswith("funnel")][0]
    ax = axes[2]
    for k, color in (("NUTS", "k"), ("MALA", "tab:blue"), ("BAOAB", "tab:red")):
        d = funnel[k]["draws"].reshape(-1, funnel[k]["draws"].shape[-1])
        d = d[:: max(1, d.shape[0] // 2000)]
        ax.scatter(d[:, 1], d[:, 0], s=2, alpha=0.4, color=color, label=k)
    ax.set_xlabel("x_1")
    ax.set_ylabel("v")
    ax.set_xlim(-30, 30)
    ax.set_ylim(-10, 10)
    ax.set_title("Neal's funnel: draws")
    ax.legend(markerscale=5)
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)


def main(quick: bool = False, out: str | None = "langevin_zoo.png", seed: int = 0
         ) -> dict[str, dict[str, dict]]:
    t0 = time.perf_counter()
    key = jax.random.key(seed)
    results = {}
    for i, target in enumerate((gaussian_target(), funnel_target())):
        rows = run_target(target, jax.random.fold_in(key, i), quick)
        results[target["name"]] = rows
        print_table(target["name"], rows)
    mala = results["gauss100"]["MALA"]["ess_per_1000_grad"]
    baoab = results["gauss100"]["BAOAB"]["ess_per_1000_grad"]
    print(f"\ngauss100: BAOAB / MALA ESS per gradient = {baoab / mala:.1f}x")
    if out:
        plot(results, out)
        print(f"plot written to {out}")
    print(f"total time {time.perf_counter() - t0:.1f}s")
    return results


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="short chains (smoke test)")
    parser.add_argument("--out", default="langevin_zoo.png", help="PNG path ('' for no plot)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    os.environ.setdefault("MPLBACKEND", "Agg")
    main(quick=args.quick, out=args.out or None, seed=args.seed)
