"""Variational objectives, each written in the language in a few lines, as a user would.

Every function here takes a model and a guide (NumPyro programs with ``numpyro.param`` sites)
and returns an :class:`ppl.Expectation` over ``(params, *model_args)``: ``params`` is one dict
(unconstrained, as from :func:`ppl.init_params`) holding the param sites of the model and the
guide (and of the reverse proposal, for the hierarchical objectives), substituted into them
as NumPyro's SVI does; ``model_args`` are passed to the model and to the guide. Objectives are
quantities to **maximize**; ``.estimate(key, params, *args)`` gives an unbiased estimate of
the value and ``.grad_estimate(key, params, *args)`` of its gradient.

=================  =====================================================================
``elbo``           ``E_q[log p(x, z) - log q(z)]``
``iwae``           ``E[log (1/K) sum_k p(x, z_k) / q(z_k)]``, ``z_k ~ q`` (IWELBO)
``vimco``          IWAE with VIMCO's leave-one-out control variates for Reinforce sites
``renyi``          ``1/(1 - alpha) E[log (1/K) sum_k (p(x, z_k) / q(z_k))^(1 - alpha)]``
``rws_wake_p``     IWAE with the guide's parameters held fixed (model update of RWS)
``rws_wake_q``     ``E[sum_k wbar_k log q(z_k)]``, self-normalised weights (guide update)
``forward_kl``     ``E_{z ~ SIR_K}[log q(z)]``: ``-KL(p(z|x) || q)`` up to a constant
``hvi``            ELBO with a hierarchical guide ``q(z) = int q(z, u) du`` (marginal, 1)
``iwhvi``          the same with ``K`` reverse-proposal samples (tighter)
``diwhvi``         IWAE over ``K`` draws of a hierarchical guide, ``M`` inner samples each
=================  =====================================================================

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

import math
from typing import Callable, Sequence

import jax
import jax.numpy as jnp
from jax.scipy.special import logsumexp
from numpyro import handlers

from ppl.expectation import Expectation, density, expectation, sim
from ppl.marginal import marginal, normalize
from ppl.params import no_grad, with_params
from ppl.strategy import Reinforce, resolve_strategy

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


def _check_count(value, what: str, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{what} must be an int >= {minimum}, got {value!r}.")
    return value


def particles(fn: Callable, K: int):
    """``fn()`` for ``K`` independent particles, stacked (``jax.vmap`` over the particle index).

    Example:
        >>> import jax, numpyro, numpyro.distributions as dist, ppl
        >>> @ppl.expectation
        ... def spread():
        ...     z = particles(lambda: ppl.sim(lambda: numpyro.sample("z", dist.Normal(0., 1.)))[0]["z"], 5)
        ...     return z.std()
        >>> float(spread.estimate(jax.random.key(0))) > 0
        True
    """
    return jax.vmap(lambda _: fn())(jnp.arange(K))


def log_mean_exp(log_w: jax.Array) -> jax.Array:
    """``log (1/K) sum_k exp(log_w[k])`` over the leading axis, stably.

    Example:
        >>> import jax.numpy as jnp
        >>> float(log_mean_exp(jnp.log(jnp.array([1.0, 3.0]))))  # doctest: +ELLIPSIS
        0.693...
    """
    return logsumexp(log_w, axis=0) - math.log(log_w.shape[0])


def elbo(model: Callable, guide: Callable) -> Expectation:
    """The evidence lower bound ``E_{z ~ q}[log p(x, z) - log q(z)] <= log p(x)``.

    Example (at ``q = p(z | x) = N(x/2, 1/sqrt 2)`` every estimate equals ``log p(x)``):
        >>> import jax, jax.numpy as jnp, numpyro, numpyro.distributions as dist, ppl
        >>> def model(x):
        ...     z = numpyro.sample("z", dist.Normal(0.0, 1.0))
        ...     numpyro.sample("x", dist.Normal(z, 1.0), obs=x)
        >>> def guide(x):
        ...     m, log_s = numpyro.param("m", 0.0), numpyro.param("log_s", 0.0)
        ...     numpyro.sample("z", dist.Normal(m, jnp.exp(log_s)))
        >>> params = {"m": 0.0, "log_s": 0.0}
        >>> exact = {"m": 0.5, "log_s": -0.5 * jnp.log(2.0)}  # log p(1) = log N(1; 0, sqrt 2)
        >>> float(ppl.objectives.elbo(model, guide).estimate(jax.random.key(0), exact, 1.0))  # doctest: +ELLIPSIS
        -1.515...
    """

    @expectation
    def elbo(params, *args):
        p, q = with_params((model, guide), params)
        z, log_q = sim(q, *args)
        return density(p, z, *args) - log_q

    return elbo


def iwae(model: Callable, guide: Callable, K: int = 8) -> Expectation:
    """The importance-weighted bound (IWELBO, Burda et al. 2016) with ``K`` particles.

    ``E[log (1/K) sum_k w_k]``, ``w_k = p(x, z_k) / q(z_k)``, ``z_k ~ q`` independent;
    ``ELBO <= IWAE_K <= IWAE_{K+1} <= log p(x)``.

    Example:
        >>> import jax, jax.numpy as jnp, numpyro, numpyro.distributions as dist, ppl
        >>> def model(x):
        ...     z = numpyro.sample("z", dist.Normal(0.0, 1.0))
        ...     numpyro.sample("x", dist.Normal(z, 1.0), obs=x)
        >>> def guide(x):
        ...     m, log_s = numpyro.param("m", 0.0), numpyro.param("log_s", 0.0)
        ...     numpyro.sample("z", dist.Normal(m, jnp.exp(log_s)))
        >>> params = {"m": 0.0, "log_s": 0.0}
        >>> obj = ppl.objectives.iwae(model, guide, K=4)
        >>> obj.estimate(jax.random.key(0), params, 1.0).shape
        ()
    """
    _check_count(K, "iwae: K")

    @expectation
    def iwae(params, *args):
        p, q = with_params((model, guide), params)

        def log_weight():
            z, log_q = sim(q, *args)
            return density(p, z, *args) - log_q

        return log_mean_exp(particles(log_weight, K))

    return iwae


def _reinforce_log_prob(program: Callable, values: dict, *args) -> jax.Array:
    """``log q(values)`` summed over the sites whose gradient strategy is plain Reinforce.

    Its derivative (at fixed values) is the score that the Reinforce rule multiplies by the
    objective's value; VIMCO subtracts a per-particle baseline times that score.
    """
    trace = handlers.trace(handlers.substitute(program, data=values)).get_trace(*args)
    total = jnp.zeros(())
    for name, site in trace.items():
        if site["type"] != "sample" or site["is_observed"]:
            continue
        strategy = resolve_strategy(name, site["fn"], (site.get("infer") or {}).get("grad"))
        if isinstance(strategy, Reinforce) and strategy.baseline is None:
            term = jnp.sum(site["fn"].log_prob(site["value"]))
            total = total + (term if site.get("scale") is None else site["scale"] * term)
    return total


def vimco(model: Callable, guide: Callable, K: int = 8) -> Expectation:
    """IWAE_K with VIMCO's leave-one-out control variates (Mnih and Rezende, 2016).

    The value is the IWAE bound ``L = log (1/K) sum_k w_k``. For the guide's sites with plain
    Reinforce gradients (the default for discrete sites), particle ``k``'s score is weighted
    by ``L - L_{-k}`` instead of ``L``, where ``L_{-k}`` replaces ``log w_k`` by the mean of
    the other particles' log weights. ``L_{-k}`` does not depend on ``z_k``, so the gradient
    stays unbiased: the objective adds ``-sum_k stop_grad(L_{-k}) (s_k - stop_grad(s_k))``
    with ``s_k`` the Reinforce sites' ``log q(z_k)``, whose value is zero and whose
    derivative is ``-sum_k L_{-k} d s_k``. Needs ``K >= 2``.

    Example:
        >>> import jax, jax.numpy as jnp, numpyro, numpyro.distributions as dist, ppl
        >>> def model(x):
        ...     z = numpyro.sample("z", dist.Normal(0.0, 1.0))
        ...     numpyro.sample("x", dist.Normal(z, 1.0), obs=x)
        >>> def guide(x):
        ...     m, log_s = numpyro.param("m", 0.0), numpyro.param("log_s", 0.0)
        ...     numpyro.sample("z", dist.Normal(m, jnp.exp(log_s)))
        >>> params = {"m": 0.0, "log_s": 0.0}
        >>> def coin_model(x):
        ...     b = numpyro.sample("b", dist.Bernoulli(0.5))
        ...     numpyro.sample("x", dist.Normal(2.0 * b, 1.0), obs=x)
        >>> def coin_guide(x):
        ...     numpyro.sample("b", dist.Bernoulli(jax.nn.sigmoid(numpyro.param("logit", 0.0))))
        >>> g = ppl.objectives.vimco(coin_model, coin_guide, K=4).grad_estimate(
        ...     jax.random.key(0), {"logit": 0.0}, 1.5)[0]
        >>> g["logit"].shape
        ()
    """
    _check_count(K, "vimco: K", 2)

    @expectation
    def vimco(params, *args):
        p, q = with_params((model, guide), params)

        def particle():
            z, log_q = sim(q, *args)
            return z, density(p, z, *args) - log_q

        zs, log_w = particles(particle, K)
        lw = jax.lax.stop_gradient(log_w)
        others_mean = (jnp.sum(lw) - lw) / (K - 1)
        loo = jnp.where(jnp.eye(K, dtype=bool), others_mean[:, None], lw[None, :])
        baselines = log_mean_exp(loo.T)  # L_{-k}, k = 0..K-1
        s = jax.vmap(lambda z: _reinforce_log_prob(q, z, *args))(jax.lax.stop_gradient(zs))
        return log_mean_exp(log_w) - jnp.sum(baselines * (s - jax.lax.stop_gradient(s)))

    return vimco


def renyi(model: Callable, guide: Callable, alpha: float = 0.5, K: int = 8) -> Expectation:
    """The Rényi-alpha bound (Li and Turner, 2016) with ``K`` particles.

    ``1/(1 - alpha) E[log (1/K) sum_k w_k^(1 - alpha)]``; ``alpha = 0`` is IWAE_K, ``alpha -> 1``
    the ELBO (used exactly at ``alpha = 1``). For ``alpha >= 0`` a lower bound on
    ``log p(x)``, decreasing in ``alpha``.

    Example:
        >>> import jax, jax.numpy as jnp, numpyro, numpyro.distributions as dist, ppl
        >>> def model(x):
        ...     z = numpyro.sample("z", dist.Normal(0.0, 1.0))
        ...     numpyro.sample("x", dist.Normal(z, 1.0), obs=x)
        >>> def guide(x):
        ...     m, log_s = numpyro.param("m", 0.0), numpyro.param("log_s", 0.0)
        ...     numpyro.sample("z", dist.Normal(m, jnp.exp(log_s)))
        >>> params = {"m": 0.0, "log_s": 0.0}
        >>> ppl.objectives.renyi(model, guide, alpha=0.5, K=4).estimate(
        ...     jax.random.key(0), params, 1.0).shape
        ()
    """
    _check_count(K, "renyi: K")
    alpha = float(alpha)

    @expectation
    def renyi(params, *args):
        p, q = with_params((model, guide), params)

        def log_weight():
            z, log_q = sim(q, *args)
            return density(p, z, *args) - log_q

        log_w = particles(log_weight, K)
        if alpha == 1.0:
            return jnp.mean(log_w)
        return log_mean_exp((1.0 - alpha) * log_w) / (1.0 - alpha)

    return renyi


def rws_wake_p(model: Callable, guide: Callable, K: int = 8) -> Expectation:
    """Reweighted wake-sleep, wake phase for the model (Bornschein and Bengio, 2015).

    IWAE_K with the guide's parameters held fixed (``ppl.no_grad``): its gradient,
    ``sum_k wbar_k d log p(x, z_k)``, is the RWS model update.

    Example:
        >>> import jax, jax.numpy as jnp, numpyro, numpyro.distributions as dist, ppl
        >>> def model(x):
        ...     z = numpyro.sample("z", dist.Normal(0.0, 1.0))
        ...     numpyro.sample("x", dist.Normal(z, 1.0), obs=x)
        >>> def guide(x):
        ...     m, log_s = numpyro.param("m", 0.0), numpyro.param("log_s", 0.0)
        ...     numpyro.sample("z", dist.Normal(m, jnp.exp(log_s)))
        >>> params = {"m": 0.0, "log_s": 0.0}
        >>> g = ppl.objectives.rws_wake_p(model, guide).grad_estimate(jax.random.key(0), params, 1.0)
        >>> float(g[0]["m"])  # the guide's parameters get no gradient
        0.0
    """
    _check_count(K, "rws_wake_p: K")

    @expectation
    def rws_wake_p(params, *args):
        p, q = with_params((model, no_grad(guide)), params)

        def log_weight():
            z, log_q = sim(q, *args)
            return density(p, z, *args) - log_q

        return log_mean_exp(particles(log_weight, K))

    return rws_wake_p


def rws_wake_q(model: Callable, guide: Callable, K: int = 8) -> Expectation:
    """Reweighted wake-sleep, wake phase for the guide: ``E[sum_k wbar_k log q(z_k)]``.

    ``z_k`` are drawn from the guide with its parameters held fixed and ``wbar`` are the
    self-normalised importance weights ``p(x, z_k) / q(z_k)``, also held fixed, so the
    gradient is the RWS guide update ``sum_k wbar_k d log q(z_k)``: a self-normalised
    estimate of ``-d KL(p(z | x) || q)``. The model's parameters get no gradient.

    Example:
        >>> import jax, jax.numpy as jnp, numpyro, numpyro.distributions as dist, ppl
        >>> def model(x):
        ...     z = numpyro.sample("z", dist.Normal(0.0, 1.0))
        ...     numpyro.sample("x", dist.Normal(z, 1.0), obs=x)
        >>> def guide(x):
        ...     m, log_s = numpyro.param("m", 0.0), numpyro.param("log_s", 0.0)
        ...     numpyro.sample("z", dist.Normal(m, jnp.exp(log_s)))
        >>> params = {"m": 0.0, "log_s": 0.0}
        >>> g = ppl.objectives.rws_wake_q(model, guide).grad_estimate(jax.random.key(0), params, 1.0)
        >>> sorted(g[0])
        ['log_s', 'm']
    """
    _check_count(K, "rws_wake_q: K")

    @expectation
    def rws_wake_q(params, *args):
        p, r, q = with_params((no_grad(model), no_grad(guide), guide), params)

        def particle():
            z, log_r = sim(r, *args)
            return density(p, z, *args) - log_r, density(q, z, *args)

        log_w, log_q = particles(particle, K)
        return jnp.sum(jax.nn.softmax(log_w) * log_q)

    return rws_wake_q


def forward_kl(model: Callable, guide: Callable, K: int = 16) -> Expectation:
    """Forward (inclusive) KL, ``E_{z ~ p(z | x)}[log q(z)] = -KL(p(z | x) || q) - H[p(z | x)]``.

    The posterior is approximated with ``ppl.normalize(model, proposal=guide, particles=K)``
    (sampling importance resampling from the guide, parameters held fixed): the
    self-normalised importance sampling variant, as in the RWS wake-phase guide update (whose
    Rao-Blackwellised form is :func:`rws_wake_q`). Maximizing it fits ``q`` to the posterior
    in the mass-covering direction; the model's parameters get no gradient.

    Example:
        >>> import jax, jax.numpy as jnp, numpyro, numpyro.distributions as dist, ppl
        >>> def model(x):
        ...     z = numpyro.sample("z", dist.Normal(0.0, 1.0))
        ...     numpyro.sample("x", dist.Normal(z, 1.0), obs=x)
        >>> def guide(x):
        ...     m, log_s = numpyro.param("m", 0.0), numpyro.param("log_s", 0.0)
        ...     numpyro.sample("z", dist.Normal(m, jnp.exp(log_s)))
        >>> params = {"m": 0.0, "log_s": 0.0}
        >>> obj = ppl.objectives.forward_kl(model, guide, K=8)
        >>> obj.estimate(jax.random.key(0), params, 1.0).shape
        ()
    """
    _check_count(K, "forward_kl: K")

    @expectation
    def forward_kl(params, *args):
        p, r, q = with_params((no_grad(model), no_grad(guide), guide), params)
        z, _ = sim(normalize(p, proposal=r, particles=K), *args)
        return density(q, z, *args)

    return forward_kl


def hvi(model: Callable, guide: Callable, proposal: Callable, keep: Sequence[str]) -> Expectation:
    """Hierarchical VI (Ranganath et al. 2016; Agakov and Barber 2004): ELBO of a guide
    ``q(z) = int q(z, u) du`` whose auxiliary sites ``u`` are integrated out approximately.

    ``E_{(z, u) ~ q}[log p(x, z) - log (q(z, u) / r(u | z))] <= ELBO(q) <= log p(x)``, written as
    an ELBO whose guide is ``ppl.marginal(guide, keep, proposal=r, particles=1)``. ``keep``
    names the guide's sites that are the model's latents; ``proposal(values, *args)`` is the
    reverse model ``r(u | z)``, given the dict of kept values.

    Example:
        >>> import jax, jax.numpy as jnp, numpyro, numpyro.distributions as dist, ppl
        >>> def model(x):
        ...     z = numpyro.sample("z", dist.Normal(0.0, 1.0))
        ...     numpyro.sample("x", dist.Normal(z, 1.0), obs=x)
        >>> def h_guide(x):
        ...     u = numpyro.sample("u", dist.Normal(numpyro.param("m", 0.0), 1.0))
        ...     numpyro.sample("z", dist.Normal(u, 0.5))
        >>> def reverse(values, x):
        ...     numpyro.sample("u", dist.Normal(numpyro.param("a", 0.5) * values["z"], 0.7))
        >>> obj = ppl.objectives.hvi(model, h_guide, reverse, keep=["z"])
        >>> obj.estimate(jax.random.key(0), {"m": 0.0, "a": 0.5}, 1.0).shape
        ()
    """

    @expectation
    def hvi(params, *args):
        p, q, r = with_params((model, guide, proposal), params)
        z, log_q = sim(marginal(q, keep, proposal=r, particles=1), *args)
        return density(p, z, *args) - log_q

    return hvi


def iwhvi(model: Callable, guide: Callable, proposal: Callable, keep: Sequence[str],
          K: int = 8) -> Expectation:
    """Importance-weighted hierarchical VI (Sobolev and Vetrov, 2019).

    As :func:`hvi` with ``log q(z)`` estimated from the auxiliary draw and ``K`` reverse
    samples ``u_k ~ r(u | z)``: ``log (1/(K+1)) sum_{k=0..K} q(z, u_k) / r(u_k | z)``, i.e.
    ``ppl.marginal(guide, keep, proposal=r, particles=K + 1)``. ``HVI = IWHVI_0 <= IWHVI_K
    <= ELBO(q) <= log p(x)``.

    Example:
        >>> import jax, jax.numpy as jnp, numpyro, numpyro.distributions as dist, ppl
        >>> def model(x):
        ...     z = numpyro.sample("z", dist.Normal(0.0, 1.0))
        ...     numpyro.sample("x", dist.Normal(z, 1.0), obs=x)
        >>> def h_guide(x):
        ...     u = numpyro.sample("u", dist.Normal(numpyro.param("m", 0.0), 1.0))
        ...     numpyro.sample("z", dist.Normal(u, 0.5))
        >>> def reverse(values, x):
        ...     numpyro.sample("u", dist.Normal(0.8 * values["z"], 0.7))
        >>> obj = ppl.objectives.iwhvi(model, h_guide, reverse, keep=["z"], K=4)
        >>> obj.grad_estimate(jax.random.key(0), {"m": 0.0}, 1.0)[0]["m"].shape
        ()
    """
    _check_count(K, "iwhvi: K", 0)

    @expectation
    def iwhvi(params, *args):
        p, q, r = with_params((model, guide, proposal), params)
        z, log_q = sim(marginal(q, keep, proposal=r, particles=K + 1), *args)
        return density(p, z, *args) - log_q

    return iwhvi


def diwhvi(model: Callable, guide: Callable, proposal: Callable, keep: Sequence[str],
           K: int = 4, M: int = 4) -> Expectation:
    """Doubly importance-weighted hierarchical VI (Sobolev and Vetrov, 2019).

    IWAE over ``K`` draws ``z_k`` of the hierarchical guide, each ``log q(z_k)`` estimated
    as in :func:`iwhvi` with ``M`` reverse samples:
    ``E[log (1/K) sum_k p(x, z_k) / q_hat_M(z_k)] <= IWAE_K(q) <= log p(x)``.

    Example:
        >>> import jax, jax.numpy as jnp, numpyro, numpyro.distributions as dist, ppl
        >>> def model(x):
        ...     z = numpyro.sample("z", dist.Normal(0.0, 1.0))
        ...     numpyro.sample("x", dist.Normal(z, 1.0), obs=x)
        >>> def h_guide(x):
        ...     u = numpyro.sample("u", dist.Normal(numpyro.param("m", 0.0), 1.0))
        ...     numpyro.sample("z", dist.Normal(u, 0.5))
        >>> def reverse(values, x):
        ...     numpyro.sample("u", dist.Normal(0.8 * values["z"], 0.7))
        >>> obj = ppl.objectives.diwhvi(model, h_guide, reverse, keep=["z"], K=3, M=2)
        >>> obj.estimate(jax.random.key(0), {"m": 0.0}, 1.0).shape
        ()
    """
    _check_count(K, "diwhvi: K")
    _check_count(M, "diwhvi: M", 0)

    @expectation
    def diwhvi(params, *args):
        p, q, r = with_params((model, guide, proposal), params)
        q_z = marginal(q, keep, proposal=r, particles=M + 1)

        def log_weight():
            z, log_q = sim(q_z, *args)
            return density(p, z, *args) - log_q

        return log_mean_exp(particles(log_weight, K))

    return diwhvi
