r"""Score-based sampling: forward processes, score-matching losses, reverse-time samplers.

Forward processes (one small protocol, :class:`Process`): ``x_t = a(t) x0 + s(t) eps``,
``t`` in ``[t_min, t_max]``, with ``marginal(t) -> (a, s)``, the SDE ``dx = f(t) x dt +
g(t) dW`` (``drift(x, t) = f(t) x``, ``diffusion(t) = g(t)``; both derived from the marginal:
``f = d log a / dt`` and ``g^2 = d s^2/dt - 2 f s^2``) and ``prior_sample``:

* :class:`VP` -- variance preserving, ``beta(t)`` linear (Song et al. 2021);
* :class:`VE` -- variance exploding, ``a = 1``, ``s`` geometric from ``sigma_min`` to ``sigma_max``;
* :class:`Linear` -- the linear interpolant ``a = 1 - t``, ``s = t`` (rectified flow's path).

A network ``net(x, t)`` may predict the ``"score"`` ``grad log p_t``, the ``"noise"`` eps,
the ``"data"`` ``E[x0 | x_t]`` or the ``"velocity"`` ``a'(t) x0 + s'(t) eps`` (the path's time
derivative, flow matching's target); :func:`convert` maps any of these into any other.

Losses (per-example Equinox networks ``net(x, t)``, vmapped over a batch):
:func:`dsm_loss` (denoising score matching, Vincent 2011 / Song et al. 2021, with the standard
weighting ``lambda(t) = s(t)^2`` or the prediction's native MSE) and :func:`ssm_loss` (sliced
score matching, Song et al. 2019). :func:`fit_score` trains with either.

Samplers: each takes ``(fn, process, key, shape or x_T, steps)`` where ``fn(x, t)`` acts on
the whole batch ``x`` (``(n, ...)``) at a scalar ``t`` (wrap a per-example network with
:func:`batched`), runs one ``jax.jit``-compiled ``lax.scan`` and returns
:class:`ScoreSamples` ``(x, nfe, path)``:

* :func:`euler_maruyama` -- the reverse SDE ``dx = [f x - g^2 score] dt + g dW``;
* :func:`pf_ode` -- the probability-flow ODE ``dx/dt = f x - g^2 score / 2``, Euler or Heun,
  integrated in the scaled variables ``x / a`` against ``s / a`` (where it reads
  ``d(x/a)/d(s/a) = eps``; Euler there is DDIM);
* :func:`dpm_solver` -- an exponential-integrator multistep solver in the data prediction,
  orders 1-3, steps uniform in log-SNR (in the spirit of DPM-Solver++, Lu et al. 2022);
* :func:`predictor_corrector` -- Euler-Maruyama predictor + Langevin corrector with the
  signal-to-noise step rule (Song et al. 2021);
* :func:`annealed_langevin` -- Langevin dynamics at each of a decreasing sequence of noise
  levels (Song & Ermon 2019).

Analytical start: :class:`GaussianStart` replaces the high-noise part of the trajectory by
the closed-form probability-flow map of the data's Gaussian approximation
(:func:`gaussian_flow`), and the solver's steps all go to the remaining interval.

Unnormalised targets: :func:`sample_target` runs annealed Langevin along tempered or
Gaussian-smoothed versions of a log density (any flat ``logdensity_fn`` or a
``ppl.potential``). Score priors: :func:`posterior_score` adds a likelihood's guidance
(``grad_x log p(y | E[x0 | x_t])``, diffusion posterior sampling, Chung et al. 2023) to a
prior score; :func:`observation_loglik` makes that likelihood from a NumPyro observation model.

Modules: :mod:`~inference.score.processes`, :mod:`~inference.score.predictions`,
:mod:`~inference.score.losses`, :mod:`~inference.score.training`,
:mod:`inference.score.samplers` (``common``, ``gaussian_start``, ``sde``, ``ode``, ``dpm``,
``predictor_corrector``, ``annealed``), :mod:`~inference.score.targets`,
:mod:`~inference.score.posterior`; every public name is importable from here.

Example:
    >>> import jax
    >>> from models.score_gmm import ring_mixture
    >>> gmm, proc = ring_mixture(4), VP()
    >>> out = dpm_solver(gmm.score_fn(proc), proc, jax.random.key(0), (256, 2), steps=10)
    >>> out.x.shape, out.nfe
    ((256, 2), 10)
"""

from __future__ import annotations

from inference.score.losses import dsm_loss, relative_score_error, ssm_loss
from inference.score.posterior import observation_loglik, posterior_score
from inference.score.predictions import PREDICTIONS, batched, convert
from inference.score.processes import VE, VP, Linear, Process, process
from inference.score.samplers import (
    SCHEDULES,
    GaussianStart,
    ScoreSamples,
    annealed_langevin,
    dpm_solver,
    euler_maruyama,
    gaussian_flow,
    pf_ode,
    predictor_corrector,
    timesteps,
)
from inference.score.targets import sample_target
from inference.score.training import fit_score

__all__ = [
    "Process", "VP", "VE", "Linear", "process",
    "PREDICTIONS", "SCHEDULES", "convert", "batched",
    "dsm_loss", "ssm_loss", "fit_score", "relative_score_error",
    "timesteps", "ScoreSamples",
    "euler_maruyama", "pf_ode", "dpm_solver", "predictor_corrector", "annealed_langevin",
    "GaussianStart", "gaussian_flow",
    "sample_target", "posterior_score", "observation_loglik",
]
