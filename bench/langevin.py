"""Suite ``langevin``: our Langevin kernels on an ill-conditioned 100-d Gaussian.

Target: ``N(0, Sigma)`` in ``d = 100`` dimensions, ``Sigma = Q diag(lam) Q^T`` with ``lam``
log-spaced from 1 to 100 (condition number 100) and ``Q`` a random rotation (QR of a
standard normal matrix from ``numpy.random.default_rng(0)``, signs fixed), so that no
diagonal preconditioner can undo the conditioning. ``log p(x) = -x^T Sigma^{-1} x / 2``
(a dense matrix-vector product per gradient), JAX's default float32.

Two parts (``bench/README.md`` has the details):

* ``throughput`` -- ``langevin.mala`` against ``blackjax.mala`` at the same step size and
  the identity metric (BlackJAX's MALA has no preconditioner): ms per step for one chain
  and chain-steps per second for 1000 ``jax.vmap``-ed chains. Both are the same program,
  a ``jax.jit``-ed ``lax.scan`` of ``alg.step`` carrying the state and a running sum of
  acceptance rates; compiled first (compile time recorded separately), run once to warm
  up, then timed ``reps`` times alternating which library goes first. Medians.
* ``ess`` -- MALA, ULA, underdamped (BAOAB) and randomized midpoint, each tuned by
  ``langevin.adapt`` (per chain, ``jax.vmap``-ed), every chain given the same number of
  gradient evaluations; ESS (ArviZ, ``method="mean"``, over all chains) of ``x_i`` and
  ``x_i^2``, minimum over coordinates, per 1000 gradient evaluations; plus the error of
  ``E[x^2]`` (bias) with its Monte Carlo standard error, since ESS alone flatters biased
  chains. Friction of the kinetic kernels: ``gamma = c / sqrt(lam_max)`` with ``lam_max``
  the largest eigenvalue of the *preconditioned* covariance (``c = 1`` reported as the
  rule, a sweep over ``c`` next to it).
"""

from __future__ import annotations

import statistics
import sys
import time
from typing import Any, Callable

import arviz
import blackjax
import jax
import jax.numpy as jnp
import numpy as np

from inference.mcmc import adaptation, langevin

DIM = 100
COND = 100.0
NUM_CHAINS_ESS = 8
NUM_CHAINS_VMAP = 1000

KERNELS: dict[str, Callable] = {
    "mala": langevin.mala,
    "ula": langevin.ula,
    "underdamped": langevin.underdamped,
    "randomized_midpoint": langevin.randomized_midpoint,
}
KINETIC = ("underdamped", "randomized_midpoint")


def _log(msg: str) -> None:
    print(f"[langevin] {msg}", file=sys.stderr, flush=True)


# ---------------------------------------------------------------------------------------
# the target
# ---------------------------------------------------------------------------------------


class Gaussian:
    """``N(0, Q diag(lam) Q^T)``: eigenvalues log-spaced in ``[1, cond]``, ``Q`` a random rotation."""

    def __init__(self, dim: int = DIM, cond: float = COND, seed: int = 0, rotate: bool = True):
        rng = np.random.default_rng(seed)
        self.dim = dim
        self.lam = np.logspace(0.0, np.log10(cond), dim)
        if rotate:
            q, r = np.linalg.qr(rng.standard_normal((dim, dim)))
            self.Q = q * np.sign(np.diag(r))
        else:
            self.Q = np.eye(dim)
        self.cov = (self.Q * self.lam) @ self.Q.T
        self.var = np.diag(self.cov).copy()
        prec = jnp.asarray((self.Q / self.lam) @ self.Q.T, jnp.float32)
        self.prec = prec
        self.logdensity = lambda x: -0.5 * jnp.dot(x, prec @ x)
        self._chol = jnp.asarray(self.Q * np.sqrt(self.lam), jnp.float32)  # Q diag(sqrt(lam))

    def draws(self, key: jax.Array, n: int) -> jax.Array:
        """``n`` exact draws, ``(n, dim)``."""
        return jax.random.normal(key, (n, self.dim)) @ self._chol.T

    def describe(self) -> dict[str, Any]:
        return {"dim": self.dim, "eigenvalues": "logspace(0, 2, 100): 1 ... 100",
                "condition_number": float(self.lam[-1] / self.lam[0]),
                "rotation": "random orthogonal Q from QR(default_rng(0).standard_normal((100, 100)))",
                "diag_cov_range": [float(self.var.min()), float(self.var.max())],
                "dtype": "float32"}


