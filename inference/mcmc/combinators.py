r"""The kernel algebra: combine BlackJAX-protocol kernels into one kernel.

Every combinator takes :class:`blackjax.base.SamplingAlgorithm` objects -- ours (see
:mod:`inference.langevin`) and BlackJAX's mix freely -- and returns one:

* :func:`compose` ``(k1, k2, ...)``: one step is a step of each member in turn.
* :func:`cycle` ``([k1, k2, ...])``: step ``t`` is a step of member ``t mod n``.
* :func:`mixture` ``([k1, ...], weights)``: each step is a step of one member, drawn
  with probabilities ``weights`` (``jax.lax.switch`` on the drawn index).

If every member leaves a density ``p`` invariant, so does each combination (a product of
``p``-invariant kernels, a fixed cyclic schedule of them, a mixture of them). The members
are meant to target the *same* density; the combination is then a valid MCMC kernel for it.

**State.** Members have different state types (MALA's ``LangevinState``, OBABO's
``UnderdampedState`` with a momentum, BlackJAX's ``MALAState`` ...), so the combined
:class:`CombinedState` holds the shared ``position``, each member's own state in
``states``, and a step counter. Before a member steps, its state is brought up to the
current position:

* *Shared cache* (the default, ``share_cache=True``, used when every member's state has
  ``position``, ``logdensity`` and ``logdensity_grad`` fields, as all of ours and
  BlackJAX's gradient kernels do): the member's state gets the current position, log
  density and gradient from the member that moved last. No gradient is recomputed, and the
  member's other fields (a momentum) are kept -- valid because the momentum is
  independent of the position under the extended target ``p(x) N(m; 0, M^{-1})``, so
  moving ``x`` by another ``p``-invariant kernel leaves the extended target invariant.
  The combined state then has ``logdensity`` / ``logdensity_grad`` itself, so combinations
  nest (``compose(cycle([a, b]), c)``) with the same sharing.
* Otherwise (a member without those fields, e.g. SGLD, or ``share_cache=False``): if the
  member's position differs from the current one it is re-initialised,
  ``alg.init(position, key)`` (with a key, so kinetic kernels draw a fresh momentum);
  that costs one gradient for a state with a ``logdensity_grad`` field, counted in
  ``n_grad``.

**Info.** :class:`CombinedInfo` has the summed ``n_grad`` (members' plus re-initialisation
gradients), an ``acceptance_rate`` (the mean over the members stepped that have an accept
step; ``1.0`` -- "every move taken" -- where none has), ``kernel`` (the index of the member
stepped; ``-1`` for :func:`compose`, which steps all), and ``infos``, each member's own
info (zeros for members not stepped by :func:`cycle` / :func:`mixture`).

Each member's info must say how many gradients its step took: a field ``n_grad`` (all of
ours), ``num_integration_steps`` (BlackJAX HMC / NUTS), or a BlackJAX info type with a
known count (MALA, Barker: 1; random walk, elliptical slice: 0). For any other kernel,
wrap it with :func:`counted`.

Under ``jax.vmap`` over chains, :func:`cycle` and :func:`mixture` run every member on every
step (``lax.switch`` with a batched index becomes a select), so their cost per step is that
of :func:`compose`; the draws are still those of the chosen member.
"""

from __future__ import annotations

from typing import Any, NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from blackjax.base import SamplingAlgorithm

__all__ = ["CombinedState", "CombinedInfo", "CountedInfo", "compose", "cycle", "mixture",
           "counted", "info_n_grad"]


class CombinedState(NamedTuple):
    """State of a combined kernel.

    Attributes:
        position: the current position, shared by all members.
        logdensity, logdensity_grad: log density and gradient there (shared cache), or
            ``None`` when some member cannot use them.
        states: each member's own state (its position may lag behind ``position``; it is
            synchronised before the member steps).
        count: number of steps taken (``cycle`` uses it to pick the member).
    """

    position: Any
    logdensity: Any
    logdensity_grad: Any
    states: tuple
    count: jax.Array


