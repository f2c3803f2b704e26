"""Side-by-side benchmarks of our samplers and NumPyro's, in one process.

Usage (from the repository root)::

    python bench/run.py nuts          # JSON on stdout, also written to bench/results/nuts.json
    python bench/run.py nuts --reps 1 --num-warmup 200 --num-samples 200   # quick smoke run

Suites are registered in :data:`SUITES` (name -> function returning the JSON record); an
unknown suite name is an error that lists them. See ``bench/README.md`` for what is measured.
"""

from __future__ import annotations

import argparse
import inspect
import json
import sys
import time
from pathlib import Path
from typing import Any, Callable

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
# ``python bench/run.py`` puts bench/ first on sys.path, where bench/models.py would shadow
# the library's ``models`` package; import the benchmark modules as the ``bench`` package.
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != HERE]
sys.path.insert(0, str(ROOT))

import arviz  # noqa: E402
import jax  # noqa: E402
import numpy as np  # noqa: E402
from numpyro.handlers import seed, trace  # noqa: E402
from numpyro.infer import MCMC  # noqa: E402
from numpyro.infer import NUTS as NumPyroNUTS  # noqa: E402

import inference  # noqa: E402
from bench.common import CompileClock, machine_info, median_summary, safe_ratio  # noqa: E402
from bench.models import MODELS  # noqa: E402
from bench.startup import STARTUP_MODELS  # noqa: E402

RESULTS_DIR = HERE / "results"


# ---------------------------------------------------------------------------------------
# measurements shared by suites
# ---------------------------------------------------------------------------------------


def latent_site_names(model: Callable, data: dict[str, Any]) -> list[str]:
    """Names of the sampled (not observed, not deterministic) sites of ``model(**data)``."""
    tr = trace(seed(model, 0)).get_trace(**data)
    return [
        name
        for name, site in tr.items()
        if site["type"] == "sample" and not site["is_observed"]
    ]


def min_bulk_ess(samples: dict[str, Any], sites: list[str]) -> tuple[float, dict[str, float]]:
    """Smallest bulk ESS over all scalar components of ``sites`` (draws (chains, draws, ...)),
    with ArviZ's rank-normalised bulk ESS; also the minimum per site."""
    posterior = {name: np.asarray(samples[name]) for name in sites}
    ess = arviz.ess(arviz.from_dict(posterior=posterior), method="bulk")
    per_site = {name: float(np.min(ess[name].values)) for name in sites}
    return min(per_site.values()), per_site


# ---------------------------------------------------------------------------------------
# suite: nuts
# ---------------------------------------------------------------------------------------


def _nuts_ours(model, data, sites, key_seed, num_warmup, num_samples, num_chains):
    clock = CompileClock()
    t0 = time.perf_counter()
    with clock:
        result = inference.infer(
            model,
            method=inference.NUTS(),
            num_samples=num_samples,
            num_warmup=num_warmup,
            num_chains=num_chains,
            key=jax.random.key(key_seed),
            progress=False,
            **data,
        )
        jax.block_until_ready((result.samples, result.stats))
    wall = time.perf_counter() - t0
    stats = {k: np.asarray(v) for k, v in result.stats.items()}
    ess, ess_per_site = min_bulk_ess(result.samples, sites)
    run_s = float(result.timing["run"])
    n_grad = int(stats["n_grad"].sum())
    return {
        "key_seed": key_seed,
        "compile_s": float(result.timing["compile"]),
        "run_s": run_s,
        # The same clock as NumPyro's: the whole infer() call minus JAX's compile events
        # (includes initialisation and constraining of the draws, which "run_s" leaves out).
        "wall_s": wall,
        "compile_events_s": clock.seconds,
        "wall_minus_compile_s": wall - clock.seconds,
        "xla_compilations": clock.events,
        "min_bulk_ess": ess,
        "ess_per_s": ess / run_s,
        "ess_per_s_wall_minus_compile": ess / (wall - clock.seconds),
        "n_grad_sampling": n_grad,
        "ess_per_1000_grad": 1000.0 * ess / n_grad,
        "divergences": int(stats["diverging"].sum()),
        "warmup_divergences": int(np.asarray(result.tuning["warmup_divergences"])),
        "mean_steps_per_draw": float(stats["n_steps"].mean()),
        "mean_tree_depth": float(stats["tree_depth"].mean()),
        "mean_accept_prob": float(stats["acceptance_rate"].mean()),
        "step_size_per_chain": [float(s) for s in np.asarray(result.tuning["step_size"])],
        "min_bulk_ess_per_site": ess_per_site,
    }