# ---------------------------------------------------------------------------------------
# part 1: throughput, ours vs BlackJAX
# ---------------------------------------------------------------------------------------


def _scan_program(alg, num_steps: int, vmapped: bool) -> Callable:
    """``(state, key) -> (state, sum of acceptance rates)``: ``num_steps`` steps in one scan."""
    step = jax.vmap(alg.step) if vmapped else alg.step

    def run(state, key):
        def body(carry, k):
            state, acc = carry
            if vmapped:
                k = jax.random.split(k, jax.tree.leaves(state)[0].shape[0])
            state, info = step(k, state)
            return (state, acc + info.acceptance_rate), None

        n = jax.tree.leaves(state)[0].shape[0] if vmapped else None
        acc0 = jnp.zeros((n,) if vmapped else (), jnp.float32)
        (state, acc), _ = jax.lax.scan(body, (state, acc0), jax.random.split(key, num_steps))
        return state, acc

    return run


class _Timed:
    def __init__(self, name: str, alg, positions, num_steps: int, vmapped: bool):
        self.name, self.num_steps = name, num_steps
        init = jax.vmap(alg.init) if vmapped else alg.init
        self.state = jax.block_until_ready(init(positions))
        program = _scan_program(alg, num_steps, vmapped)
        t0 = time.perf_counter()
        self.compiled = jax.jit(program).lower(self.state, jax.random.key(0)).compile()
        self.compile_s = time.perf_counter() - t0
        self.seconds: list[float] = []
        self.acceptance: list[float] = []

    def run(self, key, timed: bool = True) -> None:
        t0 = time.perf_counter()
        state, acc = self.compiled(self.state, key)
        jax.block_until_ready((state, acc))
        if timed:
            self.seconds.append(time.perf_counter() - t0)
            self.acceptance.append(float(jnp.mean(acc)) / self.num_steps)
        self.state = state


def _throughput(target: Gaussian, step_size: float, reps: int, num_steps: int,
                num_chains: int | None) -> dict[str, Any]:
    vmapped = num_chains is not None
    n = num_chains or 1
    x0 = target.draws(jax.random.key(7), n)
    x0 = x0 if vmapped else x0[0]
    contestants = [
        _Timed("ours", langevin.mala(target.logdensity, step_size=step_size), x0, num_steps, vmapped),
        _Timed("blackjax", blackjax.mala(target.logdensity, step_size=step_size), x0, num_steps,
               vmapped),
    ]
    for c in contestants:
        c.run(jax.random.key(1), timed=False)  # warm-up
    for r in range(reps):
        order = contestants if r % 2 == 0 else contestants[::-1]
        key = jax.random.key(100 + r)
        for c in order:
            c.run(key)
    out: dict[str, Any] = {"num_chains": n, "num_steps_per_block": num_steps}
    for c in contestants:
        s = statistics.median(c.seconds)
        out[c.name] = {
            "compile_s": c.compile_s,
            "ms_per_step": 1000.0 * s / num_steps,
            "chain_steps_per_s": n * num_steps / s,
            "ms_per_step_per_rep": [1000.0 * v / num_steps for v in c.seconds],
            "mean_acceptance_rate": statistics.median(c.acceptance),
        }
    out["throughput_ratio_ours_over_blackjax"] = (
        out["ours"]["chain_steps_per_s"] / out["blackjax"]["chain_steps_per_s"])
    tag = "1 chain" if not vmapped else f"{n} chains"
    _log(f"throughput {tag}: ours {out['ours']['ms_per_step']:.4f} ms/step, blackjax "
         f"{out['blackjax']['ms_per_step']:.4f} ms/step, ratio (ours/bj throughput) "
         f"{out['throughput_ratio_ours_over_blackjax']:.3f}")
    return out


