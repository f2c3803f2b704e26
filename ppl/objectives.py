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
``iwae``           ``E[log (1/K) sum_k p(x, z_k) / q(z_k)]``, ``z_k ~ q`` (IWELBO);
                   ``plate="data"``: per element of that plate, summed (see below)
``vimco``          IWAE with VIMCO's leave-one-out control variates for Reinforce sites
``renyi``          ``1/(1 - alpha) E[log (1/K) sum_k (p(x, z_k) / q(z_k))^(1 - alpha)]``
``rws_wake_p``     IWAE with the guide's parameters held fixed (model update of RWS)
``rws_wake_q``     ``E[sum_k wbar_k log q(z_k)]``, self-normalised weights (guide update)
``forward_kl``     ``E_{z ~ SIR_K}[log q(z)]``: ``-KL(p(z|x) || q)`` up to a constant
``hvi``            ELBO with a hierarchical guide ``q(z) = int q(z, u) du`` (marginal, 1)
``iwhvi``          the same with ``K`` reverse-proposal samples (tighter)
``diwhvi``         IWAE over ``K`` draws of a hierarchical guide, ``M`` inner samples each
=================  =====================================================================

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

import functools
import math
from typing import Callable, NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import numpyro
from jax.extend.core import ClosedJaxpr, Var
from jax.scipy.special import logsumexp
from numpyro import handlers
from numpyro.primitives import Messenger

from ppl.expectation import (
    Expectation,
    ExpectationError,
    density,
    density_trace,
    expectation,
    sim,
    sim_trace,
)
from ppl.marginal import marginal, normalize
from ppl.params import no_grad, with_params
from ppl.strategy import Reinforce, resolve_strategy
from ppl.tracing import model_name

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


# ---------------------------------------------------------------------------------------
# Plate-aware multi-particle objectives (iwae / vimco / renyi with ``plate=...``)
# ---------------------------------------------------------------------------------------


def _check_plate_options(plate, shared_globals, what: str) -> None:
    if plate is not None and not (isinstance(plate, str) and plate):
        raise TypeError(f"{what}: plate must be a plate name (a str) or None, got {plate!r}.")
    if not isinstance(shared_globals, bool):
        raise TypeError(f"{what}: shared_globals must be a bool, got {shared_globals!r}.")
    if shared_globals and plate is None:
        raise ValueError(f"{what}: shared_globals=True only applies with plate='<name>'.")


def _check_plain(model: Callable, guide: Callable, what: str) -> None:
    for role, program in (("model", model), ("guide", guide)):
        if hasattr(program, "__ppl_sim__") or hasattr(program, "__ppl_density__"):
            raise ExpectationError(
                f"{what}(plate=...): the {role} is an approximate program (ppl.marginal / "
                "ppl.normalize), whose density is one estimate for the whole program and cannot "
                "be split per plate element; pass a plain NumPyro program or use plate=None."
            )


class _PlateKey(Messenger):
    """Gives plate ``name`` the key ``key``: the guide and the model, in every particle, draw
    the same subsample indices (NumPyro's SVI does the same with one plate key)."""

    def __init__(self, fn: Callable, name: str, key: jax.Array):
        self.name, self.key = name, key
        super().__init__(fn)
        functools.update_wrapper(self, fn, updated=())

    def process_message(self, msg):
        if (msg["type"] == "plate" and msg["name"] == self.name and msg["value"] is None
                and msg["kwargs"].get("rng_key") is None):
            msg["kwargs"]["rng_key"] = self.key


def _plate_frame(site: dict, plate: str):
    return next((f for f in site.get("cond_indep_stack", ()) if f.name == plate), None)


def _plate_size(trace: dict, plate: str) -> tuple[int, float] | None:
    """``(elements in the trace, subsample scale N / B)`` of plate ``plate``, or ``None``."""
    site = trace.get(plate)
    if site is None or site["type"] != "plate":
        return None
    size, sub = site["args"]
    n = int(jnp.shape(site["value"])[0])
    return n, (float(size) / n if sub is not None and sub != size else 1.0)


def _site_log_prob(site: dict) -> jax.Array:
    """The site's elementwise log density times its scale (as NumPyro's ``log_density``)."""
    fn, value = site["fn"], site["value"]
    if site.get("intermediates"):
        lp = fn.log_prob(value, site["intermediates"])
    else:
        lp = fn.log_prob(value)
    scale = site.get("scale")
    return lp if scale is None else scale * lp


