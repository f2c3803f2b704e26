"""Approximate marginalisation and normalisation of programs (Becker et al., PLDI 2024).

Two program transformations whose densities are not available exactly but can be *estimated*
by importance sampling with a proposal (by default the program's own prior); the results are used wherever a program
is, in :func:`ppl.sim` and :func:`ppl.density`, and the estimates are *strictly properly
weighted* (Lew et al., "Recursive Monte Carlo and variational inference with auxiliary
variables", 2022), which is what keeps the variational bounds that use them bounds:

=====================================  ==========================================================
``sim(prog, *args) -> (v, log_w)``     ``exp(log_w)`` is **reciprocal**-unbiased:
                                       ``E[exp(-log_w) | v] = 1 / q(v)``
``density(prog, v, *args) -> log_w``   ``exp(log_w)`` is **unbiased**: ``E[exp(log_w)] = q(v)``
=====================================  ==========================================================

where ``q`` is the density of the values that ``sim`` returns. So ``E[log_w]`` is an upper
bound on ``log q(v)`` for ``sim`` and a lower bound for ``density`` (Jensen): an ELBO whose
guide is a marginal (``log p - log_w`` with ``log_w`` from ``sim``) stays a lower bound
(HVI, IWHVI), and so does an ELBO whose model is a marginal (``density`` of it).

:func:`marginal` ``(program, keep, proposal=None, particles=K)``: the marginal of ``program``
on the sites in ``keep``; the other latent sites ``z`` are integrated out with the proposal
``r(z | x)``, a program called as ``proposal(x, *args, **kwargs)`` with ``x`` the dict of kept
values, that samples exactly the other latent sites. By default (``proposal=None``) ``r`` is
the program's own prior for them: the program run with the kept sites fixed at ``x``, each
other latent site drawn from its distribution in the program given the values before it.
Then ``w`` is the product of the kept sites' densities (times the program's observed sites
and factors): likelihood weighting, the paper's ``sir(N)``; exact (zero variance) for sites
drawn after every kept site. With weights ``w(z) = p(x, z) / r(z | x)``:

- ``sim``: draw ``(x, z_1) ~ p`` jointly, ``z_2..z_K ~ r(. | x)``; return ``x`` and
  ``log (1/K) sum_k w(z_k)``. Reciprocal-unbiased for ``p(x)``: the pair is a
  conditional-importance-sampling (SIR-reverse) estimate. With ``K = 1`` it is the
  auxiliary-variable estimate ``p(x, z_1) / r(z_1 | x)`` of HVI.
- ``density(x)``: ``z_1..z_K ~ r(. | x)``; return ``log (1/K) sum_k w(z_k)``, the importance
  sampling estimate, unbiased for ``p(x) = E_r[p(x, z) / r(z | x)]``.

:func:`normalize` ``(program, proposal, particles=K)``: the posterior of ``program``'s latent
sites given its observed sites, approximated by sampling importance resampling (SIR) with the
proposal ``r(z)`` (called with the program's own arguments). With ``w(z) = p(z, obs) / r(z)``
and ``Z_hat = (1/K) sum_k w(z_k)``:

- ``sim``: ``z_1..z_K ~ r``, pick ``j`` with probability ``w(z_j) / sum_k w(z_k)`` (a
  Categorical random choice, site ``"resample"``, with gradient strategy ``resample_grad``);
  return ``z_j`` and ``log p(z_j, obs) - log Z_hat``.
- ``density(z)``: ``z_1 = z``, ``z_2..z_K ~ r``; return ``log p(z, obs) - log Z_hat``.

Here ``q`` is the density of the SIR draw itself, ``q_K(z) = E[p(z, obs) / Z_hat]`` with ``z``
among the particles, which tends to the posterior ``p(z | obs)`` as ``K`` grows; the
``density`` estimate is unbiased and the ``sim`` weight reciprocal-unbiased for ``q_K``, as
in the paper. With ``K = 1``, ``normalize`` is the proposal itself.

Example:
    >>> import jax, jax.numpy as jnp, numpyro, numpyro.distributions as dist, ppl
    >>> def joint():                       # u ~ N(0, 1), x | u ~ N(u, 1): x ~ N(0, sqrt 2)
    ...     u = numpyro.sample("u", dist.Normal(0.0, 1.0))
    ...     numpyro.sample("x", dist.Normal(u, 1.0))
    >>> def reverse(values):               # proposal for u given x (the exact posterior here)
    ...     numpyro.sample("u", dist.Normal(values["x"] / 2, 0.5 ** 0.5))
    >>> q_x = ppl.marginal(joint, keep=["x"], proposal=reverse, particles=4)
    >>> @ppl.expectation
    ... def log_q_at_one():
    ...     return ppl.density(q_x, {"x": 1.0})
    >>> est = float(log_q_at_one.estimate(jax.random.key(0)))
    >>> exact = float(dist.Normal(0.0, 2 ** 0.5).log_prob(1.0))
    >>> abs(est - exact) < 1e-5             # an exact proposal gives zero-variance weights
    True
"""

