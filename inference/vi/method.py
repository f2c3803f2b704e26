"""Variational inference as an ``infer`` method: fit a guide, then draw from it.

``inference.infer(model, *args, method=inference.VI(...), num_samples=..., num_chains=...)``
fits the guide's parameters (and the model's own ``numpyro.param`` sites, as NumPyro's SVI
does) by maximizing the objective with :func:`inference.fit`, then draws
``num_chains x num_samples`` independent samples from the fitted guide. The
:class:`inference.Result` has the same layout as NUTS's: ``samples`` of every latent and
deterministic site with shape ``(chains, draws, ...)`` (the "chains" are just a layout
here: all draws are independent), so ``summary()`` and ``to_arviz()`` work the same way.

``stats``: ``lp``, the model's log joint ``log p(x, z)`` at each draw (constrained space,
so unlike NUTS's ``lp`` it has no log-Jacobian term), and ``log_q``, the fitted guide's log
density there; ``lp - log_q`` is the draw's log importance weight. ``tuning``: ``objective``
(the per-step objective estimates of the fit), ``unconstrained_params`` (the fitted params
as the optimizer holds them: what to save, and what :meth:`VI.fitted_guide`,
``ppl.with_params`` and ``inference.fit`` take) and ``params`` (the same, constrained, for
reading: e.g. the guide's scales; a ``ppl.params.ConstrainedParams``, which
``ppl.with_params`` refuses).

Enumerated discrete sites (``infer={"enumerate": "parallel"}``, or a model wrapped in
``numpyro.contrib.funsor.config_enumerate``): the guide covers the continuous sites only and
is fitted to the model's density with the discrete sites summed out exactly
(:mod:`inference.vi.enumerated`, the density of :func:`ppl.potential`); ``lp`` is that
marginal density, and ``infer`` draws the discrete sites afterwards from their exact
conditionals given each guide draw.

Long runs: Ctrl-C during the fit stops at the end of the chunk in flight and draws from
the guide fitted so far (a warning says after how many steps; ``tuning["fit_steps"]``).
``infer(..., init_params=...)`` starts the fit from given *constrained* values of param
sites by name, e.g. a previous result's ``tuning["params"]`` (:meth:`VI.initial_params`);
``checkpoint=``/``checkpoint_every=`` write the fit's parameters and optimizer state (see
:func:`inference.fit`), so that the same call after a crash resumes the fit and gives the
same draws, bit for bit. ``result.extend(n)`` draws ``n`` more per chain from the fitted
guide (no fitting; a saved and loaded result too, given its model).

Saving and rebuilding a fitted guide (the one way): save
``result.tuning["unconstrained_params"]`` (a dict of arrays: ``np.savez``, pickle, ...), and
rebuild with ``VI(...).fitted_guide(model, params)`` under the same guide settings. The
rebuilt guide takes the model's arguments and draws like the fitted one.

Example:
    >>> import jax.numpy as jnp, numpyro, numpyro.distributions as dist, optax, inference
    >>> def model(y=None):
    ...     mu = numpyro.sample("mu", dist.Normal(0.0, 10.0))
    ...     with numpyro.plate("data", 3):
    ...         numpyro.sample("y", dist.Normal(mu, 1.0), obs=y)
    >>> r = inference.infer(model, y=jnp.array([1.0, 2.0, 3.0]), num_samples=200,
    ...                     num_chains=2, method=inference.VI(steps=1000), progress=False)
    >>> r.samples["mu"].shape, sorted(r.stats), r.tuning["objective"].shape
    ((2, 200), ['log_q', 'lp'], (1000,))

    Save the fitted params, and rebuild the guide from the file later:

    >>> import os, tempfile, jax, numpy as np
    >>> path = os.path.join(tempfile.mkdtemp(), "guide.npz")
    >>> np.savez(path, **r.tuning["unconstrained_params"])
    >>> guide = inference.VI(steps=1000).fitted_guide(model, dict(np.load(path)))
    >>> draws = numpyro.infer.Predictive(guide, num_samples=2000)(
    ...     jax.random.key(1), y=jnp.array([1.0, 2.0, 3.0]))
    >>> bool(abs(draws["mu"].mean() - r.samples["mu"].mean()) < 0.1)  # both near 2.0
    True
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
import numbers
import time
import warnings
from dataclasses import dataclass
from typing import Any, Callable, ClassVar, Mapping, NamedTuple

import jax
import jax.numpy as jnp
import optax
from numpyro import handlers

import ppl
from inference.vi import guides as guides_lib
from inference.arguments import split_arguments, static_part
from inference.programs.cache import compiling
from inference import checkpoint as ckpt
from inference.chains import ChainOutputs
from inference.stacklevel import user_stacklevel
from inference.vi.enumerated import continuous_sites, marginal_program
from inference.vi.fit import fit_within
from inference.method import OPTIONS, Method, Outputs, Request
from numpyro.distributions import constraints
from numpyro.distributions.transforms import biject_to
from ppl.enumeration import enumerated_sites, enumeration_of
from ppl.errors import ModelError
from ppl.tracing import model_name, trace_model

__all__ = ["VI", "GUIDES", "objective_names"]

#: Guide families by name (each ``family(model) -> guide``).
GUIDES: dict[str, Callable] = {"normal": guides_lib.normal, "mvn": guides_lib.mvn,
                               "flow": guides_lib.flow}


def objective_names() -> list[str]:
    """Names of ``ppl.objectives`` usable as ``VI(objective=name)``: built from (model, guide).

    Example:
        >>> "elbo" in objective_names()
        True
    """
    out = []
    for name in getattr(ppl.objectives, "__all__", []):
        params = list(inspect.signature(getattr(ppl.objectives, name)).parameters.values())
        required = [p for p in params if p.default is inspect.Parameter.empty
                    and p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
        if len(required) == 2:
            out.append(name)
    return out


def bind_kwargs(fn: Callable, kwargs: dict) -> Callable:
    """``fn`` with the keyword arguments fixed (objectives pass positional arguments only)."""
    if not kwargs:
        return fn
    bound = functools.partial(fn, **kwargs)
    bound.__name__ = model_name(fn)
    return bound


def _keywords_last(fn: Callable) -> Callable:
    """``g(*args, kwargs) = fn(*args, **kwargs)``: a model's keyword data as one trailing
    positional argument, since objectives pass positional arguments only. Unlike binding
    them (:func:`bind_kwargs`), this keeps the data an input of the compiled programs, so new
    data of the same shapes reuses them."""

    def with_keywords(*args):
        *positional, kwargs = args
        return fn(*positional, **kwargs)

    # Not functools.wraps: the signature must stay (*args), which is how it is called.
    with_keywords.__name__ = with_keywords.__qualname__ = model_name(fn)
    return with_keywords


def _averaged(objective: ppl.Expectation, num_particles: int) -> ppl.Expectation:
    """The mean of ``num_particles`` independent estimates of ``objective`` (same expectation)."""

    @ppl.expectation
    def averaged(params, *args):
        return jnp.mean(jax.vmap(lambda _: objective(params, *args))(jnp.arange(num_particles)))

    return averaged


@dataclass(frozen=True)
class VI(Method):
    """Variational inference: fit a guide by maximizing an objective, then sample the guide.

    Args:
        objective: a name from ``ppl.objectives`` built from ``(model, guide)`` alone
            (``"elbo"``, ``"iwae"``, ``"renyi"``, ... with their default settings), or a
            factory ``objective(model, guide) -> ppl.Expectation`` over
            ``(params, *model_args)`` (e.g. ``lambda m, g: ppl.objectives.iwae(m, g, K=16)``,
            or your own objective written with ``@ppl.expectation``). A quantity to maximize.
        guide: ``"normal"`` (mean-field, :func:`inference.guides.normal`), ``"mvn"``
            (full-rank, :func:`inference.guides.mvn`), ``"flow"`` (a normalizing flow,
            :func:`inference.guides.flow`), or a guide program taking the model's
            arguments and sampling every latent site of the model.
        guide_options: keyword arguments for the named guide family, e.g.
            ``{"kind": "iaf", "layers": 4}`` for ``"flow"`` or ``{"init_scale": 0.5}``.
        steps: optimizer steps.
        optimizer: an optax transformation; default ``optax.adam(1e-2)``.
        num_particles: independent objective estimates averaged per step.

    ``infer``'s ``num_warmup`` does not apply to VI (``steps`` is its own budget).
    Discrete sites marked for enumeration are summed out of the density the guide is
    fitted to (the guide covers the continuous sites; ``infer`` draws the discrete ones
    afterwards); other discrete latent sites are refused by ``infer`` under ``VI`` (use
    :func:`inference.fit` with a guide that samples them). ``infer``'s ``init_params``,
    ``checkpoint`` and ``checkpoint_every`` apply to the fit (module docstring).

    The fitted params are in the result's ``tuning["unconstrained_params"]``; save them and
    rebuild the fitted guide with :meth:`fitted_guide` (see the module docstring).

    Example:
        >>> VI(guide="mvn", steps=2000).guide
        'mvn'
    """

    objective: str | Callable = "elbo"
    guide: str | Callable = "normal"
    steps: int = 5000
    optimizer: Any = None
    num_particles: int = 1
    guide_options: dict | None = None

    handles_discrete: ClassVar[bool] = False
    learns_params: ClassVar[bool] = True
    #: The density it fits the guide to sums out the enumerated discrete sites.
    sums_out_enumerated: ClassVar[bool] = True
    #: Its fit and draws run on one device.
    splits_devices: ClassVar[bool] = False
    options: ClassVar[frozenset] = frozenset(OPTIONS)

    def __post_init__(self):
        for name in ("steps", "num_particles"):
            value = getattr(self, name)
            if not (isinstance(value, numbers.Integral) and not isinstance(value, bool) and value >= 1):
                raise ValueError(f"VI({name}={value!r}): must be a positive int.")
        if isinstance(self.guide, str):
            if self.guide not in GUIDES:
                raise ValueError(
                    f"VI(guide={self.guide!r}): unknown guide; use one of "
                    f"{sorted(n for n in GUIDES if n != 'flow')} (Normal families), 'flow' (a "
                    "normalizing flow, inference.guides.flow) or a "
                    "guide program (a function taking the model's arguments)."
                )
        elif not callable(self.guide):
            raise TypeError(
                f"VI(guide={self.guide!r}): must be one of {sorted(GUIDES)} or a guide program."
            )
        if self.guide_options is not None:
            if not isinstance(self.guide_options, dict):
                raise TypeError(f"VI(guide_options={self.guide_options!r}): must be a dict of "
                                "keyword arguments for the guide family.")
            if not isinstance(self.guide, str):
                raise ValueError("VI(guide_options=...): applies to a named guide family "
                                 f"({sorted(GUIDES)}), not to a guide program.")
            try:
                inspect.signature(GUIDES[self.guide]).bind(None, **self.guide_options)
            except TypeError as err:
                raise ValueError(f"VI(guide={self.guide!r}, guide_options="
                                 f"{self.guide_options!r}): {err}") from None
        if isinstance(self.objective, str):
            names = objective_names()
            if self.objective not in names:
                raise ValueError(
                    f"VI(objective={self.objective!r}): unknown objective; use one of {names}, "
                    "or a factory objective(model, guide) -> ppl.Expectation."
                )
        elif not callable(self.objective):
            raise TypeError(
                f"VI(objective={self.objective!r}): must be an objective name or a factory "
                "objective(model, guide) -> ppl.Expectation."
            )
        opt = self.optimizer
        if opt is not None and not (callable(getattr(opt, "init", None))
                                    and callable(getattr(opt, "update", None))):
            raise TypeError(f"VI(optimizer={opt!r}): must be an optax GradientTransformation.")

    # -- pieces ------------------------------------------------------------------------
    def make_guide(self, model: Callable) -> Callable:
        """The guide program for ``model`` (the named family, or the user's guide)."""
        if isinstance(self.guide, str):
            return GUIDES[self.guide](model, **(self.guide_options or {}))
        return self.guide

    def make_objective(self, model: Callable, guide: Callable) -> ppl.Expectation:
        """The objective over ``(params, *model_args)``, averaged over ``num_particles``."""
        if isinstance(self.objective, str):
            objective = getattr(ppl.objectives, self.objective)(model, guide)
        else:
            objective = self.objective(model, guide)
        if not isinstance(objective, ppl.Expectation):
            raise TypeError(
                f"VI(objective={self.objective!r}) returned {type(objective).__name__}; an "
                "objective factory must return a ppl.Expectation (use @ppl.expectation)."
            )
        return objective if self.num_particles == 1 else _averaged(objective, self.num_particles)

    def fitted_guide(self, model: Callable, params: Mapping[str, Any]) -> Callable:
        """The guide program with its param sites set from saved, unconstrained ``params``.

        ``params``: a fitted result's ``tuning["unconstrained_params"]`` (or that dict saved
        and loaded again: ``dict(np.load(path))`` of ``np.savez(path, **params)``, a
        pickle, ...), with entries for every param site of the guide (extra entries, such
        as the model's own params, are ignored). ``self`` must have the guide settings of
        the fit (``guide``, ``guide_options``); ``model`` is the model it was fitted to. The
        program takes the model's arguments (positional and keyword) and samples every
        latent site; draw from it with ``numpyro.infer.Predictive`` or ``ppl.sim``.

        Example:
            >>> import jax, jax.numpy as jnp, numpyro, numpyro.distributions as dist, inference
            >>> def model():
            ...     numpyro.sample("s", dist.LogNormal(0.0, 1.0))
            >>> params = {"guide.s.loc": jnp.array(0.5), "guide.s.scale": jnp.array(-3.0)}
            >>> guide = inference.VI().fitted_guide(model, params)
            >>> s = numpyro.infer.Predictive(guide, num_samples=4)(jax.random.key(0))["s"]
            >>> s.shape, bool(jnp.all(jnp.abs(jnp.log(s) - 0.5) < 0.5))  # scale softplus(-3)
            ((4,), True)
        """
        if not callable(model):
            raise TypeError(f"VI.fitted_guide(model={model!r}): model must be the model program "
                            "(a callable) the guide was fitted to.")
        if isinstance(params, ppl.params.ConstrainedParams):
            raise ppl.ParamError(
                f"VI.fitted_guide(params=...): got constrained values ({sorted(params)}, e.g. a "
                "result's tuning['params']); pass the unconstrained ones, "
                "result.tuning['unconstrained_params'] (what to save)."
            )
        if not isinstance(params, Mapping):
            raise TypeError(
                f"VI.fitted_guide(params=...): expected a dict from param-site name to array "
                f"(a result's tuning['unconstrained_params']), got {type(params).__name__}."
            )
        values = {str(name): jax.tree.map(jnp.asarray, value) for name, value in params.items()}
        return ppl.with_params(self.make_guide(model), values)

    # -- the infer hook ------------------------------------------------------------------
    def _setup(self, model: Callable, args: tuple, kwargs: dict,
               trace: dict | None) -> "_Setup":
        """The model, guide and data as the objective takes them (keyword data as one
        trailing positional argument), the density the guide is fitted to (enumerated
        discrete sites summed out) and the latent sites the guide covers."""
        if trace is None:
            trace = trace_model(model, *args, **kwargs)
        enumeration = (enumeration_of(model, tuple(args), dict(kwargs), trace)
                       if enumerated_sites(trace) else None)
        if kwargs:  # the keyword data travel as one trailing positional argument
            model_k, args = _keywords_last(model), (*args, dict(kwargs))
            guide_k = (self.make_guide(model_k) if isinstance(self.guide, str)
                       else _keywords_last(self.guide))
        else:
            model_k = model
            guide_k = self.make_guide(model) if isinstance(self.guide, str) else self.guide
        density = (model_k if enumeration is None
                   else marginal_program(model_k, args, {}, trace, enumeration))
        latent = list(continuous_sites(trace, enumeration))
        return _Setup(model_k, guide_k, density, tuple(args), latent,
                      () if enumeration is None else enumeration.sites)

    def draw(self, model: Callable, args: tuple, kwargs: dict, request: Request) -> Outputs:
        """Fit and sample: ``(samples, stats, tuning, timing)`` for :class:`inference.Result`,
        with the fitted guide as ``.state`` (what ``Result.extend`` draws more from).

        ``num_warmup`` is unused: VI's budget is its own ``steps``. ``samples`` and ``stats``
        have leading axes ``(num_chains, num_samples)``. ``request.init_params``: initial
        constrained values of param sites (see :meth:`initial_params`);
        ``request.checkpoint``/``checkpoint_every``: the fit's file (:func:`inference.fit`).
        """
        key, num_samples, num_chains = request.key, request.num_samples, request.num_chains
        setup = self._setup(model, args, kwargs, request.trace)
        model_k, guide_k, args = setup.model, setup.guide, setup.args
        objective = self.make_objective(setup.density, guide_k)
        init_key, fit_key, draw_key = jax.random.split(key, 3)

        params = ppl.init_params((model_k, guide_k), init_key, *args)
        drawn = trace_model(ppl.with_params(guide_k, params), *args, key=init_key)
        missing = [n for n in setup.latent if n not in drawn or drawn[n]["type"] != "sample"]
        if missing:
            raise ModelError(
                f"VI: guide {model_name(guide_k)} does not sample the latent site(s) {missing} "
                f"of model {model_name(model)}; a guide must sample every latent site, under "
                "the same name."
            )
        summed = [n for n in setup.summed if n in drawn and drawn[n]["type"] == "sample"]
        if summed:
            raise ModelError(
                f"VI: guide {model_name(guide_k)} samples site(s) {summed}, which model "
                f"{model_name(model)} marks for enumeration: they are summed out of the "
                "density the guide is fitted to (and drawn afterwards from their exact "
                "conditionals). Drop them from the guide, or remove the enumerate mark."
            )
        if request.init_params is not None:
            params = self.initial_params(params, request.init_params, (model_k, guide_k), args)

        t0 = time.perf_counter()
        optimizer = optax.adam(1e-2) if self.optimizer is None else self.optimizer
        fitted = fit_within(objective, params, *args, optimizer=optimizer, steps=self.steps,
                      key=fit_key, progress=request.progress, checkpoint=request.checkpoint,
                      checkpoint_every=request.checkpoint_every, owner="VI",
                      warn_interrupt=False)
        if fitted.interrupted:
            warnings.warn(
                f"VI: interrupted (KeyboardInterrupt) after {fitted.step} of {self.steps} fit "
                "steps; drawing from the guide fitted so far (result.tuning['fit_steps'])."
                + (" The same infer call resumes the fit from its checkpoint."
                   if request.checkpoint is not None else
                   " Pass init_params=result.tuning['params'] to go on from it."),
                UserWarning, stacklevel=user_stacklevel())
        t1 = time.perf_counter()
        constrained = ppl.constrain_params((model_k, guide_k), fitted.params, *args)
        n = num_chains * num_samples
        samples, stats = _draw(model_k, guide_k, constrained, args, setup.latent, draw_key, n,
                               setup.density)
        samples, stats = _by_chain((samples, stats), num_chains, num_samples)
        jax.block_until_ready((samples, stats))
        t2 = time.perf_counter()
        tuning = {"objective": fitted.values, "unconstrained_params": fitted.params,
                  "params": constrained, "fit_steps": fitted.step}
        leaves, treedef = jax.tree_util.tree_flatten(fitted.params)
        state = ckpt.ChainState(
            [ckpt.to_host(x) for x in leaves], treedef,
            ckpt.to_host(jax.random.key_data(draw_key)), str(jax.random.key_impl(draw_key)),
            n, 0, num_chains, num_samples, num_samples)
        return ChainOutputs(samples, stats, tuning, {"fit": t1 - t0, "sample": t2 - t1}, state)

    def initial_params(self, params: dict, given: Mapping[str, Any], programs: tuple,
                       args: tuple) -> dict:
        """``params`` (unconstrained, from ``ppl.init_params``) with the entries of ``given``
        in their place: *constrained* values of the model's and guide's param sites, by
        name, as a fitted result's ``tuning["params"]`` holds them (so a result, or its
        saved file, starts another fit where it ended); sites not in ``given`` keep their
        initial values. ``infer(..., method=VI(...), init_params=...)`` calls it.

        Example:
            >>> import jax, jax.numpy as jnp, numpyro, numpyro.distributions as dist, ppl
            >>> def model():
            ...     numpyro.sample("s", dist.LogNormal(0.0, 1.0))
            >>> vi = VI()
            >>> guide = vi.make_guide(model)
            >>> p0 = ppl.init_params((model, guide), jax.random.key(0))
            >>> p = vi.initial_params(p0, {"guide.s.scale": 0.5}, (model, guide), ())
            >>> round(float(ppl.constrain_params(guide, p)["guide.s.scale"]), 4)
            0.5
        """
        if not isinstance(given, Mapping):
            raise TypeError(
                f"infer(method=VI(...), init_params=...): expected a dict from param-site name "
                f"to constrained value (e.g. a VI result's tuning['params']), got "
                f"{type(given).__name__}.")
        sites = {}
        for program in programs:
            for name, site in trace_model(program, *args).items():
                if site["type"] == "param":
                    sites.setdefault(name, site)
        unknown = sorted(str(k) for k in given if k not in params)
        if unknown:
            raise ModelError(
                f"VI: init_params has entries {unknown} that are not param sites of the guide "
                f"or the model; VI's init_params are the param sites' constrained values "
                f"(a VI result's tuning['params']), here {sorted(params)}"
                + ("; latent sites are not set directly (set their guide's params, e.g. "
                   "'guide.<site>.loc')" if any(not str(k).startswith("guide") for k in unknown)
                   else "") + ".")
        out = dict(params)
        for name, value in given.items():
            constraint = sites[name]["kwargs"].get("constraint") or constraints.real
            value = jax.tree.map(jnp.asarray, value)
            inv = biject_to(constraint).inv
            unconstrained = jax.tree.map(lambda v: inv(v).astype(jnp.result_type(v)), value)
            if jax.tree_util.tree_structure(unconstrained) != jax.tree_util.tree_structure(
                    params[name]) or any(jnp.shape(a) != jnp.shape(b) for a, b in zip(
                    jax.tree.leaves(unconstrained), jax.tree.leaves(params[name]))):
                raise ModelError(
                    f"VI: init_params['{name}'] has shape "
                    f"{[tuple(jnp.shape(a)) for a in jax.tree.leaves(value)]}, the param site "
                    f"has {[tuple(jnp.shape(a)) for a in jax.tree.leaves(params[name])]}; pass "
                    "values of the param site's shape.")
            out[name] = unconstrained
        return out

    def extend(self, model: Callable, args: tuple, kwargs: dict, *, state: ckpt.ChainState,
               num_samples: int, key: jax.Array | None = None, progress: bool = True,
               devices: Any = None) -> Outputs:
        """``num_samples`` more independent draws per chain from the fitted guide in
        ``state`` (a result's ``.state``): what ``Result.extend`` runs for VI; no fitting.

        With ``key=None`` the draws use the run's own key, folded with the number of draws
        made so far (new draws each time); a ``key`` gives others.
        """
        if devices is not None:
            raise ValueError("extend: VI draws on one device; leave devices=None.")
        setup = self._setup(model, tuple(args), dict(kwargs), None)
        like = (ppl.init_params((setup.model, setup.guide), jax.random.key(0), *setup.args)
                if state.treedef is None
                else jax.tree_util.tree_unflatten(state.treedef, state.leaves))
        params = ckpt.unflatten_like(like, state.leaves, "the saved VI state")
        constrained = ppl.constrain_params((setup.model, setup.guide), params, *setup.args)
        base = state.run_key() if key is None else key
        t0 = time.perf_counter()
        n = state.num_chains * num_samples
        samples, stats = _draw(setup.model, setup.guide, constrained, setup.args,
                               setup.latent, jax.random.fold_in(base, state.t), n,
                               setup.density)
        samples, stats = _by_chain((samples, stats), state.num_chains, num_samples)
        jax.block_until_ready((samples, stats))
        new = dataclasses.replace(state, t=state.t + n, draws=state.draws + num_samples,
                                  requested=state.requested + num_samples)
        return ChainOutputs(samples, stats, {}, {"sample": time.perf_counter() - t0}, new)


class _Setup(NamedTuple):
    model: Callable
    guide: Callable
    density: Callable
    args: tuple
    latent: list
    summed: tuple


def _by_chain(tree: Any, num_chains: int, num_samples: int) -> Any:
    return jax.tree.map(lambda x: x.reshape((num_chains, num_samples) + x.shape[1:]), tree)


def _trace_log_density(trace: dict) -> jax.Array:
    """Sum of a trace's sample-site log densities (observed, latent, factors), plate-scaled,
    as :func:`ppl.log_density` computes it, read from a trace we already have."""
    total = jnp.zeros(())
    for site in trace.values():
        if site["type"] == "sample":
            term = jnp.sum(site["fn"].log_prob(site["value"]))
            total = total + (term if site.get("scale") is None else site["scale"] * term)
    return total


def _draw(model: Callable, guide: Callable, params: dict, args: tuple, latent: list[str],
          key: jax.Array, n: int, density: Callable | None = None) -> tuple[dict, dict]:
    """``n`` independent draws of the fitted guide, with the model's deterministic sites;
    ``lp`` from ``density`` (the model, or its enumerated sites summed out)."""
    dyn, rebuild = split_arguments(args)

    def one(k, dyn, params):  # the params are an argument: the program is reused
        a = rebuild(dyn)
        q = handlers.substitute(guide, data=params)
        k_q, k_m = jax.random.split(k)
        trace = handlers.trace(handlers.seed(q, k_q)).get_trace(*a)
        z = {name: s["value"] for name, s in trace.items()
             if s["type"] == "sample" and not s["is_observed"]}
        model_trace = handlers.trace(
            handlers.seed(handlers.substitute(handlers.substitute(model, data=params), data=z),
                          k_m)
        ).get_trace(*a)
        out = {name: z[name] for name in latent}
        out.update({name: s["value"] for name, s in model_trace.items()
                    if s["type"] == "deterministic"})
        if density is not None and density is not model:
            model_trace = handlers.trace(handlers.substitute(
                handlers.substitute(density, data=params), data=z)).get_trace(*a)
        return out, {"lp": _trace_log_density(model_trace), "log_q": _trace_log_density(trace)}

    keys = jax.random.split(key, n)
    with compiling("VI draws", False) as programs:
        draw = programs.compile(jax.jit(jax.vmap(one, (0, None, None))), (keys, dyn, params),
                                key=("vi-draws", model, guide, density, tuple(latent),
                                     static_part(args)))
    return draw(keys, dyn, params)