class CombinedInfo(NamedTuple):
    """Info of a combined step: see the module docstring."""

    n_grad: jax.Array
    acceptance_rate: jax.Array
    kernel: jax.Array
    infos: tuple


class CountedInfo(NamedTuple):
    """Info of a kernel wrapped by :func:`counted`: its gradient count and its own info."""

    n_grad: jax.Array
    info: Any


# Gradient counts of BlackJAX info types that do not carry one.
_KNOWN_COUNTS = {
    ("blackjax.mcmc.mala", "MALAInfo"): 1,
    ("blackjax.mcmc.barker", "BarkerInfo"): 1,
    ("blackjax.mcmc.random_walk", "RWInfo"): 0,
    ("blackjax.mcmc.elliptical_slice", "EllipSliceInfo"): 0,
}


def _known_count(info: Any) -> int | None:
    return _KNOWN_COUNTS.get((type(info).__module__, type(info).__name__))


def info_n_grad(info: Any) -> jax.Array:
    """Gradient evaluations of one step, read from a kernel's info.

    ``info.n_grad`` if present, else ``info.num_integration_steps`` (HMC, NUTS), else the
    known count of a BlackJAX info type. Raises ``ValueError`` otherwise (wrap the kernel
    with :func:`counted`).

    Example:
        >>> import jax, jax.numpy as jnp, blackjax
        >>> alg = blackjax.mala(lambda x: -0.5 * jnp.sum(x**2), 0.1)
        >>> _, info = alg.step(jax.random.key(0), alg.init(jnp.zeros(2)))
        >>> int(info_n_grad(info))
        1
    """
    source = _n_grad_source(info)
    if source == "n_grad":
        return jnp.asarray(info.n_grad).astype(jnp.int32)
    if source == "num_integration_steps":
        return jnp.asarray(info.num_integration_steps).astype(jnp.int32)
    return jnp.asarray(_known_count(info), jnp.int32)


def _n_grad_source(info: Any) -> str:
    if hasattr(info, "n_grad"):
        return "n_grad"
    if hasattr(info, "num_integration_steps"):
        return "num_integration_steps"
    if _known_count(info) is not None:
        return "known"
    raise ValueError(
        f"cannot tell how many gradients a step of this kernel takes: its info "
        f"{type(info).__module__}.{type(info).__name__} has no 'n_grad' or "
        "'num_integration_steps' field. Wrap the kernel with "
        "inference.kernels.counted(alg, n_grad=...)."
    )


def _acceptance(info: Any) -> jax.Array | None:
    if isinstance(info, CountedInfo):
        return _acceptance(info.info)
    rate = getattr(info, "acceptance_rate", None)
    return None if rate is None else jnp.asarray(rate)


def counted(alg: SamplingAlgorithm, n_grad: int) -> SamplingAlgorithm:
    """``alg`` with its info wrapped as ``CountedInfo(n_grad, info)``: a declared gradient count.

    For kernels whose info does not say how many gradients a step takes.

    Example:
        >>> import jax, jax.numpy as jnp, blackjax
        >>> rw = blackjax.additive_step_random_walk(
        ...     lambda x: -0.5 * jnp.sum(x**2), blackjax.mcmc.random_walk.normal(1.0))
        >>> alg = counted(rw, n_grad=0)
        >>> _, info = alg.step(jax.random.key(0), alg.init(jnp.zeros(2)))
        >>> int(info.n_grad)
        0
    """
    n = int(n_grad)
    if n < 0:
        raise ValueError(f"counted(n_grad={n_grad}): must be >= 0.")

    def step(rng_key, state):
        state, info = alg.step(rng_key, state)
        return state, CountedInfo(jnp.asarray(n, jnp.int32), info)

    return SamplingAlgorithm(alg.init, step)


# ----------------------------------------------------------------------------------------
# Checks
# ----------------------------------------------------------------------------------------
def _signature(tree: Any) -> tuple:
    leaves, treedef = jax.tree.flatten(tree)
    return treedef, tuple((tuple(jnp.shape(x)), jnp.dtype(jnp.result_type(x))) for x in leaves)


