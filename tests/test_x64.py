"""Every method runs in float64 (``jax_enable_x64``), in a subprocess (the flag is global).

Slow: one compile per method. The draws must come back in float64 and land on the
conjugate posterior: mu ~ Normal(0, 10), y ~ Normal(mu + z, 1) with y = 1 and, for the
discrete model, z ~ Bernoulli(0.5). The check is loose on purpose (|mean - exact| < 1, the
posterior sd being ~1): this test is about crashes and dtypes under x64 (int32 buffers
against int64 counts crashed NUTS and SMC before); the statistical checks live elsewhere.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest

SCRIPT = textwrap.dedent('''
    import functools, json, jax
    jax.config.update("jax_enable_x64", True)
    import numpy as np, numpyro, numpyro.distributions as dist
    import inference

    def model(y=None):
        mu = numpyro.sample("mu", dist.Normal(0.0, 10.0))
        numpyro.sample("y", dist.Normal(mu, 1.0), obs=y)

    def mixed(y=None):
        mu = numpyro.sample("mu", dist.Normal(0.0, 10.0))
        z = numpyro.sample("z", dist.Bernoulli(0.5))
        numpyro.sample("y", dist.Normal(mu + z, 1.0), obs=y)

    mala = functools.partial(inference.mala, step_size=0.5)
    methods = {
        "NUTS": (model, inference.NUTS()), "MALA": (model, inference.MALA()),
        "ULA": (model, inference.ULA()), "Underdamped": (model, inference.Underdamped()),
        "OBABO": (model, inference.Underdamped(adjusted=True)),
        "RandomizedMidpoint": (model, inference.RandomizedMidpoint()),
        "SMC": (model, inference.SMC(num_particles=200)),
        "VI": (model, inference.VI(steps=300)),
        "NeuTra": (model, inference.NeuTra(vi_steps=100)),
        "Gibbs-enum": (mixed, inference.Gibbs({"mu": mala, "z": inference.Enumerate()})),
        "Gibbs-mh": (mixed, inference.Gibbs({"mu": mala, "z": inference.DiscreteMH()})),
    }
    out = {}
    for name, (m, method) in methods.items():
        r = inference.infer(m, y=1.0, method=method, num_samples=100, num_warmup=100,
                            num_chains=2, key=0, progress=False)
        out[name] = {"dtype": str(r.samples["mu"].dtype), "mean": float(np.mean(r.samples["mu"]))}
    print("RESULT " + json.dumps(out))
''')


@pytest.mark.slow
def test_every_method_runs_in_float64():
    env = {k: v for k, v in os.environ.items() if k != "JAX_ENABLE_X64"}
    proc = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True,
                          env=env, timeout=1800)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
    assert proc.returncode == 0 and lines, proc.stdout[-3000:] + proc.stderr[-3000:]
    out = json.loads(lines[-1][len("RESULT "):])
    assert len(out) == 11
    for name, r in out.items():
        assert r["dtype"] == "float64", (name, r)
        exact = 1.0 / (1.0 + 1e-2)  # posterior mean of mu without z
        shift = 0.5 if name.startswith("Gibbs") else 0.0  # E[z | y] is ~0.5 with z
        assert abs(r["mean"] - (exact - shift)) < 1.0, (name, r)
