"""Ready-made variational families (guides) over a model's latent sites.

A guide is a program that takes the same arguments as its model and samples every latent
site of the model, under the model's site names and supports, with its variational
parameters declared by ``numpyro.param`` (so ``ppl.init_params(guide, key, *args)`` and
``numpyro.handlers.substitute`` work, as in NumPyro's SVI).

Both families live on the model's *unconstrained* space (NumPyro's ``biject_to`` of each
site's support, as in :func:`ppl.potential`) and map back to the support, so a draw is
always valid and ``ppl.sim(guide, ...)`` returns the correct ``log q`` of the constrained
values (base density minus the log-Jacobian of the map):

- :func:`normal`: mean-field Normal, per site ``u ~ Normal(loc, scale)`` elementwise; params
  ``"guide.<site>.loc"`` and ``"guide.<site>.scale"`` (positive).
- :func:`mvn`: full-rank Normal over all unconstrained coordinates ``u ~ MVN(loc, L L^T)``
  with ``L`` lower triangular; params ``"guide.loc"`` (shape ``(D,)``) and
  ``"guide.scale_tril"`` (``(D, D)``). Each site is drawn from its conditional given the
  sites before it, so every site keeps the model's name and a proper density.
- :func:`flow`: a normalizing flow (:mod:`inference.flows`) pushing ``N(0, I_D)`` onto all
  unconstrained coordinates; param ``"guide.flow"`` (the flow's weights, one flat vector).
  The joint unconstrained value is one auxiliary sample site ``"guide.u"``; each model site
  is then a deterministic function of it (see :func:`flow`).

The model's sites are read by running it once (hidden from enclosing handlers) each time the
guide runs, so the guide follows the shapes of the arguments it is given.

Example:
    >>> import jax, numpyro, numpyro.distributions as dist, ppl
    >>> from inference.vi import guides
    >>> def model(y=None):
    ...     s = numpyro.sample("s", dist.HalfNormal(1.0))
    ...     numpyro.sample("y", dist.Normal(0.0, s), obs=y)
    >>> guide = guides.normal(model)
    >>> sorted(ppl.init_params(guide, jax.random.key(0), y=0.5))
    ['guide.s.loc', 'guide.s.scale']
"""

from __future__ import annotations

import inspect
import math
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpyro
import numpyro.distributions as dist
from numpyro import handlers
from numpyro.distributions import constraints
from numpyro.distributions.transforms import ReshapeTransform, biject_to

from ppl.errors import ModelError
from ppl.tracing import dependent_supports, model_name, site_reasons

__all__ = ["normal", "mvn", "flow", "latent_site_info", "SiteInfo", "FlowDistribution"]

#: Stan's and NumPyro's initialisation radius on the unconstrained scale.
INIT_RADIUS = 2.0


@dataclass(frozen=True)
class SiteInfo:
    """One latent site of a model as a guide sees it.

    Attributes:
        shape: the site's unconstrained shape.
        transform: NumPyro bijection from the unconstrained to the constrained value.
    """

    shape: tuple[int, ...]
    transform: Any

    @property
    def size(self) -> int:
        return math.prod(self.shape)


def _at_zero(msg: dict) -> Any:
    """Substitute latent sites by the point 0 of their unconstrained space (no randomness)."""
    if msg["type"] != "sample" or msg["is_observed"]:
        return None
    fn = msg["fn"]
    if fn.support.is_discrete:
        return fn.sample(jax.random.key(0), msg["kwargs"].get("sample_shape", ()))
    t = biject_to(fn.support)
    shape = t.inverse_shape(fn.shape(msg["kwargs"].get("sample_shape", ())))
    return t(jnp.zeros(shape))


def _subsampled(plate_site: dict | None) -> bool:
    if plate_site is None or plate_site["type"] != "plate":
        return False
    size, subsample_size = plate_site["args"]
    return subsample_size is not None and subsample_size != size