from __future__ import annotations

import math
from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
import numpyro
import numpyro.distributions as dist
from jax.scipy.special import logsumexp
from numpyro.primitives import Messenger

from ppl.errors import ModelError
from ppl.expectation import density, sim
from ppl.tracing import model_name

__all__ = ["Marginal", "Normalize", "marginal", "normalize", "prior_proposal"]


def _check_particles(particles: Any, what: str) -> int:
    if isinstance(particles, bool) or not isinstance(particles, int) or particles < 1:
        raise ValueError(f"{what}: particles must be a positive int, got {particles!r}.")
    return particles


def _log_mean_exp(log_w: jax.Array) -> jax.Array:
    return logsumexp(log_w) - math.log(log_w.shape[0])


def _vmap_particles(fn: Callable, n: int):
    """``fn()`` for ``n`` independent particles (``jax.vmap``: every particle gets its own key)."""
    return jax.vmap(lambda _: fn())(jnp.arange(n))


class _KeptFixed(Messenger):
    """``program`` as the prior proposal of its non-kept latent sites: the kept sites take the
    given values, and they, the observed sites and the factors count as observed with log
    density zero (masked), so ``ppl.sim`` draws exactly the other latent sites and
    ``ppl.density`` of them is ``log r(z | x)``, the sum of those sites' terms only."""

    def __init__(self, fn: Callable, values: dict):
        self.values = values
        super().__init__(fn)

    def process_message(self, msg):
        if msg["type"] != "sample":
            return
        if msg["name"] in self.values:
            msg["value"] = self.values[msg["name"]]
            msg["is_observed"] = True
        elif not msg["is_observed"]:
            return
        msg["fn"] = msg["fn"].mask(False)


def prior_proposal(program: Callable, keep: Sequence[str]) -> Callable:
    """The default proposal of :func:`marginal`: ``program``'s own prior for its latent sites
    other than ``keep``, called as ``proposal(x, *args, **kwargs)`` like a hand-written one.

    Example:
        >>> import jax, numpyro, numpyro.distributions as dist, ppl
        >>> def joint():
        ...     u = numpyro.sample("u", dist.Normal(0.0, 1.0))
        ...     numpyro.sample("x", dist.Normal(u, 1.0))
        >>> r = prior_proposal(joint, ["x"])
        >>> round(float(ppl.density(r, {"u": 0.0}, {"x": 5.0})), 4)  # log N(0; 0, 1) only
        -0.9189
    """
    keep = frozenset(keep)

    def prior(values: dict, *args: Any, **kwargs: Any):
        fixed = {k: v for k, v in values.items() if k in keep}
        return _KeptFixed(program, fixed)(*args, **kwargs)

    prior.__name__ = prior.__qualname__ = f"prior({model_name(program)})"
    return prior


