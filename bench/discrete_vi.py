"""Suite ``discrete_vi``: gradient estimators for discrete latents, ours vs NumPyro vs hand-written.

Usage (from the repository root)::

    python bench/run.py discrete_vi              # ~10 minutes on 2 CPU cores
    python bench/run.py discrete_vi --quick      # tiny budgets (a smoke test)
    python bench/discrete_vi.py --models gmm --reps 3

Problems (each a :class:`bench.discrete_vi_common.Problem`): the sigmoid belief network
(``bench/discrete_vi_sbn.py``), the Gaussian mixture (``bench/discrete_vi_gmm.py``) and, when
``bench/discrete_vi_air.py`` is importable, the AIR-like model. Every contestant of a problem
trains the same parameters from the same initial values with ``optax.adam`` on the same data.

Per contestant (one process, contestants in rotating order per repetition):

* ``compile_s``: the first call of the compiled chunk of steps (trace, compile and one step).
* Training for the problem's wall-time budget in chunks of 1, 2, 4, ... steps up to ``n``
  (``n`` chosen so that a chunk takes about 1/30 of the budget, from a timed pilot chunk of 5
  steps), then chunks of ``n``, so that fast convergence is resolved too; after each chunk the
  problem's ``evaluate`` (a low-variance ELBO, fixed key) runs *outside* the clock.
  ``ms_per_step``: median over the full chunks of chunk time / ``n``. ``curve``: ``(seconds, steps,
  elbo)`` after each chunk, seconds counting training only. ``elbo_at_budget``: the ELBO of
  the last evaluation within the budget.
* ``grad_variance``: ``num_estimates`` (64) gradient estimates at the common initial
  parameters, on a fixed minibatch: per top-level parameter group, the mean over its
  coordinates of the per-coordinate variance (and the signal ``mean_sq_norm``, SNR).
* ``seconds_to_target``: the training seconds at the first evaluation at or above the target
  ELBO (``null`` if never within the budget); ``steps_to_target`` the optimizer steps there
  (median over the repetitions that reached it), which separates variance from step cost.

The target ELBO (unless the problem fixes one): ``initial + 0.95 (best - initial)`` where
``best`` is the highest ELBO at the budget among NumPyro's contestants (median over
repetitions) and ``initial`` the ELBO at the initial parameters. So NumPyro's best estimator
reaches it within its budget by construction; it is not tuned to ours. ``target_all`` (the
same with the best final ELBO over *all* contestants) and the times to it are reported too.

Per problem: ``speedup_vs_numpyro`` = NumPyro's best ``seconds_to_target`` / ours' best (with
the contestants named); when NumPyro's never reaches the target, ``null`` with the reason and
``speedup_lower_bound`` = NumPyro's budget / ours' time (labelled as a bound).
``step_time_vs_hand``: ours' ``ms_per_step`` / the hand-written one of the same strategy
(``default`` is compared with ``reinforce``, the library's default for discrete sites).
Numbers are medians over ``--reps`` repetitions (per-repetition values kept).
"""

from __future__ import annotations

import argparse
import importlib
import json
import math
import statistics
import sys
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
if __name__ == "__main__":  # run as a script: import the benchmark modules as the package
    sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != HERE]
    sys.path.insert(0, str(HERE.parent))

import jax
import jax.numpy as jnp

from bench.common import machine_info
from bench.discrete_vi_common import (
    Contestant,
    Problem,
    gradient_variance,
    median_or_none,
)

#: problem name -> module exposing ``problem(quick: bool) -> Problem``
PROBLEM_MODULES = {"sbn": "bench.discrete_vi_sbn", "gmm": "bench.discrete_vi_gmm",
                   "air": "bench.discrete_vi_air"}
TARGET_FRACTION = 0.95
EVALS_PER_BUDGET = 30


def load_problems(quick: bool, models: list[str] | None = None) -> tuple[list[Problem], dict]:
    """The problems to run and ``{name: reason}`` for those that could not be loaded."""
    names = list(PROBLEM_MODULES) if not models else models
    unknown = [m for m in names if m not in PROBLEM_MODULES]
    if unknown:
        raise ValueError(f"discrete_vi: unknown model(s) {unknown}; choose from "
                         f"{list(PROBLEM_MODULES)}.")
    problems, absent = [], {}
    for name in names:
        try:
            module = importlib.import_module(PROBLEM_MODULES[name])
        except ImportError as err:
            absent[name] = f"{PROBLEM_MODULES[name]} is not importable: {err}"
            continue
        problems.append(module.problem(quick))
    return problems, absent


def _chunk_runner(c: Contestant):
    def run(state, key, n):
        return jax.lax.fori_loop(0, n, lambda i, s: c.step(s, jax.random.fold_in(key, i)), state)

    return jax.jit(run)


