"""A model's log density over an unconstrained space: what every gradient-based kernel consumes.

Built on NumPyro's own transforms (``biject_to`` of each site's support, with the
log-Jacobian terms NumPyro adds), not rewritten.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

import jax
import jax.numpy as jnp
from numpyro import handlers
from numpyro.distributions.transforms import biject_to
from numpyro.infer import util as numpyro_util

from ppl.density import site_log_densities
from ppl.enumeration import Enumeration, enumeration_of, unmarked_discrete_sites, unmarked_error
from ppl.errors import ModelError
from ppl.tracing import discrete_latent_sites, latent_sites, model_name, trace_model

Position = dict[str, jax.Array]


@dataclass(frozen=True)
class Potential:
    """A model's unnormalised log density over unconstrained latent values.

    Attributes:
        model, args, kwargs: the model and the arguments it is conditioned on.
        sites: latent site name -> unconstrained shape, in model order.
        transforms: latent site name -> NumPyro bijection from unconstrained to constrained.
        enumeration: for a model with discrete sites marked ``infer={"enumerate":
            "parallel"}``, how they are summed out of the density (they are not in
            ``sites``: positions hold the continuous sites only); else ``None``.

    Positions are dicts ``{site name: unconstrained array}`` (pytrees, as BlackJAX
    expects); :meth:`ravel` / :meth:`unravel` convert to and from one flat vector.

    Example:
        >>> import jax, numpyro.distributions as dist, ppl
        >>> def model(y=None):
        ...     s = ppl.sample("s", dist.HalfNormal(1.0))
        ...     ppl.sample("y", dist.Normal(0.0, s), obs=y)
        >>> pot = ppl.potential(model, y=0.5)
        >>> x = pot.init_position(jax.random.key(0))
        >>> bool(jax.numpy.isfinite(pot.logdensity_fn(x)))
        True
        >>> bool(pot.to_constrained(x)["s"] > 0)
        True
    """

    model: Callable
    args: tuple
    kwargs: dict
    sites: dict[str, tuple[int, ...]]
    transforms: dict[str, Any] = field(repr=False)
    _prototype: Position = field(repr=False)
    enumeration: Enumeration | None = None

    # -- densities -------------------------------------------------------------------
    def logdensity_fn(self, position: Position) -> jax.Array:
        """Log joint density at an unconstrained position, including log-Jacobian terms."""
        self.check_position(position)
        if self.enumeration is not None:
            return self.enumeration.log_density(self.model, self.args, self.kwargs, position)
        return -numpyro_util.potential_energy(
            self.model, self.args, self.kwargs, position, enum=False
        )

    def logdensity_estimate(self, position: Position, key: jax.Array) -> jax.Array:
        """:meth:`logdensity_fn` with each subsampled plate's minibatch drawn from ``key``.

        For a model whose data plate is ``numpyro.plate("data", N, subsample_size=B)``
        (data indexed by the plate's indices) this is an unbiased estimate of the full log
        density: ``B`` distinct indices, the plate's terms scaled by ``N / B``. What
        stochastic-gradient samplers differentiate. Without subsampling it equals
        :meth:`logdensity_fn`.
        """
        self.check_position(position)
        if self.enumeration is not None:
            return self.enumeration.log_density(handlers.seed(self.model, key), self.args,
                                                self.kwargs, position)
        return -numpyro_util.potential_energy(
            handlers.seed(self.model, key), self.args, self.kwargs, position, enum=False
        )

    def check_position(self, position: Position) -> None:
        """Raise a :class:`ModelError` unless ``position`` has exactly the model's latent sites
        with their unconstrained shapes (a shape check only: works on tracers)."""
        if not isinstance(position, dict):
            raise ModelError(
                f"model {model_name(self.model)}: a position must be a dict {{site: unconstrained "
                f"value}} with sites {self.sites}; got {type(position).__name__}."
            )
        missing = [n for n in self.sites if n not in position]
        extra = [n for n in position if n not in self.sites]
        wrong = [f"'{n}' has shape {tuple(jnp.shape(position[n]))}, expected {shape}"
                 for n, shape in self.sites.items()
                 if n in position and tuple(jnp.shape(position[n])) != shape]
        if missing or extra or wrong:
            parts = ([f"missing site(s) {missing}"] if missing else []) + \
                    ([f"unknown site(s) {extra}"] if extra else []) + wrong
            raise ModelError(
                f"model {model_name(self.model)}: position does not match the model's latent "
                f"sites {self.sites} (unconstrained shapes): " + "; ".join(parts) + "."
            )

    def flat_logdensity_fn(self, flat_position: jax.Array) -> jax.Array:
        """:meth:`logdensity_fn` over a flat vector (see :meth:`ravel`)."""
        return self.logdensity_fn(self.unravel(flat_position))

    # -- spaces ----------------------------------------------------------------------
    def to_constrained(self, position: Position) -> dict[str, jax.Array]:
        """Constrained values of all latent and deterministic sites at ``position``.

        A subsampled plate runs on one fixed minibatch here (its indices drawn from a fixed
        key), so deterministic sites inside it are computed on that minibatch. Enumerated
        discrete sites are left out (deterministic sites that read them see a prior draw:
        ``inference.infer`` redraws both from their exact conditionals after sampling).
        """
        return numpyro_util.constrain_fn(
            handlers.seed(self.model, 0), self.args, self.kwargs, position,
            return_deterministic=True,
        )

    def to_unconstrained(self, values: dict[str, Any]) -> Position:
        """Inverse of :meth:`to_constrained` for the latent sites (deterministic ones ignored).

        The model runs at ``values``, so a support that depends on other sites (``b ~
        Uniform(0, 1 - a)``) is inverted at those values, as :meth:`to_constrained` maps it.
        """
        latent = {name: jnp.asarray(values[name]) for name in self.sites}
        return numpyro_util.unconstrain_fn(handlers.seed(self.model, 0), self.args,
                                           self.kwargs, latent)

    def ravel(self, position: Position) -> jax.Array:
        """Flatten a position into one vector, sites in model order."""
        return jnp.concatenate([jnp.ravel(position[name]) for name in self.sites]) if self.sites else jnp.zeros(0)

    def unravel(self, flat_position: jax.Array) -> Position:
        """Inverse of :meth:`ravel` (sites in model order)."""
        out, start = {}, 0
        for name in self.sites:
            proto = self._prototype[name]
            size = int(jnp.size(proto))
            out[name] = jnp.reshape(flat_position[start:start + size], jnp.shape(proto)).astype(
                jnp.result_type(proto))
            start += size
        return out

    @property
    def dimension(self) -> int:
        """Number of unconstrained scalars."""
        return sum(int(jnp.size(v)) for v in self._prototype.values())

    # -- initial points ----------------------------------------------------------------
    def init_position(self, key: jax.Array, radius: float = 2.0) -> Position:
        """A random unconstrained position, uniform in ``[-radius, radius]`` per coordinate.

        This is Stan's and NumPyro's default initialisation (``init_to_uniform``).
        """
        keys = jax.random.split(key, max(len(self.sites), 1))
        return {
            name: jax.random.uniform(k, shape, minval=-radius, maxval=radius)
            for k, (name, shape) in zip(keys, self.sites.items())
        }

    def nonfinite_sites(self, position: Position) -> list[str]:
        """Names of the sites whose log density (or log-Jacobian) is not finite at ``position``.

        Runs eagerly on one position; meant for error messages.
        """
        values = self.to_constrained(position)
        bad = [name for name, v in site_log_densities(self.model, values, *self.args, **self.kwargs).items()
               if not bool(jnp.isfinite(v))]
        for name, t in self.transforms.items():
            jac = jnp.sum(t.log_abs_det_jacobian(position[name], values[name]))
            if not bool(jnp.isfinite(jac)) and name not in bad:
                bad.append(name)
        grads = jax.grad(self.logdensity_fn)(position)
        for name, g in grads.items():
            if not bool(jnp.all(jnp.isfinite(g))) and name not in bad:
                bad.append(f"{name} (gradient)")
        return bad


def potential(model: Callable, *args: Any, **kwargs: Any) -> Potential:
    """The log density of ``model(*args, **kwargs)`` over its unconstrained latent space.

    Discrete latent sites marked ``infer={"enumerate": "parallel"}`` (or a model wrapped in
    ``numpyro.contrib.funsor.config_enumerate``) are summed out exactly with NumPyro's enumeration
    (parallel over plates, the forward algorithm through ``numpyro.contrib.control_flow.scan``);
    any other discrete latent site is a :class:`ModelError` naming it (samplers that need
    gradients cannot move it).

    Example:
        >>> import jax, numpyro.distributions as dist, ppl
        >>> def model(y=None):
        ...     mu = ppl.sample("mu", dist.Normal(0.0, 1.0))
        ...     ppl.sample("y", dist.Normal(mu, 1.0), obs=y)
        >>> pot = ppl.potential(model, y=1.0)
        >>> round(float(pot.logdensity_fn({"mu": jax.numpy.array(0.0)})), 4)
        -2.3379
    """
    return potential_from_trace(model, args, kwargs, trace_model(model, *args, **kwargs))


def potential_from_trace(model: Callable, args: tuple, kwargs: dict, trace: dict) -> Potential:
    """:func:`potential` from a trace of ``model(*args, **kwargs)`` already taken with
    :func:`ppl.tracing.trace_model` (saves running the model a second time).

    Example:
        >>> import numpyro.distributions as dist, ppl
        >>> from ppl.tracing import trace_model
        >>> def model():
        ...     ppl.sample("x", dist.Normal(0.0, 1.0))
        >>> potential_from_trace(model, (), {}, trace_model(model)).sites
        {'x': ()}
    """
    unmarked = unmarked_discrete_sites(trace)
    if unmarked:
        raise unmarked_error(model, trace, unmarked, "an unconstrained potential")
    enumeration = enumeration_of(model, tuple(args), dict(kwargs), trace)
    enumerated = enumeration.sites if enumeration is not None else ()
    discrete = [n for n in discrete_latent_sites(trace) if n not in enumerated]
    if discrete:
        raise ModelError(
            f"model {model_name(model)} has discrete latent site(s) {discrete} with an "
            "unbounded support; an unconstrained potential needs every latent site to be "
            "continuous or enumerable. Marginalise the site out in the model or use a method "
            "that handles discrete sites."
        )
    transforms, prototype, shapes = {}, {}, {}
    for name, site in latent_sites(trace).items():
        if name in enumerated:
            continue
        t = biject_to(site["fn"].support)
        u = jnp.asarray(t.inv(site["value"]), dtype=jnp.result_type(float))
        transforms[name], prototype[name], shapes[name] = t, u, tuple(u.shape)
    return Potential(model, tuple(args), dict(kwargs), shapes, transforms, prototype, enumeration)