def latent_site_info(model: Callable, *args: Any, **kwargs: Any) -> OrderedDict[str, SiteInfo]:
    """The continuous latent sites of ``model(*args, **kwargs)`` in model order.

    Discrete sites marked for enumeration (``infer={"enumerate": "parallel"}``) are left
    out: the density the guide is fitted to sums them out (:mod:`inference.vi.enumerated`).

    The model runs once with each latent site at the zero of its unconstrained space, inside
    ``handlers.block`` so that enclosing handlers (an objective's, a trace's) never see it.
    A discrete latent site, a latent site inside a subsampled plate (whose guide
    parameters would need the full data size), or one whose support depends on other
    sites (:func:`ppl.tracing.dependent_supports`) is a :class:`ppl.ModelError` naming it.

    Example:
        >>> import numpyro, numpyro.distributions as dist
        >>> def model():
        ...     numpyro.sample("w", dist.Dirichlet(jax.numpy.ones(3)))
        >>> latent_site_info(model)["w"].shape
        (2,)
    """
    with handlers.block():
        with handlers.trace() as trace, handlers.seed(rng_seed=0), \
                handlers.substitute(substitute_fn=_at_zero):
            model(*args, **kwargs)
    out: OrderedDict[str, SiteInfo] = OrderedDict()
    for name, site in trace.items():
        if site["type"] != "sample" or site["is_observed"]:
            continue
        fn = site["fn"]
        if fn.support.is_discrete and (site.get("infer") or {}).get("enumerate") is not None:
            continue  # summed out of the model's density (inference.vi.enumerated)
        if fn.support.is_discrete:
            raise ModelError(
                f"guide for model {model_name(model)}: latent site '{name}' is discrete "
                f"({type(fn).__name__}); the Normal guides cover continuous sites only. "
                "Mark it infer={'enumerate': 'parallel'} to sum it out of the model's "
                "density (infer draws it afterwards), marginalise it out in the model, or "
                "write a guide that samples it (e.g. with infer={'grad': 'enum'}) and pass "
                "it as guide=..."
            )
        if any(_subsampled(trace.get(f.name)) for f in site["cond_indep_stack"]):
            raise ModelError(
                f"guide for model {model_name(model)}: latent site '{name}' is inside a "
                "subsampled plate; a guide with one parameter per element needs the full plate. "
                "Subsample only the observed sites, or write an amortised guide."
            )
        t = biject_to(fn.support)
        out[name] = SiteInfo(tuple(t.inverse_shape(jnp.shape(site["value"]))), t)
    if not out:
        raise ModelError(f"guide for model {model_name(model)}: the model has no latent sites.")
    dependent = dependent_supports(model, *args, **kwargs)
    if dependent:
        raise ModelError(
            f"guide for model {model_name(model)}: the support of latent site(s) "
            f"{list(dependent)} depends on other sites' values ("
            + site_reasons(dependent) + "). A guide maps "
            "each site's unconstrained values onto one fixed support, so it would leave out "
            "part of the posterior (silently) or put mass where the density is 0. "
            "Reparameterise so that each support is fixed (e.g. b = (1 - a) * u with "
            "u ~ Uniform(0, 1), and b a numpyro.deterministic site), or use NUTS, MALA or "
            "SMC, which follow the support.")
    return out


def _init_loc(init_loc: str, shape: tuple[int, ...]) -> Any:
    if init_loc == "zeros":
        return jnp.zeros(shape)
    # Stan's and NumPyro's rule: uniform in [-2, 2] on the unconstrained scale; the key comes
    # from whoever initialises the params (ppl.init_params).
    return lambda key: jax.random.uniform(key, shape, minval=-INIT_RADIUS, maxval=INIT_RADIUS)


def _check_options(family: str, model: Callable, init_loc: str, init_scale: float, prefix: str):
    if not callable(model):
        raise TypeError(f"guides.{family}(model): model must be a callable program, got {model!r}.")
    if init_loc not in ("uniform", "zeros"):
        raise ValueError(
            f"guides.{family}(init_loc={init_loc!r}): use 'uniform' (in [-2, 2] on the "
            "unconstrained scale, as Stan) or 'zeros'."
        )
    if not (isinstance(init_scale, (int, float)) and init_scale > 0):
        raise ValueError(f"guides.{family}(init_scale={init_scale!r}): must be a positive number.")
    if not (isinstance(prefix, str) and prefix):
        raise ValueError(f"guides.{family}(prefix={prefix!r}): must be a non-empty string.")


