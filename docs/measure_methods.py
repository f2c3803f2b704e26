"""Measures the figures of docs/choosing-a-method.md that bench/results/*.json lacks.

    python docs/measure_methods.py            # ~10 minutes on 2 idle CPU cores; writes
                                              # docs/measurements/methods.json
    python docs/measure_methods.py bimodal    # one part again (the others are kept)

Every run: ``inference.infer`` with ``progress=False`` and fixed keys, float32, 4 chains of
1000 warmup + 1000 draws unless said otherwise. Per run it records ``min_bulk_ess`` (the
smallest ArviZ bulk ESS over every scalar of every sampled site), ``n_grad`` (gradient
evaluations of the kept draws, all chains: ``stats["n_grad"]``), ``ess_per_1000_grad``,
``run_s`` and ``compile_s`` (``Result.timing``) and what the row of the guide needs:

* ``eight_schools``: the non-centred posterior (``models.posteriordb``) under NUTS, MALA,
  adjusted underdamped Langevin and tempered SMC (MALA moves); the centred one
  under NUTS (divergences: the funnel);
* ``bimodal``: ``x ~ 0.5 N(-4, 0.5) + 0.5 N(4, 0.5)`` (as a ``factor``): the share of draws
  with ``x > 0`` (exactly 0.5) under NUTS and SMC;
* ``evidence``: ``mu ~ N(0, 1)``, ``y_i ~ N(mu, 1)``, 20 points: SMC's ``log_evidence``
  against the closed form;
* ``gibbs``: ``z ~ Poisson(3)``, ``mu ~ N(0, 1)``, ``y ~ N(z + mu, 0.5)`` with ``y = 5.2``
  (a discrete site with an unbounded support, which no gradient method can sum out):
  ``Gibbs({"z": DiscreteMH(), "mu": MALA})``, 4 chains of 1000 + 10,000 sweeps (1000 kept
  sweeps gave an error of 2.4 MCSE once; two reruns of 10,000 with other keys, 0.7 and 0.4);
  ``P(z | y)`` exactly (``mu`` integrates out:
  ``y | z ~ N(z, sqrt(1.25))``) against the draws;
* ``learned``: the non-centred eight schools under ``Learned(source=NUTS(),
  flow="spline_coupling", correct="irmh")``: Pareto k, IRMH acceptance, ESS of the IRMH
  chains per 1000 gradients of the whole call (the source's included);
* ``large_data``: Bayesian logistic regression, N = 100,000, D = 5, under NUTS (full data)
  and SGLD (minibatches of 1,000 from the model's subsampled plate): the posterior mean of
  the coefficients against NUTS's, and the time per draw.
"""

from __future__ import annotations

import json
import math
import os
import platform
import sys
import time

import arviz as az
import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist

import inference
from models import posteriordb


def min_bulk_ess(result: inference.Result) -> float:
    ess = []
    for name, draws in result.samples.items():
        x = np.asarray(draws, dtype=np.float64).reshape(draws.shape[0], draws.shape[1], -1)
        for j in range(x.shape[-1]):
            ess.append(float(az.ess(x[..., j], method="bulk")))
    return min(ess)


def record(result: inference.Result, **extra: float) -> dict:
    out = {f"{k}_s": float(result.timing[k]) for k in ("compile", "run", "fit")
           if isinstance(result.timing.get(k), (int, float))}
    out.update(extra)
    if result.samples and next(iter(result.samples.values())).shape[0] > 1:
        out["min_bulk_ess"] = min_bulk_ess(result)
    if "n_grad" in result.stats:
        n_grad = float(np.asarray(result.stats["n_grad"]).sum())
        out["n_grad"] = n_grad
        if "min_bulk_ess" in out and n_grad > 0:
            out["ess_per_1000_grad"] = 1000.0 * out["min_bulk_ess"] / n_grad
    if "diverging" in result.stats:
        out["divergences"] = int(np.asarray(result.stats["diverging"]).sum())
    return out


