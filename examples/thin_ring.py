"""A flow guide on a thin ring, trained with IWAE: the standard gradient against DReG.

The model (the PLDI 2024 paper's hard 2-D posterior)::

    x, y ~ Normal(0, 10)
    z ~ Normal(x^2 + y^2, 0.1 + (x^2 + y^2) / 100),   z = 5 observed

puts its posterior on a ring of radius sqrt(5) about 0.03 wide. Its log evidence is
``-5.3232`` (:func:`exact_log_evidence`: 1-D quadrature over ``s = x^2 + y^2``, since the prior
of ``s`` is Exponential(1/200); ``tests/test_thin_ring.py`` checks it by 2-D quadrature).

A spline-flow guide (``inference.guides.flow``) is fitted by maximizing IWAE_K with
``inference.fit``, once with the standard gradient and once with the doubly reparameterised
one (``ppl.objectives.iwae(model, guide, K, gradient="dreg")``), from the same initial flow
and keys; for each seed and estimator the script prints the gap between the exact log
evidence and the fitted guide's IWAE_K bound (and its ELBO), each estimated from many
independent estimates (the bound is a mean; its standard error is printed).

Measured (float32, the defaults below: IWAE_64, 4000 steps of a 4-layer spline flow, Adam
3e-4 with a cosine decay, gradient norm clipped at 30), the gap ``log p(z) - IWAE_64`` of the
fitted guide in nats (standard errors 0.007-0.03):

====  ========  =====
seed  standard  DReG
====  ========  =====
0     0.62      0.100
1     0.60      0.100
2     0.26      0.104
====  ========  =====

With DReG the gap is 0.10 on every seed (0.104 +- 0.008 at worst): the issue's target of
0.1 nats, to within the estimate's standard error. The standard gradient, from the same start with the same keys and settings, stops 0.3-0.6 nats
short. The settings matter: with Adam 1e-3 clipped at 100 (2000 steps) the gaps were
0.49 / 0.35 / 0.44 (DReG) and 1.16 / 1.05 / 0.90 (standard), and without clipping (Adam 3e-3,
IWAE_16) DReG's training diverged on seed 0 where the standard one did not, though the two
agree in the mean (``tests/test_objectives_low_variance.py``). The ELBO of every fitted flow
stays 150-450 nats below the evidence: the flow keeps some mass off the ring, where the
likelihood (scale 0.15 in ``r^2``) is tiny, which IWAE tolerates.

Run (a few minutes on a laptop CPU)::

    python examples/thin_ring.py --seeds 0 1 2 --steps 4000 --K 64
"""

from __future__ import annotations

import argparse
import math
import time
from typing import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
import optax

import inference
import ppl
from inference.vi import guides

Z_OBS = 5.0
#: The log evidence quoted in issue 17 (the PLDI 2024 paper's Table 4); see exact_log_evidence.
LOG_EVIDENCE = -5.3232


def ring(z_obs: float | jax.Array) -> None:
    """The thin ring: ``x, y ~ N(0, 10)``, ``z ~ N(r^2, 0.1 + r^2 / 100)`` observed."""
    x = numpyro.sample("x", dist.Normal(0.0, 10.0))
    y = numpyro.sample("y", dist.Normal(0.0, 10.0))
    r2 = x**2 + y**2
    numpyro.sample("z", dist.Normal(r2, 0.1 + r2 / 100.0), obs=z_obs)


def exact_log_evidence(z_obs: float = Z_OBS) -> float:
    """``log p(z_obs)`` by quadrature over ``s = x^2 + y^2``, whose prior is Exponential(1/200).

    Example:
        >>> round(exact_log_evidence(), 4)
        -5.3232
    """
    from scipy import integrate, stats

    def integrand(s):
        return math.exp(-s / 200.0) / 200.0 * stats.norm.pdf(z_obs, s, 0.1 + s / 100.0)

    peak = max(z_obs, 0.0)
    value, _ = integrate.quad(integrand, 0.0, peak + 60.0, points=[peak], limit=400,
                              epsabs=0.0, epsrel=1e-12)
    return math.log(value)


def flow_guide(seed: int, layers: int = 4, width: int = 32, knots: int = 8) -> Callable:
    """The spline-coupling flow guide over ``(x, y)`` (identity at initialization)."""
    return guides.flow(ring, kind="spline_coupling", layers=layers, width=width, knots=knots,
                       seed=seed)