def _named(guide: Callable, model: Callable, family: str) -> Callable:
    guide.__name__ = guide.__qualname__ = f"{family}_guide_of_{model_name(model)}"
    try:
        guide.__signature__ = inspect.signature(model)  # same arguments as the model
    except (TypeError, ValueError):
        pass
    guide.model = model
    return guide


def _on_support(base: Any, info: SiteInfo) -> Any:
    """``base`` (unconstrained, event shape ``info.shape``) pushed onto the site's support."""
    if isinstance(info.transform, dist.transforms.IdentityTransform):
        return base
    return dist.TransformedDistribution(base, info.transform)


def normal(
    model: Callable, *, init_loc: str = "uniform", init_scale: float = 0.1, prefix: str = "guide"
) -> Callable:
    """Mean-field Normal guide on the unconstrained space of ``model``'s latent sites.

    Per latent site ``name``: ``u ~ Normal(loc, scale)`` elementwise, pushed onto the site's
    support with ``biject_to(support)``, and sampled as ``numpyro.sample(name, ...)``. Params:
    ``f"{prefix}.{name}.loc"`` (initialised uniform in ``[-2, 2]``, or ``"zeros"``) and
    ``f"{prefix}.{name}.scale"`` (constraint ``softplus_positive``, initialised ``init_scale``).
    The guide takes the same arguments as the model and returns the dict of drawn values.

    Example:
        >>> import jax, jax.numpy as jnp, numpyro, numpyro.distributions as dist
        >>> def model(y=None):
        ...     s = numpyro.sample("s", dist.HalfNormal(1.0))
        ...     numpyro.sample("y", dist.Normal(0.0, s), obs=y)
        >>> guide = normal(model, init_loc="zeros")
        >>> tr = numpyro.handlers.trace(numpyro.handlers.seed(guide, 0)).get_trace(y=0.5)
        >>> bool(tr["s"]["value"] > 0), tr["guide.s.scale"]["value"].shape
        (True, ())
    """
    _check_options("normal", model, init_loc, init_scale, prefix)

    def guide(*args: Any, **kwargs: Any) -> dict[str, jax.Array]:
        out = {}
        for name, info in latent_site_info(model, *args, **kwargs).items():
            loc = numpyro.param(f"{prefix}.{name}.loc", _init_loc(init_loc, info.shape))
            scale = numpyro.param(f"{prefix}.{name}.scale", jnp.full(info.shape, float(init_scale)),
                                  constraint=constraints.softplus_positive)
            base = dist.Normal(loc, scale).to_event(len(info.shape))
            out[name] = numpyro.sample(name, _on_support(base, info))
        return out

    return _named(guide, model, "normal")


def mvn(
    model: Callable, *, init_loc: str = "uniform", init_scale: float = 0.1, prefix: str = "guide"
) -> Callable:
    """Full-rank Normal guide: ``u ~ MVN(loc, L L^T)`` over all unconstrained coordinates.

    ``u`` stacks the sites' flattened unconstrained values in model order (``D`` in all).
    Params: ``f"{prefix}.loc"`` (shape ``(D,)``) and ``f"{prefix}.scale_tril"`` (``(D, D)``,
    lower triangular with a positive diagonal, NumPyro's ``scaled_unit_lower_cholesky``,
    initialised ``init_scale * I``). Writing ``u = loc + L eps``, site ``b`` is drawn from its
    exact conditional given the earlier sites, ``MVN(loc_b + L[b, <b] eps_<b, L[b, b])``, so
    each site has the model's name and support and ``log q`` is the joint density.

    Example:
        >>> import jax, jax.numpy as jnp, numpyro, numpyro.distributions as dist, ppl
        >>> def model():
        ...     numpyro.sample("a", dist.Normal(0.0, 1.0))
        ...     numpyro.sample("b", dist.Exponential(1.0).expand([2]))
        >>> guide = mvn(model)
        >>> params = ppl.constrain_params(guide, ppl.init_params(guide, jax.random.key(0)))
        >>> params["guide.loc"].shape, params["guide.scale_tril"].shape
        ((3,), (3, 3))
    """
    _check_options("mvn", model, init_loc, init_scale, prefix)

    def guide(*args: Any, **kwargs: Any) -> dict[str, jax.Array]:
        sites = latent_site_info(model, *args, **kwargs)
        dim = sum(info.size for info in sites.values())
        loc = numpyro.param(f"{prefix}.loc", _init_loc(init_loc, (dim,)))
        scale_tril = numpyro.param(f"{prefix}.scale_tril", float(init_scale) * jnp.eye(dim),
                                   constraint=constraints.scaled_unit_lower_cholesky)
        out, eps, start = {}, jnp.zeros((0,), jnp.result_type(loc)), 0
        for name, info in sites.items():
            stop = start + info.size
            block = scale_tril[start:stop, start:stop]
            cond_loc = loc[start:stop] + scale_tril[start:stop, :start] @ eps
            base = dist.MultivariateNormal(cond_loc, scale_tril=block)
            flat_to_site = ReshapeTransform(info.shape, (info.size,))
            if isinstance(info.transform, dist.transforms.IdentityTransform):
                fn = dist.TransformedDistribution(base, flat_to_site)
            else:
                fn = dist.TransformedDistribution(base, [flat_to_site, info.transform])
            out[name] = value = numpyro.sample(name, fn)
            u = jnp.reshape(info.transform.inv(value), (info.size,))
            eps_b = jax.scipy.linalg.solve_triangular(block, u - cond_loc, lower=True)
            eps, start = jnp.concatenate([eps, eps_b]), stop
        return out

    return _named(guide, model, "mvn")


