"""What :mod:`inference.chains` runs chains on: a model seen as a *chain target*.

:func:`inference.chains.run_chains` drives any MCMC method the same way (one compiled
program, chunks, Ctrl-C, checkpoints, ``extend``). What differs between methods is the space
the chains move in and how a starting point is found; a chain target says that:

* ``model``, ``sites`` (``{site: shape}`` of a position) and ``dtypes`` (``{site: dtype}``);
* ``with_data(args, kwargs)``: the same target on other data (the program's arguments);
* ``sampler(method, num_warmup, num_samples)``: ``(Sampler, check)``, the method's
  :class:`inference.chains.Sampler` and the function initial points are checked with;
* ``to_constrained(position)``: a position's constrained values (and deterministic sites);
* ``search(check, key, num_chains, tries, radius, given, use_given)``: the first valid
  starting point of each chain (an :class:`inference.initialization.InitialSearch`; with
  ``use_given`` the given point is the only one tried);
* ``starts(init_params, num_chains)``: the user's ``init_params`` as positions (checked);
* ``raise_not_found(key, num_chains, tries, radius, given, found)``: the error when some
  chain found no valid point; ``uses_gradient_start``: whether a sampler's
  ``init_from_gradient`` may take the search's log density and gradient;
* ``program_key``: what the compiled programs depend on besides the model, the method and
  the data's shapes (part of their cache key; ``None`` if nothing).

:class:`PotentialTarget` is the usual one: every latent site continuous, unconstrained
(:class:`ppl.Potential`), for NUTS and the Langevin methods. Gibbs brings its own, whose
positions also hold discrete sites (:mod:`inference.mcmc.gibbs_chains`).

Example:
    >>> import jax, numpyro.distributions as dist, ppl
    >>> def model():
    ...     ppl.sample("x", dist.HalfNormal(1.0))
    >>> target = PotentialTarget(ppl.potential(model))
    >>> target.sites, float(target.to_constrained({"x": 0.0})["x"])
    ({'x': ()}, 1.0)
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

import jax
import jax.numpy as jnp

from inference.initialization import (InitialSearch, raise_no_valid_initial, search_initial,
                                      uniform_candidates)
from inference.starting_points import raise_nonfinite_start, unconstrained_starts
from ppl.potential import Potential

__all__ = ["PotentialTarget", "with_given"]


def with_given(candidates: dict, given: dict, use_given: jax.Array) -> dict:
    """``candidates`` (``(chains, tries, ...)`` per site) with try 0 replaced by ``given``
    (``(chains, ...)``) where ``use_given``."""
    return jax.tree.map(
        lambda c, g: c.at[:, 0].set(jnp.where(use_given, g.astype(c.dtype), c[:, 0])),
        candidates, given)


@dataclasses.dataclass(frozen=True)
class PotentialTarget:
    """A model's continuous latent sites on the unconstrained scale (a :class:`ppl.Potential`).

    ``stochastic``: the method differentiates minibatches (``stochastic_gradients``): its
    sampler gets ``pot.logdensity_estimate`` and initial points are checked on one fixed
    minibatch.
    """

    pot: Potential
    stochastic: bool = False

    @property
    def model(self) -> Callable:
        return self.pot.model

    @property
    def sites(self) -> dict:
        return self.pot.sites

    @property
    def dtypes(self) -> dict:
        return {n: jnp.result_type(float) for n in self.pot.sites}

    @property
    def uses_gradient_start(self) -> bool:
        return not self.stochastic

    @property
    def program_key(self) -> Any:
        """What the compiled programs depend on beyond the model, method and data shapes
        (none here; a target that bakes values into them returns those)."""
        return None

    def with_data(self, args: tuple, kwargs: dict) -> "PotentialTarget":
        pot = dataclasses.replace(self.pot, args=tuple(args), kwargs=dict(kwargs))
        return dataclasses.replace(self, pot=pot)

    def sampler(self, method: Any, num_warmup: int, num_samples: int) -> tuple[Any, Callable]:
        p = self.pot
        if self.stochastic:
            fixed = jax.random.key(0)
            return (method.sampler(p.logdensity_estimate, num_warmup, num_samples),
                    lambda x: p.logdensity_estimate(x, fixed))
        return method.sampler(p.logdensity_fn, num_warmup, num_samples), p.logdensity_fn

    def to_constrained(self, position: dict) -> dict:
        return self.pot.to_constrained(position)

    def search(self, check: Callable, key: jax.Array, num_chains: int, tries: int,
               radius: float, given: dict, use_given: jax.Array) -> InitialSearch:
        candidates = uniform_candidates(key, self.sites, num_chains, tries, radius)
        candidates = with_given(candidates, given, use_given)
        return search_initial(check, candidates, jnp.where(use_given, 1, tries))

    def starts(self, init_params: Any, num_chains: int) -> dict:
        return unconstrained_starts(self.pot, init_params, num_chains)

    def raise_not_found(self, key: jax.Array, num_chains: int, tries: int, radius: float,
                        given: dict | None, found: Any) -> None:
        if given is not None:
            raise_nonfinite_start(self.pot, given, found)
        raise_no_valid_initial(
            self.pot, uniform_candidates(key, self.sites, num_chains, tries, radius), found,
            radius)
