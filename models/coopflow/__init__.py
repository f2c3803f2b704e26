r"""CoopFlow: an energy-based model and a normalizing flow learned together.

Xie et al. (ICLR 2022), *A Tale of Two Flows: Cooperative Learning of Langevin Flow and
Normalizing Flow Toward Energy-Based Model*. Two models of the data law:

* the energy-based model (EBM) ``p_theta(x) ∝ exp(-E_theta(x))``, with ``E_theta`` an
  Equinox network (by default :class:`Energy`, an MLP), and
* a normalizing flow ``q_alpha``: ``x = T_alpha(z)``, ``z ~ N(0, I)``
  (:class:`inference.flows.FlowSpec`, weights one flat vector).

Each training iteration (:func:`train_step`, run by :func:`fit`):

1. the flow proposes ``x_0 = T_alpha(z)``, ``z ~ N(0, I)``;
2. ``K`` steps of short-run Langevin on ``log p_theta = -E_theta``
   (:func:`inference.langevin.flow`: ``x_{k+1} = x_k - h grad E(x_k) + sqrt(2 h T) xi_k``,
   ``T = 1`` the plain unadjusted Langevin algorithm, ``T < 1`` damped noise) revise
   ``x_0 -> x_K``; the revised samples are held fixed (no gradient through the chain);
3. the EBM descends the maximum-likelihood (contrastive-divergence) loss with the data
   against ``x_K`` (:func:`energy_loss`),

   .. math::  L(\theta) = E_{data}[E_\theta(x)] - E_{x_K}[E_\theta(x_K)]
              + \alpha\,(E_{data}[E_\theta^2] + E_{x_K}[E_\theta^2]),

   the small ``alpha`` penalty keeping the energy's free offset from drifting (as in
   ``examples/ebm_short_run.py``);
4. the flow takes a maximum-likelihood step on the revised samples: it minimises
   ``-E[log q_alpha(x_K)]`` (:func:`flow_loss`), so it learns to absorb the Langevin
   revision and its own proposals move towards the EBM's short-run law.

Sampling afterwards (:func:`sample`) is the same cooperative chain: a flow draw, then ``K``
Langevin steps; ``langevin_steps=0`` gives the flow alone.

The flow's density is needed in the data direction (``log q(x)`` through ``T^{-1}``) and
its samples in the other, so use a kind that is one pass both ways: ``"affine_coupling"``
(the default) or ``"spline_coupling"``.

Practical notes (from the runs in ``examples/coopflow.py``):

* The flow learns whatever the revision adds, noise included: it fits ``x_K``, which is
  ``x_0`` plus ``K`` steps of Langevin noise, so unless the energy's restoring drift holds
  the samples, the flow's spread grows from one iteration to the next and the pair runs
  away (seen on 2-D data with small steps, and on 64-D digits at ``T = 1``). What holds it
  here: the reference quadratic of :class:`Energy` (``reference_scale``), an EBM that
  learns faster than the flow (:func:`default_optimizers`), and in high dimension a
  temperature below 1.
* Short-run Langevin moves mass locally. It sharpens modes the flow has blurred, but it
  cannot carry mass between well separated modes, so the mode weights are the flow's and
  are corrected only slowly, through the energy's tilt.
* The learned energy is a short-run energy (Nijkamp et al. 2019): its ``K``-step sampler
  from the flow matches the data; ``exp(-E)`` itself need not be a good density.

Training is ``model, history = fit(model, data, key, steps)`` (``data`` an array of points
or a sampler such as :func:`models.toy2d.eight_gaussians`); ``examples/coopflow.py`` runs
it on 2-D data and on digits.

Example:
    >>> import jax
    >>> from models import coopflow
    >>> model = coopflow.init(jax.random.key(0), 2, flow_layers=2, flow_width=8,
    ...                       energy_width=16, energy_depth=1, langevin_steps=5)
    >>> x = coopflow.sample(model, jax.random.key(1), 3)  # flow draws + 5 Langevin steps
    >>> x.shape, coopflow.flow_log_prob(model, x).shape
    ((3, 2), (3,))
"""

from __future__ import annotations

from models.coopflow.model import Energy, CoopFlow, init  # noqa: F401
from models.coopflow.sampling import energies, flow_sample, flow_log_prob, revise, sample  # noqa: F401
from models.coopflow.losses import energy_loss, flow_loss  # noqa: F401
from models.coopflow.training import Metrics, CoopFlowNonFiniteError, default_optimizers, init_opt_state, train_step, fit  # noqa: F401
from models.coopflow.model import FAST_KINDS  # noqa: F401

__all__ = [
    "Energy",
    "CoopFlow",
    "Metrics",
    "CoopFlowNonFiniteError",
    "init",
    "energies",
    "flow_sample",
    "flow_log_prob",
    "revise",
    "sample",
    "energy_loss",
    "flow_loss",
    "default_optimizers",
    "init_opt_state",
    "train_step",
    "fit",
]