class FlowDistribution(dist.Distribution):
    """``T_theta`` pushing ``N(0, I_D)`` forward: a distribution over ``R^D``.

    ``sample`` is reparameterised (``x = T(eps)``, ``eps ~ N(0, I)``), so the Reparam
    strategy applies. Densities:

    - **its own draws** are scored with the forward pass, ``log N(eps) - log |det dT/deps|``,
      computed with the draw: in :func:`ppl.sim` through the language's ``__ppl_reparam__``
      protocol (the random choice is ``eps``; ``x`` and its log density are pushed from it),
      under NumPyro's handlers through ``sample_with_intermediates`` (``log_prob(x,
      intermediates)``, as NumPyro's ``TransformedDistribution``), and ``log_prob(x)`` of
      the very array that ``sample`` returned (same object) reuses it. No inversion, so a
      spline flow whose float32 inverse is inaccurate still gets the right density of its
      draws.
    - **any other value** (``ppl.density`` at given values, RWS wake-q, forward KL, a value
      from elsewhere) inverts the flow: ``log N(T^{-1}(x)) + log |det J_{T^{-1}}(x)|``.

    Data field: ``theta``; the :class:`inference.flows.FlowSpec` is static.

    Example:
        >>> import jax, jax.numpy as jnp
        >>> from inference.flows import FlowSpec
        >>> spec = FlowSpec("affine_coupling", dim=2, layers=1, width=4)
        >>> d = FlowDistribution(spec.init(jax.random.key(0)), spec)
        >>> d.sample(jax.random.key(1), (3,)).shape, round(float(d.log_prob(jnp.zeros(2))), 4)
        ((3, 2), -1.8379)
        >>> x, (log_q, eps) = d.sample_with_intermediates(jax.random.key(1))  # forward-scored
        >>> bool(jnp.isclose(log_q, d.log_prob(x + 0.0), atol=1e-5))  # x + 0.0: inverted
        True
    """

    arg_constraints: dict = {}
    support = constraints.real_vector
    reparametrized_params: list = []
    pytree_data_fields = ("theta",)
    pytree_aux_fields = ("spec",)

    def __init__(self, theta: jax.Array, spec: Any, *, validate_args: bool | None = None):
        self.theta, self.spec = theta, spec
        self._own: tuple | None = None  # (x, log_q) of the last draw, matched by identity
        super().__init__(batch_shape=(), event_shape=(spec.dim,), validate_args=validate_args)

    def _noise(self) -> dist.Distribution:
        """``N(0, I_D)`` in the dtype of the weights: the distribution of ``eps``."""
        zeros = jnp.zeros((self.spec.dim,), jnp.result_type(self.theta))
        return dist.Normal(zeros, 1.0).to_event(1)

    def _push(self, eps: jax.Array) -> tuple[jax.Array, jax.Array]:
        """``(T(eps), log N(eps) - log |det dT/deps|)`` for noise of shape ``(..., D)``."""
        flat = eps.reshape((-1, self.spec.dim))
        x, log_det = jax.vmap(lambda e: self.spec.forward(self.theta, e))(flat)
        log_q = self._noise().log_prob(flat) - log_det
        return x.reshape(eps.shape), log_q.reshape(eps.shape[:-1])

    def sample_with_intermediates(self, key: jax.Array, sample_shape: tuple = ()) -> tuple:
        """``(x, [log q(x), eps])``: a draw, its forward-pass log density and its noise
        (NumPyro's protocol: :meth:`log_prob` reads them back)."""
        eps = self._noise().sample(key, tuple(sample_shape))
        x, log_q = self._push(eps)
        self._own = (x, log_q)
        return x, [log_q, eps]

    def sample(self, key: jax.Array, sample_shape: tuple = ()) -> jax.Array:
        return self.sample_with_intermediates(key, sample_shape)[0]

    def __ppl_reparam__(self) -> tuple[dist.Distribution, Callable]:
        """For :func:`ppl.sim`: the noise to draw as the random choice, and ``push(eps) ->
        (x, [log q(x), eps])``, whose intermediates :meth:`log_prob` reads."""

        def push(eps: jax.Array) -> tuple[jax.Array, list]:
            x, log_q = self._push(eps)
            return x, [log_q, eps]

        return self._noise(), push

    def log_prob(self, value: jax.Array, intermediates: list | None = None) -> jax.Array:
        if intermediates:  # a draw of this distribution, scored with its forward pass
            return intermediates[0]
        own = getattr(self, "_own", None)  # absent on copies rebuilt from the pytree
        if own is not None and value is own[0]:
            return own[1]
        value = jnp.asarray(value)
        flat = value.reshape((-1, self.spec.dim))
        lp = jax.vmap(lambda x: self.spec.log_prob(self.theta, x))(flat)
        return lp.reshape(value.shape[:-1])


