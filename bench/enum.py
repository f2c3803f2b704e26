"""Suite ``enum``: NUTS on models with enumerated discrete sites, ours vs NumPyro's.

    PPL_JAX_COMPILATION_CACHE=off python bench/run.py enum     # 3 reps, 1000 + 1000, 4 chains
    python bench/run.py enum --reps 1 --num-warmup 300 --num-samples 300   # smoke run

Both libraries sum the discrete sites out with NumPyro's enumeration (``funsor``): ours
through ``ppl.potential`` inside ``inference.infer(model, method=inference.NUTS())``, the
peer as ``numpyro.infer.MCMC(NUTS(model), chain_method="vectorized")``, which enumerates a
model's discrete sites by itself. Models:

* ``mixture_K2_N200``: a two-component Gaussian mixture, the assignment enumerated in a plate
  of 200 observations (:func:`mixture`);
* ``hmm_T50``: a two-state Gaussian HMM written with ``numpyro.contrib.control_flow.scan``,
  50 steps, every fifth observation masked out (:func:`hmm`).

Per repetition and library: ``compile_s`` (ours: ``Result.timing["compile"]``; NumPyro: the
JAX compile events inside ``run``, as suite ``nuts`` measures them), ``run_s`` (ours:
``timing["run"]``; NumPyro: wall minus compile), the smallest bulk ESS over label-invariant
summaries (component/state parameters sorted by location, so that label switching between
chains does not count as poor mixing), ``ess_per_s``. Ours also reports
``discrete_draws_s``: drawing the discrete sites back after sampling (compilation
included), which NumPyro's MCMC does not do (its ``Predictive(infer_discrete=True)`` would).
Every run compiles from scratch: our in-memory programs and JAX's caches are cleared
before each, and the order alternates between repetitions (ours first in even ones), since
whichever runs first in the process also pays one-off costs (imports inside tracing, small
eager programs). Medians over reps; ``ratio``: ``ess_per_s`` ours/NumPyro (target >= 1);
``median_compile_speedup``: NumPyro/ours median compile time (target >= 1; run with
``PPL_JAX_COMPILATION_CACHE=off`` so nothing comes from disk); ``cold_compile_speedup``:
the same for the first repetition alone (ours first in a new process), and with our discrete
draws' time added.
"""

from __future__ import annotations

import time
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np


def mixture(y: Any, K: int = 2) -> None:
    """Gaussian mixture: weights ``Dirichlet(1)``, locations ``Normal(0, 5)``, one scale
    ``HalfNormal(2)``; each observation's component enumerated."""
    import numpyro
    import numpyro.distributions as dist

    w = numpyro.sample("w", dist.Dirichlet(jnp.ones(K)))
    mu = numpyro.sample("mu", dist.Normal(0.0, 5.0).expand([K]).to_event(1))
    s = numpyro.sample("s", dist.HalfNormal(2.0))
    with numpyro.plate("data", y.shape[0]):
        z = numpyro.sample("z", dist.Categorical(w), infer={"enumerate": "parallel"})
        numpyro.sample("y", dist.Normal(mu[z], s), obs=y)


def hmm(y: Any, mask: Any) -> None:
    """Two-state Gaussian HMM through ``scan``: transition rows ``Dirichlet(1)``, state
    locations ``Normal(0, 3)``, unit observation noise, masked observations skipped."""
    import numpyro
    import numpyro.distributions as dist
    from numpyro.contrib.control_flow import scan

    trans = numpyro.sample("trans", dist.Dirichlet(jnp.ones(2)).expand([2]).to_event(1))
    locs = numpyro.sample("locs", dist.Normal(0.0, 3.0).expand([2]).to_event(1))

    def step(x_prev, t):
        x = numpyro.sample("x", dist.Categorical(trans[x_prev]), infer={"enumerate": "parallel"})
        with numpyro.handlers.mask(mask=mask[t]):
            numpyro.sample("obs", dist.Normal(locs[x], 1.0), obs=y[t])
        return x, None

    scan(step, 0, jnp.arange(y.shape[0]))


def _mixture_data() -> dict[str, Any]:
    rng = np.random.default_rng(0)
    z = rng.random(200) < 0.35
    return {"y": jnp.asarray(np.where(z, 2.0, -1.5) + rng.standard_normal(200))}


def _hmm_data() -> dict[str, Any]:
    rng = np.random.default_rng(1)
    x, states = 0, []
    for _ in range(50):
        x = int(rng.random() < (0.85 if x == 1 else 0.15))
        states.append(x)
    y = np.where(np.array(states) == 1, 2.0, -1.0) + rng.standard_normal(50)
    return {"y": jnp.asarray(y), "mask": jnp.asarray(np.arange(50) % 5 != 4)}


def _mixture_invariant(samples: dict[str, Any]) -> dict[str, np.ndarray]:
    mu, w = np.asarray(samples["mu"]), np.asarray(samples["w"])
    order = np.argsort(mu, axis=-1)
    return {"mu_sorted": np.take_along_axis(mu, order, -1),
            "w_sorted": np.take_along_axis(w, order, -1), "s": np.asarray(samples["s"])}


def _hmm_invariant(samples: dict[str, Any]) -> dict[str, np.ndarray]:
    locs, trans = np.asarray(samples["locs"]), np.asarray(samples["trans"])
    order = np.argsort(locs, axis=-1)
    stay = np.diagonal(trans, axis1=-2, axis2=-1)
    return {"locs_sorted": np.take_along_axis(locs, order, -1),
            "stay_sorted": np.take_along_axis(stay, order, -1)}


