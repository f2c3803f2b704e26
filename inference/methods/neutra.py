"""NeuTra: precondition an MCMC kernel with a normalizing flow fitted by VI.

``inference.infer(model, ..., method=inference.NeuTra(flow="iaf", kernel=inference.NUTS()))``
(Hoffman et al. 2019, "NeuTra-lizing bad geometry in HMC"):

1. fit a flow guide (:func:`inference.guides.flow`) to the posterior by maximizing an
   objective (ELBO by default) with :func:`inference.fit` for ``vi_steps`` steps;
2. build the *transported* model: its one latent site ``"_neutra.z"`` has the flow's base
   ``N(0, I_D)`` as prior and a ``numpyro.factor`` adding
   ``log p(x(z)) + log |det dx/dz| - log N(z; 0, I)``, where ``x(z)`` is the flow followed by
   each site's ``biject_to(support)``; so the transported model's posterior is the image of
   the original posterior under ``T^{-1}``, close to ``N(0, I)`` when the flow fits well;
3. run ``kernel`` (any ``infer`` MCMC method: ``NUTS()``, ``MALA()``, ...) on it through
   :func:`inference.infer`, and map the draws back: the original latent sites (and the
   model's deterministic sites) are ``numpyro.deterministic`` sites of the transported model.

The :class:`inference.Result` has the original sites' draws, the kernel's ``stats``
(``lp`` is the transported model's log density, ``diverging`` ... as NUTS reports them) and
``tuning`` with the kernel's tuning plus ``vi_objective`` (per-step objective estimates) and
``params`` (the fitted flow weights, and the model's own params, which are then held fixed).

Example:
    >>> import jax.numpy as jnp, numpyro, numpyro.distributions as dist, inference
    >>> from inference.methods.neutra import NeuTra
    >>> def model(y=None):
    ...     mu = numpyro.sample("mu", dist.Normal(0.0, 10.0))
    ...     numpyro.sample("y", dist.Normal(mu, 1.0).expand([3]).to_event(1), obs=y)
    >>> method = NeuTra(flow="affine_coupling", vi_steps=200,
    ...                           flow_options={"layers": 1, "width": 8})
    >>> r = inference.infer(model, y=jnp.array([1.0, 2.0, 3.0]), method=method,
    ...                     num_samples=100, num_warmup=100, num_chains=2, progress=False)
    >>> r.samples["mu"].shape, "diverging" in r.stats
    ((2, 100), True)
"""

from __future__ import annotations

import numbers
import time
from dataclasses import dataclass
from typing import Any, Callable, ClassVar

import jax
import jax.numpy as jnp
import numpyro
import numpyro.distributions as dist
import optax
from numpyro import handlers

import ppl
from inference.vi import guides as guides_lib
from inference.vi.enumerated import enumerated_log_density, marginal_program
from inference.vi.fit import fit_within
from inference.flows import FlowSpec, check_kind
from inference.methods.nuts import NUTS
from inference.vi import VI, bind_kwargs
from inference.chains import ChainOutputs
from inference.method import Method, Outputs, Request
from inference.starting_points import constrained_starts
from ppl.enumeration import enumerated_sites, enumeration_of
from ppl.tracing import trace_model

__all__ = ["NeuTra", "transported_model"]

#: The transported model's latent site (the flow's base variable).
BASE_SITE = "_neutra.z"