# ---------------------------------------------------------------------------------------
# part 2: ESS per gradient and bias, each kernel tuned by langevin.adapt
# ---------------------------------------------------------------------------------------


_TUNE_CACHE: dict[tuple, Callable] = {}
_SAMPLE_CACHE: dict[tuple, Any] = {}


def _tune_program(name: str, target: Gaussian, num_warmup: int, kwargs: dict) -> Callable:
    factory = KERNELS[name]

    @jax.jit
    def run(x0, keys):
        def one(x, k):
            state, params = langevin.adapt(factory, target.logdensity, x, k, num_warmup, **kwargs)
            imm = params["inverse_mass_matrix"]
            s = jnp.sqrt(imm)
            hess = -jax.hessian(target.logdensity)(state.position)
            mu = jnp.linalg.eigvalsh(s[:, None] * hess * s[None, :])
            return params, mu[0], mu[-1]

        return jax.vmap(one)(x0, keys)

    return run


def tune(name: str, target: Gaussian, key: jax.Array, num_chains: int, num_warmup: int
         ) -> tuple[dict[str, jax.Array], dict[str, Any]]:
    """``langevin.adapt`` per chain (vmapped) from ``N(0, I)`` starting points.

    Returns per-chain kernel parameters (leading axis = chain) and diagnostics. The kinetic
    kernels get ``friction = 1 / sqrt(lam_max)`` here (``lam_max``: the largest eigenvalue of
    the preconditioned covariance ``S^T Sigma S``, from the eigenvalues of the preconditioned
    Hessian at the chain's warmup position -- exact on a Gaussian); callers rescale it.
    """
    k_x, k_adapt = jax.random.split(key)
    x0 = jax.random.normal(k_x, (num_chains, target.dim))
    kwargs = {"friction": 1.0} if name in KINETIC else {}
    cache_key = (name, id(target), num_chains, num_warmup)
    if cache_key in _TUNE_CACHE:
        run = _TUNE_CACHE[cache_key]
    else:
        run = _TUNE_CACHE[cache_key] = _tune_program(name, target, num_warmup, kwargs)
    t0 = time.perf_counter()
    params, mu_min, mu_max = jax.block_until_ready(run(x0, jax.random.split(k_adapt, num_chains)))
    seconds = time.perf_counter() - t0
    kp = adaptation.kernel_params(params)
    if name in KINETIC:
        kp["friction"] = jnp.sqrt(mu_min)  # 1 / sqrt(lam_max of the preconditioned covariance)
    diag = {
        "warmup_steps": num_warmup,
        "warmup_s_incl_compile": seconds,
        "step_size_per_chain": [float(v) for v in np.asarray(kp["step_size"])],
        "preconditioned_condition_number_per_chain": [
            float(v) for v in np.asarray(mu_max / mu_min)],
        "warmup_acceptance_rate_per_chain": [
            float(v) for v in np.asarray(params["warmup_acceptance_rate"])],
    }
    if "warmup_curvature" in params:
        diag["warmup_curvature_per_chain"] = [float(v) for v in np.asarray(params["warmup_curvature"])]
    if name in KINETIC:
        diag["friction_rule_per_chain"] = [float(v) for v in np.asarray(kp["friction"])]
    return kp, diag


