"""Posterior sampling with a score prior: a likelihood's guidance through the prior's
denoiser (diffusion posterior sampling), and likelihoods from NumPyro observation models."""

from __future__ import annotations

from typing import Any, Callable

import equinox as eqx
import jax
import jax.numpy as jnp

from inference.score.losses import _bcast
from inference.score.predictions import _check_prediction, _to_noise
from inference.score.processes import Process, _check_process

__all__ = ["posterior_score", "observation_loglik"]


class _PosteriorScore(eqx.Module):
    prior: Callable
    proc: Process
    log_likelihood: Callable
    prediction: str
    scale: float
    batched: bool
    max_ratio: float | None

    def __call__(self, x, t):
        a, s = self.proc.marginal(t)

        def guided(x):
            out = self.prior(x, t)
            if self.prediction == "score":
                # Tweedie straight from the score: finite where s = 0 (t = 0 for VP and
                # Linear), where the noise route -(-s score) / s is 0 / 0.
                score, x0 = out, (x + s**2 * out) / a
            else:
                eps = _to_noise(out, x, t, self.proc, self.prediction)
                score, x0 = -eps / s, (x - s * eps) / a
            ll = self.log_likelihood(x0) if self.batched else jax.vmap(self.log_likelihood)(x0)
            return jnp.sum(ll), score

        grad_ll, score = jax.grad(guided, has_aux=True)(x)
        guide = self.scale * grad_ll
        if self.max_ratio is not None:  # per draw: |guide| <= max_ratio |score|
            n = x.shape[0]
            gn = jnp.linalg.norm(guide.reshape(n, -1), axis=1)
            sn = jnp.linalg.norm(score.reshape(n, -1), axis=1)
            f = jnp.minimum(1.0, self.max_ratio * sn / jnp.maximum(gn, 1e-30))
            guide = jnp.where(jnp.isfinite(guide), guide, 0.0) * _bcast(f, x)
        return score + guide


def posterior_score(prior: Callable, proc: Process, log_likelihood: Callable, *,
                    prediction: str = "score", scale: float = 1.0,
                    batched: bool = False, max_ratio: float | None = None) -> Callable:
    r"""The guided score ``score_prior(x, t) + scale * grad_x log p(y | x0_hat(x, t))``.

    ``x0_hat = E[x0 | x_t]`` is the prior's Tweedie denoiser, differentiated through the
    prior network (diffusion posterior sampling, Chung et al. 2023: ``p(y | x_t)`` approximated
    by ``p(y | x0_hat)``). ``log_likelihood(x0)`` takes one clean example (see
    :func:`observation_loglik`); with ``batched=True`` it takes the whole batch ``(n, ...)``
    instead (e.g. a model with one observation per draw). With a learned prior, the
    Tweedie Jacobian at high noise carries the network's error divided by ``a(t)``;
    ``max_ratio`` caps each draw's guidance at ``max_ratio`` times its prior score's norm
    (a stabiliser; ``None``: no cap). The result is a batched ``fn(x, t)`` predicting the score,
    usable by every sampler (one prior evaluation and its VJP per call; counted as one NFE).
    Where ``s(t) = 0`` (``t = 0`` for :class:`VP` and :class:`Linear`) ``x0_hat = x`` and the
    result is the exact posterior score when the prior predicts the score; a noise, data or
    velocity prediction does not determine the score there (``eps / s`` is 0 / 0), and the
    samplers stop at ``t_min > 0``.

    Example:
        >>> from inference.score import VP, euler_maruyama
        >>> import jax, jax.numpy as jnp
        >>> from models.score_gmm import ring_mixture
        >>> g, p = ring_mixture(4), VP()
        >>> ll = lambda x0: -0.5 * jnp.sum((x0[0] - 2.0) ** 2) / 0.1**2  # observe x[0] = 2
        >>> fn = posterior_score(g.score_fn(p), p, ll)
        >>> out = euler_maruyama(fn, p, jax.random.key(0), (200, 2), 200)
        >>> round(float(out.x[:, 0].mean()), 1)
        2.0
    """
    _check_prediction("posterior_score", prediction)
    proc = _check_process("posterior_score", proc)
    if not callable(log_likelihood):
        raise TypeError("posterior_score: log_likelihood must be a callable x0 -> log p(y | x0).")
    return _PosteriorScore(prior, proc, log_likelihood, prediction, float(scale), bool(batched),
                           None if max_ratio is None else float(max_ratio))


def observation_loglik(model: Callable, *args: Any, **kwargs: Any) -> Callable:
    """``x0 -> log p(observed sites | x0)`` from a NumPyro observation model ``model(x0, *args,
    **kwargs)`` whose sample sites are all observed (``obs=...``).

    Example:
        >>> import jax.numpy as jnp, numpyro, numpyro.distributions as dist
        >>> def obs(x, y=None):
        ...     numpyro.sample("y", dist.Normal(x[:1], 0.5).to_event(1), obs=y)
        >>> ll = observation_loglik(obs, y=jnp.array([1.0]))
        >>> round(float(ll(jnp.array([1.0, 7.0]))), 4)  # log N(1; 1, 0.5)
        -0.2258
    """
    from numpyro import handlers
    from numpyro.infer import util as numpyro_util

    def loglik(x0):
        tr = handlers.trace(handlers.seed(model, 0)).get_trace(x0, *args, **kwargs)
        latent = [n for n, site in tr.items() if site["type"] == "sample" and not site["is_observed"]]
        if latent:
            raise ValueError(f"observation_loglik: model {getattr(model, '__name__', model)!r} "
                             f"has unobserved sample sites {latent}; an observation model must "
                             "observe all its sites (fix or observe them).")
        return numpyro_util.log_density(model, (x0,) + args, kwargs, {})[0]

    return loglik
