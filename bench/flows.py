"""Flow benchmarks: flow-guide VI vs mean-field VI, and NeuTra vs NUTS.

Run standalone: ``python bench/flows.py [--quick] [--no-save]``. JSON goes to stdout
(progress lines to stderr) and, unless ``--no-save``, to ``bench/results/flows.json``.

Part ``vi`` -- ``inference.infer(model, method=VI(guide=..., steps=S))`` with
``guide="normal"`` (mean-field) and ``guide="flow"`` (``guide_options`` kinds below), same
optimizer (``optax.adam(lr)``) and steps, on

* ``funnel_d10``: Neal's funnel, ``v ~ N(0, 3)``, ``x_i | v ~ N(0, exp(v / 2))``, 9 ``x``'s;
* ``banana``: ``x1 ~ N(0, 2)``, ``x2 | x1 ~ N(x1^2 / 4, 1)`` (2-d, curved; ``log Z = 0``).

Both targets are normalised (``log Z = 0``), so the ELBO is ``-KL(q || p)``. Per run, from
``N`` draws of the fitted guide: ``elbo`` (mean of ``lp - log_q``), ``elbo_se``,
``log_z_is`` (importance-sampling ``log mean exp(lp - log_q)``, ideally 0), ``pareto_k``
(ArviZ's ``psislw`` on the log weights; below 0.7 the importance weights are usable, below
0.5 the fit is good), ``fit_s`` (the fit's wall time, ``Result.timing["fit"]``, including its
compilation), and ``ratio_*`` fields for flow against mean-field in the same run.

Part ``neutra`` -- centred eight schools (``models.posteriordb``,
``eight_schools-eight_schools_centered``, a funnel in ``(tau, theta)``): ``NUTS()`` against
``NeuTra(flow=..., kernel=NUTS())``, 4 chains, same warmup and draws. Reported:
``divergences`` (kept draws), ``min_bulk_ess`` (ArviZ bulk ESS, min over every scalar of
``mu``, ``tau``, ``theta``), ``ess_tau``, ``run_s`` (the kernel's sampling run, compiled
beforehand), ``total_s`` (the whole ``infer`` call, including NeuTra's VI fit and all
compilation), ``ess_per_s`` (``min_bulk_ess / run_s``), ``ess_per_s_total``, and
``ess_per_1000_grad``.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from typing import Any

import arviz
import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
import optax

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import inference  # noqa: E402
from inference.methods.neutra import NeuTra  # noqa: E402
from models import posteriordb  # noqa: E402


def funnel(d: int = 10):
    def model():
        v = numpyro.sample("v", dist.Normal(0.0, 3.0))
        numpyro.sample("x", dist.Normal(0.0, jnp.exp(v / 2)).expand([d - 1]).to_event(1))

    model.__name__ = f"funnel_d{d}"
    return model


def banana():
    x1 = numpyro.sample("x1", dist.Normal(0.0, 2.0))
    numpyro.sample("x2", dist.Normal(x1**2 / 4, 1.0))


def _log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def _vi_run(model, guide: str, options: dict | None, steps: int, lr: float, n_draws: int,
            seed: int) -> dict[str, Any]:
    method = inference.VI(guide=guide, guide_options=options, steps=steps,
                          optimizer=optax.adam(lr))
    t0 = time.perf_counter()
    r = inference.infer(model, method=method, num_samples=n_draws, num_chains=1, key=seed,
                        progress=False)
    wall = time.perf_counter() - t0
    log_w = np.asarray(r.stats["lp"] - r.stats["log_q"], dtype=np.float64).reshape(-1)
    finite = np.isfinite(log_w)
    log_w = log_w[finite]
    _, k = arviz.psislw(log_w.copy())
    log_z = float(np.logaddexp.reduce(log_w) - math.log(log_w.size))
    return {
        "elbo": float(np.mean(log_w)),
        "elbo_se": float(np.std(log_w) / math.sqrt(log_w.size)),
        "log_z_is": log_z,
        "pareto_k": float(k),
        "fit_s": float(r.timing["fit"]),
        "wall_s": wall,
        "final_objective_mean_last_10pct": float(np.mean(np.asarray(
            r.tuning["objective"][-max(1, steps // 10):]))),
        "nonfinite_draws": int((~finite).sum()),
    }


def bench_vi(quick: bool) -> dict[str, Any]:
    steps = 1500 if quick else 5000
    n_draws = 2000 if quick else 10000
    lr = 3e-3
    flows = [("flow_affine_coupling", {"kind": "affine_coupling"}),
             ("flow_iaf", {"kind": "iaf"})]
    if not quick:
        flows.append(("flow_spline_coupling", {"kind": "spline_coupling"}))
    out: dict[str, Any] = {"settings": {"steps": steps, "draws": n_draws, "optimizer":
                                         f"adam({lr})", "flow_layers": 4, "flow_width": 32}}
    for name, model in (("funnel_d10", funnel(10)), ("banana", banana)):
        rows: dict[str, Any] = {}
        _log(f"vi {name}: mean-field")
        rows["mean_field"] = _vi_run(model, "normal", None, steps, lr, n_draws, 0)
        for label, options in flows:
            _log(f"vi {name}: {label}")
            rows[label] = _vi_run(model, "flow", options, steps, lr, n_draws, 0)
        mf = rows["mean_field"]
        for label, _ in flows:
            rows[label]["ratio_fit_s_vs_mean_field"] = rows[label]["fit_s"] / mf["fit_s"]
            rows[label]["elbo_gain_vs_mean_field"] = rows[label]["elbo"] - mf["elbo"]
        out[name] = rows
    return out


def _mcmc_summary(r, run_s: float, total_s: float) -> dict[str, Any]:
    idata = r.to_arviz()
    ess = arviz.ess(idata, var_names=["mu", "tau", "theta"], method="bulk")
    min_ess = float(min(float(np.min(ess[v].values)) for v in ("mu", "tau", "theta")))
    n_grad = int(np.sum(np.asarray(r.stats["n_grad"])))
    return {
        "divergences": int(np.sum(np.asarray(r.stats["diverging"]))),
        "min_bulk_ess": min_ess,
        "ess_tau": float(ess["tau"].values),
        "run_s": run_s,
        "total_s": total_s,
        "ess_per_s": min_ess / run_s,
        "ess_per_s_total": min_ess / total_s,
        "n_grad_sampling": n_grad,
        "ess_per_1000_grad": 1000 * min_ess / n_grad,
        "timing": {k: float(v) for k, v in r.timing.items()},
    }


def bench_neutra(quick: bool) -> dict[str, Any]:
    model, data = posteriordb.load("eight_schools-eight_schools_centered")
    warmup = draws = 500 if quick else 1000
    vi_steps = 2000 if quick else 5000
    reps = 1 if quick else 3
    kinds = ["iaf"] if quick else ["iaf", "affine_coupling"]
    out: dict[str, Any] = {"settings": {"num_warmup": warmup, "num_samples": draws,
                                        "num_chains": 4, "vi_steps": vi_steps,
                                        "optimizer": "adam(3e-3)", "reps": reps,
                                        "keys": list(range(1000, 1000 + reps))}}
    methods = {"nuts": inference.NUTS()}
    for kind in kinds:
        methods[f"neutra_{kind}"] = NeuTra(flow=kind, kernel=inference.NUTS(), vi_steps=vi_steps,
                                           optimizer=optax.adam(3e-3))
    for label, method in methods.items():
        per_rep = []
        for rep in range(reps):
            _log(f"neutra: {label} rep {rep}")
            t0 = time.perf_counter()
            r = inference.infer(model, **data, method=method, num_samples=draws,
                                num_warmup=warmup, num_chains=4, key=1000 + rep, progress=False)
            total = time.perf_counter() - t0
            per_rep.append(_mcmc_summary(r, float(r.timing["run"]), total))
        row = {k: float(np.median([p[k] for p in per_rep])) for k in per_rep[0] if k != "timing"}
        row["per_rep"] = per_rep
        out[label] = row
    for label in methods:
        if label != "nuts":
            out[label]["ratio_ess_per_s_vs_nuts"] = out[label]["ess_per_s"] / out["nuts"]["ess_per_s"]
            out[label]["ratio_ess_per_s_total_vs_nuts"] = (out[label]["ess_per_s_total"]
                                                           / out["nuts"]["ess_per_s_total"])
    return out


def suite_flows(quick: bool = False, parts: tuple[str, ...] = ("vi", "neutra"),
                **_ignored: Any) -> dict[str, Any]:
    """Flow-guide VI vs mean-field VI (funnel, banana) and NeuTra vs NUTS (eight schools)."""
    unknown = set(parts) - {"vi", "neutra"}
    if unknown:
        raise ValueError(f"unknown part(s) {sorted(unknown)}; use vi, neutra")
    result: dict[str, Any] = {
        "suite": "flows",
        "quick": quick,
        "jax": jax.__version__,
        "numpyro": numpyro.__version__,
        "backend": jax.default_backend(),
        "devices": [str(d) for d in jax.devices()],
    }
    if "vi" in parts:
        result["vi"] = bench_vi(quick)
    if "neutra" in parts:
        result["neutra"] = bench_neutra(quick)
    return result


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small budgets (a smoke run)")
    parser.add_argument("--no-save", action="store_true", help="do not write bench/results")
    parser.add_argument("--parts", default="vi,neutra", help="comma-separated: vi, neutra")
    args = parser.parse_args(argv)
    try:
        result = suite_flows(args.quick, tuple(p for p in args.parts.split(",") if p))
    except ValueError as e:
        parser.error(str(e))
    text = json.dumps(result, indent=2)
    print(text)
    if not args.no_save:
        path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results", "flows.json")
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "w") as f:
            f.write(text + "\n")
    return result


if __name__ == "__main__":
    main()