def _sample_program(name: str, target: Gaussian, num_steps: int) -> Callable:
    """One chain: ``(params, x0, key) -> (draws, gradients, mean acceptance rate)``."""
    factory = KERNELS[name]

    def one(p, x, k):
        alg = factory(target.logdensity, **p)
        k_init, k_steps = jax.random.split(k)
        state = alg.init(x, k_init)  # kinetic kernels: momentum ~ N(0, M^-1)

        def body(carry, k):
            state, n_grad, acc = carry
            state, info = alg.step(k, state)
            acc = acc + getattr(info, "acceptance_rate", 0.0)
            return (state, n_grad + info.n_grad, acc), state.position

        carry0 = (state, jnp.zeros((), jnp.int32), jnp.zeros((), jnp.float32))
        (_, n_grad, acc), xs = jax.lax.scan(body, carry0, jax.random.split(k_steps, num_steps))
        return xs, n_grad, acc / num_steps

    return one


def sample(name: str, target: Gaussian, params: dict[str, jax.Array], key: jax.Array,
           grads_per_chain: int) -> tuple[np.ndarray, int, float, float, np.ndarray | None]:
    """Chains started at exact draws, ``grads_per_chain`` gradients each.

    Returns draws ``(chains, draws, dim)``, total gradient evaluations, compile and run
    seconds (compile: 0 when the program was compiled by an earlier call), and the per-chain
    mean acceptance rate (None for unadjusted kernels).
    """
    num_chains = int(np.asarray(params["step_size"]).shape[0])
    n_grad_step = 2 if name == "randomized_midpoint" else 1
    num_steps = grads_per_chain // n_grad_step
    k_x, k_run = jax.random.split(key)
    x0 = target.draws(k_x, num_chains)
    keys = jax.random.split(k_run, num_chains)
    cache_key = (name, id(target), num_chains, num_steps)
    compile_s = 0.0
    if cache_key not in _SAMPLE_CACHE:  # compiled once per kernel; friction etc. are inputs
        t0 = time.perf_counter()
        program = jax.jit(jax.vmap(_sample_program(name, target, num_steps)))
        _SAMPLE_CACHE[cache_key] = program.lower(params, x0, keys).compile()
        compile_s = time.perf_counter() - t0
    t1 = time.perf_counter()
    xs, n_grad, acc = jax.block_until_ready(_SAMPLE_CACHE[cache_key](params, x0, keys))
    run_s = time.perf_counter() - t1
    acc = np.asarray(acc) if name == "mala" else None
    return np.asarray(xs), int(np.asarray(n_grad).sum()), compile_s, run_s, acc


def _ess(draws: np.ndarray) -> np.ndarray:
    """ArviZ ``method="mean"`` ESS of every coordinate of ``draws`` ``(chains, draws, dim)``."""
    return np.asarray(arviz.ess(arviz.convert_to_dataset(draws), method="mean")["x"].values)


def _mean_and_mcse(series: np.ndarray) -> tuple[float, float]:
    """Mean over chains and draws of a scalar series ``(chains, draws)`` and its ArviZ MCSE."""
    ds = arviz.convert_to_dataset(series)
    return float(series.mean()), float(arviz.mcse(ds, method="mean")["x"].values)