class _Terms(NamedTuple):
    local: jax.Array  # (B,): each plate element's log density, without the plate's N / B scale
    shared: jax.Array  # (): the log density of the sites outside the plate
    local_names: tuple
    shared_names: tuple  # sites outside the plate that have a log density here
    shared_latent: tuple  # ... of which latent
    reinforce: jax.Array | None  # (B,): per element, the local plain-Reinforce sites' log q


def _split_terms(trace: dict, plate: str, size: tuple[int, float] | None, program: Callable,
                 latent_only: bool, what: str, reinforce: bool = False) -> _Terms:
    """Split a trace's log density into per-element terms of ``plate`` and the rest."""
    n, factor = size if size is not None else (0, 1.0)
    local, shared, scores = jnp.zeros((n,)), jnp.zeros(()), jnp.zeros((n,))
    local_names, shared_names, shared_latent = [], [], []
    for name, site in trace.items():
        if site["type"] != "sample" or (latent_only and site["is_observed"]):
            continue
        lp = _site_log_prob(site)
        frame = _plate_frame(site, plate)
        if frame is None:
            shared = shared + jnp.sum(lp)
            shared_names.append(name)
            if not site["is_observed"]:
                shared_latent.append(name)
            continue
        axis = jnp.ndim(lp) + frame.dim
        if axis < 0 or jnp.shape(lp)[axis] != n:
            raise ExpectationError(
                f"{what}(plate='{plate}'): site '{name}' of {model_name(program)} is inside the "
                f"plate but its log density has shape {jnp.shape(lp)}, with no axis of the "
                f"plate's {n} elements at dim {frame.dim}; it cannot be split per element."
            )
        per_element = jnp.sum(jnp.reshape(jnp.moveaxis(lp, axis, 0), (n, -1)), axis=1) / factor
        local = local + per_element
        local_names.append(name)
        if reinforce and not site["is_observed"]:
            strategy = resolve_strategy(name, site["fn"], (site.get("infer") or {}).get("grad"))
            if isinstance(strategy, Reinforce) and strategy.baseline is None:
                # the choice's own (unscaled) log density: the score the Reinforce rule uses
                raw = site["fn"].log_prob(site["value"])
                scores = scores + jnp.sum(jnp.reshape(jnp.moveaxis(raw, axis, 0), (n, -1)), 1)
    return _Terms(local, shared, tuple(local_names), tuple(shared_names), tuple(shared_latent),
                  scores if reinforce else None)


class _PlateWeights(NamedTuple):
    log_w: jax.Array  # (K, B): per particle and element, log p - log q of the plate's sites
    shared: jax.Array  # (): log p - log q of the sites outside the plate (one shared draw)
    scale: float  # the plate's subsample scale N / B (1 without subsampling)
    scores: jax.Array | None  # (K, B): the local plain-Reinforce sites' log q (VIMCO)


def _abstract(tree):
    """Array leaves as ``jax.ShapeDtypeStruct`` (dynamic), the other leaves kept (static)."""
    leaves, treedef = jax.tree_util.tree_flatten(tree)
    dynamic = [isinstance(x, (jax.Array, np.ndarray, float, complex)) for x in leaves]
    specs = [jax.ShapeDtypeStruct(jnp.shape(x), jnp.result_type(x))
             for x, d in zip(leaves, dynamic) if d]

    def rebuild(dyn):
        it = iter(dyn)
        return jax.tree_util.tree_unflatten(treedef, [next(it) if d else x
                                                      for x, d in zip(leaves, dynamic)])

    return specs, rebuild


_CALL_PRIMITIVES = frozenset({"jit", "pjit", "closed_call", "core_call", "remat", "checkpoint",
                              "custom_jvp_call", "custom_vjp_call", "custom_vjp_call_jaxpr"})