class Marginal:
    """The marginal of a program on some of its sites; see :func:`marginal`."""

    def __init__(self, program: Callable, keep: Sequence[str], proposal: Callable | None,
                 particles: int):
        if isinstance(keep, str):
            keep = [keep]
        self.program = program
        self.keep = tuple(keep)
        if proposal is not None and not callable(proposal):
            raise TypeError(
                f"ppl.marginal: proposal must be a program (a callable taking the dict of kept "
                f"values, then the program's arguments) or None for the program's own prior; "
                f"got {proposal!r}."
            )
        self.proposal = prior_proposal(program, self.keep) if proposal is None else proposal
        self.particles = _check_particles(particles, "ppl.marginal")
        if not self.keep:
            raise ValueError("ppl.marginal: keep must name at least one site.")
        self.__name__ = f"marginal({model_name(program)}, keep={list(self.keep)})"

    def __repr__(self) -> str:
        return f"{self.__name__[:-1]}, proposal={model_name(self.proposal)}, particles={self.particles})"

    def _propose(self, x: dict, args: tuple, kwargs: dict):
        """One proposal draw ``z ~ r(. | x)`` and its weight ``log p(x, z) - log r(z | x)``."""
        z, log_r = sim(self.proposal, x, *args, **kwargs)
        clash = sorted(set(z) & set(self.keep))
        if clash:
            raise ModelError(
                f"{self!r}: the proposal {model_name(self.proposal)} samples the kept site "
                f"'{clash[0]}'; it must propose only the sites that are marginalised out."
            )
        return density(self.program, {**x, **z}, *args, **kwargs) - log_r

    def __ppl_sim__(self, *args: Any, **kwargs: Any) -> tuple[dict, jax.Array]:
        values, _ = sim(self.program, *args, **kwargs)
        missing = [k for k in self.keep if k not in values]
        if missing:
            raise ModelError(
                f"{self!r}: kept site '{missing[0]}' is not a latent sample site of "
                f"{model_name(self.program)} (its latent sites: {sorted(values)})."
            )
        x = {k: values[k] for k in self.keep}
        z = {k: v for k, v in values.items() if k not in self.keep}
        log_w1 = density(self.program, values, *args, **kwargs) - density(
            self.proposal, z, x, *args, **kwargs)
        log_w = log_w1[None]
        if self.particles > 1:
            others = _vmap_particles(lambda: self._propose(x, args, kwargs), self.particles - 1)
            log_w = jnp.concatenate([log_w, others])
        return x, _log_mean_exp(log_w)

    def __ppl_density__(self, values: dict, *args: Any, **kwargs: Any) -> jax.Array:
        if set(values) != set(self.keep):
            raise ModelError(
                f"ppl.density of {self!r}: values must hold exactly the kept sites "
                f"{sorted(self.keep)}, got {sorted(values)}."
            )
        x = dict(values)
        return _log_mean_exp(
            _vmap_particles(lambda: self._propose(x, args, kwargs), self.particles))

    def __call__(self, *args: Any, **kwargs: Any):
        raise ModelError(
            f"{self!r} is an approximate program: use it through ppl.sim and ppl.density "
            "inside an expectation, not by calling it."
        )


def _resample(logits: jax.Array, grad: Any) -> None:
    numpyro.sample("resample", dist.Categorical(logits=logits), infer={"grad": grad})


class Normalize:
    """The (SIR-approximated) posterior of a program's latents; see :func:`normalize`."""

    def __init__(self, program: Callable, proposal: Callable, particles: int,
                 resample_grad: Any = "reinforce"):
        self.program = program
        self.proposal = proposal
        self.particles = _check_particles(particles, "ppl.normalize")
        self.resample_grad = resample_grad
        self.__name__ = f"normalize({model_name(program)})"

    def __repr__(self) -> str:
        return (f"normalize({model_name(self.program)}, proposal={model_name(self.proposal)}, "
                f"particles={self.particles})")

    def _particle(self, args: tuple, kwargs: dict):
        z, log_r = sim(self.proposal, *args, **kwargs)
        return z, density(self.program, z, *args, **kwargs), log_r

    def __ppl_sim__(self, *args: Any, **kwargs: Any) -> tuple[dict, jax.Array]:
        zs, log_p, log_r = _vmap_particles(lambda: self._particle(args, kwargs), self.particles)
        log_w = log_p - log_r
        if self.particles == 1:
            j = 0
        else:
            j = sim(_resample, log_w, self.resample_grad)[0]["resample"]
        z = jax.tree_util.tree_map(lambda a: a[j], zs)
        return z, log_p[j] - _log_mean_exp(log_w)

    def __ppl_density__(self, values: dict, *args: Any, **kwargs: Any) -> jax.Array:
        log_p = density(self.program, values, *args, **kwargs)
        log_w = (log_p - density(self.proposal, values, *args, **kwargs))[None]
        if self.particles > 1:
            _, lp, lr = _vmap_particles(lambda: self._particle(args, kwargs), self.particles - 1)
            log_w = jnp.concatenate([log_w, lp - lr])
        return log_p - _log_mean_exp(log_w)

    def __call__(self, *args: Any, **kwargs: Any):
        raise ModelError(
            f"{self!r} is an approximate program: use it through ppl.sim and ppl.density "
            "inside an expectation, not by calling it."
        )


