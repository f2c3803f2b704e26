"""Gibbs chains run like every MCMC method's: the chain target of :class:`~inference.mcmc.gibbs.Gibbs`.

:func:`inference.chains.run_chains` runs a method's chains in chunks from the host (progress
bar, Ctrl-C returning the draws so far, ``checkpoint=``, ``result.extend``). It sees the model
through a chain target (:mod:`inference.chain_target`). :class:`GibbsTarget` is Gibbs's:
positions hold every latent site, continuous ones unconstrained and discrete ones as
integers; starting points are the first of ``init_tries`` random ones (continuous sites
uniform in ``[-radius, radius]``, discrete sites from the prior given those) whose log
density and gradient (over the continuous sites) are finite; ``init_params`` gives
constrained values of every site, discrete ones included.

The sampler (:func:`gibbs_sampler`) is one sweep of every chain per loop step, with the
dual-averaging step-size tuning of :mod:`inference.mcmc.gibbs_tuning` during the first
``num_warmup`` sweeps; its state is ``(GibbsState, dual-averaging states, step sizes)``.

Example:
    >>> import functools, jax, numpyro, numpyro.distributions as dist, inference
    >>> from inference.mcmc import langevin
    >>> from inference.mcmc.gibbs import Gibbs, Enumerate
    >>> def model(y=None):
    ...     mu = numpyro.sample("mu", dist.Normal(0.0, 3.0))
    ...     z = numpyro.sample("z", dist.Bernoulli(0.5))
    ...     numpyro.sample("y", dist.Normal(mu + 2.0 * z, 1.0), obs=y)
    >>> method = Gibbs({"z": Enumerate(), "mu": functools.partial(langevin.mala, step_size=0.5)})
    >>> target = method.target(model, (), {"y": 1.0})
    >>> target.sites, target.dtypes["z"]
    ({'mu': (), 'z': ()}, dtype('int32'))
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np

from inference.chain_target import with_given
from inference.chains import Sampler
from inference.initialization import InitialSearch, search_initial
from inference.mcmc.gibbs_model import _Model
from inference.mcmc.gibbs_tuning import DualAveraging, has_accept
from inference.starting_points import constrained_starts
from ppl.errors import ModelError

__all__ = ["GibbsTarget", "gibbs_sampler"]


def gibbs_sampler(method: Any, sweep: Any, num_warmup: int, num_samples: int) -> Sampler:
    """The :class:`inference.chains.Sampler` of ``method`` (a ``Gibbs``) whose sweep is
    ``sweep`` (an ``inference.mcmc.gibbs._Sampler``): ``num_warmup`` tuning sweeps, then
    ``num_samples`` kept ones."""
    W, S = int(num_warmup), int(num_samples)
    blocks = sweep.blocks
    with_rate = sweep.has_accept

    def tuned(state) -> set:
        """Continuous blocks whose step size is tuned: the factory takes ``step_size`` and
        the kernel's info has an ``acceptance_rate``."""
        candidates = [i for i, b in enumerate(blocks)
                      if b.kind == "continuous" and b.step_size is not None]
        if not (method.adapt_step_size and W > 0 and candidates):
            return set()
        one = jax.tree.map(lambda x: x[0], state)
        steps = tuple(b.step_size if i in candidates else None for i, b in enumerate(blocks))
        _, info = jax.eval_shape(lambda k, s: sweep.step(k, s, steps), jax.random.key(0), one)
        return {i for i in candidates if has_accept(info.infos[i])}

    def init(key, positions):
        C = jax.tree.leaves(positions)[0].shape[0]
        state = jax.vmap(sweep.init)(positions, jax.random.split(key, C))
        fdt = state.logdensity.dtype
        chosen = tuned(state)
        steps = tuple(None if i not in chosen else jnp.full((C,), b.step_size, fdt)
                      for i, b in enumerate(blocks))
        return state, DualAveraging(method.target_accept_prob, W, fdt).init(steps), steps

    def step(carry, t, key):
        state, da, steps = carry
        C = state.logdensity.shape[0]
        tuner = DualAveraging(method.target_accept_prob, W, state.logdensity.dtype)
        state, info = jax.vmap(sweep.step)(jax.random.split(key, C), state, steps)
        da, steps = tuner.update(t, da, steps, info.infos)
        stats = {"lp": state.logdensity, "n_grad": info.n_grad}
        if with_rate:
            stats["acceptance_rate"] = info.acceptance_rate
        return (state, da, steps), state.position, stats

    def tuning(carry) -> dict:
        steps = {"+".join(b.names): h for b, h in zip(blocks, carry[2]) if h is not None}
        return {"step_size": steps} if steps else {}

    return Sampler(init=init, step=step, loop_warmup=W, num_steps=W + S, tuning=tuning)


