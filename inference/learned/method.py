"""The :class:`Learned` method: source draws, a fitted proposal, then IRMH or i.i.d. draws."""

from __future__ import annotations

import dataclasses
import os
import time
import warnings
from dataclasses import dataclass
from typing import Any, Callable, ClassVar

import jax
import jax.numpy as jnp
import numpy as np

from inference.flows import FlowSpec, check_kind
from inference.learned.checks import (
    _NO_DENSITY, _STANDARDIZE, FLOW_MATCHING_NAMES, _check_optimizer, _positive_int,
    _proposal_has_density)
from inference.learned.diagnostics import importance_diagnostics
from inference.learned.draws import _as_points, _draws_for
from inference.learned.fitting import fit_flow_matching_to_draws, fit_flow_to_draws, flow_from_vi
from inference.learned.flow import Flow
from inference.learned.flow_matching_sampler import FlowMatchingSampler
from inference.chains import ChainOutputs, continue_chains, run_chains
from inference.learned.sampling import IRMHTarget, _iid
from inference.method import Method, Outputs, Request
from inference.stacklevel import user_stacklevel
from ppl.enumeration import enumeration_of
from ppl.errors import ModelError
from ppl.potential import potential as make_potential
from ppl.tracing import trace_model

__all__ = ["Learned", "source_checkpoint"]


def _is_method(obj: Any) -> bool:
    return isinstance(obj, Method)