def marginal(program: Callable, keep: Sequence[str], proposal: Callable | None = None,
             particles: int = 1) -> Marginal:
    """The marginal of ``program`` on the sites ``keep``, other latents integrated out by IS.

    ``proposal(x, *args, **kwargs)`` receives the dict ``x`` of kept values and must sample
    every other latent site of ``program``. ``proposal=None`` (the default) uses the
    program's own prior for them (:func:`prior_proposal`: the program with the kept sites
    fixed at ``x``), so the weights are the kept sites' densities given the draws; a
    proposal closer to ``p(z | x)`` gives lower-variance estimates. In :func:`ppl.sim` the
    returned log weight is reciprocal-unbiased for ``p(x)`` (one particle from the joint
    draw, ``particles - 1`` from the proposal); in :func:`ppl.density` it is unbiased
    (``particles`` proposal draws). See the module docstring for the formulas.

    Example (a mixture's density, its component summed out by the prior, ``sir(N)``):
        >>> import jax, jax.numpy as jnp, numpyro, numpyro.distributions as dist, ppl
        >>> def mixture():
        ...     c = numpyro.sample("c", dist.Bernoulli(0.3))
        ...     numpyro.sample("x", dist.Normal(jnp.where(c == 1, 2.0, -1.0), 1.0))
        >>> p_x = ppl.marginal(mixture, keep=["x"], particles=16)
        >>> @ppl.expectation
        ... def log_p_at_zero():
        ...     return ppl.density(p_x, {"x": 0.0})
        >>> log_p_at_zero.estimate(jax.random.key(0)).shape
        ()

    With a hand-written proposal:
        >>> import jax, numpyro, numpyro.distributions as dist, ppl
        >>> def guide():
        ...     u = numpyro.sample("u", dist.Normal(0.0, 1.0))
        ...     numpyro.sample("z", dist.Normal(u, 1.0))
        >>> def reverse(values):
        ...     numpyro.sample("u", dist.Normal(values["z"] / 2, 0.8))
        >>> q = ppl.marginal(guide, keep=["z"], proposal=reverse, particles=8)
        >>> @ppl.expectation
        ... def draw():
        ...     values, log_q = ppl.sim(q)
        ...     return log_q
        >>> draw.estimate(jax.random.key(0)).shape
        ()
    """
    return Marginal(program, keep, proposal, particles)


def normalize(program: Callable, proposal: Callable, particles: int = 1,
              resample_grad: Any = "reinforce") -> Normalize:
    """The posterior of ``program``'s latent sites given its observed sites, by SIR.

    ``proposal`` is called with the program's arguments and must sample every latent site.
    :func:`ppl.sim` returns a resampled particle and a reciprocal-unbiased density estimate;
    :func:`ppl.density` an unbiased one (both for the density of the SIR draw, which tends to
    the posterior as ``particles`` grows). ``resample_grad`` is the gradient strategy of the
    resampling choice (site ``"resample"``): ``"reinforce"`` (works under ``jax.vmap``),
    ``"enum"`` (exact, runs the rest of the objective once per particle) or a strategy object.

    Example:
        >>> import jax, numpyro, numpyro.distributions as dist, ppl
        >>> def model(y):
        ...     mu = numpyro.sample("mu", dist.Normal(0.0, 1.0))
        ...     numpyro.sample("y", dist.Normal(mu, 1.0), obs=y)
        >>> def prior(y):
        ...     numpyro.sample("mu", dist.Normal(0.0, 1.0))
        >>> posterior = ppl.normalize(model, proposal=prior, particles=64)
        >>> @ppl.expectation
        ... def posterior_draw(y):
        ...     values, _ = ppl.sim(posterior, y)
        ...     return values["mu"]
        >>> posterior_draw.estimate(jax.random.key(0), 2.0).shape
        ()
    """
    return Normalize(program, proposal, particles, resample_grad)
