"""The ``SMC`` method object that ``inference.infer`` runs."""

from __future__ import annotations

import dataclasses
import functools
import threading
import time
import warnings
from dataclasses import dataclass
from typing import Any, Callable, ClassVar

import jax
import jax.numpy as jnp
import numpy as np

from inference.arguments import split_arguments, static_part
from inference.programs.cache import compiling
from inference.progress import ProgressBar, Relay
from inference.sharding import constrain_leading, describe, gather, mesh_for, put_leading
from inference.smc.checks import cpu_mesh_without_lapack, raise_if_no_likelihood
from inference.method import Method, Outputs, Request
from ppl.errors import ModelError
from ppl.potential import potential as make_potential
from ppl.tracing import latent_sites, model_name, trace_model

from inference.smc.model import _lapack_in_smc, _model_terms, _prior_draw, _split_potential
from inference.smc.moves import _resolve_kernel
from inference.smc.resampling import RESAMPLING
from inference.smc.tempering import _check_fraction, _check_int, _check_schedule, tempered_smc


@dataclass(frozen=True)
class SMC(Method):
    """Tempered SMC as an ``inference.infer`` method: posterior draws and the log evidence.

    Args:
        kernel: the move (see the module docstring): ``"mala"`` (default), ``"ula"``,
            ``"rwm"``, a kernel factory such as :func:`inference.langevin.mala` or
            ``blackjax.mala`` (the SMC sets ``step_size``, and ``inverse_mass_matrix`` when
            the factory takes one), or a callable ``logdensity_fn -> SamplingAlgorithm``
            used as is.
        num_particles: particles per chain; must be >= ``num_samples``.
        num_mcmc_steps: move steps per particle per stage.
        target_ess: adaptive tempering's ESS fraction per stage.
        schedule: a fixed schedule of inverse temperatures instead of adaptive tempering.
        resampling, init_step_size, target_acceptance, adapt_step_size, max_stages: as in
            :func:`tempered_smc`.

    Each "chain" is an independent SMC run with its own population, prior draws and key;
    the chains run ``vmap``-ped in one compiled program. From each final (equally weighted)
    population, ``num_samples`` distinct particles are taken at random without replacement.
    The prior and likelihood are split with NumPyro's handlers: latent sites (plus their
    log-Jacobians, in unconstrained space) are the prior, observed sites and
    ``numpyro.factor`` terms the likelihood. Initial particles are prior draws, so the prior
    must be proper. A model without observed sites or factors has likelihood 1: the log
    evidence is 0 (exactly) and SMC just returns prior draws (a warning says so).
    ``infer``'s ``num_warmup`` does not apply: the tempering path is SMC's warmup.

    Invalid data: when a chain's log-likelihood is not finite at any of its initial
    particles (NaN in an observation, a value outside the support such as a negative count),
    tempering cannot start and a :class:`ppl.errors.ModelError` names the observed site(s).
    On several CPU devices (``devices=``), a model or kernel with LAPACK-backed operations
    (Cholesky, triangular solves, ...) runs on one CPU device, with a warning: JAX's CPU
    LAPACK kernels can deadlock when several CPU devices run them at once
    (:mod:`inference.smc_checks`).

    Result: ``samples`` of every latent and deterministic site (constrained), ``stats``
    ``lp`` (the log joint in unconstrained space, as NUTS's ``lp``) and ``n_grad`` (the
    chain's total gradient evaluations spread evenly over its draws, so that
    ``stats["n_grad"].sum()`` is the total cost); ``tuning``: ``log_evidence``
    (chains,), and per chain ``temperatures``, ``num_stages``, ``acceptance_rate``,
    ``step_size``, ``ess`` (see :class:`SMCResult`) and ``n_grad``.

    Example:
        >>> import jax.numpy as jnp, numpyro, numpyro.distributions as dist, inference
        >>> from inference.smc import SMC
        >>> def model(y=None):
        ...     mu = numpyro.sample("mu", dist.Normal(0.0, 3.0))
        ...     with numpyro.plate("data", 3):
        ...         numpyro.sample("y", dist.Normal(mu, 1.0), obs=y)
        >>> r = inference.infer(model, y=jnp.array([1.0, 2.0, 3.0]), num_samples=200,
        ...                     num_chains=2, method=SMC(num_particles=400), progress=False)
        >>> r.samples["mu"].shape, r.tuning["log_evidence"].shape
        ((2, 200), (2,))
    """

    kernel: str | Callable = "mala"
    num_particles: int = 1000
    num_mcmc_steps: int = 10
    target_ess: float = 0.5
    schedule: Any = None
    resampling: str = "systematic"
    init_step_size: float | None = None
    target_acceptance: float | None = None
    adapt_step_size: bool = True
    max_stages: int = 200

    handles_discrete: ClassVar[bool] = False

    def __post_init__(self):
        _check_int("SMC", "num_particles", self.num_particles, 2)
        _check_int("SMC", "num_mcmc_steps", self.num_mcmc_steps, 1)
        _check_int("SMC", "max_stages", self.max_stages, 1)
        _check_fraction("SMC", "target_ess", self.target_ess)
        if self.target_acceptance is not None:
            _check_fraction("SMC", "target_acceptance", self.target_acceptance)
        if self.resampling not in RESAMPLING:
            raise ValueError(f"SMC(resampling={self.resampling!r}): unknown; use one of {sorted(RESAMPLING)}.")
        # Checks the kernel (name or callable) now, with a placeholder dimension.
        _resolve_kernel(self.kernel, self.init_step_size, self.target_acceptance,
                        self.adapt_step_size, 1, where="SMC")
        if self.schedule is not None:
            _check_schedule(self.schedule)

    def draw(self, model: Callable, args: tuple, kwargs: dict, request: Request) -> Outputs:
        """Run ``num_chains`` independent SMCs: ``(samples, stats, tuning, timing)``.

        ``samples`` and ``stats`` have leading axes ``(num_chains, num_samples)``.
        ``devices`` (see :mod:`inference.sharding`): several chains are split over devices
        by chain; a single chain splits its particles over them instead. ``num_warmup`` is
        unused: the tempering path is SMC's warmup.
        """
        key, num_samples, num_chains = request.key, request.num_samples, request.num_chains
        progress, devices = request.progress, request.devices
        n = self.num_particles
        if num_samples > n:
            raise ValueError(
                f"SMC: num_samples={num_samples} draws per chain are taken without replacement "
                f"from num_particles={n} particles; raise num_particles to at least "
                f"{num_samples} (e.g. SMC(num_particles={num_samples})) or lower num_samples."
            )
        pot = make_potential(model, *args, **kwargs)
        trace = trace_model(model, *args, **kwargs)
        sites = list(pot.sites)
        if not sites:
            raise ModelError(f"SMC: model {model_name(model)} has no latent sites to sample.")
        has_likelihood = any(s["type"] == "sample" and s["is_observed"] for s in trace.values())
        if not has_likelihood:
            warnings.warn(
                f"SMC: model {model_name(model)} has no observed sites or factors, so its "
                "likelihood is 1: the log evidence is 0 and the draws are prior draws.",
                stacklevel=4,
            )
        try:
            u0 = _prior_draw(model, args, kwargs, sites, jax.random.key(0))
        except NotImplementedError:
            improper = [name for name, s in latent_sites(trace).items()
                        if "Improper" in type(s["fn"]).__name__]
            raise ModelError(
                f"SMC: model {model_name(model)} has a prior that cannot be sampled"
                + (f" (site(s) {improper})" if improper else "")
                + "; SMC starts from prior draws, so every latent site needs a proper prior "
                "with a sampler. Use a proper prior or a method such as NUTS."
            ) from None
        if num_chains > 1:
            chain_mesh, particle_mesh = mesh_for(devices, num_chains, what="chains",
                                                 owner="SMC"), None
        else:
            chain_mesh, particle_mesh = None, mesh_for(devices, n, what="particles", owner="SMC")
        if (chain_mesh or particle_mesh) is not None:
            ops = _lapack_in_smc(self, model, args, kwargs, sites, u0)
            chain_mesh = cpu_mesh_without_lapack(chain_mesh, ops, "chains", "SMC")
            particle_mesh = cpu_mesh_without_lapack(particle_mesh, ops, "particles", "SMC")

        # Progress: percent of the tempering path covered by the slowest chain.
        bar = ProgressBar(100, desc="SMC", enabled=progress)
        betas, lock = np.zeros(num_chains), threading.Lock()

        def report(chain, beta):  # callbacks may arrive on several threads at once
            with lock:
                betas[int(chain)] = max(betas[int(chain)], float(beta))
                b = float(betas.min())
                bar.update(int(100 * b), {"beta": b})

        # The data enter the compiled program as arguments (new data of the same shapes
        # reuse it); the progress callback goes through a relay (the program is cached).
        dyn, rebuild = split_arguments((tuple(args), dict(kwargs)))
        relay = Relay()

        def program(keys, chains, dyn):
            a, kw = rebuild(dyn)
            logprior, loglik = _split_potential(model, a, kw, sites)
            constrain = dataclasses.replace(pot, args=tuple(a), kwargs=dict(kw)).to_constrained

            def one_chain(key, chain):
                on_stage = lambda b: jax.debug.callback(relay, chain, b)  # noqa: E731
                k_init, k_smc, k_pick = jax.random.split(key, 3)
                positions = jax.vmap(functools.partial(_prior_draw, model, a, kw, sites))(
                    jax.random.split(k_init, n))
                # Which observed sites' log-likelihood is not finite at every initial particle
                # (invalid data: NaN, values outside the support); checked on the host after.
                terms = jax.vmap(lambda u: _model_terms(model, a, kw)(u)[1])(positions)
                finite = {s: jnp.isfinite(v) for s, v in terms.items()}
                total = sum(terms.values(), jnp.zeros((n,)))
                checks = {"dead": ~jnp.any(jnp.isfinite(total)),
                          "all_bad": {s: ~jnp.any(f) for s, f in finite.items()},
                          "any_bad": {s: ~jnp.all(f) for s, f in finite.items()}}
                out = tempered_smc(
                    logprior, loglik, self.kernel, positions, k_smc,
                    num_mcmc_steps=self.num_mcmc_steps, schedule=self.schedule,
                    target_ess=self.target_ess, resampling=self.resampling,
                    init_step_size=self.init_step_size, target_acceptance=self.target_acceptance,
                    adapt_step_size=self.adapt_step_size, max_stages=self.max_stages,
                    callback=on_stage if progress else None, mesh=particle_mesh,
                )
                idx = jax.random.choice(k_pick, n, (num_samples,), replace=False)
                draws = jax.tree.map(lambda v: v[idx], out.particles)
                lp = jax.vmap(logprior)(draws) + out.loglikelihood[idx]
                samples = jax.vmap(constrain)(draws)
                n_grad = jnp.full((num_samples,), out.n_grad / num_samples, jnp.result_type(float))
                tuning = {
                    "log_evidence": out.log_evidence, "temperatures": out.temperatures,
                    "num_stages": out.num_stages, "acceptance_rate": out.acceptance_rate,
                    "step_size": out.step_size, "ess": out.ess, "n_grad": out.n_grad,
                }
                return samples, {"lp": lp, "n_grad": n_grad}, tuning, checks

            return constrain_leading(jax.vmap(one_chain)(keys, chains), chain_mesh, num_chains)

        keys, chains = jax.random.split(key, num_chains), jnp.arange(num_chains)
        keys, chains = put_leading((keys, chains), chain_mesh, num_chains)
        with compiling("SMC", progress) as programs:
            compiled, relay = programs.compile(
                jax.jit(program), (keys, chains, dyn), relay=relay,
                key=("smc", model, self, static_part((tuple(args), dict(kwargs))), num_samples,
                     num_chains, progress, chain_mesh, particle_mesh))
        t1 = time.perf_counter()
        relay.target = report
        try:
            samples, stats, tuning, checks = gather(jax.block_until_ready(compiled(keys, chains, dyn)))
            jax.effects_barrier()  # every progress callback has run before the bar closes
        finally:
            relay.target = None
            bar.close()
        t2 = time.perf_counter()
        raise_if_no_likelihood(model, trace, checks, n)
        final = np.asarray(tuning["temperatures"])[np.arange(num_chains), np.asarray(tuning["num_stages"])]
        if np.any(final < 1.0):
            warnings.warn(
                f"SMC: max_stages={self.max_stages} stages ended before the inverse temperature "
                f"reached 1 (final values {np.round(final, 4).tolist()}); the draws and log "
                "evidence are not the posterior's. Raise max_stages or lower target_ess.",
                stacklevel=4,
            )
        return samples, stats, tuning, {"compile": programs.seconds, "run": t2 - t1,
                                        "devices": describe(chain_mesh or particle_mesh),
                                        "cache": programs.cache}
