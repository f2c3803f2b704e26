"""A model's prior and likelihood, split, in unconstrained space, for the SMC method."""

from __future__ import annotations

import functools
from typing import Any, Callable

import jax
import jax.numpy as jnp
from jax.flatten_util import ravel_pytree
from numpyro import handlers
from numpyro.distributions.transforms import biject_to
from numpyro.primitives import Messenger

from inference.smc.checks import lapack_ops

from inference.smc.moves import _probe, _resolve_kernel


def _split_potential(model: Callable, args: tuple, kwargs: dict, sites: list[str],
                     enumeration: Any = None):
    """``(logprior_fn, loglikelihood_fn)`` over unconstrained positions ``{site: array}``.

    Latent sites' log densities plus the log-Jacobians of their transforms (built from each
    site's support as the model runs, so supports that depend on other latents work) make
    the prior; observed sites and ``numpyro.factor`` terms make the likelihood (factors are
    not part of the prior draws, so they must be tempered). Plate scales apply to both,
    as in NumPyro's potential; the sum equals ``ppl.potential(model).logdensity_fn``.

    With an ``enumeration`` (:class:`ppl.enumeration.Enumeration`: discrete sites summed
    out), the prior is the enumerated density of the model with its observed sites and
    factors masked out, ``log sum_z p(theta, z) = log p(theta)`` (the continuous sites'
    marginal prior, which prior draws of the model follow even when a continuous site
    depends on a discrete one), and the likelihood is the enumerated density of the whole
    model minus that: ``log sum_z p(theta, z) p(y | theta, z) - log p(theta)``, the
    marginal likelihood. Tempering then runs on ``p(theta) p(y | theta)^beta``: the prior
    at 0, the posterior at 1, and the evidence is the model's.
    """
    if enumeration is not None:
        # The log-Jacobians NumPyro's potential adds are factors too (``_<site>_log_det``)
        # and belong to the prior; every other observed site or factor is masked (by
        # exclusion, since ``scan`` renames its sites, e.g. ``_PREV_obs`` for a first step).
        masked = _ObservedMasked(model, frozenset(f"_{n}_log_det" for n in sites))

        def enumerated_prior(u):
            return enumeration.log_density(masked, args, kwargs, u)

        def enumerated_loglik(u):
            return enumeration.log_density(model, args, kwargs, u) - enumerated_prior(u)

        return enumerated_prior, enumerated_loglik
    parts = _model_terms(model, args, kwargs)

    def loglik(u):
        return sum(parts(u)[1].values(), jnp.zeros(()))

    return (lambda u: parts(u)[0]), loglik


class _ObservedMasked(Messenger):
    """Observed sites and factors, except those named in ``keep``, contribute nothing to the
    log density (``mask(False)``: a log-probability of 0 of the same shape, whatever the
    value, so invalid data give 0, not NaN)."""

    def __init__(self, fn: Callable, keep: frozenset):
        self.keep = keep
        super().__init__(fn)

    def process_message(self, msg):
        if msg["type"] == "sample" and msg["is_observed"] and msg["name"] not in self.keep:
            msg["fn"] = msg["fn"].mask(False)


def _model_terms(model: Callable, args: tuple, kwargs: dict) -> Callable:
    """``u -> (log prior incl. log-Jacobians, {observed site: its log-likelihood term})``."""
    def parts(u):
        def sub(msg):
            if msg["type"] == "sample" and not msg["is_observed"] and msg["name"] in u:
                return biject_to(msg["fn"].support)(u[msg["name"]])
            return None

        with handlers.trace() as tr, handlers.seed(rng_seed=0), handlers.substitute(substitute_fn=sub):
            model(*args, **kwargs)
        prior = jnp.zeros(())
        terms = {}
        for name, site in tr.items():
            if site["type"] != "sample":
                continue
            term = jnp.sum(site["fn"].log_prob(site["value"]))
            if site["is_observed"]:
                if site.get("scale") is not None:
                    term = site["scale"] * term
                terms[name] = term
                continue
            if name not in u:  # an enumerated discrete site (drawn here, summed out elsewhere)
                continue
            t = biject_to(site["fn"].support)
            term = term + jnp.sum(t.log_abs_det_jacobian(u[name], site["value"]))
            if site.get("scale") is not None:
                term = site["scale"] * term
            prior = prior + term
        return prior, terms

    return parts


def _prior_draw(model: Callable, args: tuple, kwargs: dict, sites: list[str], key: jax.Array) -> dict:
    """One draw of the latent sites from the prior, mapped to unconstrained space."""
    tr = handlers.trace(handlers.seed(model, key)).get_trace(*args, **kwargs)
    return {name: biject_to(tr[name]["fn"].support).inv(tr[name]["value"]).astype(jnp.result_type(float))
            for name in sites}


def _lapack_in_smc(method: Any, model: Callable, args: tuple, kwargs: dict, sites: list[str],
                   u0: dict, enumeration: Any = None) -> set[str]:
    """LAPACK-backed primitives in the prior draws, the target or the move (traced, not run)."""
    logprior, loglik = _split_potential(model, args, kwargs, sites, enumeration)
    dim = int(ravel_pytree(u0)[0].size)
    move = _resolve_kernel(method.kernel, method.init_step_size, method.target_acceptance,
                           method.adapt_step_size, dim, where="SMC")
    key = jax.random.key(0)
    probe = _probe(move, logprior, loglik, u0, key, dim, jnp.result_type(float))
    draw = jax.make_jaxpr(functools.partial(_prior_draw, model, args, kwargs, sites))(key)
    return set(probe.lapack) | lapack_ops(draw.jaxpr)