def transported_model(model: Callable, spec: FlowSpec, theta: jax.Array,
                      sites: dict, model_params: dict | None = None,
                      log_density: Callable | None = None) -> Callable:
    """The model in the flow's base space: latent ``"_neutra.z" ~ N(0, I_D)``, a factor for
    ``log p(x(z)) + log |det dx/dz| - log N(z)``, and the original latent and deterministic
    sites as ``numpyro.deterministic`` sites.

    ``sites`` is :func:`inference.guides.latent_site_info` of the model; ``theta`` the flow
    weights (``spec.size``); ``model_params`` constrained values for the model's own
    ``numpyro.param`` sites, if any. ``log_density(values, *args, **kwargs)``: the model's
    log density at constrained ``values`` of the sites, when it is not the sum of its
    trace's sites (a model whose enumerated discrete sites are summed out,
    :func:`inference.vi.enumerated.enumerated_log_density`).

    Example:
        >>> import jax, numpyro, numpyro.distributions as dist, ppl
        >>> from inference.vi.guides import latent_site_info
        >>> def model():
        ...     numpyro.sample("s", dist.HalfNormal(1.0))
        >>> sites = latent_site_info(model)
        >>> spec = FlowSpec("iaf", dim=1)
        >>> m = transported_model(model, spec, spec.init(jax.random.key(0)), sites)
        >>> # identity flow: the transported density is the original one in unconstrained space
        >>> round(float(ppl.log_density(m, {"_neutra.z": jax.numpy.zeros(1)})), 4)
        -0.7258
    """
    dim = spec.dim
    params = dict(model_params or {})

    def neutra_model(*args: Any, **kwargs: Any) -> None:
        base = dist.Normal(jnp.zeros(dim), 1.0).to_event(1)
        z = numpyro.sample(BASE_SITE, base)
        u, log_det = spec.forward(theta, z)
        values, start = {}, 0
        for name, info in sites.items():
            stop = start + info.size
            u_site = jnp.reshape(u[start:stop], info.shape)
            value = info.transform(u_site)
            log_det = log_det + jnp.sum(info.transform.log_abs_det_jacobian(u_site, value))
            values[name] = value
            start = stop
        with handlers.block():
            trace = handlers.trace(handlers.seed(handlers.substitute(
                handlers.substitute(model, data=params), data=values), 0)).get_trace(*args, **kwargs)
        if log_density is not None:
            log_p = log_density(values, *args, **kwargs)
        else:
            log_p = jnp.zeros(())
            for site in trace.values():
                if site["type"] == "sample":
                    term = jnp.sum(site["fn"].log_prob(site["value"]))
                    log_p = log_p + (term if site.get("scale") is None else site["scale"] * term)
        numpyro.factor("_neutra.log_weight", log_p + log_det - base.log_prob(z))
        for name in sites:
            numpyro.deterministic(name, values[name])
        for name, site in trace.items():
            if site["type"] == "deterministic" and name not in sites:
                numpyro.deterministic(name, site["value"])

    neutra_model.__name__ = f"neutra_{getattr(model, '__name__', 'model')}"
    return neutra_model