def _nuts_numpyro(mcmc, data, sites, key_seed):
    # Compile time. NumPyro's MCMC does NOT reuse its compiled program across `.run` calls
    # (checked with jax.log_compiles(): every run re-traces and re-compiles `_fori_collect_loop`,
    # because `fori_collect` wraps its body in a fresh `jax.jit` each call, and that wrapper is a
    # static argument of the jitted loop), so "first run minus second run" would not measure
    # compilation. Instead we time the whole `run` and subtract the time JAX itself reports
    # for tracing, lowering and XLA compilation inside it (jax.monitoring events, the ones
    # behind `jax.log_compiles()`), merged so nested spans count once. We reuse one MCMC
    # object per model on purpose: `xla_compilations` > 0 on repetitions 2 and 3 records the
    # recompilation in the output.
    clock = CompileClock()
    t0 = time.perf_counter()
    with clock:
        mcmc.run(
            jax.random.PRNGKey(key_seed),
            extra_fields=("num_steps", "diverging", "accept_prob", "adapt_state.step_size"),
            **data,
        )
        samples = mcmc.get_samples(group_by_chain=True)
        extra = mcmc.get_extra_fields(group_by_chain=True)
        jax.block_until_ready((samples, extra))
    wall = time.perf_counter() - t0
    compile_s = clock.seconds
    run_s = wall - compile_s
    ess, ess_per_site = min_bulk_ess(samples, sites)
    num_steps = np.asarray(extra["num_steps"])
    n_grad = int(num_steps.sum())
    step_size = np.asarray(extra["adapt_state.step_size"])
    return {
        "key_seed": key_seed,
        "compile_s": compile_s,
        "run_s": run_s,
        "wall_s": wall,
        "compile_events_s": compile_s,
        "wall_minus_compile_s": run_s,
        "xla_compilations": clock.events,
        "min_bulk_ess": ess,
        "ess_per_s": ess / run_s,
        "ess_per_s_wall_minus_compile": ess / run_s,
        "n_grad_sampling": n_grad,
        "ess_per_1000_grad": 1000.0 * ess / n_grad,
        "divergences": int(np.asarray(extra["diverging"]).sum()),
        "mean_steps_per_draw": float(num_steps.mean()),
        # NumPyro does not report depth; log2(steps + 1) is the depth of a full tree.
        "mean_log2_steps_plus_1": float(np.log2(num_steps + 1).mean()),
        "mean_accept_prob": float(np.asarray(extra["accept_prob"]).mean()),
        "step_size_per_chain": [float(s) for s in step_size[:, -1]],
        "min_bulk_ess_per_site": ess_per_site,
    }


def suite_nuts(reps: int = 3, num_warmup: int = 1000, num_samples: int = 1000,
               num_chains: int = 4, models: list[str] | None = None) -> dict[str, Any]:
    """Our NUTS vs NumPyro's NUTS (vectorized chains) on the benchmark models."""
    results = []
    for name in models or list(MODELS):
        model, data = MODELS[name]()
        sites = latent_site_names(model, data)
        mcmc = MCMC(
            NumPyroNUTS(model),
            num_warmup=num_warmup,
            num_samples=num_samples,
            num_chains=num_chains,
            chain_method="vectorized",
            progress_bar=False,
        )
        ours_reps, np_reps = [], []
        for r in range(reps):
            key_seed = 1000 + r
            # Alternate the order so that neither library always runs first (warm caches).
            order = ("ours", "numpyro") if r % 2 == 0 else ("numpyro", "ours")
            for lib in order:
                if lib == "ours":
                    rec = _nuts_ours(model, data, sites, key_seed, num_warmup, num_samples,
                                     num_chains)
                    ours_reps.append(rec)
                else:
                    rec = _nuts_numpyro(mcmc, data, sites, key_seed)
                    np_reps.append(rec)
                print(f"[nuts] {name} rep {r} {lib}: compile {rec['compile_s']:.2f}s "
                      f"run {rec['run_s']:.2f}s ess {rec['min_bulk_ess']:.0f} "
                      f"grads {rec['n_grad_sampling']} div {rec['divergences']}",
                      file=sys.stderr, flush=True)
        ours, theirs = median_summary(ours_reps), median_summary(np_reps)
        results.append(
            {
                "model": name,
                "latent_sites": sites,
                "config": {"num_warmup": num_warmup, "num_samples": num_samples,
                           "num_chains": num_chains, "reps": reps},
                "ours": ours,
                "numpyro": theirs,
                "ratio": {
                    "ess_per_s": safe_ratio(ours["ess_per_s"], theirs["ess_per_s"]),
                    "ess_per_1000_grad": safe_ratio(ours["ess_per_1000_grad"],
                                                     theirs["ess_per_1000_grad"]),
                    "ess_per_s_wall_minus_compile": safe_ratio(
                        ours["ess_per_s_wall_minus_compile"],
                        theirs["ess_per_s_wall_minus_compile"]),
                    "run_s": safe_ratio(ours["run_s"], theirs["run_s"]),
                    "compile_s": safe_ratio(ours["compile_s"], theirs["compile_s"]),
                    "compile_events_s": safe_ratio(ours["compile_events_s"],
                                                    theirs["compile_events_s"]),
                },
            }
        )
    return {"suite": "nuts", "machine": machine_info(), "results": results}