def train(guide: Callable, gradient: str, *, seed: int, K: int, steps: int, lr: float,
          clip: float) -> dict:
    """Fit ``guide`` by maximizing IWAE_K with ``gradient`` ("standard" or "dreg").

    Adam with a cosine-decayed learning rate and the gradient's global norm clipped at
    ``clip`` (the ring's likelihood makes single gradients of a few hundred, rare ones far
    larger). Returns the fitted (unconstrained) params."""
    z = jnp.asarray(Z_OBS)
    params = ppl.init_params(guide, jax.random.key(seed), z)
    optimizer = optax.chain(optax.clip_by_global_norm(clip),
                            optax.adam(optax.cosine_decay_schedule(lr, steps, 0.05)))
    objective = ppl.objectives.iwae(ring, guide, K, gradient=gradient)
    return inference.fit(objective, params, z, optimizer=optimizer, steps=steps, key=seed,
                         progress=False).params


def bounds(guide: Callable, params: dict, K: int, *, n: int = 4000, seed: int = 0) -> dict:
    """IWAE_K and the ELBO of the fitted guide, each the mean of ``n`` estimates, with the
    standard errors of those means."""
    z = jnp.asarray(Z_OBS)
    keys = jax.random.split(jax.random.key(seed), n)
    out = {}
    for name, objective in (("iwae", ppl.objectives.iwae(ring, guide, K)),
                            ("elbo", ppl.objectives.elbo(ring, guide))):
        values = jax.jit(jax.vmap(lambda k, o=objective: o.estimate(k, params, z)))(keys)
        values = np.asarray(values, np.float64)
        out[name] = float(values.mean())
        out[name + "_se"] = float(values.std(ddof=1) / math.sqrt(n))
    return out


def main(seeds: Sequence[int] = (0, 1, 2), gradients: Sequence[str] = ("standard", "dreg"),
         K: int = 64, steps: int = 4000, lr: float = 3e-4, clip: float = 30.0,
         layers: int = 4, width: int = 32, knots: int = 8, n_eval: int = 4000) -> list[dict]:
    """Train one flow per seed and gradient; print and return the gaps to the exact evidence.

    Each row: ``seed``, ``gradient``, ``gap`` (``log p(z) - IWAE_K`` of the fitted guide),
    ``gap_se``, ``elbo_gap``, ``seconds`` (training, compilation included)."""
    log_z = exact_log_evidence()
    print(f"thin ring: exact log evidence {log_z:.4f}; IWAE_{K}, {steps} steps, "
          f"spline flow ({layers} layers, width {width}, {knots} knots)")
    print(f"{'seed':>4}  {'gradient':>9}  {'IWAE gap':>14}  {'ELBO gap':>9}  {'time':>6}")
    rows = []
    for seed in seeds:
        for gradient in gradients:
            guide = flow_guide(seed, layers, width, knots)
            start = time.perf_counter()
            params = train(guide, gradient, seed=seed, K=K, steps=steps, lr=lr, clip=clip)
            seconds = time.perf_counter() - start
            b = bounds(guide, params, K, n=n_eval, seed=1000 + seed)
            row = {"seed": seed, "gradient": gradient, "gap": log_z - b["iwae"],
                   "gap_se": b["iwae_se"], "elbo_gap": log_z - b["elbo"], "seconds": seconds}
            rows.append(row)
            print(f"{seed:>4}  {gradient:>9}  {row['gap']:>8.3f} ± {row['gap_se']:.3f}  "
                  f"{row['elbo_gap']:>9.2f}  {seconds:>5.0f}s", flush=True)
    return rows


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--gradients", nargs="+", default=["standard", "dreg"])
    parser.add_argument("--K", type=int, default=64)
    parser.add_argument("--steps", type=int, default=4000)
    parser.add_argument("--lr", type=float, default=3e-4)
    parser.add_argument("--clip", type=float, default=30.0)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--width", type=int, default=32)
    parser.add_argument("--knots", type=int, default=8)
    parser.add_argument("--x64", action="store_true", help="train in float64")
    a = parser.parse_args()
    if a.x64:
        jax.config.update("jax_enable_x64", True)
    main(a.seeds, a.gradients, K=a.K, steps=a.steps, lr=a.lr, clip=a.clip, layers=a.layers,
         width=a.width, knots=a.knots)
