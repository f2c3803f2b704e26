"""Suite ``startup``: time to the first (and second) NUTS result, ours vs NumPyro.

    python bench/run.py startup                   # 3 reps, 1000 + 1000, 4 chains
    python bench/run.py startup --quick --no-save # 1 rep, 200 + 200 (smoke run)

What a user waits for between starting Python and holding draws, compilation included:
``inference.infer(model, **data, method=inference.NUTS(), num_chains=4, progress=False)``
against ``numpyro.infer.MCMC(NUTS(model), num_chains=4, chain_method="vectorized",
progress_bar=False).run(key, **data)`` (blocked on ``get_samples()``), on three models:

* ``eight_schools_noncentered`` (``models.posteriordb``);
* ``logistic_regression_N1000_D10`` (``bench.models``, N=1000, D=10);
* ``ar1_scan_T100``: an AR(1) state-space model written with
  ``numpyro.contrib.control_flow.scan`` (:func:`ar1_scan`), 100 observations.

Every figure comes from a fresh Python process (this file run with ``--child``, from the
repository root, ``MPLBACKEND=Agg``, otherwise the parent's environment), which prints one
``RESULT {json}`` line. Imports are timed apart (``import_s``: jax, numpyro and the library;
``model_import_s``: the model modules) and never count in a call's wall time. Per repetition
and model:

ours
    (1) ``first_call_s``: a fresh process with ``PPL_JAX_COMPILATION_CACHE=<a new empty
    tempfile.mkdtemp() directory>``, first ``infer`` call on the original data;
    (2) ``second_call_s``: the same process, new data of the same shapes and another key;
    (3) ``warm_cache_first_call_s``: a new process pointed at the same (now warm) directory,
    first call on the original data with the key of (1).
NumPyro (with ``PPL_JAX_COMPILATION_CACHE=off``: importing ``models`` imports our library)
    (1) a fresh process, first ``run`` (building the ``MCMC`` object included);
    (2) the same process, new data, the key of ours (2), on a new ``MCMC`` object with the
    same settings: a second ``run`` of the same vectorized ``MCMC`` object on new data raises
    in NumPyro 0.22 (``HMC.init`` wraps the kernel's already ``vmap``-ed sample function in
    another ``vmap``), and ``jit_model_args=True`` cannot trace eight schools (``J`` is used
    as a Python int). NumPyro recompiles on every ``run`` anyway;
    (3) NumPyro has no persistent cache by default, so its (3) is again a cold first call in
    another fresh process;
    ``numpyro_with_jax_cache_first_call_s`` (informational): JAX's own persistent cache
    switched on by hand (``jax_compilation_cache_dir`` = a new temporary directory,
    ``jax_persistent_cache_min_compile_time_secs=0``), filled by a first process
    (``jax_cache_fill_first_call_s``) and timed in a second one.

``JAX_COMPILATION_CACHE_DIR`` is removed from the children's environment, so that only the
settings above decide which cache is used. Each call also records the XLA compilations and
persistent-cache hits/misses JAX reports (``jax.monitoring``), the JAX cache directory in
effect after the call and, for ours, ``Result.timing``. Medians over ``--reps``; ``per_rep``
holds the raw values. ``ratio``: ``first_call`` = ours/NumPyro (target <= 1),
``second_call_speedup`` = NumPyro/ours (target >= 10), ``warm_cache_speedup`` = NumPyro (3) /
ours (3) (target >= 10).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
# ``python bench/startup.py`` puts bench/ first on sys.path, where bench/models.py would
# shadow the library's ``models`` package; import the benchmark modules as ``bench``.
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != HERE]
sys.path.insert(0, str(ROOT))

RESULT_PREFIX = "RESULT "
FIRST_KEY_SEED = 1000   # + repetition: key of (1) and (3), both libraries
SECOND_KEY_SEED = 2000  # + repetition: key of (2), both libraries


# ---------------------------------------------------------------------------------------
# models: (variant) -> (model, data); variant 0 is the original data, 1 new data of the
# same shapes. Heavy imports stay inside the functions (the parent and the children's
# import clock must not pay for them at module import).
# ---------------------------------------------------------------------------------------


def ar1_scan(y: Any) -> None:
    """AR(1) state-space model, non-centred, written with ``numpyro.contrib.control_flow.scan``.

    ``phi ~ Uniform(-1, 1)``, ``sigma ~ HalfNormal(1)`` (state noise), ``tau ~ HalfNormal(1)``
    (observation noise), ``x0 ~ Normal(0, 1)``; for ``t = 1..T``: ``z[t] ~ Normal(0, 1)``,
    ``x[t] = phi * x[t-1] + sigma * z[t]``, ``y[t] ~ Normal(x[t], tau)``. ``T`` is the static
    length of ``y``.
    """
    import numpyro
    import numpyro.distributions as dist
    from numpyro.contrib.control_flow import scan

    T = int(y.shape[0])
    phi = numpyro.sample("phi", dist.Uniform(-1.0, 1.0))
    sigma = numpyro.sample("sigma", dist.HalfNormal(1.0))
    tau = numpyro.sample("tau", dist.HalfNormal(1.0))
    x0 = numpyro.sample("x0", dist.Normal(0.0, 1.0))

    def step(x_prev: Any, y_t: Any) -> tuple[Any, Any]:
        z = numpyro.sample("z", dist.Normal(0.0, 1.0))
        x = phi * x_prev + sigma * z
        numpyro.sample("y", dist.Normal(x, tau), obs=y_t)
        return x, x

    scan(step, x0, y, length=T)


def ar1_data(T: int = 100, seed: int = 0, phi: float = 0.8, sigma: float = 0.5,
             tau: float = 0.5) -> dict[str, Any]:
    """A series of :func:`ar1_scan` simulated from ``numpy.random.default_rng(seed)``."""
    import jax.numpy as jnp
    import numpy as np

    rng = np.random.default_rng(seed)
    x = np.empty(T)
    prev = rng.standard_normal()
    for t in range(T):
        prev = phi * prev + sigma * rng.standard_normal()
        x[t] = prev
    y = x + tau * rng.standard_normal(T)
    return {"y": jnp.asarray(y, dtype=float)}


def _eight_schools(variant: int) -> tuple[Callable, dict[str, Any]]:
    from models.posteriordb import load

    model, data = load("eight_schools_noncentered")
    return model, (data if variant == 0 else {**data, "y": data["y"] + 1.0})


def _logistic_regression(variant: int) -> tuple[Callable, dict[str, Any]]:
    from bench.models import logistic_regression, logistic_regression_data

    return logistic_regression, logistic_regression_data(N=1000, D=10, seed=variant)


def _ar1(variant: int) -> tuple[Callable, dict[str, Any]]:
    return ar1_scan, ar1_data(T=100, seed=variant)


#: Model name -> ``variant -> (model, data)``; variant 0 original data, 1 new data.
STARTUP_MODELS: dict[str, Callable[[int], tuple[Callable, dict[str, Any]]]] = {
    "eight_schools_noncentered": _eight_schools,
    "logistic_regression_N1000_D10": _logistic_regression,
    "ar1_scan_T100": _ar1,
}


# ---------------------------------------------------------------------------------------
# child process: one measurement
# ---------------------------------------------------------------------------------------


class _JaxEvents:
    """XLA compilations and persistent-cache hits/misses that JAX reports (jax.monitoring).

    ``xla_compile_s`` sums the backend-compile spans, which include reading an executable
    back from the persistent cache on a hit.
    """

    def __init__(self) -> None:
        from jax import monitoring

        self.reset()
        monitoring.register_event_listener(self._event)
        monitoring.register_event_duration_secs_listener(self._duration)

    def reset(self) -> None:
        self.counts = {"xla_compiles": 0, "cache_hits": 0, "cache_misses": 0}
        self.xla_compile_s = 0.0

    def _event(self, event: str, **kwargs: Any) -> None:
        if event == "/jax/compilation_cache/cache_hits":
            self.counts["cache_hits"] += 1
        elif event == "/jax/compilation_cache/cache_misses":
            self.counts["cache_misses"] += 1

    def _duration(self, event: str, duration: float, **kwargs: Any) -> None:
        if event == "/jax/core/compile/backend_compile_duration":
            self.counts["xla_compiles"] += 1
            self.xla_compile_s += duration

    def snapshot(self) -> dict[str, Any]:
        return {**self.counts, "xla_compile_s": self.xla_compile_s}


def _jsonable(timing: dict[str, Any]) -> dict[str, Any]:
    return {k: v if isinstance(v, (int, float, str, bool)) or v is None else str(v)
            for k, v in timing.items()}


def child(spec: dict[str, Any]) -> dict[str, Any]:
    """Run in a fresh process: import, then time ``spec["calls"]`` inference calls.

    ``spec``: ``lib`` ("ours" or "numpyro"), ``model``, ``calls`` (list of ``[variant,
    key_seed]``), ``num_warmup``, ``num_samples``, ``num_chains`` and, NumPyro only,
    ``jax_cache_dir`` (switch JAX's persistent cache on, in that directory).
    """
    ours = spec["lib"] == "ours"
    t0 = time.perf_counter()
    import jax
    import numpyro  # noqa: F401

    if ours:
        import inference
    else:
        from numpyro.infer import MCMC, NUTS
    jax.devices()  # backend start-up counts as import
    import_s = time.perf_counter() - t0

    t0 = time.perf_counter()
    import bench.models  # noqa: F401
    import models.posteriordb  # noqa: F401
    import numpyro.contrib.control_flow  # noqa: F401
    model_import_s = time.perf_counter() - t0

    if not ours and spec.get("jax_cache_dir"):
        jax.config.update("jax_compilation_cache_dir", spec["jax_cache_dir"])
        jax.config.update("jax_persistent_cache_min_compile_time_secs", 0)
    load = STARTUP_MODELS[spec["model"]]
    prepared = []
    for variant, key_seed in spec["calls"]:
        model, data = load(variant)
        key = jax.random.key(key_seed) if ours else jax.random.PRNGKey(key_seed)
        jax.block_until_ready((data, key))
        prepared.append((variant, key_seed, model, data, key))

    events = _JaxEvents()
    calls = []
    for variant, key_seed, model, data, key in prepared:
        events.reset()
        timing = None
        t0 = time.perf_counter()
        if ours:
            result = inference.infer(model, **data, method=inference.NUTS(),
                                     num_samples=spec["num_samples"],
                                     num_warmup=spec["num_warmup"],
                                     num_chains=spec["num_chains"], key=key, progress=False)
            jax.block_until_ready(result.samples)
            timing = _jsonable(dict(result.timing))
        else:
            # A new MCMC object per call: a second ``run`` of the same vectorized MCMC on new
            # data raises in NumPyro 0.22 (its NUTS kernel vmaps its sample function again).
            mcmc = MCMC(NUTS(model), num_warmup=spec["num_warmup"],
                        num_samples=spec["num_samples"], num_chains=spec["num_chains"],
                        chain_method="vectorized", progress_bar=False)
            mcmc.run(key, **data)
            jax.block_until_ready(mcmc.get_samples())
        wall_s = time.perf_counter() - t0
        calls.append({"wall_s": wall_s, "variant": variant, "key_seed": key_seed,
                      **events.snapshot(),
                      "jax_compilation_cache_dir": jax.config.jax_compilation_cache_dir,
                      **({"timing": timing} if ours else {})})
    return {"import_s": import_s, "model_import_s": model_import_s, "calls": calls}


# ---------------------------------------------------------------------------------------
# parent: fresh processes, repetitions, medians, ratios
# ---------------------------------------------------------------------------------------


def _spawn(spec: dict[str, Any], ppl_cache: str) -> dict[str, Any]:
    """Run :func:`child` in a fresh interpreter with ``PPL_JAX_COMPILATION_CACHE=ppl_cache``."""
    env = {**os.environ, "MPLBACKEND": "Agg", "PPL_JAX_COMPILATION_CACHE": ppl_cache}
    env.pop("JAX_COMPILATION_CACHE_DIR", None)
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child", json.dumps(spec)]
    proc = subprocess.run(cmd, env=env, cwd=ROOT, capture_output=True, text=True)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith(RESULT_PREFIX)]
    if proc.returncode or not lines:
        raise RuntimeError(f"startup child {spec['lib']} {spec['model']} failed "
                           f"(exit {proc.returncode}):\n{proc.stderr[-4000:]}")
    return json.loads(lines[-1][len(RESULT_PREFIX):])


def _count_files(directory: str) -> int:
    return sum(len(files) for _, _, files in os.walk(directory))


def _ours_rep(base: dict[str, Any], rep: int) -> dict[str, Any]:
    first, second = [0, FIRST_KEY_SEED + rep], [1, SECOND_KEY_SEED + rep]
    cache = tempfile.mkdtemp(prefix="ppl-startup-cache-")
    try:
        cold = _spawn({**base, "lib": "ours", "calls": [first, second]}, cache)
        files_after_cold = _count_files(cache)
        warm = _spawn({**base, "lib": "ours", "calls": [first]}, cache)
        files_after_warm = _count_files(cache)
    finally:
        shutil.rmtree(cache, ignore_errors=True)
    return {
        "import_s": cold["import_s"],
        "model_import_s": cold["model_import_s"],
        "first_call_s": cold["calls"][0]["wall_s"],
        "second_call_s": cold["calls"][1]["wall_s"],
        "warm_cache_import_s": warm["import_s"],
        "warm_cache_first_call_s": warm["calls"][0]["wall_s"],
        "cache_files_after_first_process": files_after_cold,
        "cache_files_after_warm_process": files_after_warm,
        "first_call": cold["calls"][0],
        "second_call": cold["calls"][1],
        "warm_cache_first_call": warm["calls"][0],
    }


def _numpyro_rep(base: dict[str, Any], rep: int) -> dict[str, Any]:
    first, second = [0, FIRST_KEY_SEED + rep], [1, SECOND_KEY_SEED + rep]
    spec = {**base, "lib": "numpyro"}
    cold = _spawn({**spec, "calls": [first, second]}, "off")
    again = _spawn({**spec, "calls": [first]}, "off")
    cache = tempfile.mkdtemp(prefix="numpyro-startup-jax-cache-")
    try:
        fill = _spawn({**spec, "calls": [first], "jax_cache_dir": cache}, "off")
        warm = _spawn({**spec, "calls": [first], "jax_cache_dir": cache}, "off")
        jax_cache_files = _count_files(cache)
    finally:
        shutil.rmtree(cache, ignore_errors=True)
    return {
        "import_s": cold["import_s"],
        "model_import_s": cold["model_import_s"],
        "first_call_s": cold["calls"][0]["wall_s"],
        "second_call_s": cold["calls"][1]["wall_s"],
        "warm_cache_first_call_s": again["calls"][0]["wall_s"],
        "jax_cache_fill_first_call_s": fill["calls"][0]["wall_s"],
        "numpyro_with_jax_cache_first_call_s": warm["calls"][0]["wall_s"],
        "jax_cache_files": jax_cache_files,
        "first_call": cold["calls"][0],
        "second_call": cold["calls"][1],
        "warm_cache_first_call": again["calls"][0],
        "jax_cache_fill_first_call": fill["calls"][0],
        "with_jax_cache_first_call": warm["calls"][0],
    }


def suite_startup(reps: int | None = None, quick: bool = False, num_warmup: int = 1000,
                  num_samples: int = 1000, num_chains: int = 4,
                  models: list[str] | None = None, **_ignored: Any) -> dict[str, Any]:
    """Cold, second and warm-cache first call, ours vs NumPyro, each in fresh processes.

    ``quick``: 200 warmup + 200 draws and one repetition (unless ``reps`` is given).
    """
    from bench.common import median_summary, safe_ratio

    if quick:
        num_warmup = num_samples = 200
    reps = reps or (1 if quick else 3)
    names = models or list(STARTUP_MODELS)
    unknown = [m for m in names if m not in STARTUP_MODELS]
    if unknown:
        raise ValueError(f"unknown model(s) {unknown}; available: {', '.join(STARTUP_MODELS)}")
    config = {"num_warmup": num_warmup, "num_samples": num_samples, "num_chains": num_chains,
              "reps": reps, "numpyro_chain_method": "vectorized",
              "numpyro_second_call": "new MCMC object, same process",
              "key_seeds": {"first_and_warm_cache": FIRST_KEY_SEED,
                            "second": SECOND_KEY_SEED, "plus": "repetition index"}}
    results = []
    for name in names:
        base = {"model": name, "num_warmup": num_warmup, "num_samples": num_samples,
                "num_chains": num_chains}
        ours_reps, np_reps = [], []
        for r in range(reps):
            # Alternate which library goes first, so neither always meets a warmer machine.
            for lib in (("ours", "numpyro") if r % 2 == 0 else ("numpyro", "ours")):
                if lib == "ours":
                    rec = _ours_rep(base, r)
                    ours_reps.append(rec)
                    extra = f"warm cache {rec['warm_cache_first_call_s']:.2f}s"
                else:
                    rec = _numpyro_rep(base, r)
                    np_reps.append(rec)
                    extra = (f"new process {rec['warm_cache_first_call_s']:.2f}s, "
                             f"JAX cache {rec['numpyro_with_jax_cache_first_call_s']:.2f}s")
                print(f"[startup] {name} rep {r} {lib}: import {rec['import_s']:.2f}s "
                      f"first {rec['first_call_s']:.2f}s second {rec['second_call_s']:.2f}s "
                      + extra, file=sys.stderr, flush=True)
        ours, theirs = median_summary(ours_reps), median_summary(np_reps)
        ratio = {
            "first_call": safe_ratio(ours["first_call_s"], theirs["first_call_s"]),
            "second_call_speedup": safe_ratio(theirs["second_call_s"], ours["second_call_s"]),
            "warm_cache_speedup": safe_ratio(theirs["warm_cache_first_call_s"],
                                              ours["warm_cache_first_call_s"]),
            "warm_cache_speedup_vs_numpyro_with_jax_cache": safe_ratio(
                theirs["numpyro_with_jax_cache_first_call_s"], ours["warm_cache_first_call_s"]),
            "import": safe_ratio(ours["import_s"], theirs["import_s"]),
        }
        targets = {
            "first_call_le_1": ratio["first_call"] is not None and ratio["first_call"] <= 1.0,
            "second_call_speedup_ge_10": (ratio["second_call_speedup"] or 0.0) >= 10.0,
            "warm_cache_speedup_ge_10": (ratio["warm_cache_speedup"] or 0.0) >= 10.0,
        }
        results.append({"model": name, "config": config, "ours": ours, "numpyro": theirs,
                        "ratio": ratio, "targets_met": targets})
    return {"suite": "startup", "config": config, "results": results}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--child", metavar="SPEC", help=argparse.SUPPRESS)
    parser.add_argument("--quick", action="store_true", help="1 rep, 200 warmup + 200 draws")
    parser.add_argument("--reps", type=int, default=None, help="repetitions (3)")
    parser.add_argument("--num-warmup", type=int, default=1000)
    parser.add_argument("--num-samples", type=int, default=1000)
    parser.add_argument("--num-chains", type=int, default=4)
    parser.add_argument("--models", nargs="*", default=None,
                        help="subset of: " + ", ".join(STARTUP_MODELS))
    parser.add_argument("--no-save", action="store_true",
                        help="do not write bench/results/startup.json")
    args = parser.parse_args(argv)
    if args.child:
        print(RESULT_PREFIX + json.dumps(child(json.loads(args.child))), flush=True)
        return 0
    # The suite itself runs through the runner, which saves the JSON with the machine's
    # description; this entry point only serves the child processes.
    parser.error("run the suite with: python bench/run.py startup [--quick] [--reps N] "
                 "[--models ...] [--no-save]")
    return 2


if __name__ == "__main__":
    sys.exit(main())
