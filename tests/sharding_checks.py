"""Multi-device checks, run by ``tests/test_sharding.py`` in a subprocess with 4 fake CPU devices.

``python tests/sharding_checks.py NAME`` sets ``XLA_FLAGS`` before importing JAX (the device
count is fixed at JAX's start, so it cannot be changed inside the pytest process), runs the
check ``NAME`` and prints one JSON line of measurements; the test asserts on them.
"""

from __future__ import annotations

import json
import os
import sys


def _model(y=None):
    import numpyro
    import numpyro.distributions as dist

    mu = numpyro.sample("mu", dist.Normal(0.0, 10.0))
    s = numpyro.sample("s", dist.HalfNormal(2.0))  # a constrained site: exp/log in the density
    with numpyro.plate("d", 5):
        numpyro.sample("y", dist.Normal(mu, s), obs=y)


def _max_diff(a, b) -> float:
    import numpy as np

    return float(max(np.max(np.abs(np.asarray(a[k]) - np.asarray(b[k]))) for k in a))


def _compare(runs: dict) -> dict:
    import jax
    import jax.numpy as jnp

    import inference

    y = jnp.array([1.0, 2.0, 3.0, 0.5, 1.5])
    out = {"devices": jax.device_count()}
    for name, (method, warmup) in runs.items():
        kw = dict(y=y, method=method, num_samples=300, num_warmup=warmup, num_chains=4, key=1,
                  progress=False)
        one = inference.infer(_model, devices=1, **kw)
        four = inference.infer(_model, devices="all", **kw)
        default = inference.infer(_model, **kw)  # devices=None: one CPU device (they share cores)
        sharding = four.samples["mu"].sharding
        out[name] = {
            "max_abs_diff": _max_diff(one.samples, four.samples),
            "default_equals_one": _max_diff(default.samples, one.samples) == 0.0,
            "default_devices": default.timing["devices"],
            "spec": str(sharding.spec),
            "num_devices": len(sharding.device_set),
            "stat_devices": len(four.stats["lp"].sharding.device_set),
            "timing_devices": [one.timing["devices"], four.timing["devices"]],
            "mean_mu": [float(jnp.mean(one.samples["mu"])), float(jnp.mean(four.samples["mu"]))],
            "mcse_mu": float(one.summary()["mcse_mean"]["mu"]),
        }
    return out


def check_infer() -> dict:
    """A fixed-step ULA (no warmup, no accept/reject): the chains are a smooth, contractive
    function of the key, so 1 and 4 devices can only differ by float rounding."""
    import inference

    return _compare({"ula": (inference.ULA(step_size=0.05, find_mode=0), 0)})


def check_infer_nuts() -> dict:
    """NUTS with warmup: its discrete choices (tree depth, U-turns) amplify rounding
    differences, so the chains are compared in distribution (posterior means)."""
    import inference

    return _compare({"nuts": (inference.NUTS(), 300)})


def check_gibbs() -> dict:
    """Gibbs with a MALA block: fixed step sizes, but accept/reject, so compared loosely."""
    import functools

    import inference

    return _compare({"gibbs": (inference.Gibbs({("mu", "s"): functools.partial(
        inference.mala, step_size=0.05)}), 0)})


def check_chains_do_not_divide() -> dict:
    import jax.numpy as jnp

    import inference

    y = jnp.array([1.0, 2.0, 3.0, 0.5, 1.5])
    kw = dict(y=y, method=inference.ULA(step_size=0.05, find_mode=0), num_samples=20,
              num_warmup=0, progress=False)
    out = {}
    try:
        inference.infer(_model, num_chains=6, devices="all", **kw)
        out["error"] = None
    except ValueError as e:
        out["error"] = str(e)
    out["fallback_devices"] = inference.infer(_model, num_chains=6, **kw).timing["devices"]
    out["odd_devices"] = inference.infer(_model, num_chains=5, **kw).timing["devices"]
    return out