# ---------------------------------------------------------------------------------------
# suite: vae (bench/vae.py)
# ---------------------------------------------------------------------------------------


def suite_vae(reps: int = 7, block_steps: int = 200, **_ignored: Any) -> dict[str, Any]:
    """One VAE training step (ELBO, IWAE-8): ours vs NumPyro SVI vs hand-written JAX.

    ``reps`` timed blocks of ``block_steps`` steps per contestant; see ``bench/vae.py``.
    """
    from bench.vae import suite_vae as run_vae

    record = run_vae(reps=reps, block_steps=block_steps)
    return {"suite": record.pop("suite"), "machine": machine_info(), **record}


# ---------------------------------------------------------------------------------------
# suite: langevin (bench/langevin.py)
# ---------------------------------------------------------------------------------------


def suite_langevin(reps: int = 3, **_ignored: Any) -> dict[str, Any]:
    """Langevin kernels on a 100-d ill-conditioned Gaussian: MALA ours vs BlackJAX
    throughput, ESS per gradient of tuned kernels; ``--reps 1`` is the quick mode."""
    from bench.langevin import suite_langevin as run_langevin

    record = run_langevin(reps=reps)
    return {"suite": record.pop("suite"), "machine": machine_info(), **record}


# ---------------------------------------------------------------------------------------
# suites in their own modules (each also runs standalone: python bench/<name>.py)
# ---------------------------------------------------------------------------------------


def suite_flows(quick: bool = False, **_ignored: Any) -> dict[str, Any]:
    """Flow-guide VI vs mean-field VI, NeuTra vs NUTS on centred eight schools."""
    from bench.flows import suite_flows as run

    record = run(quick=quick)
    return {"suite": record.pop("suite"), "machine": machine_info(), **record}


def suite_flow_matching(quick: bool = False, **_ignored: Any) -> dict[str, Any]:
    """NFE vs energy distance for 1- and 2-rectified flows on 2-D targets."""
    from bench.flow_matching import suite_flow_matching as run

    record = run(quick=quick)
    return {"suite": record.pop("suite"), "machine": machine_info(), **record}


def suite_score(quick: bool = False, reps: int | None = None, **_ignored: Any) -> dict[str, Any]:
    """NFE vs energy distance of the score samplers (exact mixture score, trained net)."""
    from bench.score import suite_score as run

    record = run(quick=quick, reps=reps)
    return {"suite": record.pop("suite", "score"), "machine": machine_info(), **record}


def suite_sharding(quick: bool = False, reps: int | None = None, **_ignored: Any) -> dict[str, Any]:
    """MALA (10,000 chains) and VAE fit throughput on 1, 2, 4 devices."""
    from bench.sharding import suite_sharding as run

    if quick:
        return run(devices=(1, 2), reps=reps or 2, chains=2000, samples=50, vi_steps=100)
    return run(reps=reps or 5)