def _describe(tree: Any) -> str:
    shapes = jax.tree.map(lambda x: f"{jnp.dtype(jnp.result_type(x)).name}{list(jnp.shape(x))}", tree)
    return str(shapes)


def _check_members(name: str, algs: Sequence[Any]) -> tuple[SamplingAlgorithm, ...]:
    algs = tuple(algs)
    if not algs:
        raise ValueError(f"kernels.{name}: needs at least one kernel; got none.")
    for i, alg in enumerate(algs):
        if not (callable(getattr(alg, "init", None)) and callable(getattr(alg, "step", None))):
            raise TypeError(
                f"kernels.{name}: kernel {i} is {alg!r} ({type(alg).__name__}); expected a "
                "SamplingAlgorithm with init(position, rng_key) and step(key, state), e.g. "
                "inference.langevin.mala(logdensity_fn, step_size=0.1) or blackjax.mala(...)."
            )
    return algs


def _has_cache(state: Any, position_sig: tuple) -> bool:
    """Does ``state`` (abstract) cache the log density and its gradient at its position?"""
    fields = getattr(state, "_fields", ())
    if not all(f in fields for f in ("position", "logdensity", "logdensity_grad")):
        return False
    if state.logdensity is None or state.logdensity_grad is None:
        return False
    return jnp.shape(state.logdensity) == () and _signature(state.logdensity_grad) == position_sig


def _analyse(name: str, algs: tuple, position: Any, key: jax.Array) -> list:
    """Abstract ``init`` and ``step`` of each member; errors name the member at fault."""
    want = _signature(position)
    states = []
    for i, alg in enumerate(algs):
        try:
            state = jax.eval_shape(alg.init, position, key)
        except Exception as err:
            raise ValueError(
                f"kernels.{name}: kernel {i} cannot be initialised at a position with "
                f"structure {_describe(position)}: {type(err).__name__}: {err}. All kernels "
                "must work on the same position pytree (same structure, leaf shapes and dtypes)."
            ) from err
        got = getattr(state, "position", None)
        if got is None or _signature(got) != want:
            raise ValueError(
                f"kernels.{name}: kernel {i}'s state position has structure "
                f"{_describe(got) if got is not None else 'None (no position field)'}, but the "
                f"position has structure {_describe(position)}. All kernels must work on the "
                "same position pytree (same structure, leaf shapes and dtypes)."
            )
        try:
            new, info = jax.eval_shape(alg.step, key, state)
        except Exception as err:
            raise ValueError(
                f"kernels.{name}: kernel {i}'s step fails on its own state at a position with "
                f"structure {_describe(position)}: {type(err).__name__}: {err}."
            ) from err
        if _signature(new.position) != want:
            raise ValueError(
                f"kernels.{name}: kernel {i}'s step returns a position with structure "
                f"{_describe(new.position)}; expected {_describe(position)}."
            )
        try:
            _n_grad_source(info)
        except ValueError as err:
            raise ValueError(f"kernels.{name}: kernel {i}: {err}") from None
        states.append(state)
    return states


def _same_position(a: Any, b: Any) -> jax.Array:
    same = jnp.asarray(True)
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
        same = same & jnp.all(x == y)
    return same