def run(model, *args, method, key=0, **kwargs) -> inference.Result:
    t = time.perf_counter()
    r = inference.infer(model, *args, method=method, key=jax.random.key(key), progress=False,
                        **kwargs)
    jax.block_until_ready(r.samples)
    r.timing.setdefault("wall", time.perf_counter() - t)
    return r


def eight_schools() -> dict:
    model, data = posteriordb.load("eight_schools_noncentered")
    out = {}
    methods = {
        "NUTS": inference.NUTS(),
        "MALA": inference.MALA(),
        "Underdamped(adjusted=True)": inference.Underdamped(adjusted=True),
    }
    for name, m in methods.items():
        out[name] = record(run(model, **data, method=m, num_chains=4))
    smc = run(model, **data, method=inference.SMC(kernel="mala"), num_chains=4)
    out["SMC(kernel='mala')"] = record(smc, log_evidence=float(
        np.mean(np.asarray(smc.tuning["log_evidence"]))))
    centred, cdata = posteriordb.load("eight_schools_centered")
    out["NUTS, centred model"] = record(run(centred, **cdata, method=inference.NUTS(),
                                            num_chains=4))
    return out


def bimodal_model():
    x = numpyro.sample("x", dist.Normal(0.0, 10.0))
    mix = jnp.logaddexp(dist.Normal(-4.0, 0.5).log_prob(x), dist.Normal(4.0, 0.5).log_prob(x))
    numpyro.factor("mix", mix + math.log(0.5) - dist.Normal(0.0, 10.0).log_prob(x))


def bimodal() -> dict:
    out = {}
    for name, m in {"NUTS": inference.NUTS(), "SMC(kernel='mala')": inference.SMC(kernel="mala")}.items():
        r = run(bimodal_model, method=m, num_chains=4)
        x = np.asarray(r.samples["x"])
        per_chain = (x > 0).mean(axis=1)
        out[name] = {"share_x_pos": float((x > 0).mean()),
                     "share_x_pos_per_chain": [float(s) for s in per_chain],
                     "run_s": float(r.timing["run"])}
    out["exact_share_x_pos"] = 0.5
    return out


def evidence() -> dict:
    rng = np.random.default_rng(0)
    y = rng.normal(1.0, 1.0, size=20).astype(np.float32)

    def model(y):
        mu = numpyro.sample("mu", dist.Normal(0.0, 1.0))
        with numpyro.plate("data", y.shape[0]):
            numpyro.sample("y", dist.Normal(mu, 1.0), obs=y)

    n = y.shape[0]
    cov = np.eye(n) + np.ones((n, n))
    sign, logdet = np.linalg.slogdet(cov)
    exact = float(-0.5 * (n * math.log(2 * math.pi) + logdet + y @ np.linalg.solve(cov, y)))
    r = run(model, jnp.asarray(y), method=inference.SMC(kernel="mala"), num_chains=4)
    est = np.asarray(r.tuning["log_evidence"], dtype=np.float64).reshape(-1)
    return {"exact_log_evidence": exact, "smc_log_evidence_per_chain": est.tolist(),
            "smc_mean_abs_error": float(np.mean(np.abs(est - exact))),
            "run_s": float(r.timing["run"])}


def gibbs() -> dict:
    from functools import partial

    y = 5.2

    def model(y=None):
        z = numpyro.sample("z", dist.Poisson(3.0))
        mu = numpyro.sample("mu", dist.Normal(0.0, 1.0))
        numpyro.sample("y", dist.Normal(z + mu, 0.5), obs=y)

    ks = np.arange(60)
    logp = np.array([float(dist.Poisson(3.0).log_prob(k) + dist.Normal(k, math.sqrt(1.25)).log_prob(y))
                     for k in ks])
    post = np.exp(logp - logp.max())
    post /= post.sum()
    exact_mean = float((ks * post).sum())
    exact_sd = float(math.sqrt(((ks - exact_mean) ** 2 * post).sum()))
    method = inference.Gibbs({"z": inference.DiscreteMH(),
                              "mu": partial(inference.mala, step_size=0.5)})
    r = run(model, y=y, method=method, num_chains=4, num_samples=10_000)
    z = np.asarray(r.samples["z"], dtype=np.float64)
    ess = float(az.ess(z, method="bulk"))
    return {"y": y, "exact_mean_z": exact_mean, "exact_sd_z": exact_sd,
            "gibbs_mean_z": float(z.mean()), "gibbs_sd_z": float(z.std()),
            "bulk_ess_z": ess, "mcse_mean_z": float(z.std() / math.sqrt(ess)),
            "z_error_in_mcse": float((z.mean() - exact_mean) / (z.std() / math.sqrt(ess))),
            "run_s": float(r.timing["run"])}