#: name -> (model, data function, label-invariant summaries of the draws).
ENUM_MODELS: dict[str, tuple[Callable, Callable[[], dict], Callable]] = {
    "mixture_K2_N200": (mixture, _mixture_data, _mixture_invariant),
    "hmm_T50": (hmm, _hmm_data, _hmm_invariant),
}


def _min_ess(summaries: dict[str, np.ndarray]) -> float:
    import arviz

    ess = arviz.ess(arviz.from_dict(posterior=summaries), method="bulk")
    return float(min(np.min(ess[k].values) for k in summaries))


def _ours(model, data, invariant, seed, num_warmup, num_samples, num_chains) -> dict[str, Any]:
    import inference

    t0 = time.perf_counter()
    result = inference.infer(model, method=inference.NUTS(), num_warmup=num_warmup,
                             num_samples=num_samples, num_chains=num_chains,
                             key=jax.random.key(seed), progress=False, diagnostics=False,
                             **data)
    jax.block_until_ready(result.samples)
    wall = time.perf_counter() - t0
    ess = _min_ess(invariant(result.samples))
    run_s = float(result.timing["run"])
    return {"key_seed": seed, "compile_s": float(result.timing["compile"]), "run_s": run_s,
            "discrete_draws_s": float(result.timing.get("discrete_draws", float("nan"))),
            "wall_s": wall, "min_bulk_ess": ess, "ess_per_s": ess / run_s,
            "divergences": int(np.asarray(result.stats["diverging"]).sum())}


def _numpyro(model, data, invariant, seed, num_warmup, num_samples, num_chains) -> dict[str, Any]:
    from numpyro.infer import MCMC, NUTS

    from bench.common import CompileClock

    mcmc = MCMC(NUTS(model), num_warmup=num_warmup, num_samples=num_samples,
                num_chains=num_chains, chain_method="vectorized", progress_bar=False)
    clock = CompileClock()
    t0 = time.perf_counter()
    with clock:
        mcmc.run(jax.random.PRNGKey(seed), extra_fields=("diverging",), **data)
        samples = mcmc.get_samples(group_by_chain=True)
        jax.block_until_ready(samples)
    wall = time.perf_counter() - t0
    run_s = wall - clock.seconds
    ess = _min_ess(invariant(samples))
    return {"key_seed": seed, "compile_s": clock.seconds, "run_s": run_s, "wall_s": wall,
            "min_bulk_ess": ess, "ess_per_s": ess / run_s,
            "divergences": int(np.asarray(mcmc.get_extra_fields()["diverging"]).sum())}


def _fresh() -> None:
    """Forget every compiled program of this process (ours and JAX's)."""
    from inference.programs.cache import PROGRAMS

    PROGRAMS.clear()
    jax.clear_caches()


def suite_enum(reps: int | None = None, num_warmup: int = 1000, num_samples: int = 1000,
               num_chains: int = 4, models: list[str] | None = None) -> dict[str, Any]:
    """Ours vs NumPyro's enumerated NUTS on :data:`ENUM_MODELS`: medians over ``reps``.

    Example (not run here: minutes):
        >>> record = suite_enum(reps=1, num_warmup=100, num_samples=100)  # doctest: +SKIP
        >>> sorted(record["models"])  # doctest: +SKIP
        ['hmm_T50', 'mixture_K2_N200']
    """
    from bench.common import median_summary, safe_ratio

    reps = 3 if reps is None else reps
    out: dict[str, Any] = {}
    for name in models or list(ENUM_MODELS):
        model, make_data, invariant = ENUM_MODELS[name]
        data = make_data()
        ours, theirs = [], []
        for r in range(reps):
            args = (model, data, invariant, 100 + r, num_warmup, num_samples, num_chains)
            # Every run compiles from scratch (our in-memory programs and JAX's caches
            # cleared first), and the order alternates: whoever runs first in the process
            # also pays its one-off costs (imports inside tracing, small eager programs).
            for run in ((_ours, ours), (_numpyro, theirs))[::1 if r % 2 == 0 else -1]:
                _fresh()
                run[1].append(run[0](*args))
        a, b = median_summary(ours), median_summary(theirs)
        # Cold compile: the first repetition (ours first in the process); run with
        # PPL_JAX_COMPILATION_CACHE=off so that no program comes from disk. Medians: every
        # repetition compiles afresh, in alternating order.
        a["cold_compile_s"], b["cold_compile_s"] = ours[0]["compile_s"], theirs[0]["compile_s"]
        a["cold_discrete_draws_s"] = ours[0]["discrete_draws_s"]
        out[name] = {"ours": a, "numpyro": b, "ratio": {
            "ess_per_s": safe_ratio(a["ess_per_s"], b["ess_per_s"]),
            "cold_compile_speedup": safe_ratio(b["cold_compile_s"], a["cold_compile_s"]),
            "cold_compile_plus_discrete_draws_speedup": safe_ratio(
                b["cold_compile_s"], a["cold_compile_s"] + a["cold_discrete_draws_s"]),
            "median_compile_speedup": safe_ratio(b["compile_s"], a["compile_s"]),
            "median_compile_plus_discrete_draws_speedup": safe_ratio(
                b["compile_s"], a["compile_s"] + a["discrete_draws_s"]),
        }}
    import os

    return {"suite": "enum", "settings": {
        "reps": reps, "num_warmup": num_warmup, "num_samples": num_samples,
        "num_chains": num_chains,
        "PPL_JAX_COMPILATION_CACHE": os.environ.get("PPL_JAX_COMPILATION_CACHE")},
        "models": out}