def measure(problem: Problem, c: Contestant, key: jax.Array, eval_key: jax.Array,
            num_estimates: int, with_variance: bool) -> dict[str, Any]:
    """Train ``c`` for ``problem.budget_s`` seconds and measure it (see the module docstring)."""
    run = _chunk_runner(c)
    state0 = c.init()
    t0 = time.perf_counter()
    jax.block_until_ready(run(state0, key, jnp.int32(1)))
    compile_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    jax.block_until_ready(run(state0, key, jnp.int32(5)))
    pilot = (time.perf_counter() - t0) / 5
    n_max = max(1, int(problem.budget_s / EVALS_PER_BUDGET / max(pilot, 1e-6)))

    state = state0
    initial = problem.evaluate(c.params(state), eval_key)
    curve = [(0.0, 0, initial)]
    seconds, steps, per_step = 0.0, 0, []
    chunk = 0
    while seconds < problem.budget_s:
        n = min(n_max, 2 ** chunk)  # 1, 2, 4, ... steps, then chunks of ~budget / 30
        t0 = time.perf_counter()
        state = jax.block_until_ready(run(state, jax.random.fold_in(key, chunk), jnp.int32(n)))
        dt = time.perf_counter() - t0
        seconds += dt
        steps += n
        chunk += 1
        if n == n_max:
            per_step.append(dt / n)
        elbo = problem.evaluate(c.params(state), eval_key)
        curve.append((seconds, steps, elbo))
        if not math.isfinite(elbo):
            break
    within = [e for s, _, e in curve if s <= problem.budget_s]
    out = {
        "compile_s": compile_s,
        "ms_per_step": 1000 * statistics.median(per_step or [pilot]),
        "steps_per_chunk": n_max,
        "steps": steps,
        "initial_elbo": initial,
        "elbo_at_budget": within[-1],
        "final_elbo": curve[-1][2],
        "curve": [[round(s, 4), k, e] for s, k, e in curve],
    }
    if with_variance:
        out["grad_variance"] = gradient_variance(c.grad, c.params(state0), jax.random.key(7),
                                                 num_estimates)
    return out


def seconds_to(curve: list, target: float, column: int = 0) -> float | None:
    """Training seconds (``column=1``: steps) at the first evaluation at or above ``target``
    (``None`` if never)."""
    for row in curve:
        if row[2] >= target:
            return row[column]
    return None


def _best(rows: dict, names: list[str]) -> tuple[str | None, float | None]:
    timed = [(rows[n]["seconds_to_target"], n) for n in names
             if rows[n]["seconds_to_target"] is not None]
    if not timed:
        return None, None
    t, n = min(timed)
    return n, t


