"""The ``SMC`` method object that ``inference.infer`` runs."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, ClassVar

import jax

from inference.method import Method, Outputs, Request
from inference.smc.driver import extend_smc, run_smc
from inference.smc.moves import _resolve_kernel
from inference.smc.resampling import RESAMPLING
from inference.smc.tempering import _check_fraction, _check_int, _check_schedule


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

    Discrete sites marked ``infer={"enumerate": "parallel"}`` are summed out: the tempered
    target is ``p(theta) p(y | theta)^beta`` with ``p(y | theta)`` the marginal likelihood
    (``infer`` then draws the discrete sites from their exact conditionals).

    Long runs (:mod:`inference.smc.driver`): the stages run in host-driven chunks of about
    a second, so Ctrl-C stops within about that time; it propagates (tempering has no
    posterior before beta reaches 1) with each chain's stage and beta. ``infer(...,
    checkpoint="smc.npz", checkpoint_every=k)`` writes the populations every ``k`` stages
    (default 1); the same call again resumes with the same draws as an uninterrupted run.
    ``result.extend(n)`` draws more by MCMC moves at beta = 1 of the final populations.
    ``init_params`` is refused: SMC starts from prior draws.

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
    #: Its prior/likelihood split sums out the enumerated discrete sites (the marginal
    #: likelihood is tempered; see :func:`inference.smc.model._split_potential`).
    sums_out_enumerated: ClassVar[bool] = True
    #: ``checkpoint``/``checkpoint_every`` (in stages); not ``init_params`` (see :meth:`run`).
    options: ClassVar[frozenset] = frozenset({"checkpoint", "checkpoint_every"})

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

    def run(self, model: Callable, args: tuple, kwargs: dict, request: Request | None = None,
            **fields: Any) -> Outputs:
        """As :meth:`inference.method.Method.run`; ``init_params`` is refused with the reason."""
        given = fields.get("init_params") if request is None else request.init_params
        if given is not None:
            raise TypeError(
                "init_params is not taken by SMC: SMC starts every particle from a prior draw "
                "and tempers from the prior (beta = 0) to the posterior, so a starting point "
                "has no place in it (particles started around a point would be neither the "
                "prior nor weighted for it, and the evidence would be wrong). Drop "
                "init_params, or use an MCMC method (e.g. inference.NUTS()) to start from it.")
        return super().run(model, args, kwargs, request, **fields)

    def draw(self, model: Callable, args: tuple, kwargs: dict, request: Request) -> Outputs:
        """Run ``num_chains`` independent SMCs: ``(samples, stats, tuning, timing)``, with the
        final populations as ``.state`` (for :meth:`extend`).

        ``samples`` and ``stats`` have leading axes ``(num_chains, num_samples)``.
        ``devices`` (see :mod:`inference.sharding`): several chains are split over devices
        by chain; a single chain splits its particles over them instead. ``num_warmup`` is
        unused: the tempering path is SMC's warmup. ``checkpoint``/``checkpoint_every``:
        see :mod:`inference.smc.driver`.
        """
        r = request
        return run_smc(self, model, args, kwargs, key=r.key, num_samples=r.num_samples,
                       num_chains=r.num_chains, progress=r.progress, devices=r.devices,
                       trace=r.trace, checkpoint=r.checkpoint,
                       checkpoint_every=r.checkpoint_every)

    def extend(self, model: Callable, args: tuple, kwargs: dict, *, state: Any,
               num_samples: int, key: jax.Array | None = None, progress: bool = True,
               devices: Any = None) -> Outputs:
        """``num_samples`` more draws per chain (behind ``Result.extend``): MCMC moves at
        inverse temperature 1 of the final populations, which leave the posterior
        invariant (see :func:`inference.smc.driver.extend_smc`)."""
        return extend_smc(self, model, args, kwargs, state=state, num_samples=num_samples,
                          key=key, progress=progress, devices=devices)