@dataclass(frozen=True, eq=False)
class Learned(Method):
    """Learn a sampler of the posterior from another method's draws, then draw cheaply from it.

    ``infer(model, ..., method=Learned(source=NUTS(), flow="spline_coupling", correct="irmh"))``:

    1. *source*: an ``infer`` method object run on the model (``NUTS()`` by default, with
       ``source_samples`` draws after ``source_warmup`` warmup in each of ``source_chains``
       chains); a :class:`inference.Result` or a dict of constrained draws of the model's
       latent sites; or an array ``(n, D)`` of flat unconstrained draws (sites in model
       order, :func:`unconstrained_draws`). ``VI(guide="flow")`` is special: its fitted flow
       is the learned sampler (no fit to draws).
    2. *flow*: a kind of :data:`inference.flows.KINDS` fitted by maximum likelihood
       (:func:`fit_flow_to_draws`, ``flow_options`` for :class:`~inference.flows.FlowSpec`;
       default ``"spline_coupling"``, or with ``source=VI(guide="flow")`` that fit's flow),
       ``"flow_matching"`` (:func:`fit_flow_matching_to_draws`, ``flow_options`` for it:
       ``width``, ``depth``, ``ode_steps``, ``ode_method``, ``density``, ``path``), or an
       already fitted :class:`Flow` / :class:`FlowMatchingSampler` (any object with
       ``sample_and_log_prob(key, n)``/``log_prob``, or ``sample`` only with
       ``correct=None``), used as is (``source`` is then not run).
    3. *correct*: ``"irmh"`` -- ``num_chains`` independent Metropolis chains (:func:`irmh`)
       started at proposal draws, ``num_warmup`` steps of burn-in, then ``num_samples`` kept
       per chain: exact for the posterior; ``None`` -- ``num_chains x num_samples`` i.i.d.
       proposal draws (the "chains" are a layout), exact only as far as the flow is.
       The IRMH chains run in chunks as every MCMC method's (:mod:`inference.chains`):
       Ctrl-C returns the draws so far, and ``result.extend(n)`` continues them with the
       same proposal (in the same session: the proposal is not written to files).
       A Ctrl-C while the source runs or the flow is fitted stops the whole call
       (``KeyboardInterrupt``): there is no proposal to draw with yet.

    ``init_params`` (of ``infer``) starts the chains of a source method that takes them.
    ``checkpoint="run.npz"`` (of ``infer``, with ``checkpoint_every``) writes the IRMH
    chains' state to that file and a source run's to ``run.source.npz`` (when the source
    method takes checkpoints); after a crash or a Ctrl-C the same call again resumes the
    source from its file, fits the same flow again (the same key fits the same flow; the
    file holds a digest of the proposal, and a different one is refused) and resumes the
    chains: the draws are those of an uninterrupted run, bit for bit.

    ``steps``, ``batch_size``, ``optimizer``, ``standardize``, ``validation`` (held-out
    fraction for early stopping; normalizing flows only) go to the fit; ``base_scale``
    (a normalizing flow's base ``N(0, base_scale^2 I)`` when drawing, see :class:`Flow`)
    fattens the proposal's tails.

    The :class:`inference.Result`: ``samples`` of every latent and deterministic site,
    ``(chains, draws, *shape)``; ``stats``: ``lp`` (log density on the unconstrained space,
    as NUTS reports it), ``log_q`` (the proposal's there), ``n_grad`` (gradient evaluations of
    the model's log density: those the source recorded when Learned ran it, spread evenly
    over the draws, plus the sampler's own, 0 for IRMH and i.i.d. draws; so
    ``stats["n_grad"].sum()`` is the total, also in ``tuning["n_grad"]``, the source's part in
    ``tuning["source_n_grad"]``; fitting the flow differentiates no model), and with IRMH
    ``acceptance_rate``, ``is_accepted`` and ``proposal_log_weight`` (the log importance
    weight of each step's proposal), without it ``log_weight``. ``tuning``: ``pareto_k`` and
    ``log_z`` (the importance estimate of the log marginal likelihood), and ``importance``,
    all of :func:`importance_diagnostics` of the proposals drawn after burn-in (with IRMH)
    or of the draws (without; absent for a proposal without a density); ``flow`` (the
    proposal object, reusable as ``Learned(flow=...)``), ``flow_losses`` (the fit's per-step
    negative log-likelihood; for a VI flow, VI's objective) and ``source`` (the source's
    Result, when it was run). ``timing``: ``source``, ``fit``, ``sample`` seconds
    (``sample`` includes compilation).

    A ``pareto_k`` above 0.7 warns: the flow's tails are lighter than the posterior's; i.i.d.
    draws are then unreliable and IRMH chains mix slowly (check ESS).

    Example:
        >>> import jax.numpy as jnp, numpyro, numpyro.distributions as dist, inference
        >>> def model(y=None):
        ...     mu = numpyro.sample("mu", dist.Normal(0.0, 10.0))
        ...     numpyro.sample("y", dist.Normal(mu, 1.0).expand([3]).to_event(1), obs=y)
        >>> draws = 2.0 + 0.58 * jax.random.normal(jax.random.key(0), (1000, 1))
        >>> method = Learned(source=draws, flow="affine_coupling", steps=100,
        ...                  flow_options={"layers": 1, "width": 4})
        >>> r = inference.infer(model, y=jnp.array([1.0, 2.0, 3.0]), method=method,
        ...                     num_samples=200, num_warmup=50, num_chains=2, progress=False)
        >>> r.samples["mu"].shape, float(r.stats["acceptance_rate"].mean()) > 0.5
        ((2, 200), True)
    """

    source: Any = None
    flow: Any = None
    correct: str | None = "irmh"
    steps: int = 2000
    batch_size: int = 256
    optimizer: Any = None
    standardize: str | None = "full"
    flow_options: dict | None = None
    source_samples: int = 1000
    source_warmup: int = 1000
    source_chains: int = 4
    base_scale: float = 1.0
    validation: float = 0.1

    handles_discrete: ClassVar[bool] = False
    #: Its density is ``ppl.potential``'s: enumerated discrete sites are summed out (infer).
    sums_out_enumerated: ClassVar[bool] = True
    splits_devices: ClassVar[bool] = False
    #: ``init_params`` starts the chains of its source method (one that takes them);
    #: ``checkpoint`` covers the IRMH chains and a source run (see the class docstring).
    options: ClassVar[frozenset] = frozenset({"init_params", "checkpoint", "checkpoint_every"})

    def __post_init__(self):
        from inference.methods.nuts import NUTS
        from inference.result import Result
        from inference.vi import VI

        source = NUTS() if self.source is None else self.source
        object.__setattr__(self, "source", source)
        if not (_is_method(source) or isinstance(source, (Result, dict))):
            arr = np.asarray(source) if isinstance(source, (np.ndarray, jax.Array, list)) else None
            if arr is None or arr.ndim < 2:
                raise TypeError(
                    f"Learned(source={source!r}): use an infer method object (e.g. "
                    "inference.NUTS(), inference.VI(guide='flow')), a Result, a dict of "
                    "constrained draws, or an array (n, D) of unconstrained draws.")
        if self.correct not in ("irmh", None):
            raise ValueError(f"Learned(correct={self.correct!r}): use 'irmh' (independent "
                             "Metropolis correction, exact) or None (i.i.d. flow draws).")
        for name in ("steps", "batch_size", "source_samples", "source_chains"):
            _positive_int("Learned", name, getattr(self, name))
        if isinstance(self.source_warmup, bool) or not isinstance(self.source_warmup, int) \
                or self.source_warmup < 0:
            raise ValueError(f"Learned: source_warmup must be a non-negative int; got "
                             f"{self.source_warmup!r}.")
        _check_optimizer("Learned", self.optimizer)
        if not (isinstance(self.base_scale, (int, float)) and not isinstance(self.base_scale, bool)
                and self.base_scale > 0):
            raise ValueError(f"Learned(base_scale={self.base_scale!r}): must be a positive number.")
        if self.base_scale != 1.0 and (self.flow in FLOW_MATCHING_NAMES or not (
                self.flow is None or isinstance(self.flow, (Flow, str)))):
            raise ValueError("Learned(base_scale=...): applies to normalizing flows (a flow kind "
                             "or a Flow), not to flow-matching samplers.")
        if self.standardize not in _STANDARDIZE:
            raise ValueError(f"Learned(standardize={self.standardize!r}): use 'full', 'diag' "
                             "or None.")
        if self.flow_options is not None and not isinstance(self.flow_options, dict):
            raise TypeError(f"Learned(flow_options={self.flow_options!r}): must be a dict.")
        vi_flow = isinstance(source, VI) and source.guide == "flow"
        if vi_flow and (self.flow is not None or self.flow_options):
            raise ValueError("Learned(source=VI(guide='flow')): the VI fit's flow is the learned "
                             "sampler; leave flow and flow_options unset and choose the flow with "
                             "VI(guide_options={'kind': ..., 'layers': ...}).")
        if self.flow is None:
            object.__setattr__(self, "flow", "vi" if vi_flow else "spline_coupling")
        flow = self.flow
        if flow == "vi":
            if not vi_flow:
                raise ValueError("Learned(flow='vi'): needs source=VI(guide='flow', ...).")
        elif isinstance(flow, str):
            if flow in FLOW_MATCHING_NAMES:
                options = dict(self.flow_options or {})
                allowed = {"width", "depth", "time_frequencies", "ode_steps", "ode_method",
                           "density", "path"}
                unknown = set(options) - allowed
                if unknown:
                    raise ValueError(f"Learned(flow={flow!r}, flow_options=...): unknown "
                                     f"option(s) {sorted(unknown)}; use {sorted(allowed)}.")
                density = options.get("density", "jacobian")
                FlowMatchingSampler(lambda y, t: y, 1, options.get("ode_steps", 16),
                                    options.get("ode_method", "rk4"), density)
                if density is None and self.correct == "irmh":
                    raise ValueError(_NO_DENSITY.format(what="flow_matching with density=None"))
            else:
                object.__setattr__(self, "flow", check_kind(flow, "Learned"))
                try:
                    FlowSpec(self.flow, 2, **dict(self.flow_options or {}))
                except TypeError as err:
                    raise ValueError(f"Learned(flow_options={self.flow_options!r}): {err}; see "
                                     "inference.flows.FlowSpec.") from None
        else:
            has_sample = callable(getattr(flow, "sample_and_log_prob", None)) or \
                callable(getattr(flow, "sample", None))
            if not has_sample:
                raise TypeError(
                    f"Learned(flow={flow!r}): use a flow kind ({', '.join(_kinds())}), "
                    "'flow_matching', or a fitted proposal with sample(key, n) (and "
                    "log_prob(x) for IRMH), such as a Flow or FlowMatchingSampler.")
            if self.correct == "irmh" and not _proposal_has_density(flow):
                raise ValueError(_NO_DENSITY.format(what=type(flow).__name__))

    # -- pieces ------------------------------------------------------------------------
    def _source_draws(self, model, args, kwargs, pot, request):
        """``(draws (n, D) or None, source Result or None, a VI flow or None)``."""
        from inference.result import Result
        from inference.vi import VI

        source = self.source
        if isinstance(source, Result):
            return _draws_for(pot, source.samples, "Learned(source=Result)"), source, None
        if isinstance(source, dict):
            return _draws_for(pot, source, "Learned(source=dict)"), None, None
        if not _is_method(source):
            return _as_points("Learned(source=array)", source, pot.dimension), None, None
        if not source.sums_out_enumerated:
            trace = request.trace or trace_model(model, *args, **kwargs)
            enumeration = enumeration_of(model, args, kwargs, trace)
            if enumeration is not None:
                raise ModelError(
                    f"Learned(source={type(source).__name__}()): the model's enumerated "
                    f"site(s) {list(enumeration.sites)} are not summed out by "
                    f"{type(source).__name__}; use a source that sums them out, such as "
                    "NUTS().")
        # The source runs through the same protocol as any method infer runs.
        path = (source_checkpoint(request.checkpoint)
                if request.checkpoint is not None and "checkpoint" in source.options else None)
        sub = Request(key=request.key, num_samples=self.source_samples,
                      num_warmup=self.source_warmup, num_chains=self.source_chains,
                      progress=request.progress, trace=request.trace,
                      init_params=request.init_params, checkpoint=path,
                      checkpoint_every=request.checkpoint_every if path else None)
        with warnings.catch_warnings():
            # An interrupted source says "returning the draws so far"; Learned stops instead.
            warnings.filterwarnings("ignore", message=r".*interrupted \(KeyboardInterrupt\)")
            out = source.run(model, args, kwargs, sub)
        samples, stats, tuning, timing = out
        state = getattr(out, "state", None)
        fit_steps = (tuning or {}).get("fit_steps") if isinstance(source, VI) else None
        if ((state is not None and state.interrupted)
                or (fit_steps is not None and fit_steps < source.steps)):
            raise KeyboardInterrupt(
                f"Learned was interrupted during its source run ({type(source).__name__}): "
                "no proposal yet, so no draws"
                + (f"; the same call again resumes the source from {path!r}" if path else
                   "; pass checkpoint='run.npz' to infer to be able to resume it"))
        result = Result(samples=dict(samples), stats=stats, method=source, tuning=tuning,
                        timing=timing, model=model, model_args=tuple(args),
                        model_kwargs=dict(kwargs))
        if isinstance(source, VI) and source.guide == "flow":
            return None, result, flow_from_vi(result)
        return _draws_for(pot, result.samples, "Learned(source)"), result, None

    def _fit(self, draws, key, progress, checkpoint):
        try:
            if self.flow in FLOW_MATCHING_NAMES:
                options = dict(self.flow_options or {})
                r = fit_flow_matching_to_draws(
                    draws, key=key, steps=self.steps, batch_size=self.batch_size,
                    optimizer=self.optimizer, standardize=self.standardize, progress=progress,
                    on_interrupt="raise", **options)
            else:
                r = fit_flow_to_draws(draws, self.flow, key=key, steps=self.steps,
                                      batch_size=self.batch_size, optimizer=self.optimizer,
                                      standardize=self.standardize,
                                      flow_options=self.flow_options,
                                      validation=self.validation, progress=progress,
                                      on_interrupt="raise")
        except KeyboardInterrupt:
            raise KeyboardInterrupt(
                "Learned was interrupted during its flow fit: no proposal yet, so no draws"
                + ("; the same call again fits the flow again (after resuming a source run "
                   "from its checkpoint file)" if checkpoint is not None else "")) from None
        return r.flow, r.losses

    # -- the infer hook ----------------------------------------------------------------
    def draw(self, model: Callable, args: tuple, kwargs: dict, request: Request) -> Outputs:
        """Source, fit, draw: ``(samples, stats, tuning, timing)`` for :class:`inference.Result`."""
        num_samples, num_warmup, num_chains = (request.num_samples, request.num_warmup,
                                               request.num_chains)
        progress = request.progress
        runs_source = isinstance(self.flow, str) and _is_method(self.source)
        if request.init_params is not None and not (
                runs_source and "init_params" in self.source.options):
            what = (f"source={type(self.source).__name__}()" if runs_source else
                    "a fitted flow" if not isinstance(self.flow, str) else
                    f"source={type(self.source).__name__}")
            raise TypeError(
                f"Learned: init_params starts the chains of its source method, and {what} "
                "has none that take them; drop init_params, or use a source method that "
                "takes them (e.g. Learned(source=inference.NUTS())).")
        if request.checkpoint is not None and self.correct is None and not (
                runs_source and "checkpoint" in self.source.options):
            raise TypeError(
                "Learned: checkpoint= writes the state of the IRMH chains (correct='irmh') "
                "and of a source run, and this Learned has neither (correct=None draws "
                "i.i.d. from " + ("a fitted flow" if not runs_source else
                                  f"a flow fitted to {type(self.source).__name__}'s draws, "
                                  "which takes no checkpoints") + "); drop checkpoint.")
        pot = make_potential(model, *args, **kwargs)
        k_src, k_fit, k_run = jax.random.split(request.key, 3)
        timing: dict[str, float] = {}
        tuning: dict[str, Any] = {}
        t0 = time.perf_counter()
        if isinstance(self.flow, str):
            draws, source_result, vi_flow = self._source_draws(
                model, args, kwargs, pot, request._replace(key=k_src))
            t1 = time.perf_counter()
            timing["source"] = t1 - t0
            if source_result is not None:
                tuning["source"] = source_result
            if vi_flow is not None:
                proposal, losses = vi_flow, source_result.tuning.get("objective")
            else:
                proposal, losses = self._fit(draws, k_fit, progress, request.checkpoint)
            timing["fit"] = time.perf_counter() - t1
            tuning["flow_losses"] = losses
        else:
            proposal = self.flow
        if isinstance(proposal, Flow) and self.base_scale != 1.0:
            proposal = dataclasses.replace(proposal, base_scale=float(self.base_scale))
        dim = getattr(proposal, "dim", None)
        if dim is not None and dim != pot.dimension:
            raise ValueError(f"Learned: the flow has dimension {dim}, but the model's "
                             f"unconstrained space has dimension {pot.dimension} "
                             f"(sites {pot.sites}).")
        tuning["flow"] = proposal

        t2 = time.perf_counter()
        state = None
        if self.correct is None:
            logdensity = pot.flat_logdensity_fn
            constrain = jax.vmap(jax.vmap(lambda x: pot.to_constrained(pot.unravel(x))))
            samples, stats, log_w = _iid(proposal, logdensity, constrain, k_run, num_chains,
                                         num_samples)
        else:
            # IRMH chains, run in chunks like every MCMC method's (Ctrl-C, extend).
            out = run_chains(self, model, args, kwargs, key=k_run, num_warmup=num_warmup,
                             num_samples=num_samples, num_chains=num_chains,
                             progress=progress, target=IRMHTarget(pot, proposal=proposal),
                             checkpoint=request.checkpoint,
                             checkpoint_every=request.checkpoint_every)
            samples, stats, state = out[0], out[1], out.state
            state.context = proposal
            log_w = stats["proposal_log_weight"]
        timing["sample"] = time.perf_counter() - t2
        stats, tuning["n_grad"], tuning["source_n_grad"] = _count_gradients(
            stats, tuning.get("source") if _is_method(self.source) else None)
        if log_w is None:  # uncorrected draws of a proposal without a density
            return samples, stats, tuning, timing
        tuning.update(self._importance(log_w))
        return ChainOutputs(samples, stats, tuning, timing, state)

    def _importance(self, log_w: Any) -> dict:
        """Pareto k and log Z of the importance weights ``log_w`` (warned when k > 0.7)."""
        tuning: dict[str, Any] = {}
        diagnostics = importance_diagnostics(np.asarray(log_w))
        tuning.update(pareto_k=diagnostics["pareto_k"], log_z=diagnostics["log_z"],
                      importance=diagnostics)
        if diagnostics["pareto_k"] > 0.7:
            warnings.warn(
                f"Learned: the importance weights p/q of the flow's draws have Pareto k = "
                f"{diagnostics['pareto_k']:.2f} > 0.7: the flow's tails are lighter than the "
                "posterior's. " + ("IRMH is still exact but may mix slowly: check the ESS."
                                   if self.correct else "The i.i.d. draws are unreliable; use "
                                   "correct='irmh'."), stacklevel=user_stacklevel())
        return tuning

    def extend(self, model: Callable, args: tuple, kwargs: dict, *, state: Any,
               num_samples: int, key: jax.Array | None = None, progress: bool = True,
               devices: Any = None) -> Outputs:
        """``num_samples`` more IRMH draws per chain from the same fitted proposal,
        continuing the chains in ``state`` (behind ``Result.extend``; ``correct="irmh"``)."""
        proposal = getattr(state, "context", None)
        if proposal is None:
            raise ValueError(
                "Learned: this Result's chains cannot be continued: their fitted proposal is "
                "kept in memory only (not in saved files). Run again with "
                "Learned(flow=result.tuning['flow'], correct='irmh') to draw more with it.")
        if devices is not None:
            raise ValueError("Learned does not split its work over devices; leave "
                             "devices=None.")
        pot = make_potential(model, *args, **kwargs)
        out = continue_chains(self, model, tuple(args), dict(kwargs), state=state,
                              num_samples=num_samples, key=key, progress=progress,
                              target=IRMHTarget(pot, proposal=proposal))
        out.state.context = proposal
        out[2].update(self._importance(out[1]["proposal_log_weight"]))
        return out