def suite_startup(quick: bool = False, reps: int | None = None, num_warmup: int = 1000,
                  num_samples: int = 1000, num_chains: int = 4,
                  models: list[str] | None = None, **_ignored: Any) -> dict[str, Any]:
    """Wall time of the first, second and warm-cache first NUTS call, ours vs NumPyro,
    each in fresh processes (imports timed apart)."""
    from bench.startup import suite_startup as run

    record = run(reps=reps, quick=quick, num_warmup=num_warmup, num_samples=num_samples,
                 num_chains=num_chains, models=models)
    return {"suite": record.pop("suite"), "machine": machine_info(), **record}


def suite_enum(reps: int | None = None, num_warmup: int = 1000, num_samples: int = 1000,
               num_chains: int = 4, models: list[str] | None = None,
               **_ignored: Any) -> dict[str, Any]:
    """NUTS on models with enumerated discrete sites (a mixture, a scan HMM), ours vs
    NumPyro's: ESS/s and compile time."""
    from bench.enum import suite_enum as run

    record = run(reps=reps, num_warmup=num_warmup, num_samples=num_samples,
                 num_chains=num_chains, models=models)
    return {"suite": record.pop("suite"), "machine": machine_info(), **record}


def suite_discrete_vi(quick: bool = False, reps: int | None = None,
                      **_ignored: Any) -> dict[str, Any]:
    """Discrete-latent VI (SBN, GMM, AIR-like): our gradient strategies vs NumPyro's
    TraceGraph/TraceEnum ELBOs vs hand-written JAX: ms/step, gradient variance, time to a
    target ELBO (see ``bench/discrete_vi.py``)."""
    from bench.discrete_vi import suite_discrete_vi as run

    return run(quick=quick, reps=reps)


#: Suite name -> function returning the JSON-able record (keyword arguments from the CLI).
SUITES: dict[str, Callable[..., dict[str, Any]]] = {
    "nuts": suite_nuts,
    "vae": suite_vae,
    "langevin": suite_langevin,
    "flows": suite_flows,
    "flow_matching": suite_flow_matching,
    "score": suite_score,
    "sharding": suite_sharding,
    "startup": suite_startup,
    "enum": suite_enum,
    "discrete_vi": suite_discrete_vi,
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("suite", help="one of: " + ", ".join(SUITES))
    parser.add_argument("--reps", type=int, default=None,
                        help="repetitions (nuts: 3, langevin: 3, startup: 3, 1 = quick mode) "
                             "or timed blocks (vae: 7)")
    parser.add_argument("--block-steps", type=int, default=None,
                        help="vae: optimizer steps per timed block (200)")
    parser.add_argument("--num-warmup", type=int, default=1000)
    parser.add_argument("--num-samples", type=int, default=1000)
    parser.add_argument("--num-chains", type=int, default=4)
    parser.add_argument("--models", nargs="*", default=None,
                        help="subset of: " + ", ".join(MODELS)
                             + " (startup: " + ", ".join(STARTUP_MODELS) + ")")
    parser.add_argument("--quick", action="store_true",
                        help="small budgets (flows, flow_matching, score, sharding, startup)")
    parser.add_argument("--no-save", action="store_true",
                        help="do not write bench/results/<suite>.json")
    args = parser.parse_args(argv)
    if args.suite not in SUITES:
        parser.error(f"unknown suite {args.suite!r}; available suites: {', '.join(SUITES)}")
    if args.models:
        from bench.enum import ENUM_MODELS

        known = {"startup": STARTUP_MODELS, "enum": ENUM_MODELS}.get(args.suite, MODELS)
        unknown = [m for m in args.models if m not in known]
        if unknown:
            parser.error(f"unknown model(s) {unknown}; available: {', '.join(known)}")
    suite = SUITES[args.suite]
    options = {"reps": args.reps, "block_steps": args.block_steps,
               "quick": True if args.quick else None}
    accepted = inspect.signature(suite).parameters
    for name, value in options.items():
        if value is not None and name not in accepted:
            parser.error(f"--{name.replace('_', '-')} does not apply to suite {args.suite!r}")
    record = suite(num_warmup=args.num_warmup, num_samples=args.num_samples,
                   num_chains=args.num_chains, models=args.models,
                   **{k: v for k, v in options.items() if v is not None})
    text = json.dumps(record, indent=2)
    print(text)
    if not args.no_save:
        RESULTS_DIR.mkdir(parents=True, exist_ok=True)
        (RESULTS_DIR / f"{args.suite}.json").write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
