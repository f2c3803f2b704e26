"""Suite ``flow_matching``: NFE vs quality of 1-rectified and 2-rectified (reflow) flows.

Usage (from the repository root)::

    python bench/flow_matching.py            # full run, JSON on stdout and in
                                             # bench/results/flow_matching.json
    python bench/flow_matching.py --quick    # smoke run (small budgets), same output
    python bench/flow_matching.py --no-save

For each 2-D target of :mod:`models.toy2d` (8 Gaussians, two moons, checkerboard):

1. **1-rectified flow**: ``inference.flow_matching.train`` of a ``VelocityMLP`` (width
   ``width``, ``depth`` hidden layers) on independent pairs ``x0 ~ N(0, I)``, ``x1`` fresh
   target draws, straight path, Adam with cosine decay.
2. **2-rectified flow** (``reflow``): ``num_pairs`` couplings ``(x0, ODE_1(x0))`` with RK4 at
   ``coupling_steps`` steps, a field warm-started from the 1-rectified one and trained the
   same number of steps on the fixed pairs.
3. **Quality vs steps**: Euler at 1, 2, 4, 8, 16 and 100 steps (NFE = steps), plus Heun and
   RK4 at 100 NFE or fewer, and diffrax's adaptive Tsit5: energy distance
   (``inference.metrics.energy_distance``, V-statistic) between ``n_eval`` flow samples and
   ``n_eval`` exact target draws. Each value is the median over ``eval_reps`` independent
   evaluation sets (fresh ``x0`` and fresh ground truth). The **noise floor** is the energy
   distance between two independent exact sets of the same size (median, mean and sd over
   the same number of pairs): a flow cannot be told from the truth below it.
4. **Straightness** ``int_0^1 E|x1 - x0 - v(x_t, t)|^2 dt`` (RK4, 100 steps) of both flows.
5. **Time**: ms to sample ``n_eval`` points at each setting, compiled first (compile time
   excluded), median of ``time_reps`` calls blocked on the result.

``claim`` per target: ``ed_2rect[k] / ed_2rect[100]`` and the share of the 1-rectified
100-step quality that k Euler steps of the 2-rectified flow reach, ``(ed_1rect[1] -
ed_2rect[k]) / (ed_1rect[1] - ed_1rect[100])`` (1 = as good as 100 steps of the 1-rectified flow).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
# ``python bench/flow_matching.py`` puts bench/ first on sys.path, where bench/models.py
# would shadow the library's ``models`` package.
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != HERE]
sys.path.insert(0, str(ROOT))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402

from inference import flow_matching as fm  # noqa: E402
from inference.metrics import energy_distance  # noqa: E402
from models import toy2d  # noqa: E402

RESULTS = HERE / "results" / "flow_matching.json"
EULER_STEPS = (1, 2, 4, 8, 16, 100)
SOLVERS = (("heun", 1), ("heun", 2), ("heun", 4), ("heun", 50), ("rk4", 1), ("rk4", 2),
           ("rk4", 6), ("rk4", 12), ("rk4", 25))

FULL = dict(train_steps=5000, batch_size=256, width=128, depth=3, lr=2e-3, num_pairs=20000,
            coupling_steps=32, n_eval=3000, eval_reps=3, time_reps=5)
QUICK = dict(train_steps=1500, batch_size=256, width=64, depth=2, lr=3e-3, num_pairs=5000,
             coupling_steps=16, n_eval=1000, eval_reps=2, time_reps=3)


def _log(msg: str) -> None:
    print(f"[flow_matching] {msg}", file=sys.stderr, flush=True)


def machine_info() -> dict[str, Any]:
    import equinox
    import jaxlib

    info = {
        "jax_devices": [str(d) for d in jax.devices()],
        "jax_backend": jax.default_backend(),
        "cpu_count": os.cpu_count(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "jax_enable_x64": bool(jax.config.jax_enable_x64),
        "versions": {"jax": jax.__version__, "jaxlib": jaxlib.__version__,
                     "equinox": equinox.__version__, "optax": optax.__version__,
                     "numpy": np.__version__},
    }
    try:
        import diffrax

        info["versions"]["diffrax"] = diffrax.__version__
    except ImportError:
        info["versions"]["diffrax"] = None
    return info


def _timed(fn, reps: int) -> tuple[Any, float, float]:
    """(result, compile+first-call s, median ms of ``reps`` further calls)."""
    t0 = time.perf_counter()
    out = jax.block_until_ready(fn())
    first = time.perf_counter() - t0
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        jax.block_until_ready(fn())
        times.append(1000 * (time.perf_counter() - t0))
    return out, first, statistics.median(times)


def _evaluate(field, sampler, cfg, key, settings) -> dict[str, Any]:
    """Median energy distance over eval sets, NFE and sample time for each setting."""
    n, reps = cfg["n_eval"], cfg["eval_reps"]
    keys = jax.random.split(key, reps)
    x0s = [jax.random.normal(jax.random.fold_in(k, 0), (n, 2)) for k in keys]
    truths = [sampler(jax.random.fold_in(k, 1), n) for k in keys]
    ed = jax.jit(energy_distance)
    out = {}
    for name, method, steps in settings:
        eds, nfes = [], []
        for r in range(reps):
            x1, nfe = fm.sample(field, x0s[r], steps, method)
            eds.append(float(ed(x1, truths[r])))
            nfes.append(int(nfe))
        _, first_s, ms = _timed(lambda: fm.sample(field, x0s[0], steps, method)[0],
                                cfg["time_reps"])
        out[name] = {"method": method, "steps": steps, "nfe": int(statistics.median(nfes)),
                     "energy_distance": statistics.median(eds), "energy_distance_per_rep": eds,
                     "sample_ms": ms, "first_call_s": first_s}
    return out


def _noise_floor(sampler, cfg, key) -> dict[str, float]:
    ed = jax.jit(energy_distance)
    n, reps = cfg["n_eval"], max(cfg["eval_reps"], 10)
    vals = [float(ed(sampler(jax.random.fold_in(key, 2 * i), n),
                     sampler(jax.random.fold_in(key, 2 * i + 1), n))) for i in range(reps)]
    return {"median": statistics.median(vals), "mean": float(np.mean(vals)),
            "sd": float(np.std(vals, ddof=1)), "pairs": reps}


def run_target(name: str, cfg: dict[str, Any], seed: int) -> dict[str, Any]:
    sampler = toy2d.TARGETS[name]
    key = jax.random.fold_in(jax.random.key(seed), list(toy2d.TARGETS).index(name))
    k_init, k_train, k_pairs, k_reflow, k_eval, k_floor, k_straight = jax.random.split(key, 7)
    steps = cfg["train_steps"]
    opt = optax.adam(optax.cosine_decay_schedule(cfg["lr"], steps, alpha=0.05))
    v0 = fm.VelocityMLP(2, k_init, width=cfg["width"], depth=cfg["depth"])

    t0 = time.perf_counter()
    r1 = fm.train(v0, k_train, sampler, steps=steps, batch_size=cfg["batch_size"], optimizer=opt)
    jax.block_until_ready(r1.losses)
    train1_s = time.perf_counter() - t0
    _log(f"{name}: 1-rectified trained in {train1_s:.1f}s, loss {float(r1.losses[-200:].mean()):.4f}")

    x0_pairs = jax.random.normal(k_pairs, (cfg["num_pairs"], 2))
    t0 = time.perf_counter()
    r2 = fm.reflow(r1.field, k_reflow, x0_pairs, ode_steps=cfg["coupling_steps"], method="rk4",
                   steps=steps, batch_size=cfg["batch_size"], optimizer=opt)
    jax.block_until_ready(r2.losses)
    train2_s = time.perf_counter() - t0
    _log(f"{name}: 2-rectified (couplings + training) in {train2_s:.1f}s, loss "
         f"{float(r2.losses[-200:].mean()):.4f}")

    settings = [(f"euler_{s}", "euler", s) for s in EULER_STEPS]
    settings += [(f"{m}_{s}", m, s) for m, s in SOLVERS]
    settings += [("adaptive_tsit5", "adaptive", 4)]
    x_straight = jax.random.normal(k_straight, (cfg["n_eval"], 2))
    flows = {}
    for label, field in (("1-rectified", r1.field), ("2-rectified", r2.field)):
        res = _evaluate(field, sampler, cfg, k_eval, settings)
        flows[label] = {"straightness": float(fm.straightness(field, x_straight, 100, "rk4")),
                        "results": res}
        _log(f"{name} {label}: " + ", ".join(
            f"{s}:{res[f'euler_{s}']['energy_distance']:.4f}" for s in EULER_STEPS)
            + f" | adaptive nfe {res['adaptive_tsit5']['nfe']}: "
              f"{res['adaptive_tsit5']['energy_distance']:.4f}"
            + f" | straightness {flows[label]['straightness']:.4f}")

    e1 = {s: flows["1-rectified"]["results"][f"euler_{s}"]["energy_distance"] for s in EULER_STEPS}
    e2 = {s: flows["2-rectified"]["results"][f"euler_{s}"]["energy_distance"] for s in EULER_STEPS}
    claim = {
        "ed_2rect_over_2rect_100": {str(s): e2[s] / e2[100] for s in EULER_STEPS},
        "ed_1rect_over_1rect_100": {str(s): e1[s] / e1[100] for s in EULER_STEPS},
        "share_of_1rect_100_quality_2rect": {
            str(s): (e1[1] - e2[s]) / (e1[1] - e1[100]) for s in EULER_STEPS},
        "euler1_improvement_1rect_over_2rect": e1[1] / e2[1],
    }
    return {"train_1rect_s": train1_s, "reflow_s": train2_s,
            "final_loss_1rect": float(r1.losses[-200:].mean()),
            "final_loss_2rect": float(r2.losses[-200:].mean()),
            "noise_floor": _noise_floor(sampler, cfg, k_floor),
            "flows": flows, "claim": claim}


def suite_flow_matching(quick: bool = False, seed: int = 0,
                        targets: tuple[str, ...] = tuple(toy2d.TARGETS), **_ignored: Any) -> dict[str, Any]:
    """NFE vs energy distance of 1- and 2-rectified flows on the toy 2-D targets."""
    cfg = dict(QUICK if quick else FULL)
    results = {}
    for name in targets:
        results[name] = run_target(name, cfg, seed)
    table = {name: {label: {str(s): r["flows"][label]["results"][f"euler_{s}"]["energy_distance"]
                            for s in EULER_STEPS} for label in ("1-rectified", "2-rectified")}
             for name, r in results.items()}
    return {"suite": "flow_matching", "machine": machine_info(),
            "config": {**cfg, "quick": quick, "seed": seed, "euler_steps": list(EULER_STEPS),
                       "solvers": [list(s) for s in SOLVERS], "adaptive": "diffrax Tsit5, "
                       "PID rtol=atol=1e-4, dt0=1/4", "path": "straight, sigma=0",
                       "optimizer": f"adam(cosine_decay({cfg['lr']}, alpha=0.05))"},
            "euler_energy_distance": table, "results": results}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small budgets (smoke run)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--targets", nargs="*", default=None,
                        help="subset of: " + ", ".join(toy2d.TARGETS))
    parser.add_argument("--no-save", action="store_true", help="do not write " + str(RESULTS))
    args = parser.parse_args(argv)
    targets = tuple(args.targets) if args.targets else tuple(toy2d.TARGETS)
    unknown = [t for t in targets if t not in toy2d.TARGETS]
    if unknown:
        parser.error(f"unknown target(s) {unknown}; available: {', '.join(toy2d.TARGETS)}")
    record = suite_flow_matching(quick=args.quick, seed=args.seed, targets=targets)
    text = json.dumps(record, indent=2)
    print(text)
    if not args.no_save:
        RESULTS.parent.mkdir(parents=True, exist_ok=True)
        RESULTS.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