class _Pushed(dist.Distribution):
    """A site that is a deterministic function of an earlier site: always ``v``, with log
    density ``log_density`` (the log-Jacobian term of the map), whatever value it is scored
    at (the value is ``v`` by construction: the guide computes it from the earlier site)."""

    arg_constraints = {"v": constraints.real, "log_density": constraints.real}
    reparametrized_params = ["v", "log_density"]
    pytree_data_fields = ("v", "log_density")
    pytree_aux_fields = ("_support",)

    def __init__(self, v: jax.Array, log_density: jax.Array, support: Any, event_dim: int):
        self.v, self.log_density, self._support = v, log_density, support
        shape = jnp.shape(v)
        super().__init__(batch_shape=(), event_shape=shape[len(shape) - event_dim:] if event_dim
                         else (), validate_args=False)

    @constraints.dependent_property(is_discrete=False)
    def support(self):
        return self._support

    def sample(self, key: jax.Array, sample_shape: tuple = ()) -> jax.Array:
        return jnp.broadcast_to(self.v, tuple(sample_shape) + jnp.shape(self.v))

    def log_prob(self, value: jax.Array) -> jax.Array:
        lead = jnp.shape(value)[: jnp.ndim(value) - jnp.ndim(self.v)]
        return jnp.broadcast_to(self.log_density, lead)