# ----------------------------------------------------------------------------------------
# The shared machinery
# ----------------------------------------------------------------------------------------
class _Members:
    """The members of a combination and how to initialise, synchronise and step one."""

    def __init__(self, name: str, algs: Sequence[Any], share_cache: bool):
        self.name = name
        self.algs = _check_members(name, algs)
        self.share_cache = bool(share_cache)

    def init(self, position: Any, rng_key: jax.Array | None = None) -> CombinedState:
        position = jax.tree.map(jnp.asarray, position)
        probe = jax.random.key(0) if rng_key is None else rng_key
        abstract = _analyse(self.name, self.algs, position, probe)
        sig = _signature(position)
        share = self.share_cache and all(_has_cache(s, sig) for s in abstract)
        keys = [None] * len(self.algs) if rng_key is None else list(jax.random.split(rng_key, len(self.algs)))
        states = tuple(alg.init(position, k) for alg, k in zip(self.algs, keys))
        first = states[0]
        return CombinedState(
            position=first.position,
            logdensity=first.logdensity if share else None,
            logdensity_grad=first.logdensity_grad if share else None,
            states=states,
            count=jnp.zeros((), jnp.int32),
        )

    def step_one(self, i: int, key: jax.Array, state: CombinedState):
        """Synchronise member ``i`` with the current position and step it."""
        alg, own = self.algs[i], state.states[i]
        k_init, k_step = jax.random.split(key)
        extra = jnp.zeros((), jnp.int32)
        if state.logdensity is not None:  # shared cache: transplant, no gradient
            own = own._replace(position=state.position, logdensity=state.logdensity,
                               logdensity_grad=state.logdensity_grad)
        else:
            cost = 1 if "logdensity_grad" in getattr(own, "_fields", ()) else 0
            same = _same_position(own.position, state.position)
            own = jax.lax.cond(same, lambda: own, lambda: alg.init(state.position, k_init))
            extra = jnp.where(same, 0, cost).astype(jnp.int32)
        own, info = alg.step(k_step, own)
        states = state.states[:i] + (own,) + state.states[i + 1:]
        shared = state.logdensity is not None
        new = CombinedState(
            position=own.position,
            logdensity=own.logdensity if shared else None,
            logdensity_grad=own.logdensity_grad if shared else None,
            states=states,
            count=state.count,
        )
        return new, info, info_n_grad(info) + extra

    def info_shapes(self, key: jax.Array, state: CombinedState) -> list:
        return [jax.eval_shape(alg.step, key, s)[1] for alg, s in zip(self.algs, state.states)]

    def step_index(self, index: jax.Array, key: jax.Array, state: CombinedState):
        """Step the member ``index`` (traced) with ``lax.switch``."""
        shapes = self.info_shapes(key, state)
        zeros = [jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), sh) for sh in shapes]

        def branch(i):
            def run(key, state):
                new, info, n_grad = self.step_one(i, key, state)
                infos = tuple(info if j == i else zeros[j] for j in range(len(self.algs)))
                rate = _acceptance(info)
                rate = jnp.ones((), jnp.float32) if rate is None else rate.astype(jnp.float32)
                return new, CombinedInfo(n_grad, rate, jnp.asarray(i, jnp.int32), infos)
            return run

        new, info = jax.lax.switch(index, [branch(i) for i in range(len(self.algs))], key, state)
        return new._replace(count=state.count + 1), info


# ----------------------------------------------------------------------------------------
# The combinators
# ----------------------------------------------------------------------------------------
def compose(*kernels: SamplingAlgorithm, share_cache: bool = True) -> SamplingAlgorithm:
    """One step = one step of each kernel in turn (``k1``, then ``k2``, ...).

    Args:
        *kernels: BlackJAX-protocol kernels on the same position pytree, meant to target
            the same density.
        share_cache: pass the log density and gradient from member to member instead of
            re-initialising (see the module docstring).

    Returns:
        A ``SamplingAlgorithm`` over :class:`CombinedState` whose info is a
        :class:`CombinedInfo` (``kernel = -1``: every member stepped).

    Example:
        >>> import jax, jax.numpy as jnp, blackjax
        >>> from inference.mcmc import langevin
        >>> logp = lambda x: -0.5 * jnp.sum(x**2)
        >>> alg = compose(langevin.mala(logp, 0.5), langevin.obabo(logp, 0.5), blackjax.mala(logp, 0.5))
        >>> state = alg.init(jnp.zeros(2), jax.random.key(0))
        >>> state, info = jax.jit(alg.step)(jax.random.key(1), state)
        >>> state.position.shape, int(info.n_grad)
        ((2,), 3)
    """
    members = _Members("compose", kernels, share_cache)

    def step(rng_key, state):
        keys = jax.random.split(rng_key, len(members.algs))
        infos, n_grad, rates = [], jnp.zeros((), jnp.int32), []
        for i, k in enumerate(keys):
            state, info, n = members.step_one(i, k, state)
            infos.append(info)
            n_grad = n_grad + n
            rate = _acceptance(info)
            if rate is not None:
                rates.append(rate.astype(jnp.float32))
        rate = jnp.mean(jnp.stack(rates)) if rates else jnp.ones((), jnp.float32)
        return (state._replace(count=state.count + 1),
                CombinedInfo(n_grad, rate, jnp.asarray(-1, jnp.int32), tuple(infos)))

    return SamplingAlgorithm(members.init, step)


