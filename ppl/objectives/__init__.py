"""Variational objectives, each written in the language in a few lines, as a user would.

Every function here takes a model and a guide (NumPyro programs with ``numpyro.param`` sites)
and returns an :class:`ppl.Expectation` over ``(params, *model_args)``: ``params`` is one dict
(unconstrained, as from :func:`ppl.init_params`) holding the param sites of the model and the
guide (and of the reverse proposal, for the hierarchical objectives), substituted into them
as NumPyro's SVI does; ``model_args`` are passed to the model and to the guide. Objectives are
quantities to **maximize**; ``.estimate(key, params, *args)`` gives an unbiased estimate of
the value and ``.grad_estimate(key, params, *args)`` of its gradient.

=================  =====================================================================
``elbo``           ``E_q[log p(x, z) - log q(z)]``; ``gradient="stl"``: sticking the landing
``iwae``           ``E[log (1/K) sum_k p(x, z_k) / q(z_k)]``, ``z_k ~ q`` (IWELBO);
                   ``plate="data"``: per element of that plate, summed (see below);
                   ``gradient="dreg"``: the doubly reparameterised guide gradient
``vimco``          IWAE with VIMCO's leave-one-out control variates for Reinforce sites
``renyi``          ``1/(1 - alpha) E[log (1/K) sum_k (p(x, z_k) / q(z_k))^(1 - alpha)]``
``rws_wake_p``     IWAE with the guide's parameters held fixed (model update of RWS)
``rws_wake_q``     ``E[sum_k wbar_k log q(z_k)]``, self-normalised weights (guide update)
``forward_kl``     ``E_{z ~ SIR_K}[log q(z)]``: ``-KL(p(z|x) || q)`` up to a constant
``hvi``            ELBO with a hierarchical guide ``q(z) = int q(z, u) du`` (marginal, 1)
``iwhvi``          the same with ``particles`` weights in all (the guide's draw and
                   ``particles - 1`` reverse-proposal samples; tighter)
``diwhvi``         IWAE over ``K`` draws of a hierarchical guide, ``inner_particles`` each
=================  =====================================================================

Lower-variance guide gradients (``low_variance``): ``elbo(..., gradient="stl")`` and
``iwae(..., gradient="dreg")`` keep the value and estimate the same gradient, unbiased, with
the guide's parameters differentiated through its reparameterised draws only (their score
term dropped, or for DReG rewritten); the model's parameters get the usual gradient.

Per-element bounds (``iwae``, ``vimco``, ``renyi`` with ``plate="data"``). Without
``plate``, the multi-particle objectives draw ``K`` joint particles of the whole program: on
a model with a data plate the weight ``w_k`` is the product of all the elements' weights, and
``log (1/K) sum_k w_k`` is a valid but loose bound (with many elements one particle dominates
and it is little better than the ELBO). With ``plate="data"`` the ``K`` particles are
weighted per element of that plate: ``(N/B) sum_{n in batch} log (1/K) sum_k w_{n,k}``, where
``w_{n,k}`` is element ``n``'s weight in particle ``k`` (the log densities of the model's and
the guide's sites inside the plate, along its axis, nested plates and event dims summed) and
``N/B`` the plate's subsample scale (1 when it does not subsample; the subsample indices are
drawn once, shared by the guide, the model and every particle). This is the IWAE of a dataset
(Burda et al.), e.g. of a VAE with one latent per image, and what NumPyro's ``RenyiELBO``
computes when the plate encloses every sample site. It is exact only if the plate means what
NumPyro's plates declare: given the sites outside it, the elements are independent in the
model and in the guide, and element ``n``'s terms involve its own local sites only.

* The plate is named explicitly (no detection: the bound changes, so it is asked for, and a
  model may have several plates). An unknown name is an error listing the model's plates.
* Sites outside the plate. Observed sites and factors that do not involve the local latents
  count once. A term outside the plate that depends on the local latents (say
  ``factor("pen", -sum(z))`` after the plate) breaks the factorisation and is an error naming
  it (read from the programs' jaxpr when the objective is traced, no run-time cost).
* Global latent sites (latent sites outside the plate) are an error by default: the
  per-element bound over local sites is not IWAE_K of the joint. With
  ``shared_globals=True`` they are drawn once per estimate and shared by all ``K``
  particles, which gives ``E_{g ~ q(g)}[log p(g) / q(g) + (N/B) sum_n IWAE_{K,n}(g)]`` with
  ``IWAE_{K,n}(g) = E log (1/K) sum_k p(x_n, z_{n,k} | g) / q(z_{n,k} | g)``: an ELBO in
  the global sites and IWAE_K per element in the local ones, between the ELBO (``K = 1``)
  and ``log p(x)``. The global sites of the guide must not depend on local ones (an error).
* Approximate programs (``ppl.marginal``, ``ppl.normalize``) cannot be split per element (an
  error); a site inside the plate in one program and outside it in the other is an error.

Writing a new one takes the same few lines::

    def my_objective(model, guide):
        @ppl.expectation
        def objective(params, *args):
            p, q = ppl.with_params((model, guide), params)
            z, log_q = ppl.sim(q, *args)
            return ppl.density(p, z, *args) - log_q
        return objective

The examples below share this conjugate model; ``log p(x) = log N(x; 0, sqrt 2)``:

    >>> import jax, jax.numpy as jnp, numpyro, numpyro.distributions as dist, ppl
    >>> def model(x):
    ...     z = numpyro.sample("z", dist.Normal(0.0, 1.0))
    ...     numpyro.sample("x", dist.Normal(z, 1.0), obs=x)
    >>> def guide(x):
    ...     m = numpyro.param("m", 0.0)
    ...     numpyro.sample("z", dist.Normal(m, jnp.exp(numpyro.param("log_s", 0.0))))
    >>> params = ppl.init_params(guide, jax.random.key(0), 1.0)
    >>> obj = ppl.objectives.elbo(model, guide)
    >>> g = obj.grad_estimate(jax.random.key(1), params, 1.0)[0]
    >>> sorted(g)
    ['log_s', 'm']
"""

from __future__ import annotations

from ppl.objectives.particles import particles, log_mean_exp
from ppl.objectives.bounds import elbo, iwae, vimco, renyi
from ppl.objectives.rws import rws_wake_p, rws_wake_q, forward_kl
from ppl.objectives.hierarchical import hvi, iwhvi, diwhvi
from ppl.objectives.low_variance import GRADIENTS, LowVarianceError

__all__ = [
    "elbo",
    "iwae",
    "vimco",
    "renyi",
    "rws_wake_p",
    "rws_wake_q",
    "forward_kl",
    "hvi",
    "iwhvi",
    "diwhvi",
    "particles",
    "log_mean_exp",
]
# Also importable from here (not in __all__, which lists the objectives and their helpers,
# as inference.vi.method.objective_names reads it): GRADIENTS, LowVarianceError.