def flow(
    model: Callable,
    kind: str = "affine_coupling",
    *,
    layers: int = 4,
    width: int = 32,
    depth: int = 1,
    knots: int = 8,
    interval: float = 5.0,
    activation: str = "tanh",
    permutation: str = "reverse",
    seed: int = 0,
    prefix: str = "guide",
) -> Callable:
    """Normalizing-flow guide over all of ``model``'s unconstrained latent coordinates.

    ``u = T_theta(eps)``, ``eps ~ N(0, I_D)``, with ``T`` a flow of ``kind`` (see
    :mod:`inference.flows`: ``"affine_coupling"`` (RealNVP), ``"spline_coupling"``
    (rational-quadratic splines), ``"iaf"``, ``"maf"``). ``u`` stacks the sites' flattened
    unconstrained values in model order (as in :func:`mvn`).

    Sites: ``f"{prefix}.u"`` samples ``u`` from :class:`FlowDistribution` (reparameterised;
    its ``log_prob`` is the flow's exact density), then each model site ``name`` is sampled
    as the deterministic value ``biject_to(support)(u_name)`` whose log density is
    ``-log |det J|`` of that map, so ``ppl.sim(guide)`` gives the correct ``log q`` of the
    constrained values and ``ppl.density(guide, values)`` works when ``values`` holds ``u``
    (as every value drawn from the guide does). The guide's own draws are scored with the
    flow's forward pass (no inversion, see :class:`FlowDistribution`); ``ppl.density`` at
    given values inverts the flow. Param: ``f"{prefix}.flow"``, the flow's
    weights as one flat vector, initialised so that the flow is the identity (the guide
    starts at ``N(0, I)`` on the unconstrained space).

    Args:
        model: the model whose latent sites the guide covers (continuous ones only).
        kind: the flow kind, one of :data:`inference.flows.KINDS`.
        layers, width, depth: flow layers; hidden units and hidden layers per conditioner.
        knots, interval: the splines' knots and half-width (``"spline_coupling"``).
        activation: the conditioners' activation.
        permutation, seed: the reordering between layers (``"reverse"`` or ``"random"``,
            fixed by ``seed``); see :class:`inference.flows.FlowSpec`.
        prefix: prefix of the param and auxiliary site names.

    Example:
        >>> import jax, jax.numpy as jnp, numpyro, numpyro.distributions as dist, ppl
        >>> def model(y=None):
        ...     s = numpyro.sample("s", dist.HalfNormal(1.0))
        ...     numpyro.sample("y", dist.Normal(0.0, s), obs=y)
        >>> guide = flow(model, kind="iaf", layers=2, width=8)
        >>> params = ppl.init_params(guide, jax.random.key(0), y=0.5)
        >>> sorted(params), params["guide.flow"].ndim
        (['guide.flow'], 1)
        >>> tr = numpyro.handlers.trace(numpyro.handlers.seed(ppl.with_params(guide, params), 1)
        ...                             ).get_trace(y=0.5)
        >>> bool(tr["s"]["value"] > 0), tr["guide.u"]["value"].shape
        (True, (1,))
    """
    if not callable(model):
        raise TypeError(f"guides.flow(model): model must be a callable program, got {model!r}.")
    from inference.flows import FlowSpec, check_kind

    kind = check_kind(kind, "guides.flow")
    if not (isinstance(prefix, str) and prefix):
        raise ValueError(f"guides.flow(prefix={prefix!r}): must be a non-empty string.")
    options = dict(layers=layers, width=width, depth=depth, knots=knots, interval=interval,
                   activation=activation, permutation=permutation, seed=seed)
    FlowSpec(kind, 2, **options)  # check the options now, not at the first call
    specs: dict[int, Any] = {}  # by dimension; only specs built outside a trace are kept

    def spec_for(dim: int) -> Any:
        if dim in specs:
            return specs[dim]
        spec = FlowSpec(kind, dim, **options)
        # Built under jax.jit, a spec holds that trace's values (its permutations, and the
        # weights' unravel closure, which `concrete` does not see): keep it for that trace only.
        if spec.concrete and not isinstance(jnp.zeros(()), jax.core.Tracer):
            specs[dim] = spec
        return spec

    def guide(*args: Any, **kwargs: Any) -> dict[str, jax.Array]:
        sites = latent_site_info(model, *args, **kwargs)
        spec = spec_for(sum(info.size for info in sites.values()))
        theta = numpyro.param(f"{prefix}.flow", spec.init)
        u = numpyro.sample(f"{prefix}.u", FlowDistribution(theta, spec),
                           infer={"is_auxiliary": True})
        out, start = {}, 0
        for name, info in sites.items():
            stop = start + info.size
            u_site = jnp.reshape(u[start:stop], info.shape)
            t = info.transform
            value = t(u_site)
            log_det = jnp.sum(t.log_abs_det_jacobian(u_site, value))
            out[name] = numpyro.sample(name, _Pushed(value, -log_det, t.codomain,
                                                     jnp.ndim(value)))
            start = stop
        return out

    guide.kind = kind
    return _named(guide, model, f"flow_{kind}")
