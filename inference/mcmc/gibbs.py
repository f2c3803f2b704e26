r"""Within-Gibbs sampling: a kernel per block of sites of a NumPyro model.

``gibbs(model, {"z": Enumerate(), ("mu", "tau"): factory}, *args, **kwargs)`` is a
BlackJAX-protocol kernel over a dict position ``{site: value}`` holding *every* latent
site: continuous sites on the unconstrained scale (NumPyro's ``biject_to`` of the
support, as in :func:`ppl.potential`), discrete sites as their integer values. One step is
a systematic sweep: each block, in the order given, is updated by its kernel conditionally
on the current values of all other sites. Every block's update leaves the conditional
``p(block | rest)`` invariant, so the sweep leaves the joint posterior invariant.

Block values:

* ``Enumerate()`` -- discrete sites with finite support: an exact draw from the
  conditional, computed by evaluating the model at every support value -- element-wise
  over a plate when its elements are conditionally independent, jointly over all ``K^n``
  configurations when some term couples them (``jnp.roll``, a ``scan`` Markov chain, a
  matrix product; detected when the kernel is built) and ``K^n <= max_joint``, otherwise
  (with ``sequential=True``) one element at a time given the others, otherwise an error
  naming the coupling terms. See :mod:`inference.mcmc.gibbs_discrete`.
* ``DiscreteMH(step_size=1, num_elements=1, num_steps=None)`` -- discrete sites, any
  support (e.g. Poisson): Metropolis steps that each move ``num_elements`` random elements
  (to a uniformly drawn other value for a finite support, by a random walk of up to
  ``step_size`` for an unbounded one), one step per element per sweep by default.
* a continuous kernel given as a *factory* ``logdensity_fn -> SamplingAlgorithm``:
  ``functools.partial(langevin.mala, step_size=0.1)``, ``lambda ld: blackjax.mala(ld, 0.1)``,
  ``lambda ld: kernels.compose(langevin.mala(ld, 0.1), langevin.obabo(ld, 0.2))``. It is
  called with the block's conditional log density over ``{site: unconstrained value}``
  (log-Jacobians included) whenever the other blocks have changed. A factory that takes a
  ``step_size`` keyword (``functools.partial(langevin.mala, step_size=0.1)``, or
  ``langevin.mala`` itself) and whose kernel reports an ``acceptance_rate`` gets its step
  size tuned by :class:`Gibbs` during warmup: dual averaging (Hoffman & Gelman 2014,
  BlackJAX's ``dual_averaging_adaptation``) per chain and block towards
  ``Gibbs.target_accept_prob``, starting from the factory's step size (0.1 if it has none)
  and frozen at the averaged iterate after warmup.

A block of several discrete sites is updated one site after the other (each exactly).

**Gradients.** ``n_grad`` counts the continuous blocks' gradients: their kernels' own, plus
one per sweep to refresh the cached gradient of a block whose conditional changed (a kernel
state with ``position`` / ``logdensity`` / ``logdensity_grad`` fields keeps its other fields,
e.g. a momentum; other states are re-initialised with ``alg.init``).

Relation to NumPyro 0.22. ``numpyro.infer.Gibbs(blocks=[(kernel, sites), ...])`` is the
same block-by-block sweep, but each block is a NumPyro ``MCMCKernel`` (HMC/NUTS,
``DiscreteGibbs``, ``CustomGibbs`` with a user-written conditional sampler) driven by
NumPyro's ``MCMC``; ``DiscreteGibbs`` / ``DiscreteHMCGibbs`` update discrete sites one flat
coordinate at a time (exact conditional of that coordinate, or a uniform random-walk
proposal); ``HMCGibbs`` pairs one HMC block with a user ``gibbs_fn``. Here a block takes
any BlackJAX-protocol kernel -- ours (:mod:`inference.langevin`, combinations from
:mod:`inference.kernels`) or BlackJAX's -- through a factory; discrete sites are drawn
exactly by enumeration that is vectorised over a plate's elements (``K`` model evaluations
per site instead of one per coordinate and value), or by :class:`DiscreteMH`; and the
sampler is itself a BlackJAX-protocol kernel, so it composes with :mod:`inference.kernels`
and runs under ``jax.vmap`` / ``jax.jit`` like any other.
:class:`Gibbs` is the method object for ``inference.infer``.

Example:
    >>> import functools, jax, jax.numpy as jnp, numpyro, numpyro.distributions as dist
    >>> from inference.mcmc import langevin
    >>> def model(y=None):
    ...     mu = numpyro.sample("mu", dist.Normal(0.0, 3.0))
    ...     z = numpyro.sample("z", dist.Bernoulli(0.5))
    ...     numpyro.sample("y", dist.Normal(mu + 2.0 * z, 1.0), obs=y)
    >>> alg = gibbs(model, {"z": Enumerate(), "mu": functools.partial(langevin.mala, step_size=0.5)},
    ...             y=1.0)
    >>> state = alg.init({"mu": jnp.array(0.0), "z": jnp.array(1)})
    >>> state, info = jax.jit(alg.step)(jax.random.key(0), state)
    >>> sorted(state.position), int(info.n_grad)
    (['mu', 'z'], 2)
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, ClassVar, NamedTuple

import jax
import jax.numpy as jnp
from blackjax.base import SamplingAlgorithm

from inference.chains import continue_chains, run_chains
from inference.mcmc.combinators import _acceptance, info_n_grad
from inference.mcmc.gibbs_chains import GibbsTarget
from inference.mcmc.gibbs_discrete import DiscreteMH, Enumerate, _DiscreteMH, _Enumerator
from inference.mcmc.gibbs_model import _Model
from inference.mcmc.gibbs_tuning import initial_step_size
from inference.method import OPTIONS, Method, Outputs, Request
from inference.sharding import mesh_for

__all__ = ["Enumerate", "DiscreteMH", "GibbsState", "GibbsInfo", "gibbs", "Gibbs",
           "initial_position", "constrain"]


# ----------------------------------------------------------------------------------------
# States and infos
# ----------------------------------------------------------------------------------------
class GibbsState(NamedTuple):
    """State of :func:`gibbs`.

    Attributes:
        position: ``{site: value}``, continuous sites unconstrained, discrete ones integers.
        states: per block, the block kernel's state (continuous blocks) or ``None``.
        logdensity: log joint density at ``position`` (unconstrained scale, with
            log-Jacobians).
    """

    position: dict
    states: tuple
    logdensity: jax.Array


class GibbsInfo(NamedTuple):
    """Info of a sweep: summed ``n_grad``; ``acceptance_rate``, the mean over the blocks with an
    accept step (continuous kernels that report one, :class:`DiscreteMH`), 1.0 if none has;
    ``infos``, per block, the kernel's info (continuous), the MH acceptance probability, or
    ``None`` (:class:`Enumerate`)."""

    n_grad: jax.Array
    acceptance_rate: jax.Array
    infos: tuple


# ----------------------------------------------------------------------------------------
# Blocks
# ----------------------------------------------------------------------------------------
class _Block(NamedTuple):
    names: tuple
    kind: str            # "enumerate" | "mh" | "continuous"
    spec: Any
    updaters: tuple      # _Enumerator / _DiscreteMH per site (discrete blocks)
    step_size: float | None = None  # continuous blocks whose step size can be tuned: the initial one


def _block_names(key: Any) -> tuple:
    names = (key,) if isinstance(key, str) else tuple(key) if isinstance(key, (tuple, list)) else None
    if not names or not all(isinstance(n, str) for n in names):
        raise TypeError(f"gibbs: a block key must be a site name or a tuple of site names; got {key!r}.")
    return names


def _make_blocks(m: _Model, blocks: dict, coupling: dict | None = None) -> list[_Block]:
    """The blocks; ``coupling`` is ``{site: {term: reason}}`` of an earlier coupling check
    (see :class:`inference.mcmc.gibbs_discrete._Enumerator`), for sites it has."""
    coupling = coupling or {}
    if not isinstance(blocks, dict) or not blocks:
        raise TypeError("gibbs: blocks must be a non-empty dict {site or (sites...): kernel}; got "
                        f"{blocks!r}.")
    out, seen = [], {}
    for key, spec in blocks.items():
        names = _block_names(key)
        unknown = [n for n in names if n not in m.sites]
        if unknown:
            raise ValueError(
                f"gibbs: block {key!r} names site(s) {unknown}, which are not latent sites of "
                f"model {m.name}; its latent sites are {list(m.sites)}."
            )
        for n in names:
            if n in seen:
                raise ValueError(f"gibbs: site '{n}' is in two blocks, {seen[n]!r} and {key!r}.")
            seen[n] = key
        discrete = [n for n in names if m.sites[n].discrete]
        continuous = [n for n in names if not m.sites[n].discrete]
        if isinstance(spec, (Enumerate, DiscreteMH)):
            what = type(spec).__name__
            if continuous:
                raise ValueError(
                    f"gibbs: {what}() given for continuous site(s) {continuous} of model "
                    f"{m.name}; {what} is for discrete sites. Give continuous sites a kernel "
                    "factory, e.g. functools.partial(inference.langevin.mala, step_size=0.1)."
                )
            if isinstance(spec, Enumerate):
                ups = tuple(_Enumerator(m, n, spec, coupling.get(n)) for n in names)
                out.append(_Block(names, "enumerate", spec, ups))
            else:
                ups = tuple(_DiscreteMH(m, n, spec) for n in names)
                out.append(_Block(names, "mh", spec, ups))
        elif isinstance(spec, SamplingAlgorithm) or not callable(spec):
            raise TypeError(
                f"gibbs: block {key!r} has {spec!r} ({type(spec).__name__}); expected Enumerate(), "
                "DiscreteMH(), or a kernel factory logdensity_fn -> SamplingAlgorithm such as "
                "functools.partial(inference.langevin.mala, step_size=0.1) or "
                "lambda ld: blackjax.mala(ld, 0.1) (a built kernel cannot be used: its target is "
                "the block's conditional, which changes every sweep)."
            )
        else:
            if discrete:
                raise ValueError(
                    f"gibbs: block {key!r} gives a continuous kernel to discrete site(s) "
                    f"{discrete} of model {m.name}; use Enumerate() (finite support) or "
                    "DiscreteMH() for them, in a block of their own."
                )
            out.append(_Block(names, "continuous", spec, (), initial_step_size(spec)))
    unassigned = [n for n in m.sites if n not in seen]
    if unassigned:
        raise ValueError(
            f"gibbs: latent site(s) {unassigned} of model {m.name} are in no block; every latent "
            f"site needs a kernel (latent sites: {list(m.sites)})."
        )
    return out


def _has_cache(state: Any) -> bool:
    fields = getattr(state, "_fields", ())
    return (all(f in fields for f in ("position", "logdensity", "logdensity_grad"))
            and state.logdensity is not None and state.logdensity_grad is not None)


class _Sampler:
    """The Gibbs sweep over a model's blocks."""

    def __init__(self, m: _Model, blocks: dict, coupling: dict | None = None):
        self.m = m
        self.blocks = _make_blocks(m, blocks, coupling)

    def coupling(self) -> tuple:
        """``((site, ((term, reason), ...)), ...)`` for the enumerated sites: the result of
        their coupling checks, hashable (a compiled program's key holds it)."""
        return tuple((up.name, tuple(sorted(up.coupling.items())))
                     for b in self.blocks if b.kind == "enumerate" for up in b.updaters)

    def factory(self, block: _Block, step_size: Any = None) -> Callable:
        """The block's kernel factory, at ``step_size`` if given (a tuned block)."""
        if step_size is None:
            return block.spec
        return lambda ld: block.spec(ld, step_size=step_size)

    def conditional(self, block: _Block, position: dict) -> Callable:
        def logdensity_fn(sub: dict) -> jax.Array:
            return self.m.log_joint({**position, **sub})
        return logdensity_fn

    def init(self, position: dict, rng_key: jax.Array | None = None) -> GibbsState:
        position = self.m.check_position(position)
        keys = [None] * len(self.blocks) if rng_key is None else list(
            jax.random.split(rng_key, len(self.blocks)))
        states = []
        for b, k in zip(self.blocks, keys):
            if b.kind != "continuous":
                states.append(None)
                continue
            alg = self.factory(b, b.step_size)(self.conditional(b, position))
            states.append(alg.init({n: position[n] for n in b.names}, k))
        return GibbsState(position, tuple(states), self.m.log_joint(position))

    def step(self, rng_key: jax.Array, state: GibbsState,
             step_sizes: tuple | None = None) -> tuple[GibbsState, GibbsInfo]:
        """One sweep; ``step_sizes``: per block, the step size of a tuned continuous block
        (``None`` for the others, or for all: the factories as given)."""
        step_sizes = step_sizes or (None,) * len(self.blocks)
        position, logdensity = dict(state.position), state.logdensity
        states, infos, rates = list(state.states), [], []
        n_grad = jnp.zeros((), jnp.int32)
        for i, (b, key) in enumerate(zip(self.blocks, jax.random.split(rng_key, len(self.blocks)))):
            if b.kind == "enumerate":
                for up, k in zip(b.updaters, jax.random.split(key, len(b.updaters))):
                    position[up.name] = up.draw(k, self.m.values(position))
                logdensity = self.m.log_joint(position)
                infos.append(None)
            elif b.kind == "mh":
                block_rates = []
                for up, k in zip(b.updaters, jax.random.split(key, len(b.updaters))):
                    position[up.name], logdensity, rate = up.step(k, position, logdensity)
                    block_rates.append(rate)
                rate = jnp.mean(jnp.stack(block_rates))
                rates.append(rate)
                infos.append(rate)
            else:
                logdensity_fn = self.conditional(b, position)
                h = b.step_size if step_sizes[i] is None else step_sizes[i]
                alg = self.factory(b, h)(logdensity_fn)
                sub = {n: position[n] for n in b.names}
                k_init, k_step = jax.random.split(key)
                own = states[i]
                if _has_cache(own):
                    value, grad = jax.value_and_grad(logdensity_fn)(sub)
                    own = own._replace(position=sub, logdensity=value, logdensity_grad=grad)
                    n_grad = n_grad + 1
                else:
                    own = alg.init(sub, k_init)
                    n_grad = n_grad + int("logdensity_grad" in getattr(own, "_fields", ()))
                own, info = alg.step(k_step, own)
                states[i] = own
                position.update(own.position)
                n_grad = n_grad + info_n_grad(info)
                rate = _acceptance(info)
                if rate is not None:
                    rates.append(rate.astype(jnp.result_type(float)))
                logdensity = self.m.log_joint(position)
                infos.append(info)
        rate = jnp.mean(jnp.stack(rates)) if rates else jnp.ones((), jnp.result_type(float))
        return (GibbsState(position, tuple(states), logdensity),
                GibbsInfo(n_grad, rate, tuple(infos)))

    @property
    def has_accept(self) -> bool:
        return any(b.kind != "enumerate" for b in self.blocks)


