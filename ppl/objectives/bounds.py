"""Lower bounds on ``log p(x)``: ELBO, IWAE, VIMCO and Renyi-alpha."""

from __future__ import annotations

import math
from typing import Callable

import jax
import jax.numpy as jnp
from jax.scipy.special import logsumexp
from numpyro import handlers

from ppl.expectation import Expectation, density, expectation, sim
from ppl.params import with_params
from ppl.strategy import Reinforce, resolve_strategy

from ppl.objectives.particles import _check_count, log_mean_exp, particles
from ppl.objectives.low_variance import check_gradient, check_guide, dreg_iwae, stl_elbo
from ppl.objectives.plate import _check_plain, _check_plate_options, _plate_weights


def elbo(model: Callable, guide: Callable, *, K: int = 1, plate: str | None = None,
         shared_globals: bool = False, gradient: str = "standard") -> Expectation:
    """The evidence lower bound ``E_{z ~ q}[log p(x, z) - log q(z)] <= log p(x)``.

    ``K``: the mean of ``K`` independent estimates (same value in expectation). The guide's
    sites with plain Reinforce gradients (the default for discrete sites) then get
    leave-one-out baselines: draw ``k``'s score is weighted by its estimate minus the mean of
    the other ``K - 1`` (unbiased, as the others do not depend on draw ``k``).

    ``plate="data"``: per-element credit for those Reinforce sites (what NumPyro's
    ``TraceGraph_ELBO`` does along plates). Without it a Reinforce site inside a plate is one
    joint choice whose score is weighted by the whole objective, every other element's terms
    included: pure noise that grows with the plate's size. With it, element ``n``'s score is
    weighted by element ``n``'s own terms (its log weight ``w_n``, the log densities of the
    model's and the guide's sites inside the plate along its axis, times the subsample scale
    ``N/B``), minus their leave-one-out mean when ``K >= 2``. The value is the same ELBO. It
    needs what the per-element bounds need (see "Per-element bounds" in
    :mod:`ppl.objectives`): given the sites outside the plate, element ``n``'s terms involve
    its own local sites only (a term outside the plate that depends on them is an error), and
    latent sites outside the plate need ``shared_globals=True`` (drawn once per estimate,
    shared by the ``K`` draws; their Reinforce sites keep the whole objective as weight).

    ``gradient="stl"``: the guide's parameters get sticking the landing's gradient (Roeder et
    al. 2017; path term only, unbiased, zero variance when ``q`` is the posterior); the
    model's parameters the usual one. Needs reparameterised guide sites, ``K = 1`` and no
    plate; see :mod:`ppl.objectives.low_variance`. The value (``.estimate``) is the same.

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

    Per-element credit for a discrete site in a data plate (two draws, leave-one-out):
        >>> def coins(x):
        ...     with numpyro.plate("data", x.shape[0]):
        ...         b = numpyro.sample("b", dist.Bernoulli(0.5))
        ...         numpyro.sample("x", dist.Normal(2.0 * b, 1.0), obs=x)
        >>> def coins_guide(x):
        ...     with numpyro.plate("data", x.shape[0]):
        ...         numpyro.sample("b", dist.Bernoulli(logits=numpyro.param("c", 0.1) * x))
        >>> obj = ppl.objectives.elbo(coins, coins_guide, K=2, plate="data")
        >>> g = obj.grad_estimate(jax.random.key(0), {"c": 0.1}, jnp.array([0.3, 2.2, -0.7]))[0]
        >>> g["c"].shape
        ()
    """

    _check_count(K, "elbo: K")
    _check_plate_options(plate, shared_globals, "elbo")
    check_gradient(gradient, "elbo")
    if gradient == "stl":
        if plate is not None or K != 1:
            raise ValueError(
                f"elbo(gradient='stl', K={K}, plate={plate!r}): sticking the landing is "
                "implemented for one joint draw; use K=1 and plate=None with it, or "
                "gradient='standard' (plate= and K= give discrete sites lower variance)."
            )
        check_guide(guide, "elbo(gradient='stl')")

        @expectation
        def elbo_stl(params, *args):
            return stl_elbo(model, guide, params, *args)

        return elbo_stl

    if plate is not None:
        weights = _weights_per_element(model, guide, plate, K, shared_globals, "elbo", True)

        @expectation
        def elbo_plate(params, *args):
            w = weights(params, args)
            lw = jax.lax.stop_gradient(w.log_w)  # (K, B)
            value = w.scale * jnp.sum(jnp.mean(w.log_w, 0)) + w.shared
            # element n of draw k: its own terms, less the other draws' mean for that element
            own = lw if K == 1 else lw - (jnp.sum(lw, 0) - lw) / (K - 1)
            return _reweight_scores(value, w.scale * own / K, w.scores)

        return elbo_plate

    if K > 1:

        @expectation
        def elbo_k(params, *args):
            log_w, s = _scored_particles(model, guide, params, args, K)
            lw = jax.lax.stop_gradient(log_w)
            return _reweight_scores(jnp.mean(log_w), (lw - (jnp.sum(lw) - lw) / (K - 1)) / K, s)

        return elbo_k

    @expectation
    def elbo(params, *args):
        p, q = with_params((model, guide), params)
        z, log_q = sim(q, *args)
        return density(p, z, *args) - log_q

    return elbo


