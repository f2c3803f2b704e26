"""Suite ``score``: NFE against sample quality for the score samplers.

Target: ``models.score_gmm.two_moons_mixture()`` (2-D, 6 anisotropic components), VP process.
Score: (1) the mixture's exact noised score, (2) ``models.score_net.mlp_2d`` trained by DSM
(noise prediction, ``train_steps`` Adam steps on 20k draws).

Samplers at NFE 5, 10, 20, 50, 1000: Euler-Maruyama on the reverse SDE (``steps = NFE``),
the probability-flow ODE with Heun (``steps = NFE // 2``, 2 evaluations a step; the actual
NFE is reported), and the multistep exponential integrator ``dpm_solver`` of orders 2 and 3
(``steps = NFE``). Quality: energy distance to ``n`` exact draws, the mean over ``seeds``
sampler seeds; its noise floor is the energy distance between two independent exact sets of
size ``n`` (``null_mean`` +- ``null_sd`` over 24 replicate pairs). Wall time: the sampler as a
user calls it, compiled first (one warm-up call, not timed), then the median of ``reps``
timed calls with ``block_until_ready``.

The analytical start: the smallest NFE on a grid at which ``dpm_solver`` (order 2) and Heun
reach ``null_mean + 2 null_sd``, with and without ``GaussianStart`` (switch at ``t = 0.4``).

Usage::

    python bench/score.py [--quick]     # JSON on stdout, also bench/results/score.json
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Any, Callable

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != HERE]
sys.path.insert(0, str(ROOT))

import equinox as eqx  # noqa: E402
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402

from inference import score as S  # noqa: E402
from inference.metrics import energy_distance  # noqa: E402
from models.score_gmm import two_moons_mixture  # noqa: E402
from models.score_net import mlp_2d  # noqa: E402

NFES = (5, 10, 20, 50, 1000)


def _samplers(fn: Callable, proc: S.Process, n: int) -> dict[str, Callable[[jax.Array, int], Any]]:
    return {
        "euler_maruyama": lambda k, nfe: S.euler_maruyama(fn, proc, k, (n, 2), nfe),
        "pf_ode_heun": lambda k, nfe: S.pf_ode(fn, proc, k, (n, 2), max(nfe // 2, 1)),
        "dpm_solver_2": lambda k, nfe: S.dpm_solver(fn, proc, k, (n, 2), nfe, order=2),
        "dpm_solver_3": lambda k, nfe: S.dpm_solver(fn, proc, k, (n, 2), nfe, order=3),
    }


def _time(run: Callable[[], Any], reps: int) -> float:
    jax.block_until_ready(run().x)  # compile + warm up
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        jax.block_until_ready(run().x)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def table(fn: Callable, proc: S.Process, exact: jax.Array, n: int, seeds: int, reps: int,
          label: str) -> dict[str, Any]:
    rows: dict[str, Any] = {}
    for name, run in _samplers(fn, proc, n).items():
        rows[name] = []
        for nfe in NFES:
            eds = []
            for s in range(seeds):
                out = run(jax.random.key(100 + s), nfe)
                eds.append(float(energy_distance(out.x, exact)))
            wall = _time(lambda: run(jax.random.key(100), nfe), reps)
            rows[name].append({"nfe_target": nfe, "nfe": out.nfe, "energy_distance": statistics.mean(eds),
                               "energy_distance_seeds": eds, "wall_s": wall})
            print(f"[score] {label} {name:15s} NFE {out.nfe:5d}: ED {statistics.mean(eds):.5f}  "
                  f"wall {1000 * wall:8.2f} ms", file=sys.stderr, flush=True)
    return rows


def nfe_to_reach(run: Callable[[jax.Array, int], Any], exact, level: float, grid, seeds: int):
    for steps in grid:
        eds = [float(energy_distance(run(jax.random.key(100 + s), steps).x, exact)) for s in range(seeds)]
        if statistics.mean(eds) <= level:
            return run(jax.random.key(0), steps).nfe, statistics.mean(eds)
    return None, None


def suite_score(quick: bool = False, n: int | None = None, seeds: int | None = None,
                reps: int | None = None, train_steps: int | None = None,
                **_ignored: Any) -> dict[str, Any]:
    n = n or (1000 if quick else 2000)
    seeds = seeds or (1 if quick else 3)
    reps = reps or (1 if quick else 5)
    train_steps = train_steps or (300 if quick else 3000)
    g, proc = two_moons_mixture(), S.VP()
    exact = g.sample(jax.random.key(7), n)
    null = jnp.stack([energy_distance(g.sample(jax.random.key(1000 + i), n),
                                      g.sample(jax.random.key(2000 + i), n)) for i in range(24)])
    null_mean, null_sd = float(null.mean()), float(null.std(ddof=1))
    print(f"[score] null ED (n={n}): {null_mean:.5f} +- {null_sd:.5f}", file=sys.stderr, flush=True)
    record: dict[str, Any] = {
        "suite": "score", "target": "two_moons_mixture (2-D, 6 components)", "process": "VP",
        "n": n, "seeds": seeds, "reps": reps, "null_mean": null_mean, "null_sd": null_sd,
        "platform": platform.platform(), "jax": jax.__version__, "device": str(jax.devices()[0]),
    }
    exact_fn = g.score_fn(proc)
    record["exact_score"] = table(exact_fn, proc, exact, n, seeds, reps, "exact")

    em1000 = record["exact_score"]["euler_maruyama"][-1]["energy_distance"]
    record["claim"] = {
        "euler_maruyama_1000": em1000,
        **{f"dpm_solver_2_nfe{r['nfe']}_z_vs_em1000": (r["energy_distance"] - em1000) / null_sd
           for r in record["exact_score"]["dpm_solver_2"] if r["nfe"] in (10, 20)},
    }

    # the analytical start
    start = S.GaussianStart.fit(g.sample(jax.random.key(3), 5000), 0.4)
    level = null_mean + 2 * null_sd
    grid = (2, 3, 4, 5, 6, 8, 10, 12, 15, 20, 25, 30, 40)
    saving = {}
    for name, run, run_start in [
        ("dpm_solver_2",
         lambda k, s: S.dpm_solver(exact_fn, proc, k, (n, 2), s),
         lambda k, s: S.dpm_solver(exact_fn, proc, k, (n, 2), s, start=start)),
        ("pf_ode_heun",
         lambda k, s: S.pf_ode(exact_fn, proc, k, (n, 2), s),
         lambda k, s: S.pf_ode(exact_fn, proc, k, (n, 2), s, start=start)),
    ]:
        plain, ed_plain = nfe_to_reach(run, exact, level, grid, seeds)
        fast, ed_fast = nfe_to_reach(run_start, exact, level, grid, seeds)
        saving[name] = {"nfe_plain": plain, "ed_plain": ed_plain, "nfe_gaussian_start": fast,
                        "ed_gaussian_start": ed_fast,
                        "nfe_saved": None if plain is None or fast is None else plain - fast}
        print(f"[score] analytic start {name}: NFE {plain} -> {fast}", file=sys.stderr, flush=True)
    record["gaussian_start"] = {"t_switch": 0.4, "level": level, **saving}

    # a trained network
    t0 = time.perf_counter()
    net, losses = S.fit_score(mlp_2d(jax.random.key(1)), proc, g.sample(jax.random.key(0), 20_000),
                              jax.random.key(2), steps=train_steps, batch_size=512)
    train_s = time.perf_counter() - t0
    rel = float(S.relative_score_error(net, exact_fn, proc, g.sample(jax.random.key(5), 20_000),
                                       jax.random.key(6)))
    print(f"[score] trained mlp_2d: {train_steps} steps in {train_s:.1f}s, relative error {rel:.4f}",
          file=sys.stderr, flush=True)
    net_fn = _NoiseNet(S.batched(net), proc)
    record["trained_net"] = {"train_steps": train_steps, "train_s": train_s,
                             "relative_score_error": rel,
                             "table": table(net_fn, proc, exact, n, seeds, reps, "net")}
    return record


class _NoiseNet(eqx.Module):
    """The noise-predicting net as a score (the samplers' default ``prediction``)."""

    net: Any
    proc: Any

    def __call__(self, x, t):
        return S.convert(self.net(x, t), x, t, self.proc, "noise", "score")


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small n, 1 seed, 1 rep, short training")
    parser.add_argument("--out", default=str(HERE / "results" / "score.json"))
    parser.add_argument("--n", type=int, default=None, help="draws per set (2000; quick 1000)")
    parser.add_argument("--seeds", type=int, default=None, help="sampler seeds per cell (3; quick 1)")
    parser.add_argument("--reps", type=int, default=None, help="timed calls per cell (5; quick 1)")
    parser.add_argument("--train-steps", type=int, default=None, help="DSM steps (3000; quick 300)")
    args = parser.parse_args(argv)
    record = suite_score(quick=args.quick, n=args.n, seeds=args.seeds, reps=args.reps,
                         train_steps=args.train_steps)
    text = json.dumps(record, indent=2)
    print(text)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(text + "\n")
    return record


if __name__ == "__main__":
    main()