def gibbs(model: Callable, blocks: dict, *args: Any, **kwargs: Any) -> SamplingAlgorithm:
    """A Gibbs sampler for ``model(*args, **kwargs)`` with one kernel per block of sites.

    Args:
        model: a NumPyro model; observed sites are conditioned on the data passed.
        blocks: ``{site or (site, ...): spec}`` covering every latent site once; ``spec`` is
            :class:`Enumerate`, :class:`DiscreteMH`, or a factory
            ``logdensity_fn -> SamplingAlgorithm`` for continuous sites (see the module
            docstring). Blocks are updated in this order.
        *args, **kwargs: the model's arguments.

    Returns:
        A ``SamplingAlgorithm``: ``init(position, rng_key=None)`` with ``position`` a dict
        of every latent site (continuous unconstrained, discrete integer; see
        :func:`initial_position`) gives a :class:`GibbsState`; ``step(key, state)`` is one
        sweep and returns ``(state, GibbsInfo)``. :func:`constrain` maps positions back.

    Raises:
        ValueError: for unknown sites (listing the model's latent sites), sites in no block,
            sites in two blocks, ``Enumerate`` on a site without finite support, or a kernel
            kind that does not fit a site.
        ModelError: ``Enumerate`` on a site whose elements are coupled (see
            :mod:`inference.mcmc.gibbs_discrete`) with more than ``max_joint`` joint
            configurations, naming the coupling sites; or model arguments that are tracers
            (the coupling check evaluates the model: build the kernel outside ``jax.jit``).

    Example:
        >>> import jax, numpyro, numpyro.distributions as dist
        >>> def model():
        ...     numpyro.sample("k", dist.Poisson(3.0))
        >>> alg = gibbs(model, {"k": DiscreteMH()})
        >>> state, info = alg.step(jax.random.key(0), alg.init({"k": 2}))
        >>> int(info.n_grad), state.position["k"].dtype
        (0, dtype('int32'))
    """
    sampler = _Sampler(_Model(model, args, kwargs), blocks)
    return SamplingAlgorithm(sampler.init, sampler.step)