def cycle(kernels: Sequence[SamplingAlgorithm], share_cache: bool = True) -> SamplingAlgorithm:
    """Step ``t`` is a step of ``kernels[t mod n]`` (the counter lives in the state).

    Args:
        kernels: a sequence of BlackJAX-protocol kernels on the same position pytree.
        share_cache: see the module docstring.

    Example:
        >>> import jax, jax.numpy as jnp
        >>> from inference.mcmc import langevin
        >>> logp = lambda x: -0.5 * jnp.sum(x**2)
        >>> alg = cycle([langevin.mala(logp, 0.5), langevin.obabo(logp, 0.5, num_integration_steps=3)])
        >>> state = alg.init(jnp.zeros(2), jax.random.key(0))
        >>> state, info = alg.step(jax.random.key(1), state)
        >>> int(info.kernel), int(info.n_grad)
        (0, 1)
        >>> state, info = alg.step(jax.random.key(2), state)
        >>> int(info.kernel), int(info.n_grad)
        (1, 3)
    """
    members = _Members("cycle", kernels, share_cache)
    n = len(members.algs)

    def step(rng_key, state):
        return members.step_index(state.count % n, rng_key, state)

    return SamplingAlgorithm(members.init, step)


def mixture(
    kernels: Sequence[SamplingAlgorithm], weights: Any, share_cache: bool = True
) -> SamplingAlgorithm:
    """Each step is a step of one kernel, ``kernels[i]`` with probability ``weights[i]``.

    Args:
        kernels: a sequence of BlackJAX-protocol kernels on the same position pytree.
        weights: positive numbers, one per kernel (normalised here).
        share_cache: see the module docstring.

    Example:
        >>> import jax, jax.numpy as jnp
        >>> from inference.mcmc import langevin
        >>> logp = lambda x: -0.5 * jnp.sum(x**2)
        >>> alg = mixture([langevin.mala(logp, 0.5), langevin.obabo(logp, 0.5)], [0.3, 0.7])
        >>> state, info = alg.step(jax.random.key(1), alg.init(jnp.zeros(2), jax.random.key(0)))
        >>> int(info.kernel) in (0, 1), int(info.n_grad)
        (True, 1)
    """
    members = _Members("mixture", kernels, share_cache)
    n = len(members.algs)
    try:
        w = np.asarray(weights, dtype=float)
    except Exception as err:
        raise ValueError(f"kernels.mixture(weights={weights!r}): must be {n} positive numbers.") from err
    if w.shape != (n,):
        raise ValueError(
            f"kernels.mixture: weights has shape {w.shape} but there are {n} kernels; "
            f"pass {n} positive numbers, one per kernel."
        )
    if not np.all(np.isfinite(w) & (w > 0)):
        raise ValueError(
            f"kernels.mixture(weights={w.tolist()}): every weight must be positive and finite "
            "(drop a kernel rather than giving it weight 0)."
        )
    log_w = jnp.asarray(np.log(w / w.sum()), jnp.float32)

    def step(rng_key, state):
        k_pick, k_step = jax.random.split(rng_key)
        index = jax.random.categorical(k_pick, log_w)
        return members.step_index(index, k_step, state)

    return SamplingAlgorithm(members.init, step)