def _weights_per_element(model: Callable, guide: Callable, plate: str, K: int,
                         shared_globals: bool, what: str, reinforce: bool = False) -> Callable:
    """Check that ``model`` and ``guide`` can be split along ``plate``; return
    ``weights(params, args)``: their ``K`` particles' per-element log weights (``plate=``)."""
    _check_plain(model, guide, what)

    def weights(params, args):
        return _plate_weights(lambda prm: with_params((model, guide), prm), params, args, plate,
                              K, shared_globals, what, reinforce=reinforce)

    return weights


def _reweight_scores(value: jax.Array, signal: jax.Array, scores: jax.Array) -> jax.Array:
    """``value``, with the plain-Reinforce scores ``scores`` weighted by ``signal`` instead.

    The Reinforce rule weights each plain-Reinforce site's score by the objective's value; the
    returned term (zero in value) takes ``value - signal`` off each score's weight, so score
    ``scores[i]`` ends up weighted by ``signal[i]``. Unbiased when ``value - signal[i]`` does
    not depend on the draw that ``scores[i]`` scores.
    """
    b = jax.lax.stop_gradient(value) - signal
    return value - jnp.sum(b * (scores - jax.lax.stop_gradient(scores)))


def iwae(model: Callable, guide: Callable, K: int = 8, *, plate: str | None = None,
         shared_globals: bool = False, gradient: str = "standard") -> Expectation:
    """The importance-weighted bound (IWELBO, Burda et al. 2016) with ``K`` particles.

    ``E[log (1/K) sum_k w_k]``, ``w_k = p(x, z_k) / q(z_k)``, ``z_k ~ q`` independent;
    ``ELBO <= IWAE_K <= IWAE_{K+1} <= log p(x)``.

    ``gradient="dreg"``: the guide's parameters get the doubly reparameterised gradient
    (Tucker et al. 2019): ``sum_k wbar_k^2 d/dphi log w_k`` through the draws only, unbiased
    and much less noisy than the standard one, whose noise grows with ``K``; the model's
    parameters the usual one. Needs reparameterised guide sites, and no ``plate=`` (yet); see
    :mod:`ppl.objectives.low_variance`. The value (``.estimate``) is the same.

    With ``plate="data"``, the per-element bound of that plate (see "Per-element bounds" in
    the module docstring): ``(N/B) sum_n log (1/K) sum_k w_{n,k}`` over the plate's ``B``
    elements (all ``N`` without subsampling), ``w_{n,k}`` element ``n``'s weight in particle
    ``k``. For a VAE with one latent per image this is the usual IWAE of a dataset, far tighter
    than the joint bound of the whole minibatch. ``shared_globals=True`` allows latent sites
    outside the plate (drawn once, shared by all particles).

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

    Per element of a plate (with the exact posterior ``N(x_n / 2, 1 / sqrt 2)`` as guide, every
    estimate is ``sum_n log p(x_n)``):

        >>> def model_n(x):
        ...     with numpyro.plate("data", x.shape[0]):
        ...         z = numpyro.sample("z", dist.Normal(0.0, 1.0))
        ...         numpyro.sample("x", dist.Normal(z, 1.0), obs=x)
        >>> def guide_n(x):
        ...     with numpyro.plate("data", x.shape[0]):
        ...         loc = numpyro.param("a", 0.5) * x
        ...         numpyro.sample("z", dist.Normal(loc, numpyro.param("s", 0.7)))
        >>> x = jnp.array([1.0, -0.5, 2.0])
        >>> obj = ppl.objectives.iwae(model_n, guide_n, K=4, plate="data")
        >>> exact = {"a": 0.5, "s": 2 ** -0.5}
        >>> bool(jnp.isclose(obj.estimate(jax.random.key(0), exact, x),
        ...                  dist.Normal(0.0, 2 ** 0.5).log_prob(x).sum()))
        True
    """
    _check_count(K, "iwae: K")
    _check_plate_options(plate, shared_globals, "iwae")
    check_gradient(gradient, "iwae")
    if gradient == "dreg":
        if plate is not None:
            raise ValueError(
                f"iwae(plate={plate!r}, gradient='dreg'): the per-element bound has no DReG "
                "gradient yet; use gradient='standard' with plate=, or gradient='dreg' on the "
                "joint bound (plate=None)."
            )
        check_guide(guide, "iwae(gradient='dreg')")

        @expectation
        def iwae_dreg(params, *args):
            return dreg_iwae(model, guide, K, params, *args)

        return iwae_dreg

    if plate is not None:
        weights = _weights_per_element(model, guide, plate, K, shared_globals, "iwae")

        @expectation
        def iwae(params, *args):
            w = weights(params, args)
            return w.scale * jnp.sum(log_mean_exp(w.log_w)) + w.shared

        return iwae

    @expectation
    def iwae(params, *args):
        p, q = with_params((model, guide), params)

        def log_weight():
            z, log_q = sim(q, *args)
            return density(p, z, *args) - log_q

        return log_mean_exp(particles(log_weight, K))

    return iwae