def _depends(jaxpr, flags: list[bool]) -> list[bool]:
    """Which outputs of ``jaxpr`` depend on the inputs flagged in ``flags`` (a forward pass
    over its equations; calls are followed, other higher-order equations are conservative)."""
    inner = jaxpr.jaxpr if isinstance(jaxpr, ClosedJaxpr) else jaxpr
    dep = dict(zip(inner.invars, flags))
    for eqn in inner.eqns:
        ins = [isinstance(v, Var) and dep.get(v, False) for v in eqn.invars]
        if not any(ins):
            outs = [False] * len(eqn.outvars)
        else:
            outs = [True] * len(eqn.outvars)
            if eqn.primitive.name in _CALL_PRIMITIVES:
                for value in eqn.params.values():
                    sub = value.jaxpr if isinstance(value, ClosedJaxpr) else value
                    if (hasattr(sub, "eqns") and len(sub.invars) == len(eqn.invars)
                            and len(sub.outvars) == len(eqn.outvars)):
                        outs = _depends(sub, ins)
                        break
        dep.update(zip(eqn.outvars, outs))
    return [isinstance(v, Var) and dep.get(v, False) for v in inner.outvars]


def _check_shared_sites(build, params, args, plate, locals_, shared, checked, what) -> None:
    """Raise if a log-density term outside the plate depends on the plate's local latents.

    ``locals_`` / ``shared`` map the latent sites inside / outside the plate to their
    (per-particle) abstract values; ``checked`` is ``[(role, site name)]`` of the terms outside
    the plate. The programs are re-run on abstract values (``jax.make_jaxpr``, trace time only)
    and the dependence is read from the jaxpr.
    """
    arg_specs, rebuild_args = _abstract(args)
    param_specs, rebuild_params = _abstract(params)

    def terms(local_values, shared_values, param_leaves, arg_leaves):
        p, q = build(rebuild_params(param_leaves))
        values = {**shared_values, **local_values}
        full = rebuild_args(arg_leaves)
        with handlers.seed(rng_seed=0):  # other plates' subsample keys; irrelevant here
            traces = {"guide": handlers.trace(handlers.substitute(q, data=values)).get_trace(*full),
                      "model": handlers.trace(handlers.substitute(p, data=values)).get_trace(*full)}
        return [jnp.sum(_site_log_prob(traces[role][name])) for role, name in checked]

    closed = jax.make_jaxpr(terms)(locals_, shared, param_specs, arg_specs)
    n_local = len(jax.tree_util.tree_leaves(locals_))
    flags = [i < n_local for i in range(len(closed.jaxpr.invars))]
    bad = [site for site, d in zip(checked, _depends(closed, flags)) if d]
    if bad:
        names = ", ".join(f"'{name}' ({role})" for role, name in bad)
        raise ExpectationError(
            f"{what}(plate='{plate}'): site(s) {names} outside plate '{plate}' depend on the "
            f"plate's local latent sites {sorted(locals_)}; the per-element bound needs every "
            f"term outside the plate to depend on the sites outside it only. Put such terms "
            f"inside the plate (one per element) or use plate=None (the joint bound)."
        )


def _spec(x) -> jax.ShapeDtypeStruct:
    return jax.ShapeDtypeStruct(jnp.shape(x), jnp.result_type(x))