@dataclasses.dataclass(frozen=True)
class GibbsTarget:
    """A model's latent sites as Gibbs moves them (see the module docstring).

    ``m``: the model on its data; ``sweep_factory(m)``: the sweep over a model on other
    (traced) data, built without the checks that evaluate the model (``Gibbs.target`` makes
    them on the real data and builds this).
    """

    m: _Model
    sweep_factory: Callable = dataclasses.field(compare=False)

    @property
    def model(self) -> Callable:
        return self.m.model

    @property
    def sites(self) -> dict:
        return {n: (s.shape if s.discrete else tuple(s.transform.inverse_shape(s.shape)))
                for n, s in self.m.sites.items()}

    @property
    def dtypes(self) -> dict:
        return {n: jnp.dtype(jnp.int32) if s.discrete else jnp.dtype(jnp.result_type(float))
                for n, s in self.m.sites.items()}

    @property
    def discrete(self) -> tuple:
        return tuple(n for n, s in self.m.sites.items() if s.discrete)

    uses_gradient_start = False
    program_key = None  # the blocks are the method's: in its part of the key

    def with_data(self, args: tuple, kwargs: dict) -> GibbsTarget:
        return dataclasses.replace(self, m=_Model(self.m.model, args, kwargs))

    def sampler(self, method: Any, num_warmup: int, num_samples: int) -> tuple[Sampler, Callable]:
        return (gibbs_sampler(method, self.sweep_factory(self.m), num_warmup, num_samples),
                self.m.log_joint)

    def to_constrained(self, position: dict) -> dict:
        return self.m.constrain(position)

    def search(self, check: Callable, key: jax.Array, num_chains: int, tries: int,
               radius: float, given: dict, use_given: jax.Array) -> InitialSearch:
        keys = jax.random.split(key, (num_chains, tries))
        draw = lambda k: self.m.draw_position(k, radius)  # noqa: E731
        candidates = with_given(jax.vmap(jax.vmap(draw))(keys), given, use_given)
        return search_initial(check, candidates, jnp.where(use_given, 1, tries),
                              fixed=self.discrete)

    def starts(self, init_params: Any, num_chains: int) -> dict:
        shapes = {n: s.shape for n, s in self.m.sites.items()}
        values = constrained_starts(self.m.model, self.m.args, self.m.kwargs, shapes,
                                    init_params, num_chains, self.dtypes)
        position = jax.vmap(self.m.position_from_values)(
            {n: jnp.asarray(v) for n, v in values.items()})
        return {n: np.asarray(v) for n, v in position.items()}

    def raise_not_found(self, key: jax.Array, num_chains: int, tries: int, radius: float,
                        given: dict | None, found: Any) -> None:
        chain = int(np.argmin(np.asarray(found)))
        if given is not None:
            point = jax.tree.map(lambda x: jnp.asarray(x[chain]), given)
            terms = self.m.site_terms(self.m.values(point))
            bad = [n for n, v in terms.items() if not bool(jnp.all(jnp.isfinite(v)))]
            raise ModelError(
                f"Gibbs: model {self.m.name}: the log density is not finite at init_params "
                f"(chain {chain}); site(s) where it is not finite: {bad or 'none found'}. "
                "Pass values where every site's density is finite.")
        raise ModelError(
            f"Gibbs: model {self.m.name}: no finite initial log density in {tries} random "
            f"points for chain {chain} (continuous sites uniform in [-{radius}, {radius}] "
            "unconstrained, discrete sites from the prior). Check the model's data and "
            "parameters, or raise init_tries.")
