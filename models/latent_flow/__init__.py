r"""A top-down generator with a normalizing-flow prior in latent space, learned by short-run
Langevin posterior inference (no encoder).

The model, for data ``x`` in ``R^D`` and latents ``z`` in ``R^d``:

.. math::  z \sim q_\alpha(z), \qquad x \mid z \sim p_\beta(x \mid z),

with ``q_alpha`` a normalizing flow (:class:`inference.flows.FlowSpec`: ``z = T_alpha(e)``,
``e ~ N(0, I)``, density exact through the inverse) and the likelihood either
``"gaussian"``, ``N(g_beta(z), sigma^2 I)`` with ``sigma = noise_sd`` fixed, or
``"bernoulli"``, independent pixels with logits ``g_beta(z)`` (binarized images). ``g_beta``
is any Equinox module mapping ``(d,)`` to ``(D,)``; :func:`init` builds an MLP.

Learning (:func:`fit`). Fisher's identity gives the gradient of the marginal likelihood as a
posterior expectation, ``grad log p(x) = E_{p(z|x)}[grad log q_alpha(z) + grad log
p_beta(x|z)]``, and the two terms involve disjoint parameters. Every minibatch:

1. *inference* (:func:`infer_latents`): ``K`` unadjusted Langevin steps on every ``z_i``
   targeting ``log p(z_i | x_i) = log q_alpha(z_i) + log p_beta(x_i | z_i) + const``
   (``inference.langevin.flow``), started from draws of the current prior (or, with
   ``persistent=True``, from where that data point's chain stopped the last time);
2. *generator step*: one optimizer step up ``mean_i log p_beta(x_i | z_i)``, ``z`` held fixed;
3. *prior step*: one optimizer step up ``mean_i log q_alpha(z_i)``: maximum likelihood of the
   flow on the inferred latents, so the prior tracks the aggregate posterior.

With an energy-based prior (Pang et al. 2020) step 3 needs a second Langevin chain on the
prior for the normalizer's gradient; a flow's normalizer is exact, so the prior step is plain
maximum likelihood, and sampling (:func:`sample`) needs no MCMC: ``z = T_alpha(e)`` (one flow
pass), ``x = g_beta(z)``.

The Langevin step size is in units of ``z``: the likelihood's curvature in ``z`` is about
``|dg/dz|^2 / noise_sd^2`` for the Gaussian likelihood, and ULA needs ``step_size`` below
``2 /`` that curvature to be stable (:func:`fit` stops with an error naming the latents when
they stop being finite).

Example:
    >>> import jax, jax.numpy as jnp
    >>> model = init(jax.random.key(0), data_dim=3, latent_dim=2, hidden=8, flow_layers=1,
    ...              flow_width=8)
    >>> x = jax.random.normal(jax.random.key(1), (40, 3))
    >>> model, history = fit(model, x, 0, steps=200, batch=20, langevin_steps=10,
    ...                      step_size=0.02)
    >>> sample(model, jax.random.key(3), 5).shape, history["log_likelihood"].shape
    ((5, 3), (200,))
"""

from __future__ import annotations

from models.latent_flow.model import LIKELIHOODS, LatentFlowModel, init  # noqa: F401
from models.latent_flow.densities import log_prior, log_likelihood, decode, sample_latents, sample  # noqa: F401
from models.latent_flow.posterior import infer_latents, reconstruct  # noqa: F401
from models.latent_flow.training import Optimizers, update, fit  # noqa: F401

__all__ = [
    "LIKELIHOODS",
    "LatentFlowModel",
    "Optimizers",
    "init",
    "log_prior",
    "log_likelihood",
    "decode",
    "sample_latents",
    "sample",
    "infer_latents",
    "reconstruct",
    "update",
    "fit",
]