def _plate_weights(build: Callable, params, args: tuple, plate: str, K: int,
                   shared_globals: bool, what: str, reinforce: bool = False) -> _PlateWeights:
    """``K`` particles of per-element log weights of ``plate`` (inside an expectation).

    ``build(params) -> (model, guide)`` gives the substituted programs. Each particle draws
    the guide's sites inside the plate afresh; the sites outside it are either absent (an
    error names them otherwise) or, with ``shared_globals``, drawn once and shared by all
    particles. The plate's subsample indices are drawn once and shared by guide, model and
    all particles.
    """
    p, q = build(params)
    key = numpyro.prng_key()
    if key is None:
        raise ExpectationError(
            f"{what}(plate='{plate}') must run inside an expectation (use .estimate / "
            ".grad_estimate, or call it from another @ppl.expectation)."
        )
    p, q = _PlateKey(p, plate, key), _PlateKey(q, plate, key)
    seen: dict = {}

    def particle(fixed: dict | None = None):
        qt = sim_trace(q if fixed is None else handlers.substitute(q, data=fixed), *args)
        values = {n: s["value"] for n, s in qt.items()
                  if s["type"] == "sample" and not s["is_observed"]}
        pt = density_trace(p, values, *args)
        p_size, q_size = _plate_size(pt, plate), _plate_size(qt, plate)
        if p_size is None:
            plates = sorted(n for n, s in pt.items() if s["type"] == "plate")
            raise ExpectationError(
                f"{what}(plate='{plate}'): model {model_name(p)} has no plate named '{plate}' "
                f"(its plates: {plates if plates else 'none'})."
            )
        if q_size is not None and q_size[0] != p_size[0]:
            raise ExpectationError(
                f"{what}(plate='{plate}'): the guide's plate '{plate}' has {q_size[0]} "
                f"elements and the model's {p_size[0]}; they must index the same elements."
            )
        tq = _split_terms(qt, plate, p_size if q_size is None else q_size, q, True, what,
                          reinforce)
        tp = _split_terms(pt, plate, p_size, p, False, what)
        mismatch = sorted((set(tq.local_names) & set(tp.shared_names))
                          | (set(tq.shared_latent) & set(tp.local_names)))
        if mismatch:
            raise ExpectationError(
                f"{what}(plate='{plate}'): site(s) {mismatch} are inside plate '{plate}' in "
                "one of the model and the guide and outside it in the other; declare the plate "
                "around them in both."
            )
        if tq.shared_latent and not shared_globals:
            raise ExpectationError(
                f"{what}(plate='{plate}'): latent site(s) {list(tq.shared_latent)} are outside "
                f"plate '{plate}' (global). The per-element bound weights only the sites inside "
                f"the plate; pass shared_globals=True to draw the global sites once and share "
                f"them across the K particles (an ELBO in the global sites, IWAE per element in "
                f"the local ones), or plate=None for the joint IWAE."
            )
        seen.update(p_size=p_size, local={n: _spec(values[n]) for n in tq.local_names},
                    shared={n: _spec(values[n]) for n in tq.shared_latent},
                    checked=[("guide", n) for n in tq.shared_latent]
                    + [("model", n) for n in tp.shared_names])
        shared = {n: values[n] for n in tq.shared_latent}
        return tp.local - tq.local, tp.shared - tq.shared, tq.reinforce, shared

    if shared_globals:
        lw0, shared_term, s0, fixed = particle()
        if K > 1:
            lw, _, s, _ = particles(lambda: particle(fixed), K - 1)
            log_w = jnp.concatenate([lw0[None], lw])
            scores = jnp.concatenate([s0[None], s]) if reinforce else None
        else:
            log_w, scores = lw0[None], (s0[None] if reinforce else None)
    else:
        log_w, shared_terms, scores, _ = particles(particle, K)
        shared_term = jnp.mean(shared_terms)  # the same in every particle (checked below)
    if seen["checked"]:
        _check_shared_sites(build, params, args, plate, seen["local"], seen["shared"],
                            seen["checked"], what)
    return _PlateWeights(log_w, shared_term, seen["p_size"][1], scores)


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


def iwae(model: Callable, guide: Callable, K: int = 8, *, plate: str | None = None,
         shared_globals: bool = False) -> Expectation:
    """The importance-weighted bound (IWELBO, Burda et al. 2016) with ``K`` particles.

    ``E[log (1/K) sum_k w_k]``, ``w_k = p(x, z_k) / q(z_k)``, ``z_k ~ q`` independent;
    ``ELBO <= IWAE_K <= IWAE_{K+1} <= log p(x)``.

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
    if plate is not None:
        _check_plain(model, guide, "iwae")

        @expectation
        def iwae(params, *args):
            w = _plate_weights(lambda prm: with_params((model, guide), prm), params, args, plate,
                               K, shared_globals, "iwae")
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
        _check_plain(model, guide, "vimco")

        @expectation
        def vimco(params, *args):
            w = _plate_weights(lambda prm: with_params((model, guide), prm), params, args, plate,
                               K, shared_globals, "vimco", reinforce=True)
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
            b = jax.lax.stop_gradient(value) - signal
            return value - jnp.sum(b * (w.scores - jax.lax.stop_gradient(w.scores)))

        return vimco

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
        _check_plain(model, guide, "renyi")

        @expectation
        def renyi(params, *args):
            w = _plate_weights(lambda prm: with_params((model, guide), prm), params, args, plate,
                               K, shared_globals, "renyi")
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
