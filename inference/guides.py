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

The model's sites are read by running it once (hidden from enclosing handlers) each time the
guide runs, so the guide follows the shapes of the arguments it is given.

Example:
    >>> import jax, numpyro, numpyro.distributions as dist, ppl
    >>> from inference import guides
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
from ppl.tracing import model_name

__all__ = ["normal", "mvn", "latent_site_info", "SiteInfo"]

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

    The model runs once with each latent site at the zero of its unconstrained space, inside
    ``handlers.block`` so that enclosing handlers (an objective's, a trace's) never see it.
    A discrete latent site, or a latent site inside a subsampled plate (whose guide
    parameters would need the full data size), is a :class:`ppl.ModelError` naming it.

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
        if fn.support.is_discrete:
            raise ModelError(
                f"guide for model {model_name(model)}: latent site '{name}' is discrete "
                f"({type(fn).__name__}); the Normal guides cover continuous sites only. "
                "Marginalise it out in the model, or write a guide that samples it (e.g. with "
                "infer={'grad': 'enum'}) and pass it as guide=..."
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
