"""Per-element weights for the plate-aware bounds (``iwae``/``vimco``/``renyi`` with ``plate=``).

See :mod:`ppl.objectives` for what the per-element bound is and when it is exact."""

from __future__ import annotations

import functools
from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import numpyro
from jax.extend.core import ClosedJaxpr, Var
from numpyro import handlers
from numpyro.primitives import Messenger

from ppl.expectation import ExpectationError, density_trace, sim_trace
from ppl.strategy import Reinforce, resolve_strategy
from ppl.tracing import model_name

from ppl.objectives.particles import particles


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