def _scored_particles(model: Callable, guide: Callable, params, args: tuple, K: int):
    """``K`` joint particles: their log weights ``log p(x, z_k) - log q(z_k)`` and the
    plain-Reinforce scores ``s_k`` (:func:`_reinforce_log_prob`) of their draws, both ``(K,)``."""
    p, q = with_params((model, guide), params)

    def particle():
        z, log_q = sim(q, *args)
        return z, density(p, z, *args) - log_q

    zs, log_w = particles(particle, K)
    s = jax.vmap(lambda z: _reinforce_log_prob(q, z, *args))(jax.lax.stop_gradient(zs))
    return log_w, s


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


def vimco(model: Callable, guide: Callable, K: int = 8, *, plate: str | None = None,
          shared_globals: bool = False) -> Expectation:
    """IWAE_K with VIMCO's leave-one-out control variates (Mnih and Rezende, 2016).

    The value is the IWAE bound ``L = log (1/K) sum_k w_k``. For the guide's sites with plain
    Reinforce gradients (the default for discrete sites), particle ``k``'s score is weighted
    by ``L - L_{-k}`` instead of ``L``, where ``L_{-k}`` replaces ``log w_k`` by the mean of
    the other particles' log weights. ``L_{-k}`` does not depend on ``z_k``, so the gradient
    stays unbiased: the objective adds ``-sum_k stop_grad(L_{-k}) (s_k - stop_grad(s_k))``
    with ``s_k`` the Reinforce sites' ``log q(z_k)``, whose value is zero and whose
    derivative is ``-sum_k L_{-k} d s_k``. Needs ``K >= 2``.

    With ``plate="data"``: the per-element IWAE of :func:`iwae` (``plate=``), with the
    leave-one-out baselines per element: the score of element ``n`` in particle ``k`` is
    weighted by ``(N/B) (L_n - L_{n,-k})`` only, every other element's (and the global
    sites') terms being independent of it. Global Reinforce sites (``shared_globals=True``)
    keep the plain Reinforce weight.

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
    _check_plate_options(plate, shared_globals, "vimco")
    if plate is not None:
        weights = _weights_per_element(model, guide, plate, K, shared_globals, "vimco", True)

        @expectation
        def vimco(params, *args):
            w = weights(params, args)
            lw = jax.lax.stop_gradient(w.log_w)  # (K, B)
            others_mean = (jnp.sum(lw, 0) - lw) / (K - 1)
            eye = jnp.eye(K, dtype=bool)[:, :, None]
            # loo[k, j, n]: element n's log weights with particle k's replaced by the others' mean
            loo = jnp.where(eye, others_mean[:, None, :], lw[None, :, :])
            baselines = logsumexp(loo, axis=1) - math.log(K)  # L_{n,-k}: (K, B)
            per_element = log_mean_exp(w.log_w)  # L_n: (B,)
            # Element n's scores get (N/B) (L_n - L_{n,-k}) instead of the whole objective.
            signal = w.scale * (jax.lax.stop_gradient(per_element)[None, :] - baselines)
            value = w.scale * jnp.sum(per_element) + w.shared
            return _reweight_scores(value, signal, w.scores)

        return vimco

    @expectation
    def vimco(params, *args):
        log_w, s = _scored_particles(model, guide, params, args, K)
        lw = jax.lax.stop_gradient(log_w)
        others_mean = (jnp.sum(lw) - lw) / (K - 1)
        loo = jnp.where(jnp.eye(K, dtype=bool), others_mean[:, None], lw[None, :])
        baselines = log_mean_exp(loo.T)  # L_{-k}, k = 0..K-1
        return log_mean_exp(log_w) - jnp.sum(baselines * (s - jax.lax.stop_gradient(s)))

    return vimco


def renyi(model: Callable, guide: Callable, alpha: float = 0.5, K: int = 8, *,
          plate: str | None = None, shared_globals: bool = False) -> Expectation:
    """The Rényi-alpha bound (Li and Turner, 2016) with ``K`` particles.

    ``1/(1 - alpha) E[log (1/K) sum_k w_k^(1 - alpha)]``; ``alpha = 0`` is IWAE_K, ``alpha -> 1``
    the ELBO (used exactly at ``alpha = 1``). For ``alpha >= 0`` a lower bound on
    ``log p(x)``, decreasing in ``alpha``.

    With ``plate="data"``, per element of the plate as :func:`iwae` (``plate=``):
    ``(N/B) sum_n 1/(1 - alpha) log (1/K) sum_k w_{n,k}^(1 - alpha)``; with ``alpha = 0`` and
    the same key it equals ``iwae(..., plate="data")``.

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
    _check_plate_options(plate, shared_globals, "renyi")
    if plate is not None:
        weights = _weights_per_element(model, guide, plate, K, shared_globals, "renyi")

        @expectation
        def renyi(params, *args):
            w = weights(params, args)
            if alpha == 1.0:
                per_element = jnp.mean(w.log_w, axis=0)
            else:
                per_element = log_mean_exp((1.0 - alpha) * w.log_w) / (1.0 - alpha)
            return w.scale * jnp.sum(per_element) + w.shared

        return renyi

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
