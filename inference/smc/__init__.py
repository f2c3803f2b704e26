r"""Tempered sequential Monte Carlo: any kernel as the move, with a log evidence estimate.

Tempering bridges the prior ``p0`` and the posterior through the path

.. math::  \pi_\beta(x) \propto p_0(x)\,L(x)^\beta, \qquad 0 = \beta_0 < \beta_1 < \dots < \beta_T = 1.

A population of ``N`` particles drawn from the prior is carried along the path. At stage
``t`` each particle gets the incremental weight ``w_i = L(x_i)^{\beta_t - \beta_{t-1}}``;
``mean_i w_i`` estimates the ratio ``Z_t / Z_{t-1}`` of the path's normalising constants,
and the sum over stages of ``log mean_i w_i`` estimates the log evidence ``log Z = log \int p_0 L`` (Del Moral, Doucet &
Jasra 2006, *JRSS B* 68(3); Chopin & Papaspiliopoulos 2020, *An Introduction to Sequential
Monte Carlo*, ch. 17). The particles are then resampled (systematic by default) and moved
by ``num_mcmc_steps`` steps of an MCMC kernel that leaves ``\pi_{\beta_t}`` invariant.
Since every stage resamples, the final population is equally weighted.

``exp(log Z-hat)`` is unbiased for ``Z``; ``log Z-hat`` itself is biased low by about half
its variance (Jensen's inequality), which shrinks as ``1/N``.

Adaptive tempering (``schedule=None``): the next ``beta`` is found by bisection so that the
effective sample size of the incremental weights, ``(sum w)^2 / sum w^2``, is
``target_ess * N`` (Jasra et al. 2011, *Scand. J. Stat.* 38(1)). Both that and a fixed
``schedule`` run their stages in a ``jax.lax.while_loop``, jittable and ``vmap``-able
(independent SMC runs). :func:`tempering` gives the same algorithm cut into stages
(``start``, ``advance`` up to a stage, ``result``): the ``SMC`` method runs it a few stages
per call from the host (:mod:`inference.smc.driver`: Ctrl-C, checkpoints, ``extend``).

The step-size rule (``adapt_step_size=True``) for kernels whose step size the SMC sets:

* If the kernel takes an ``inverse_mass_matrix``, it gets the diagonal of the weighted
  particle variance at the new temperature (computed before resampling), so the step size
  is relative to the population's spread and shrinks with it automatically.
* If the kernel reports ``acceptance_rate``, the (relative) step size follows a
  multiplicative controller toward ``target_acceptance``:
  ``h_{t+1} = h_t * exp(2 (mean acceptance at stage t - target_acceptance))``
  (at most a factor ``e^{-2 * target}`` down or ``e^{2 (1 - target)}`` up per stage).
  Unadjusted kernels (ULA) keep ``h`` fixed at its initial value (relative to the spread).

Which kernels (``kernel=``):

* a name: ``"mala"`` (:func:`inference.langevin.mala`, target acceptance 0.574),
  ``"ula"`` (:func:`inference.langevin.ula`, initial relative step 0.05), ``"rwm"``
  (Gaussian random-walk Metropolis, no gradients, target acceptance 0.234);
* a kernel factory with a ``step_size`` parameter, e.g. :func:`inference.langevin.mala`,
  ``functools.partial(langevin.mala, step_size=0.1)`` (0.1 is then the initial step size)
  or ``blackjax.mala``: the SMC sets ``step_size`` (and ``inverse_mass_matrix`` when the
  factory takes one) at every stage;
* any other callable ``logdensity_fn -> SamplingAlgorithm`` (e.g.
  ``lambda f: blackjax.mala(f, 0.1)``): used as is, nothing adapted.

With ``adapt_step_size=False`` a factory is called as ``kernel(logdensity_fn)`` (or with
``step_size=init_step_size`` when given), i.e. nothing is adapted either.

Gradient counts (``n_grad``), summed over stages, particles and steps: a move step counts
``info.n_grad`` when the kernel reports it (our kernels), else ``info.num_integration_steps``
(BlackJAX's HMC and NUTS: one gradient per leapfrog step), else the gradients of the target
found by tracing one step (BlackJAX's MALA: 1; a random walk: 0). Each stage
re-initialises the kernel's state at the new temperature; the gradients that init takes
(found by tracing it: 1 for MALA, 0 for a random walk) are counted too. Tempering itself
(the weights, the bisection for the next temperature, the step-size rule) uses likelihood
values only, no gradients.

Example:
    >>> import jax, jax.numpy as jnp
    >>> from inference.mcmc import langevin
    >>> logprior = lambda x: -0.5 * x**2 - 0.5 * jnp.log(2 * jnp.pi)     # N(0, 1)
    >>> loglik = lambda x: -0.5 * (1.0 - x)**2 - 0.5 * jnp.log(2 * jnp.pi)  # y = 1 ~ N(x, 1)
    >>> x0 = jax.random.normal(jax.random.key(0), (2000,))
    >>> out = tempered_smc(logprior, loglik, langevin.mala, x0, jax.random.key(1),
    ...                    num_mcmc_steps=5)
    >>> exact = -0.5 * jnp.log(2 * jnp.pi * 2.0) - 0.25   # y ~ N(0, 2)
    >>> bool(abs(out.log_evidence - exact) < 0.05), round(float(out.temperatures[0]), 1)
    (True, 0.0)
"""

from __future__ import annotations

from inference.smc.rwm import KERNELS
from inference.smc.resampling import RESAMPLING, resample
from inference.smc.tempering import SMCResult, Tempering, TemperingState, tempered_smc, tempering
from inference.smc.method import SMC
from inference.smc import checks  # noqa: F401  (inference.smc.checks)
from inference.smc.model import _split_potential  # noqa: F401  (used by tests)

__all__ = ["SMC", "SMCResult", "tempered_smc", "tempering", "Tempering", "TemperingState",
           "KERNELS", "RESAMPLING", "resample"]