def run_problem(problem: Problem, reps: int, num_estimates: int, seed: int = 0,
                only: list[str] | None = None) -> dict:
    """All contestants of ``problem`` (or those named in ``only``), ``reps`` times in rotating
    order; the per-problem record."""
    if only:
        problem = problem._replace(contestants=[c for c in problem.contestants if c.name in only])
    names = [c.name for c in problem.contestants]
    runs: dict[str, list[dict]] = {n: [] for n in names}
    eval_key = jax.random.key(12345)
    failed: dict[str, str] = {}
    t_start = time.perf_counter()
    for rep in range(reps):
        order = problem.contestants[rep % len(names):] + problem.contestants[:rep % len(names)]
        for c in order:
            if c.name in failed:
                continue
            print(f"[discrete_vi] {time.perf_counter() - t_start:6.0f}s {problem.name} rep "
                  f"{rep + 1}/{reps}: {c.name}", file=sys.stderr)
            try:
                runs[c.name].append(measure(problem, c, jax.random.key(seed + rep), eval_key,
                                            num_estimates, with_variance=rep == 0))
            except Exception as err:  # noqa: BLE001  (a failure is reported, not fatal)
                failed[c.name] = f"{type(err).__name__}: {err}"[:500]
                print(f"[discrete_vi] {c.name} failed: {failed[c.name]}", file=sys.stderr)
    names = [n for n in names if n not in failed]
    if not names:
        return {"failed": failed, "skipped": dict(problem.skipped),
                "wall_s": time.perf_counter() - t_start}

    by = {c.name: c for c in problem.contestants}
    initial = statistics.median(r["initial_elbo"] for n in names for r in runs[n])
    final = {n: statistics.median(r["elbo_at_budget"] for r in runs[n]) for n in names}
    numpyro = [n for n in names if by[n].library == "numpyro"]
    ours = [n for n in names if by[n].library == "ours"]
    finite = [v for v in final.values() if math.isfinite(v)]
    best_all = max(finite) if finite else initial
    target_all = initial + TARGET_FRACTION * (best_all - initial)
    if math.isfinite(problem.target_elbo):
        target, how = problem.target_elbo, "fixed by the problem"
    elif numpyro:
        best_np = max(final[n] for n in numpyro)
        target = initial + TARGET_FRACTION * (best_np - initial)
        how = (f"initial ELBO + {TARGET_FRACTION} x (NumPyro's best ELBO at the budget - "
               "initial), medians over repetitions")
    else:
        target = target_all
        how = f"initial ELBO + {TARGET_FRACTION} x (best ELBO at the budget - initial)"

    rows = {}
    for n in names:
        reps_n = runs[n]
        ttt = [seconds_to(r["curve"], target) for r in reps_n]
        tta = [seconds_to(r["curve"], target_all) for r in reps_n]
        row = {
            "library": by[n].library,
            "strategy": by[n].strategy,
            "ms_per_step": statistics.median(r["ms_per_step"] for r in reps_n),
            "compile_s": statistics.median(r["compile_s"] for r in reps_n),
            "elbo_at_budget": final[n],
            "seconds_to_target": median_or_none(ttt) if all(t is not None for t in ttt) else None,
            "reached_target": sum(t is not None for t in ttt),
            "steps_to_target": median_or_none([seconds_to(r["curve"], target, 1)
                                               for r in reps_n]),
            "seconds_to_target_all": (median_or_none(tta) if all(t is not None for t in tta)
                                      else None),
            "grad_variance": reps_n[0].get("grad_variance"),
            "per_rep": reps_n,
        }
        rows[n] = row

    best_np_name, best_np_t = _best(rows, numpyro)
    best_ours_name, best_ours_t = _best(rows, ours)
    speed: dict[str, Any] = {"numpyro_best": best_np_name, "ours_best": best_ours_name,
                             "numpyro_seconds": best_np_t, "ours_seconds": best_ours_t}
    if not numpyro:
        speed.update(value=None, reason="no NumPyro contestant runs on this model")
    elif best_ours_t is None:
        speed.update(value=None, reason="none of ours reached the target within the budget")
    elif best_np_t is None:
        speed.update(value=None, reason="no NumPyro estimator reached the target within the "
                     "budget", speedup_lower_bound=problem.budget_s / max(best_ours_t, 1e-9),
                     lower_bound_note="NumPyro's budget / ours' time to target: a lower bound")
    else:
        speed["value"] = best_np_t / max(best_ours_t, 1e-9)

    hand = {by[n].strategy: n for n in names if by[n].library == "hand"}
    vs_hand = {}
    for n in ours:
        peer = hand.get("reinforce" if by[n].strategy == "default" else by[n].strategy)
        if peer is not None:
            vs_hand[n] = {"hand": peer,
                          "ratio": rows[n]["ms_per_step"] / rows[peer]["ms_per_step"]}
    return {
        "budget_s": problem.budget_s,
        "initial_elbo": initial,
        "target_elbo": target,
        "target_rule": how,
        "target_all": target_all,
        "speedup_vs_numpyro": speed,
        "step_time_vs_hand": vs_hand,
        "skipped": {n: why for n, why in problem.skipped},
        "failed": failed,
        "wall_s": time.perf_counter() - t_start,
        "contestants": rows,
    }


def suite_discrete_vi(quick: bool = False, reps: int | None = None,
                      models: list[str] | None = None, num_estimates: int | None = None,
                      only: list[str] | None = None, **_ignored: Any) -> dict[str, Any]:
    """Run the suite; returns the JSON record (``quick``: tiny budgets, 8 gradient estimates;
    ``only``: run only the contestants with these names).

    Example (a smoke run of one model, about a minute)::

        record = suite_discrete_vi(quick=True, models=["gmm"])
        record["results"]["gmm"]["speedup_vs_numpyro"]
    """
    reps = reps or 1
    num_estimates = num_estimates or (8 if quick else 64)
    t0 = time.perf_counter()
    problems, absent = load_problems(quick, models)
    results = {p.name: run_problem(p, reps, num_estimates, only=only) for p in problems}
    for name, why in absent.items():
        results[name] = {"absent": why}
    return {
        "suite": "discrete_vi",
        "machine": machine_info(),
        "quick": quick,
        "reps": reps,
        "num_estimates": num_estimates,
        "only": only,
        "wall_s": time.perf_counter() - t0,
        "results": results,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--reps", type=int, default=None)
    parser.add_argument("--models", nargs="*", default=None, help=", ".join(PROBLEM_MODULES))
    parser.add_argument("--out", default=str(HERE / "results" / "discrete_vi.json"))
    parser.add_argument("--no-save", action="store_true")
    args = parser.parse_args(argv)
    record = suite_discrete_vi(quick=args.quick, reps=args.reps, models=args.models)
    text = json.dumps(record, indent=2)
    print(text)
    if not args.no_save:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
