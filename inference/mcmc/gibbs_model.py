"""The model side of :mod:`inference.mcmc.gibbs`: latent sites, their spaces and log densities.

:class:`_Model` wraps a NumPyro model with its arguments: it traces it once, lists its latent
sites (continuous ones on the unconstrained scale of NumPyro's ``biject_to`` of the support,
discrete ones as integers), and evaluates the log joint over such a mixed position and each
site's unsummed log density term (what enumeration attributes to a plate's elements).
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
from numpyro import handlers
from numpyro.distributions.transforms import biject_to
from numpyro.infer import util as numpyro_util
from numpyro.infer.initialization import init_to_uniform

from ppl.errors import ModelError
from ppl.tracing import (dependent_supports, latent_sites, model_name, site_reasons,
                         trace_model)

__all__: list[str] = []


# ----------------------------------------------------------------------------------------
# The model: sites, spaces, log densities
# ----------------------------------------------------------------------------------------
class _Site(NamedTuple):
    name: str
    discrete: bool
    shape: tuple          # value shape (constrained for continuous sites)
    batch_shape: tuple
    event_shape: tuple
    transform: Any        # continuous: unconstrained -> constrained
    support: Any          # the support constraint
    fn: Any               # the distribution at the traced values (for enumerate_support)


class _Model:
    """A model with its arguments: latent sites, constrain maps, joint and per-site log densities."""

    def __init__(self, model: Callable, args: tuple, kwargs: dict):
        self.model, self.args, self.kwargs = model, tuple(args), dict(kwargs)
        self.trace = trace_model(model, *args, **kwargs)
        self.sites: OrderedDict[str, _Site] = OrderedDict()
        for name, site in latent_sites(self.trace).items():
            fn = site["fn"]
            discrete = bool(fn.support.is_discrete)
            self.sites[name] = _Site(
                name, discrete, tuple(jnp.shape(site["value"])), tuple(fn.batch_shape),
                tuple(fn.event_shape), None if discrete else biject_to(fn.support), fn.support, fn,
            )
        dependent = dependent_supports(model, *args, **kwargs)
        if dependent:
            # The positions map onto each site's support as traced: a support that moves
            # with other sites would be truncated without a word.
            raise ModelError(
                f"Gibbs: model {self.name}: the support of latent site(s) {list(dependent)} "
                "depends on other sites' values ("
                + site_reasons(dependent) + "); Gibbs maps "
                "each site's unconstrained position onto one fixed support, which would "
                "leave out part of the posterior. Reparameterise so that each support is "
                "fixed (e.g. b = (1 - a) * u with u ~ Uniform(0, 1)), or use NUTS, MALA or "
                "SMC (with the discrete sites enumerated), which follow the support.")

    @property
    def name(self) -> str:
        return model_name(self.model)

    def values(self, position: dict) -> dict:
        """Constrained values of the latent sites."""
        return {n: (position[n] if s.discrete else s.transform(position[n]))
                for n, s in self.sites.items()}

    def log_joint(self, position: dict) -> jax.Array:
        """Log joint over the mixed position (unconstrained continuous, with log-Jacobians)."""
        values = self.values(position)
        lp, _ = numpyro_util.log_density(self.model, self.args, self.kwargs, values)
        for n, s in self.sites.items():
            if not s.discrete:
                lp = lp + jnp.sum(s.transform.log_abs_det_jacobian(position[n], values[n]))
        return lp

    def site_terms(self, values: dict) -> dict[str, jax.Array]:
        """Each sample site's (plate-scaled, unsummed) log density at constrained ``values``."""
        model = handlers.substitute(handlers.seed(self.model, rng_seed=0), data=values)
        trace = handlers.trace(model).get_trace(*self.args, **self.kwargs)
        out = {}
        for name, site in trace.items():
            if site["type"] == "sample":
                term = site["fn"].log_prob(site["value"])
                if site.get("scale") is not None:
                    term = site["scale"] * term
                out[name] = term
        return out

    def constrain(self, position: dict) -> dict:
        """Constrained latent values plus the model's deterministic sites."""
        values = self.values(position)
        model = handlers.substitute(handlers.seed(self.model, rng_seed=0), data=values)
        trace = handlers.trace(model).get_trace(*self.args, **self.kwargs)
        values.update({n: s["value"] for n, s in trace.items() if s["type"] == "deterministic"})
        return values

    def draw_position(self, key: jax.Array, radius: float = 2.0) -> dict:
        """Continuous sites uniform in ``[-radius, radius]`` (unconstrained), discrete ones
        from the prior given those (NumPyro's ``init_to_uniform``)."""
        model = handlers.substitute(handlers.seed(self.model, rng_seed=key),
                                    substitute_fn=init_to_uniform(radius=radius))
        trace = handlers.trace(model).get_trace(*self.args, **self.kwargs)
        return self.position_from_values({n: trace[n]["value"] for n in self.sites})

    def position_from_values(self, values: dict) -> dict:
        return {n: (jnp.asarray(values[n]).astype(jnp.int32) if s.discrete
                    else jnp.asarray(s.transform.inv(jnp.asarray(values[n])), jnp.result_type(float)))
                for n, s in self.sites.items()}

    def check_position(self, position: Any) -> dict:
        if not isinstance(position, dict):
            raise TypeError(f"gibbs: the position must be a dict {{site: value}}; got "
                            f"{type(position).__name__}.")
        missing = [n for n in self.sites if n not in position]
        extra = [n for n in position if n not in self.sites]
        if missing or extra:
            raise ValueError(
                f"gibbs: the position of model {self.name} must hold exactly its latent sites "
                f"{list(self.sites)}; missing {missing}, unknown {extra}."
            )
        out = {}
        for n, s in self.sites.items():
            v = jnp.asarray(position[n])
            want = s.shape if s.discrete else tuple(s.transform.inverse_shape(s.shape))
            if tuple(v.shape) != want:
                raise ValueError(f"gibbs: position['{n}'] has shape {tuple(v.shape)}; expected {want}"
                                 + ("" if s.discrete else " (unconstrained)") + ".")
            out[n] = v.astype(jnp.int32) if s.discrete else v.astype(jnp.result_type(float))
        return out