def initial_position(model: Callable, key: jax.Array, *args: Any, **kwargs: Any) -> dict:
    """A starting position for :func:`gibbs`: continuous sites uniform in ``[-2, 2]`` on the
    unconstrained scale, discrete sites drawn from the prior given those.

    Example:
        >>> import jax, numpyro, numpyro.distributions as dist
        >>> def model():
        ...     numpyro.sample("s", dist.HalfNormal(1.0))
        ...     numpyro.sample("z", dist.Bernoulli(0.5).expand([3]))
        >>> p = initial_position(model, jax.random.key(0))
        >>> p["s"].dtype, p["z"].shape, p["z"].dtype
        (dtype('float32'), (3,), dtype('int32'))
    """
    return _Model(model, args, kwargs).draw_position(key)


def constrain(model: Callable, position: dict, *args: Any, **kwargs: Any) -> dict:
    """Constrained values of a :func:`gibbs` position, plus the model's deterministic sites.

    Example:
        >>> import jax.numpy as jnp, numpyro, numpyro.distributions as dist
        >>> def model():
        ...     numpyro.sample("s", dist.HalfNormal(1.0))
        >>> round(float(constrain(model, {"s": jnp.array(0.0)})["s"]), 3)
        1.0
    """
    return _Model(model, args, kwargs).constrain(position)