def learned() -> dict:
    model, data = posteriordb.load("eight_schools_noncentered")
    r = run(model, **data, method=inference.Learned(source=inference.NUTS(),
                                                    flow="spline_coupling", correct="irmh"),
            num_chains=4)
    out = record(r, pareto_k=float(r.tuning["pareto_k"]), log_z=float(r.tuning["log_z"]),
                 acceptance_rate=float(np.asarray(r.stats["acceptance_rate"]).mean()),
                 source_n_grad=float(r.tuning["source_n_grad"]))
    return out


def large_data() -> dict:
    n, d, b = 100_000, 5, 1_000
    rng = np.random.default_rng(0)
    X = rng.standard_normal((n, d)).astype(np.float32)
    w_true = rng.standard_normal(d).astype(np.float32)
    y = (rng.random(n) < 1 / (1 + np.exp(-X @ w_true))).astype(np.float32)

    def model(X, y, subsample_size=None):
        w = numpyro.sample("w", dist.Normal(0.0, 1.0).expand([X.shape[1]]).to_event(1))
        with numpyro.plate("data", X.shape[0], subsample_size=subsample_size) as idx:
            numpyro.sample("y", dist.Bernoulli(logits=X[idx] @ w), obs=y[idx])

    X, y = jnp.asarray(X), jnp.asarray(y)
    out = {"N": n, "D": d, "batch_size": b}
    nuts = run(model, X, y, method=inference.NUTS(), num_chains=4)
    sgld = run(model, X, y, b, method=inference.SGLD(), num_chains=4)
    ref = np.asarray(nuts.samples["w"]).reshape(-1, d)
    sd = ref.std(axis=0)
    for name, r in {"NUTS": nuts, "SGLD": sgld}.items():
        w = np.asarray(r.samples["w"]).reshape(-1, d)
        out[name] = record(r, ms_per_draw_per_chain=1000.0 * float(r.timing["run"]) / 2000,
                           max_abs_mean_diff_over_nuts_sd=float(
                               np.max(np.abs(w.mean(0) - ref.mean(0)) / sd)),
                           sd_ratio_over_nuts=[float(s) for s in w.std(0) / sd])
    return out


PARTS = {"eight_schools": eight_schools, "bimodal": bimodal, "evidence": evidence,
         "gibbs": gibbs, "learned": learned, "large_data": large_data}


def main(parts: list[str]) -> None:
    path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "measurements", "methods.json")
    results = {}
    if os.path.exists(path):
        with open(path) as f:
            results = json.load(f)
    results["how"] = "python docs/measure_methods.py (see its docstring)"
    results["machine"] = {
        "platform": platform.platform(), "cpu_count": os.cpu_count(),
        "python": sys.version.split()[0], "jax": jax.__version__, "numpyro": numpyro.__version__,
        "devices": [str(x) for x in jax.devices()], "jax_enable_x64": bool(jax.config.jax_enable_x64),
        "load_average_at_start": list(os.getloadavg()),
    }
    for name in parts or list(PARTS):
        if name not in PARTS:
            raise SystemExit(f"unknown part {name!r}; the parts are {sorted(PARTS)}")
        results[name] = PARTS[name]()
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "w") as f:
            json.dump(results, f, indent=2)
        print(name, json.dumps(results[name], indent=2), flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