def evaluate(target: Gaussian, xs: np.ndarray, n_grad: int) -> dict[str, Any]:
    """ESS per 1000 gradients (x and x^2, min over coordinates) and errors of E[x], E[x^2]."""
    x = xs.astype(np.float64)
    ess_x, ess_x2 = _ess(x), _ess(x**2)
    per = 1000.0 / n_grad
    # Errors. E[x^2]: relative error per coordinate (noisy: max over 100 coordinates), of the
    # trace |x|^2 / tr(Sigma) and along the stiffest eigendirection (lam = 1), where the
    # unadjusted kernels' bias is largest, each with its MCSE.
    m2 = (x**2).mean(axis=(0, 1))
    trace_err, trace_se = _mean_and_mcse((x**2).sum(-1) / target.var.sum() - 1.0)
    u = target.Q[:, 0]
    stiff_err, stiff_se = _mean_and_mcse((x @ u) ** 2 / target.lam[0] - 1.0)
    slow = target.Q[:, -1]
    slow_err, slow_se = _mean_and_mcse((x @ slow) ** 2 / target.lam[-1] - 1.0)
    mean_err = np.abs(x.mean(axis=(0, 1))) / np.sqrt(target.var)
    return {
        "n_grad_total": n_grad,
        "min_ess_x": float(ess_x.min()),
        "min_ess_x2": float(ess_x2.min()),
        "ess_per_1000_grad_x": per * float(ess_x.min()),
        "ess_per_1000_grad_x2": per * float(ess_x2.min()),
        "ess_per_1000_grad": per * float(min(ess_x.min(), ess_x2.min())),
        "rel_err_E_x2_trace": trace_err,
        "rel_err_E_x2_trace_mcse": trace_se,
        "rel_err_E_x2_stiffest": stiff_err,
        "rel_err_E_x2_stiffest_mcse": stiff_se,
        "rel_err_E_x2_slowest": slow_err,
        "rel_err_E_x2_slowest_mcse": slow_se,
        "max_abs_rel_err_E_x2_coord": float(np.max(np.abs(m2 / target.var - 1.0))),
        "max_abs_err_E_x_over_sd": float(mean_err.max()),
    }


def _ess_kernel(name: str, target: Gaussian, reps: int, num_warmup: int, grads_per_chain: int,
                friction_multipliers: tuple[float, ...]) -> dict[str, Any]:
    """One kernel: ``reps`` seeds x (tune, sample, evaluate); medians; friction sweep."""
    mults = friction_multipliers if name in KINETIC else (None,)
    per_rep: dict[str, list[dict[str, Any]]] = {str(m): [] for m in mults}
    tuning, compile_times = [], []
    for r in range(reps):
        params, diag = tune(name, target, jax.random.key(10 + r), NUM_CHAINS_ESS, num_warmup)
        tuning.append(diag)
        for m in mults:
            p = dict(params)
            if m is not None:
                p["friction"] = m * params["friction"]
            xs, n_grad, compile_s, run_s, acc = sample(name, target, p, jax.random.key(500 + r),
                                                       grads_per_chain)
            rec = evaluate(target, xs, n_grad)
            compile_times.append(compile_s)
            rec.update(run_s=run_s,
                       ess_per_s=min(rec["min_ess_x"], rec["min_ess_x2"]) / run_s)
            if acc is not None:
                rec["mean_acceptance_rate"] = float(acc.mean())
            if m is not None:
                rec["friction_multiplier"] = m
                rec["friction_median"] = float(np.median(np.asarray(p["friction"])))
            per_rep[str(m)].append(rec)
            tag = "" if m is None else f" friction x{m:g}"
            _log(f"ess {name}{tag} rep {r}: ESS/1000 grad x {rec['ess_per_1000_grad_x']:.2f} "
                 f"x^2 {rec['ess_per_1000_grad_x2']:.2f}; E[x^2] rel err trace "
                 f"{rec['rel_err_E_x2_trace']:+.4f} +- {rec['rel_err_E_x2_trace_mcse']:.4f}, "
                 f"stiffest {rec['rel_err_E_x2_stiffest']:+.4f} +- "
                 f"{rec['rel_err_E_x2_stiffest_mcse']:.4f} (run {run_s:.2f}s)")
    summaries = {}
    for m in mults:
        reps_m = per_rep[str(m)]
        s: dict[str, Any] = {}
        for k, v in reps_m[0].items():
            if isinstance(v, (int, float)) and not isinstance(v, bool):
                s[k] = statistics.median(r[k] for r in reps_m)
        s["per_rep"] = reps_m
        summaries[str(m)] = s
    out: dict[str, Any] = {"sampling_compile_s": max(compile_times), "tuning_per_rep": tuning}
    if name in KINETIC:
        out["rule"] = summaries["1.0"] if "1.0" in summaries else summaries[str(mults[0])]
        out["friction_sweep"] = {k: {kk: v[kk] for kk in (
            "friction_multiplier", "friction_median", "ess_per_1000_grad", "ess_per_1000_grad_x",
            "ess_per_1000_grad_x2", "rel_err_E_x2_trace", "rel_err_E_x2_stiffest")}
            for k, v in summaries.items()}
    else:
        out["rule"] = summaries["None"]
    return out