def check_smc() -> dict:
    import jax
    import numpy as np

    import inference

    y = jax.numpy.array([1.0, 2.0, 3.0, 0.5, 1.5])
    out = {}
    for chains in (4, 1):
        kw = dict(y=y, method=inference.SMC(num_particles=400), num_samples=100,
                  num_chains=chains, key=1, progress=False)
        one = inference.infer(_model, devices=1, **kw)
        four = inference.infer(_model, devices="all", **kw)
        out[str(chains)] = {
            "timing_devices": four.timing["devices"],
            "log_z_diff": float(np.max(np.abs(np.asarray(one.tuning["log_evidence"])
                                             - np.asarray(four.tuning["log_evidence"])))),
            "max_abs_diff": _max_diff(one.samples, four.samples),
            "spec": str(four.samples["mu"].sharding.spec),
        }
    return out


def check_fit() -> dict:
    import jax
    import jax.numpy as jnp
    import numpy as np
    import numpyro
    import numpyro.distributions as dist
    import optax

    import inference
    import ppl

    n, b = 512, 64
    x = jax.random.normal(jax.random.key(0), (n, 3))
    y = x @ jnp.array([1.0, -2.0, 0.5]) + 0.3 * jax.random.normal(jax.random.key(1), (n,))

    def model(data, n):
        w = numpyro.sample("w", dist.Normal(0.0, 1.0).expand([3]).to_event(1))
        with numpyro.plate("data", n, subsample_size=data[0].shape[0]):
            numpyro.sample("y", dist.Normal(data[0] @ w, 0.3), obs=data[1])

    guide = inference.guides.normal(model)
    objective = ppl.objectives.elbo(model, guide)
    params = ppl.init_params((model, guide), jax.random.key(2), (x[:b], y[:b]), n)
    kw = dict(optimizer=optax.adam(1e-2), steps=300, batch=(0, b), progress=False, key=3)
    one = inference.fit(objective, params, (x, y), n, **kw)
    four = inference.fit(objective, params, (x, y), n, data_sharding="all", **kw)
    v1, v4 = np.asarray(one.values), np.asarray(four.values)
    out = {
        "values_rel_diff": float(np.max(np.abs(v1 - v4) / np.abs(v1))),
        "params_max_diff": _max_diff(one.params, four.params),
        "param_devices": len(four.params["guide.w.loc"].sharding.device_set),
    }
    try:
        inference.fit(objective, params, (x, y), n, data_sharding="all",
                      **{**kw, "batch": (0, 30)})
        out["error"] = None
    except ValueError as e:
        out["error"] = str(e)
    return out


def multihost(process_id: int, port: int, out: str) -> None:
    """One of 2 processes x 2 CPU devices (``jax.distributed``, Gloo collectives): ULA chains
    and a data-parallel fit over the 4 global devices; every process saves what it got."""
    import jax

    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(coordinator_address=f"localhost:{port}", num_processes=2,
                               process_id=process_id)
    import numpy as np

    import inference

    assert jax.device_count() == 4 and jax.local_device_count() == 2
    y = jax.numpy.array([1.0, 2.0, 3.0, 0.5, 1.5])
    r = inference.infer(_model, y=y, method=inference.ULA(step_size=0.05, find_mode=0),
                        num_warmup=0, num_samples=300, num_chains=4, key=1, devices="all",
                        progress=False)
    assert r.timing["devices"] == 4
    np.savez(f"{out}/process{process_id}.npz", mu=np.asarray(r.samples["mu"]),
             s=np.asarray(r.samples["s"]))


CHECKS = {"infer": check_infer, "gibbs": check_gibbs, "infer_nuts": check_infer_nuts,
          "chains_do_not_divide": check_chains_do_not_divide, "smc": check_smc,
          "fit": check_fit}


def main(names: list[str]) -> None:
    import warnings

    warnings.filterwarnings("ignore")
    print("RESULT " + json.dumps({name: CHECKS[name]() for name in names}))


if __name__ == "__main__":
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "")
                               + " --xla_force_host_platform_device_count=4").strip()
    os.environ.setdefault("JAX_PLATFORMS", "cpu")
    if sys.argv[1] == "--multihost":  # --multihost PROCESS_ID PORT OUT_DIR (2 devices each)
        os.environ["XLA_FLAGS"] = os.environ["XLA_FLAGS"].replace("count=4", "count=2")
        multihost(int(sys.argv[2]), int(sys.argv[3]), sys.argv[4])
    else:
        main(sys.argv[1:])
