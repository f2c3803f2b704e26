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
  conditional, computed by evaluating the model at every support value.
* ``DiscreteMH(step_size=1)`` -- discrete sites, any support (e.g. Poisson): a Metropolis
  step with a symmetric proposal (uniform over the other values for a finite support, a
  random walk of up to ``step_size`` for an unbounded one).
* a continuous kernel given as a *factory* ``logdensity_fn -> SamplingAlgorithm``:
  ``functools.partial(langevin.mala, step_size=0.1)``, ``lambda ld: blackjax.mala(ld, 0.1)``,
  ``lambda ld: kernels.compose(langevin.mala(ld, 0.1), langevin.obabo(ld, 0.2))``. It is
  called with the block's conditional log density over ``{site: unconstrained value}``
  (log-Jacobians included) whenever the other blocks have changed.

**Sites in a plate.** A discrete site with batch shape (e.g. mixture assignments ``z`` of
shape ``(N,)`` under ``numpyro.plate``) is enumerated *element-wise*: for each support value
``k`` the model is evaluated once with the constant vector ``z = (k, ..., k)``, and each log
density term is attributed to the elements whose batch axes it carries; element ``i``'s
conditional is then the softmax over ``k`` of its own terms. This costs ``K`` model
evaluations (``K`` the support size) instead of the ``K^N`` of a joint enumeration, and it
is exact when the elements are conditionally independent given the other blocks -- each
term of the model involves at most one element, which is what ``numpyro.plate`` declares
and holds for mixture assignments. A joint enumeration would also be exact when elements
interact (through a term without the plate's axis, e.g. a site depending on ``z.sum()``);
that case is detected when the kernel is built (by tracing which terms depend on ``z``) and
is an error naming the offending site. A block of several discrete sites is updated one
site after the other (each exactly).

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
    >>> from inference import langevin
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

import time
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any, Callable, ClassVar, NamedTuple

import jax
import jax.extend.core as jcore
import jax.numpy as jnp
from blackjax.base import SamplingAlgorithm
from numpyro import handlers
from numpyro.distributions.transforms import biject_to
from numpyro.infer import util as numpyro_util
from numpyro.infer.initialization import init_to_uniform

from inference import progress as progress_lib
from inference.arguments import CONCRETE_ERRORS, split_arguments, static_part
from inference.compilation import compiling
from inference.kernels import _acceptance, info_n_grad
from inference.sharding import constrain_leading, describe, gather, mesh_for
from inference.method import Method
from ppl.errors import ModelError
from ppl.tracing import latent_sites, model_name, trace_model

__all__ = ["Enumerate", "DiscreteMH", "GibbsState", "GibbsInfo", "gibbs", "Gibbs",
           "initial_position", "constrain"]


# ----------------------------------------------------------------------------------------
# Block specifications
# ----------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Enumerate:
    """Exact conditional draw of a discrete site with finite support, by enumerating it.

    Sites with batch shape are enumerated element-wise (see the module docstring).
    """


@dataclass(frozen=True)
class DiscreteMH:
    """Metropolis step for a discrete site, with a symmetric proposal.

    Finite support (``dist.enumerate_support()`` exists, contiguous integers): each element
    moves to a uniformly drawn *other* value. Otherwise (e.g. Poisson): each element moves
    by ``+-U{1, ..., step_size}``; a proposal outside the support is rejected. All elements
    of the site are proposed together and accepted or rejected together, so for a large
    plate of independent assignments prefer :class:`Enumerate`.
    """

    step_size: int = 1

    def __post_init__(self):
        if not (isinstance(self.step_size, int) and self.step_size >= 1):
            raise ValueError(f"DiscreteMH(step_size={self.step_size!r}): must be a positive int.")


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


# ----------------------------------------------------------------------------------------
# Element-wise attribution of log density terms to a site's batch elements
# ----------------------------------------------------------------------------------------
def _check_aligned(shape: tuple, batch: tuple, site: str, other: str) -> None:
    for d, b in zip(shape, batch):
        if b != 1 and d not in (1, b):
            raise ModelError(
                f"Enumerate('{site}'): the log density of site '{other}' has shape "
                f"{shape}, which does not align with '{site}''s batch shape {batch}."
            )


def _align(term: Any, batch: tuple, site: str, other: str,
           abstract: bool = False) -> tuple[Any, bool]:
    """``term`` summed onto the batch axes ``batch`` (right-aligned, as NumPyro's plates are).

    Returns ``(aligned, shares_all_axes)``; the flag is False when ``term`` lacks some
    non-trivial axis of ``batch`` (it is then shared by several elements).
    """
    if abstract:  # shapes only
        shape = tuple(term.shape)[max(len(term.shape) - len(batch), 0):]
        shape = (1,) * (len(batch) - len(shape)) + shape
        _check_aligned(shape, batch, site, other)
        shape = tuple(1 if b == 1 else d for d, b in zip(shape, batch))
        return None, all(d == b for d, b in zip(shape, batch) if b != 1)
    term = jnp.asarray(term)
    r = len(batch)
    if term.ndim > r:
        term = jnp.sum(term, axis=tuple(range(term.ndim - r)))
    term = term.reshape((1,) * (r - term.ndim) + term.shape)
    _check_aligned(tuple(term.shape), batch, site, other)
    axes = tuple(j for j in range(r) if batch[j] == 1 and term.shape[j] != 1)
    if axes:
        term = jnp.sum(term, axis=axes, keepdims=True)
    shares = all(term.shape[j] == batch[j] for j in range(r) if batch[j] != 1)
    return jnp.broadcast_to(term, batch), shares


def _shares_axes(shape: tuple, batch: tuple, site: str, other: str) -> bool:
    """Does a term of shape ``shape`` carry every non-trivial axis of ``batch``?"""
    return _align(jax.ShapeDtypeStruct(shape, jnp.float32), batch, site, other, abstract=True)[1]


def _depends_on_input(fn: Callable, x: Any) -> list[bool]:
    """Which outputs of ``fn(x)`` depend on ``x`` (conservative taint through the jaxpr)."""
    closed = jax.make_jaxpr(fn)(x)
    tainted = {v for v in closed.jaxpr.invars}
    for eqn in closed.jaxpr.eqns:
        if any(isinstance(v, jcore.Var) and v in tainted for v in eqn.invars):
            tainted.update(eqn.outvars)
    return [isinstance(v, jcore.Var) and v in tainted for v in closed.jaxpr.outvars]


class _Enumerator:
    """Exact (element-wise) conditional draw of one discrete site."""

    def __init__(self, m: _Model, name: str):
        s = m.sites[name]
        self.m, self.name, self.site = m, name, s
        if not s.fn.has_enumerate_support:
            raise ValueError(
                f"Enumerate() on site '{name}' of model {m.name}: its distribution "
                f"{type(s.fn).__name__} has no finite support to enumerate (support "
                f"{s.support}). Use DiscreteMH() for it, or marginalise it out."
            )
        support = jnp.asarray(s.fn.enumerate_support(expand=False))
        k = support.shape[0]
        self.support = support.reshape((k,) + s.event_shape).astype(jnp.int32)
        self.batch = s.batch_shape
        self._check_independence()

    def _terms(self, values: dict, z: jax.Array) -> dict:
        return self.m.site_terms({**values, self.name: z})

    def _check_independence(self) -> None:
        """Find the terms that depend on the site (only those enter its conditional) and
        check that each carries the site's batch axes."""
        values = {n: self.m.trace[n]["value"] for n in self.m.sites}
        z0 = jnp.broadcast_to(self.support[0], self.site.shape)
        terms = jax.eval_shape(lambda z: self._terms(values, z), z0)
        names = list(terms)
        deps = _depends_on_input(lambda z: [self._terms(values, z)[n] for n in names], z0)
        # Terms that do not depend on z are constant in z and cancel in its conditional;
        # leaving them out also lets them have any shape (e.g. a vector of component means).
        self.relevant = tuple(n for n, d in zip(names, deps) if d)
        if all(b == 1 for b in self.batch):
            return
        bad = [n for n in self.relevant
               if not _shares_axes(tuple(terms[n].shape), self.batch, self.name, n)]
        if bad:
            raise ModelError(
                f"Enumerate() on site '{self.name}' of model {self.m.name}: site(s) {bad} depend "
                f"on '{self.name}' but their log densities lack its batch axes {self.batch}, so "
                f"the elements of '{self.name}' are not conditionally independent and cannot be "
                "enumerated element-wise. Put those sites inside the same plate, or give each "
                "element its own site."
            )

    def logits(self, values: dict) -> jax.Array:
        """``(K, *batch)``: each element's conditional log probability per support value."""

        def one(value):
            z = jnp.broadcast_to(value, self.site.shape)
            total = jnp.zeros(self.batch)
            terms = self._terms(values, z)
            for other in self.relevant:
                total = total + _align(terms[other], self.batch, self.name, other)[0]
            return total

        return jax.vmap(one)(self.support)

    def draw(self, key: jax.Array, values: dict) -> jax.Array:
        logits = self.logits(values)
        logits = jnp.where(jnp.isnan(logits), -jnp.inf, logits)
        idx = jax.random.categorical(key, logits, axis=0)
        return self.support[idx]


class _DiscreteMH:
    """Metropolis step for one discrete site (all elements jointly)."""

    def __init__(self, m: _Model, name: str, step_size: int):
        s = m.sites[name]
        self.m, self.name, self.site, self.step_size = m, name, s, step_size
        if s.event_shape:
            raise ValueError(f"DiscreteMH() on site '{name}': event-shaped discrete "
                             f"distributions ({type(s.fn).__name__}) are not supported; use Enumerate().")
        self.finite = bool(s.fn.has_enumerate_support)
        if self.finite:
            with jax.ensure_compile_time_eval():  # concrete while a program is traced
                support = jnp.asarray(s.fn.enumerate_support(expand=False)).reshape(-1)
                self.low, self.k = int(support[0]), int(support.shape[0])

    def step(self, key: jax.Array, position: dict, logdensity: jax.Array):
        k_prop, k_dir, k_acc = jax.random.split(key, 3)
        z = position[self.name]
        if self.finite:
            shift = jax.random.randint(k_prop, z.shape, 1, max(self.k, 2))
            new = self.low + (z - self.low + shift) % self.k if self.k > 1 else z
        else:
            size = jax.random.randint(k_prop, z.shape, 1, self.step_size + 1)
            sign = jnp.where(jax.random.bernoulli(k_dir, 0.5, z.shape), 1, -1)
            new = z + sign * size
        new = new.astype(z.dtype)
        proposal = {**position, self.name: new}
        inside = jnp.all(self.site.support(new))
        lp_new = jnp.where(inside, self.m.log_joint(proposal), -jnp.inf)
        lp_new = jnp.where(jnp.isnan(lp_new), -jnp.inf, lp_new)
        log_ratio = lp_new - logdensity
        rate = jnp.exp(jnp.minimum(log_ratio, 0.0))
        accept = jnp.log(jax.random.uniform(k_acc)) < log_ratio
        return (jnp.where(accept, new, z), jnp.where(accept, lp_new, logdensity),
                rate.astype(jnp.result_type(float)))


# ----------------------------------------------------------------------------------------
# Blocks
# ----------------------------------------------------------------------------------------
class _Block(NamedTuple):
    names: tuple
    kind: str            # "enumerate" | "mh" | "continuous"
    spec: Any
    updaters: tuple      # _Enumerator / _DiscreteMH per site (discrete blocks)


def _block_names(key: Any) -> tuple:
    names = (key,) if isinstance(key, str) else tuple(key) if isinstance(key, (tuple, list)) else None
    if not names or not all(isinstance(n, str) for n in names):
        raise TypeError(f"gibbs: a block key must be a site name or a tuple of site names; got {key!r}.")
    return names


def _make_blocks(m: _Model, blocks: dict) -> list[_Block]:
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
                ups = tuple(_Enumerator(m, n) for n in names)
                out.append(_Block(names, "enumerate", spec, ups))
            else:
                ups = tuple(_DiscreteMH(m, n, spec.step_size) for n in names)
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
            out.append(_Block(names, "continuous", spec, ()))
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

    def __init__(self, m: _Model, blocks: dict):
        self.m = m
        self.blocks = _make_blocks(m, blocks)

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
            alg = b.spec(self.conditional(b, position))
            states.append(alg.init({n: position[n] for n in b.names}, k))
        return GibbsState(position, tuple(states), self.m.log_joint(position))

    def step(self, rng_key: jax.Array, state: GibbsState) -> tuple[GibbsState, GibbsInfo]:
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
                alg = b.spec(logdensity_fn)
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
    ``init_tries`` with a finite log density), run ``num_warmup`` sweeps that are discarded
    (no step-size adaptation: the block kernels run with the parameters given), then
    ``num_samples`` kept sweeps, ``jax.vmap``-ped over chains in one compiled program.
    Samples are constrained values of every latent and deterministic site; stats are
    ``lp`` (log joint, unconstrained scale), ``n_grad`` and, when some block has an accept
    step, ``acceptance_rate``.

    Example:
        >>> import functools, jax, numpyro, numpyro.distributions as dist, inference
        >>> from inference import langevin
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

    handles_discrete: ClassVar[bool] = True

    def __post_init__(self):
        if not isinstance(self.blocks, dict) or not self.blocks:
            raise TypeError(f"Gibbs(blocks={self.blocks!r}): must be a non-empty dict "
                            "{site or (sites...): kernel}.")
        if not (isinstance(self.init_tries, int) and self.init_tries >= 1):
            raise ValueError(f"Gibbs(init_tries={self.init_tries!r}): must be a positive int.")

    def run(
        self,
        model: Callable,
        args: tuple,
        kwargs: dict,
        *,
        key: jax.Array,
        num_samples: int,
        num_warmup: int,
        num_chains: int,
        progress: bool = True,
        devices: Any = None,
        trace: dict | None = None,
    ) -> tuple[dict, dict, dict, dict]:
        """Run the chains: ``(samples, stats, tuning, timing)`` for :class:`inference.Result`.

        ``devices``: the chains split over devices (see :mod:`inference.sharding`).
        """
        m = _Model(model, args, kwargs)  # checks the model and blocks on the real data
        mesh = mesh_for(devices, int(num_chains), what="chains", owner="Gibbs")
        sampler = _Sampler(m, self.blocks)
        W, S, C = int(num_warmup), int(num_samples), int(num_chains)
        bar = progress_lib.ProgressBar(W + S, desc="Gibbs", enabled=progress,
                                       phases=[("warmup", W), ("sample", S)])
        data = (tuple(args), dict(kwargs))
        try:
            run = self._program(model, data, split_arguments(data), W, S, C, mesh, progress)
        except CONCRETE_ERRORS:
            # The model (or a block) needs its data's values in Python, e.g. an enumerated
            # site whose support size comes from the data: compile with the data baked in.
            run = self._program(model, data, ([], lambda _: data), W, S, C, mesh, progress)
        compiled, relay, programs, dyn = run
        t1 = time.perf_counter()
        relay.target = bar
        try:
            samples, stats, found = gather(jax.block_until_ready(compiled(key, dyn)))
            jax.effects_barrier()  # every progress callback has run before the bar closes
        finally:
            relay.target = None
            bar.close()
        t2 = time.perf_counter()
        if not bool(jnp.all(found)):
            raise ModelError(
                f"Gibbs: model {m.name}: no finite initial log density in {self.init_tries} "
                f"random points for chain {int(jnp.argmin(found))} (continuous sites uniform "
                "in [-2, 2] unconstrained, discrete sites from the prior). Check the model's "
                "data and parameters, or raise init_tries."
            )
        tuning = {"blocks": [list(b.names) for b in sampler.blocks]}
        return samples, stats, tuning, {"compile": programs.seconds, "run": t2 - t1,
                                        "devices": describe(mesh), "cache": programs.cache}

    def _program(self, model, data, split, W, S, C, mesh, progress):
        """The compiled run of every chain, with the data as an argument (see run)."""
        dyn, rebuild = split
        T = self.init_tries
        relay = progress_lib.Relay() if progress else None

        def program(key, dyn):
            a, kw = rebuild(dyn)
            m = _Model(model, a, kw)
            sampler = _Sampler(m, self.blocks)
            with_rate = sampler.has_accept

            def valid(position):
                cont = {n: v for n, v in position.items() if not m.sites[n].discrete}
                value, grad = jax.value_and_grad(
                    lambda c: m.log_joint({**position, **c}))(cont)
                ok = jnp.isfinite(value)
                for g in jax.tree.leaves(grad):
                    ok = ok & jnp.all(jnp.isfinite(g))
                return ok

            def initial(key):
                cands = jax.vmap(m.draw_position)(jax.random.split(key, T))
                ok = jax.vmap(valid)(cands)
                first = jnp.argmax(ok)
                return jax.tree.map(lambda x: x[first], cands), jnp.any(ok)

            k_init, k_state, k_run = jax.random.split(key, 3)
            positions, found = jax.vmap(initial)(jax.random.split(k_init, C))
            positions = constrain_leading(positions, mesh, C)
            state = jax.vmap(sampler.init)(positions, jax.random.split(k_state, C))
            draws = jax.tree.map(lambda x: jnp.zeros((S,) + x.shape, x.dtype), state.position)
            fdt = state.logdensity.dtype
            stats = {"lp": jnp.zeros((S, C), fdt), "n_grad": jnp.zeros((S, C), jnp.int32)}
            if with_rate:
                stats["acceptance_rate"] = jnp.zeros((S, C), fdt)

            def body(carry, xs):
                state, draws, stats = carry
                t, keys = xs
                state, info = jax.vmap(sampler.step)(keys, state)
                slot = jnp.maximum(t - W, 0)
                put = lambda buf, v: jax.lax.dynamic_update_index_in_dim(buf, v, slot, 0)  # noqa: E731
                new = {"lp": state.logdensity, "n_grad": info.n_grad}
                if with_rate:
                    new["acceptance_rate"] = info.acceptance_rate
                draws = jax.tree.map(put, draws, state.position)
                stats = jax.tree.map(put, stats, new)
                return (state, draws, stats), None

            keys = jax.random.split(k_run, (W + S, C))
            state, draws, stats = progress_lib.scan(
                body, (state, draws, stats), (jnp.arange(W + S), keys), W + S, bar=relay)
            swap = lambda x: jnp.swapaxes(x, 0, 1)  # noqa: E731
            draws, stats = jax.tree.map(swap, draws), jax.tree.map(swap, stats)
            samples = jax.vmap(jax.vmap(m.constrain))(draws)
            return constrain_leading((samples, stats), mesh, C) + (found,)

        static = static_part(data) if dyn else ("constants", data)
        key = jax.random.key(0)
        with compiling("Gibbs", progress) as programs:
            compiled, relay = programs.compile(
                jax.jit(program), (key, dyn), relay=relay or progress_lib.Relay(),
                key=("gibbs", model, self, static, W, S, C, mesh, progress))
        return compiled, relay, programs, dyn