@dataclass(frozen=True)
class NeuTra(Method):
    """Fit a flow by VI, then run an MCMC kernel in the flow's base space (module docstring).

    Args:
        flow: the flow kind (:data:`inference.flows.KINDS`: ``"affine_coupling"``,
            ``"spline_coupling"``, ``"iaf"``, ``"maf"``). ``"iaf"`` and the coupling flows
            evaluate the transport ``z -> x`` in one pass per layer, which is what the kernel
            calls at every gradient; ``"maf"`` needs ``D`` passes there.
        kernel: an ``infer`` MCMC method object (one with ``sampler``); default ``NUTS()``.
        vi_steps: optimizer steps of the flow fit.
        objective: as :class:`inference.VI`'s (``"elbo"``, ``"iwae"``, ... or a factory).
        optimizer: an optax transformation; default ``optax.adam(1e-3)``.
        num_particles: objective estimates averaged per step.
        flow_options: keyword arguments of :func:`inference.guides.flow` (``layers``,
            ``width``, ``depth``, ``knots``, ``interval``, ...).

    ``infer``'s ``num_warmup`` and ``num_samples`` go to the kernel.

    Example:
        >>> import inference
        >>> NeuTra(flow="iaf", kernel=inference.MALA()).kernel  # doctest: +ELLIPSIS
        MALA(...)
    """

    flow: str = "iaf"
    kernel: Any = None
    vi_steps: int = 2000
    objective: str | Callable = "elbo"
    optimizer: Any = None
    num_particles: int = 1
    flow_options: dict | None = None

    handles_discrete: ClassVar[bool] = False
    #: Its draws are Markov chains: ``Result.diagnose`` checks R-hat and ESS.
    markov_chains: ClassVar[bool] = True
    #: The flow is fitted to, and the kernel runs on, the density with the enumerated
    #: discrete sites summed out (``infer`` draws them afterwards).
    sums_out_enumerated: ClassVar[bool] = True
    #: ``init_params``: constrained values of the model's sites, carried to the flow's base
    #: space (through the fitted flow's inverse) to start the kernel's chains there.
    #: ``checkpoint``: the kernel's run is checkpointed; a rerun fits the flow again (the
    #: same key fits the same flow; a different one is refused: the file holds its digest)
    #: and resumes the kernel from the file.
    options: ClassVar[frozenset] = frozenset({"init_params", "checkpoint", "checkpoint_every"})

    def __post_init__(self):
        object.__setattr__(self, "flow", check_kind(self.flow, "NeuTra"))
        kernel = NUTS() if self.kernel is None else self.kernel
        if not callable(getattr(kernel, "sampler", None)):
            raise TypeError(
                f"NeuTra(kernel={kernel!r}): must be an MCMC method object with sampler(...), "
                "such as inference.NUTS() or inference.MALA()."
            )
        object.__setattr__(self, "kernel", kernel)
        if getattr(kernel, "stochastic_gradients", False):
            raise ValueError(f"NeuTra(kernel={kernel!r}): stochastic-gradient kernels are not "
                             "supported (the transported density needs the full data).")
        if not (isinstance(self.vi_steps, numbers.Integral) and not isinstance(self.vi_steps, bool)
                and self.vi_steps >= 1):
            raise ValueError(f"NeuTra(vi_steps={self.vi_steps!r}): must be a positive int.")
        options = dict(self.flow_options or {})
        unknown = set(options) - {"layers", "width", "depth", "knots", "interval", "activation",
                                  "permutation", "seed"}
        if unknown:
            raise ValueError(f"NeuTra(flow_options=...): unknown option(s) {sorted(unknown)}; "
                             "see inference.guides.flow.")
        FlowSpec(self.flow, 2, **options)  # validates the values
        # The objective, optimizer and particle checks are VI's.
        self._vi()

    def _vi(self) -> VI:
        return VI(objective=self.objective, guide="normal", steps=self.vi_steps,
                  optimizer=self.optimizer, num_particles=self.num_particles)

    def make_guide(self, model: Callable) -> Callable:
        """The flow guide that is fitted for ``model``."""
        return guides_lib.flow(model, kind=self.flow, **dict(self.flow_options or {}))

    def draw(self, model: Callable, args: tuple, kwargs: dict, request: Request) -> Outputs:
        """Fit the flow, then run the kernel on the transported model: ``(samples, stats,
        tuning, timing)`` for :class:`inference.Result`, draws of the original sites."""
        progress = request.progress
        trace = request.trace if request.trace is not None else trace_model(
            model, *args, **kwargs)
        enumeration = (enumeration_of(model, tuple(args), dict(kwargs), trace)
                       if enumerated_sites(trace) else None)
        model_k = bind_kwargs(model, kwargs)
        guide = self.make_guide(model_k)
        vi = self._vi()
        # The density the flow is fitted to and the kernel runs on: with the enumerated
        # discrete sites summed out (infer draws them afterwards).
        density = (model_k if enumeration is None
                   else marginal_program(model_k, tuple(args), {}, trace, enumeration))
        objective = vi.make_objective(density, guide)
        init_key, fit_key, run_key = jax.random.split(request.key, 3)
        params = ppl.init_params((model_k, guide), init_key, *args)

        t0 = time.perf_counter()
        optimizer = optax.adam(1e-3) if self.optimizer is None else self.optimizer
        fitted = fit_within(objective, params, *args, optimizer=optimizer, steps=self.vi_steps,
                      key=fit_key, progress=progress, owner="NeuTra VI", warn_interrupt=False)
        if fitted.interrupted:
            raise KeyboardInterrupt(
                f"NeuTra was interrupted during its flow fit (step {fitted.step} of "
                f"{self.vi_steps}): no draws yet")
        t1 = time.perf_counter()
        constrained = ppl.constrain_params((model_k, guide), fitted.params, *args)
        sites = guides_lib.latent_site_info(model_k, *args)
        spec = FlowSpec(self.flow, sum(i.size for i in sites.values()),
                        **dict(self.flow_options or {}))
        prefix = "guide"
        theta = constrained[f"{prefix}.flow"]
        model_params = {k: v for k, v in constrained.items() if k != f"{prefix}.flow"}
        log_density = None
        if enumeration is not None:
            inner = handlers.substitute(model_k, data=model_params) if model_params else model_k

            def log_density(values, *a, **kw):
                return enumerated_log_density(inner, enumeration, a, kw, values)

        transported = transported_model(model_k, spec, theta, sites, model_params, log_density)
        given = (None if request.init_params is None else
                 {BASE_SITE: base_points(model_k, args, sites, spec, theta, request.init_params,
                                         request.num_chains)})
        out = self.kernel.run(transported, tuple(args), {},
                              request._replace(key=run_key, trace=None, init_params=given))
        samples, stats, kernel_tuning, kernel_timing = out
        samples = {k: v for k, v in samples.items() if not k.startswith("_neutra")}
        tuning = dict(kernel_tuning or {})
        tuning.update({"vi_objective": fitted.values, "params": constrained})
        timing = {"fit": t1 - t0, **dict(kernel_timing or {})}
        state = getattr(out, "state", None)
        if state is not None:
            state.context = transported  # extend continues the kernel on it (in memory)
        return ChainOutputs(samples, stats, tuning, timing, state)

    def extend(self, model: Callable, args: tuple, kwargs: dict, *, state: Any,
               num_samples: int, key: jax.Array | None = None, progress: bool = True,
               devices: Any = None) -> Outputs:
        """``num_samples`` more draws of the kernel's chains in ``state``, in the same fitted
        flow's base space, with no new warmup (behind ``Result.extend``)."""
        transported = getattr(state, "context", None)
        if transported is None:
            raise ValueError(
                "NeuTra: this Result's chains cannot be continued: the fitted flow they run "
                "in is kept in memory only (not in saved files). Run NeuTra again (the same "
                "key fits the same flow) with more num_samples.")
        out = self.kernel.extend(transported, tuple(args), {}, state=state,
                                 num_samples=num_samples, key=key, progress=progress,
                                 devices=devices)
        samples, stats, tuning, timing = out
        samples = {k: v for k, v in samples.items() if not k.startswith("_neutra")}
        out.state.context = transported
        return ChainOutputs(samples, stats, tuning, timing, out.state)


def base_points(model: Callable, args: tuple, sites: dict, spec: FlowSpec, theta: jax.Array,
                init_params: Any, num_chains: int) -> jax.Array:
    """``init_params`` (constrained values of ``sites``, per chain or shared) as points of
    the flow's base space, ``(num_chains, D)``: each site's value unconstrained, the sites
    concatenated in order, then the fitted flow inverted. Checked first (names, shapes,
    support) as for every method."""
    shapes = {n: tuple(info.transform.forward_shape(info.shape)) for n, info in sites.items()}
    values = constrained_starts(model, args, {}, shapes, init_params, num_chains)

    def one(v):
        u = jnp.concatenate([jnp.ravel(info.transform.inv(jnp.asarray(v[n])))
                             for n, info in sites.items()])
        return spec.inverse(theta, u)[0]

    return jax.vmap(one)(values)
