"""Scaling over devices: the same programs on 1 and N devices (``inference.sharding``).

    python bench/sharding.py                  # 1, 2, 4 devices; ~3 minutes on 2 CPU cores
    python bench/sharding.py --devices 1 2 --reps 3 --no-save

Each device count runs in its own process (JAX fixes the device count at start-up). On a
machine with one accelerator per device JAX sees, nothing needs setting; on a CPU the
devices are XLA's host-platform devices (``--xla_force_host_platform_device_count=N``, one
per process here), which split the host's cores between them -- so on CPU the numbers say
how well the sharded program uses the cores, not how it would use N accelerators.

Measured (medians of ``--reps`` timed runs after a compile run, in the same process):

* ``mala``: ``inference.infer(model, method=MALA(step_size=0.5, find_mode=0), num_chains=10000,
  num_warmup=0, num_samples=S, devices="all")`` on a 10-d Gaussian with scales 1..10:
  chain-steps per second from ``Result.timing["run"]``.
* ``vi``: ``inference.fit`` of the VAE of ``examples/vae_digits.py`` (ELBO, batch 128) with
  ``data_sharding="all"`` (the minibatch split over the devices, parameters replicated):
  optimizer steps per second.

Scaling efficiency = throughput(N) / (N * throughput(1)).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent


def _worker(reps: int, chains: int, samples: int, vi_steps: int) -> dict:
    sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != HERE]
    sys.path.insert(0, str(ROOT))
    import jax
    import jax.numpy as jnp
    import numpyro
    import numpyro.distributions as dist
    import optax

    import inference
    import ppl
    from bench.vae import load_example

    scales = jnp.linspace(1.0, 10.0, 10)

    def gaussian():
        numpyro.sample("x", dist.Normal(0.0, scales).to_event(1))

    method = inference.MALA(step_size=0.5, find_mode=0)
    runs = []
    for rep in range(reps + 1):  # the first run includes compilation
        r = inference.infer(gaussian, method=method, num_chains=chains, num_warmup=0,
                            num_samples=samples, key=rep, devices="all", progress=False)
        runs.append(chains * samples / r.timing["run"])
        assert r.timing["devices"] == jax.device_count()
    mala = {"chain_steps_per_s": statistics.median(runs[1:]), "per_rep": runs[1:],
            "accept": float(jnp.mean(r.stats["acceptance_rate"]))}

    vae = load_example()
    x_train, _ = vae.load_data()
    encoder, decoder = vae.make_networks(jax.random.key(0))
    model, guide = vae.make_vae(encoder, decoder)
    objective = ppl.objectives.elbo(model, guide)
    x = jnp.asarray(x_train)
    params = ppl.init_params((model, guide), jax.random.key(1), x[:128])
    class Clock(inference.progress.ProgressBar):
        """Records when fit reports: right after compiling (0 steps), then after each chunk."""

        def __init__(self, total):
            super().__init__(total, enabled=True)
            self.times = []

        def update(self, done, postfix):
            self.times.append(time.perf_counter())

        def close(self):
            pass

    rates = []
    for rep in range(reps + 1):  # the first call also warms caches
        clock = Clock(vi_steps)
        fitted = inference.fit(objective, params, x, optimizer=optax.adam(1e-3), steps=vi_steps,
                               batch=(0, 128), key=rep, progress=clock, data_sharding="all",
                               updates=4)
        jax.block_until_ready(fitted.params)
        rates.append(vi_steps / (clock.times[-1] - clock.times[0]))
    vi = {"steps_per_s": statistics.median(rates[1:]), "per_rep": rates[1:],
          "how": "steps / (time of fit's last chunk report - its report right after compiling)"}
    return {"devices": jax.device_count(), "mala": mala, "vi": vi}


def suite_sharding(devices: tuple[int, ...] = (1, 2, 4), reps: int = 5, chains: int = 10000,
                   samples: int = 200, vi_steps: int = 400, **_ignored) -> dict:
    """Throughput on each device count (one process each) and the scaling efficiency."""
    sys.path.insert(0, str(ROOT))
    from bench.common import machine_info

    per_count = {}
    for n in devices:
        env = dict(os.environ)
        if env.get("JAX_PLATFORMS", "cpu") == "cpu" and n > 1:
            env["XLA_FLAGS"] = (env.get("XLA_FLAGS", "")
                                + f" --xla_force_host_platform_device_count={n}").strip()
        cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", "--reps", str(reps),
               "--chains", str(chains), "--samples", str(samples), "--vi-steps", str(vi_steps)]
        print(f"[sharding] {n} device(s) ...", file=sys.stderr, flush=True)
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
        lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
        if proc.returncode or not lines:
            raise RuntimeError(f"sharding worker on {n} device(s) failed:\n{proc.stderr[-4000:]}")
        per_count[str(n)] = json.loads(lines[-1][len("RESULT "):])
    n0 = devices[0]
    base = per_count[str(n0)]
    for n, rec in per_count.items():
        for part, field in (("mala", "chain_steps_per_s"), ("vi", "steps_per_s")):
            speedup = rec[part][field] / base[part][field]
            rec[part][f"speedup_vs_{n0}"] = speedup
            rec[part]["efficiency"] = speedup * n0 / int(n)
    return {"suite": "sharding", "machine": machine_info(),
            "config": {"chains": chains, "samples": samples, "reps": reps,
                       "vi_steps": vi_steps, "vi_batch": 128, "target": "10-d Gaussian"},
            "results": per_count}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--devices", type=int, nargs="*", default=[1, 2, 4])
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--chains", type=int, default=10000)
    parser.add_argument("--samples", type=int, default=200)
    parser.add_argument("--vi-steps", type=int, default=400)
    parser.add_argument("--no-save", action="store_true")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        out = _worker(args.reps, args.chains, args.samples, args.vi_steps)
        print("RESULT " + json.dumps(out))
        return 0
    record = suite_sharding(tuple(args.devices), args.reps, args.chains, args.samples,
                            args.vi_steps)
    text = json.dumps(record, indent=2)
    print(text)
    if not args.no_save:
        (HERE / "results").mkdir(exist_ok=True)
        (HERE / "results" / "sharding.json").write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