# ---------------------------------------------------------------------------------------
# the suite
# ---------------------------------------------------------------------------------------


def suite_langevin(reps: int = 3, **_ignored: Any) -> dict[str, Any]:
    """Throughput of MALA (ours vs BlackJAX) and ESS per gradient of four tuned kernels.

    ``reps=1`` is the quick mode (shorter chains and timing blocks, no friction sweep;
    well under a minute on 2 cores).
    """
    quick = reps <= 1
    target = Gaussian()
    config = {
        "reps": reps,
        "quick": quick,
        "throughput_steps_single": 1000 if quick else 10000,
        "throughput_steps_vmapped": 20 if quick else 200,
        "throughput_reps": max(reps, 1) if quick else 2 * reps + 1,
        "ess_chains": NUM_CHAINS_ESS,
        "ess_warmup_steps": 1000 if quick else 4000,
        "ess_grads_per_chain": 8000 if quick else 40000,
        "friction_multipliers": (1.0,) if quick else (0.25, 0.5, 1.0, 2.0, 4.0),
        "ess_reps": reps,
    }
    _log(f"config {config}")

    # The same step size for both libraries, with the identity metric: 0.7 gives an
    # acceptance rate of about 0.56 on this target, near MALA's optimal 0.574.
    step_size = 0.7
    throughput = {
        "step_size": step_size,
        "metric": "identity (blackjax.mala has no preconditioner)",
        "single_chain": _throughput(target, step_size, config["throughput_reps"],
                                    config["throughput_steps_single"], None),
        "vmapped": _throughput(target, step_size, config["throughput_reps"],
                               config["throughput_steps_vmapped"], NUM_CHAINS_VMAP),
    }

    ess = {}
    for name in KERNELS:
        ess[name] = _ess_kernel(name, target, reps, config["ess_warmup_steps"],
                                config["ess_grads_per_chain"], config["friction_multipliers"])
    mala_rate = ess["mala"]["rule"]["ess_per_1000_grad"]
    headline = {
        "throughput_ratio_single_chain": throughput["single_chain"][
            "throughput_ratio_ours_over_blackjax"],
        "throughput_ratio_1000_chains": throughput["vmapped"]["throughput_ratio_ours_over_blackjax"],
        "ess_per_1000_grad": {k: v["rule"]["ess_per_1000_grad"] for k, v in ess.items()},
        "ess_per_1000_grad_over_mala": {k: v["rule"]["ess_per_1000_grad"] / mala_rate
                                        for k, v in ess.items()},
        "rel_err_E_x2_stiffest": {k: v["rule"]["rel_err_E_x2_stiffest"] for k, v in ess.items()},
        "rel_err_E_x2_trace": {k: v["rule"]["rel_err_E_x2_trace"] for k, v in ess.items()},
        "targets": {
            "throughput ratio >= 0.9 (1 chain)":
                throughput["single_chain"]["throughput_ratio_ours_over_blackjax"] >= 0.9,
            "throughput ratio >= 0.9 (1000 chains)":
                throughput["vmapped"]["throughput_ratio_ours_over_blackjax"] >= 0.9,
            "underdamped >= 10x MALA ESS/grad":
                ess["underdamped"]["rule"]["ess_per_1000_grad"] >= 10.0 * mala_rate,
        },
    }
    _log("headline " + str(headline))
    return {"suite": "langevin", "config": config, "target": target.describe(),
            "headline": headline, "throughput": throughput, "ess": ess}