def source_checkpoint(path: str | os.PathLike) -> str:
    """The file a :class:`Learned` run writes its source run's checkpoint to, beside
    ``path`` (its IRMH chains').

    Example:
        >>> source_checkpoint("runs/learned.npz")
        'runs/learned.source.npz'
    """
    root, ext = os.path.splitext(os.fspath(path))
    return f"{root}.source{ext}"


def _count_gradients(stats: dict, source_result: Any) -> tuple[dict, float, float]:
    """``stats`` with ``n_grad`` counting the source's gradients too (spread evenly over the
    draws, as SMC does), the total and the source's part.

    The source's count is what it recorded: its ``stats["n_grad"]`` summed plus its warmup's
    ``tuning["warmup_n_grad"]`` (NUTS and the Langevin methods report both; VI records
    none); Learned's own are its kernel's (IRMH: 0).
    """
    own = float(np.sum(np.asarray(stats["n_grad"], np.float64)))
    recorded = None if source_result is None else source_result.stats.get("n_grad")
    source = 0.0 if recorded is None else float(np.sum(np.asarray(recorded, np.float64)))
    warmup = None if source_result is None else (source_result.tuning or {}).get("warmup_n_grad")
    source += 0.0 if warmup is None else float(np.sum(np.asarray(warmup, np.float64)))
    per_draw = stats["n_grad"].astype(jnp.result_type(float))
    stats = dict(stats, n_grad=per_draw + source / per_draw.size)
    return stats, own + source, source


def _kinds() -> list[str]:
    from inference.flows import KINDS

    return list(KINDS)