# ----------------------------------------------------------------------------------------
# The infer method
# ----------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Gibbs(Method):
    """Within-Gibbs sampling as an ``inference.infer`` method: a kernel per block of sites.

    ``blocks`` is the dict of :func:`gibbs`. Chains start at random points (continuous sites
    uniform in ``[-2, 2]`` unconstrained, discrete sites from the prior; the first of
    ``init_tries`` with a finite log density), run ``num_warmup`` sweeps that are discarded,
    then ``num_samples`` kept sweeps, ``jax.vmap``-ped over chains in one compiled program
    that the host calls in chunks (:mod:`inference.chains`): a progress bar, Ctrl-C returns
    the draws so far, ``init_params`` (constrained values of every latent site, discrete
    ones included), ``checkpoint=``/``checkpoint_every=``, and ``result.extend(n)`` (more
    sweeps at the tuned step sizes, no new warmup) work as for NUTS.
    During warmup, with ``adapt_step_size``, each continuous block whose factory takes a
    ``step_size`` keyword and whose kernel reports an acceptance rate has its step size
    tuned per chain by dual averaging towards ``target_accept_prob`` (0.574, optimal for
    MALA; raise it for kinetic kernels), starting from the factory's own step size; it is
    frozen after warmup, and ``tuning["step_size"]`` holds the final values per block
    (``(chains,)`` arrays). Other blocks run with the parameters given.
    Samples are constrained values of every latent and deterministic site; stats are
    ``lp`` (log joint, unconstrained scale), ``n_grad`` and, when some block has an accept
    step, ``acceptance_rate``.

    Example:
        >>> import functools, jax, numpyro, numpyro.distributions as dist, inference
        >>> from inference.mcmc import langevin
        >>> def model(y=None):
        ...     mu = numpyro.sample("mu", dist.Normal(0.0, 3.0))
        ...     z = numpyro.sample("z", dist.Bernoulli(0.5))
        ...     numpyro.sample("y", dist.Normal(mu + 2.0 * z, 1.0), obs=y)
        >>> method = Gibbs({"z": Enumerate(), "mu": functools.partial(langevin.mala, step_size=0.5)})
        >>> samples, stats, tuning, timing = method.run(
        ...     model, (), {"y": 1.0}, key=jax.random.key(0), num_samples=50, num_warmup=10,
        ...     num_chains=2, progress=False)
        >>> samples["z"].shape, sorted(stats)
        ((2, 50), ['acceptance_rate', 'lp', 'n_grad'])
    """

    blocks: dict
    init_tries: int = 20
    adapt_step_size: bool = True
    target_accept_prob: float = 0.574

    handles_discrete: ClassVar[bool] = True
    #: Its draws are Markov chains: ``Result.diagnose`` checks R-hat and ESS.
    markov_chains: ClassVar[bool] = True
    options: ClassVar[frozenset] = frozenset(OPTIONS)

    def __post_init__(self):
        if not isinstance(self.blocks, dict) or not self.blocks:
            raise TypeError(f"Gibbs(blocks={self.blocks!r}): must be a non-empty dict "
                            "{site or (sites...): kernel}.")
        if not (isinstance(self.init_tries, int) and self.init_tries >= 1):
            raise ValueError(f"Gibbs(init_tries={self.init_tries!r}): must be a positive int.")
        if not isinstance(self.adapt_step_size, bool):
            raise TypeError(f"Gibbs(adapt_step_size={self.adapt_step_size!r}): must be True or False.")
        t = self.target_accept_prob
        if not (isinstance(t, (int, float)) and not isinstance(t, bool) and 0.0 < t < 1.0):
            raise ValueError(f"Gibbs(target_accept_prob={t!r}): must be a number in (0, 1), "
                             "e.g. 0.574 for MALA or 0.75 for kinetic kernels.")

    def target(self, model: Callable, args: tuple, kwargs: dict) -> GibbsTarget:
        """The chains' target (:class:`inference.mcmc.gibbs_chains.GibbsTarget`) on
        ``model(*args, **kwargs)``: traces the model and checks the blocks, and the
        enumerated sites' coupling, on the real data."""
        m = _Model(model, args, kwargs)
        coupling = {n: dict(c) for n, c in _Sampler(m, self.blocks).coupling()}
        return GibbsTarget(m, lambda m: _Sampler(m, self.blocks, coupling))

    def draw(self, model: Callable, args: tuple, kwargs: dict, request: Request) -> Outputs:
        """Run the chains: ``(samples, stats, tuning, timing)`` for :class:`inference.Result`
        (with the final state, for :meth:`extend`).

        ``devices``: the chains split over devices (see :mod:`inference.sharding`).
        """
        r = request
        target = self.target(model, args, kwargs)
        mesh = mesh_for(r.devices, int(r.num_chains), what="chains", owner="Gibbs")
        out = run_chains(self, model, args, kwargs, key=r.key, num_warmup=r.num_warmup,
                         num_samples=r.num_samples, num_chains=r.num_chains,
                         progress=r.progress, mesh=mesh, tries=self.init_tries,
                         init_params=r.init_params, checkpoint=r.checkpoint,
                         checkpoint_every=r.checkpoint_every, target=target)
        out[2]["blocks"] = [list(b.names) for b in target.sweep_factory(target.m).blocks]
        return out

    def extend(self, model: Callable, args: tuple, kwargs: dict, *, state: Any,
               num_samples: int, key: jax.Array | None = None, progress: bool = True,
               devices: Any = None) -> Outputs:
        """``num_samples`` more sweeps of the chains in ``state`` (a run's final state), at
        the tuned step sizes, with no new warmup (see :func:`inference.chains.continue_chains`)."""
        target = self.target(model, args, kwargs)
        mesh = mesh_for(devices, state.num_chains, what="chains", owner="extend")
        out = continue_chains(self, model, tuple(args), dict(kwargs), state=state,
                              num_samples=num_samples, key=key, progress=progress, mesh=mesh,
                              target=target)
        out[2]["blocks"] = [list(b.names) for b in target.sweep_factory(target.m).blocks]
        return out
