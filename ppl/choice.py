"""The random-choice primitive: one JAX primitive per random choice of an objective program.

Inside :func:`ppl.sim`, every unobserved ``sample`` site binds :data:`random_choice_p`
instead of calling ``fn.sample(key)``. Its operands are the PRNG key and the leaves of the
site's NumPyro distribution (distributions are pytrees), so the parameters carry tangents
like any other value; its static parameters are the distribution's treedef, the site name,
the site's gradient strategy, the ``sample_shape`` and the shape of the ``vmap`` batch the
choice sits in (``batch_shape``, empty outside ``vmap``).

- The plain implementation samples, so ordinary evaluation and ``jax.jit`` just work.
- The batching rule (``jax.vmap`` over particles inside an objective) gives one choice whose
  leading ``batch_shape`` axes index independent draws: a key that is not batched is split
  into one key per element, so the particles of ``jax.vmap(lambda _: ppl.sim(q))(jnp.arange(K))``
  are independent.
- Differentiating the primitive directly is an error that points at
  :meth:`ppl.Expectation.grad_estimate`: gradients of expectations come from the ADEV
  interpreter (:mod:`ppl.adev`), which reads these equations out of the objective's jaxpr.

Example:
    >>> import jax, numpyro.distributions as dist
    >>> from ppl.choice import bind_choice
    >>> from ppl.strategy import Reparam
    >>> x = bind_choice(jax.random.key(0), dist.Normal(0.0, 1.0), name="z", strategy=Reparam())
    >>> x.shape
    ()
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import jax
import jax.numpy as jnp
from jax.extend.core import Primitive
from jax.interpreters import ad, batching, mlir

__all__ = ["random_choice_p", "bind_choice", "Choice"]


class Static:
    """Wraps a static value (a treedef) so that it hashes and compares by identity."""

    __slots__ = ("value",)

    def __init__(self, value: Any):
        self.value = value

    def __hash__(self) -> int:
        return id(self.value)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Static) and other.value is self.value

    def __repr__(self) -> str:
        return "<static>"


random_choice_p = Primitive("random_choice")


def vmap_leading(fn: Callable, n: int) -> Callable:
    """``fn`` mapped over the ``n`` leading axes of every argument."""
    for _ in range(n):
        fn = jax.vmap(fn)
    return fn


@dataclass(frozen=True)
class Choice:
    """The static description of one random-choice equation, with helpers to sample it.

    ``key`` has shape ``batch_shape``; each leaf has ``batch_shape`` leading axes.
    """

    treedef: Any
    name: str
    strategy: Any
    sample_shape: tuple
    batch_shape: tuple

    @classmethod
    def from_params(cls, params: dict) -> "Choice":
        return cls(params["treedef"].value, params["name"], params["strategy"],
                   params["sample_shape"], params["batch_shape"])

    def dist(self, leaves):
        """The (unbatched) distribution from one element's leaves."""
        return jax.tree_util.tree_unflatten(self.treedef, leaves)

    def _batched(self, fn: Callable) -> Callable:
        return vmap_leading(fn, len(self.batch_shape))

    def draw(self, key, fn):
        """One batch element's value: ``fn.sample``, or the hard sample of a relaxation (a float)."""
        if getattr(self.strategy, "relaxed", False):
            return relaxed_bernoulli(key, fn, self.sample_shape, self.strategy)[0]
        return fn.sample(key, self.sample_shape)

    def sample(self, key, leaves):
        """Draw the choice (all batch elements), with pathwise tangents where the sampler has them."""
        return self._batched(lambda k, lv: self.draw(k, self.dist(lv)))(key, leaves)

    def log_prob(self, value, leaves):
        """Elementwise log density, shape ``batch_shape + sample_shape + dist.batch_shape``."""
        return self._batched(lambda v, lv: self.dist(lv).log_prob(v))(value, leaves)

    def map(self, fn: Callable) -> Callable:
        """``fn(key, dist) -> array`` applied to every batch element."""
        return self._batched(lambda k, lv: fn(k, self.dist(lv)))

    def map_dist(self, fn: Callable) -> Callable:
        """``fn(dist) -> array`` applied to every batch element's distribution (leaves only)."""
        return self._batched(lambda lv: fn(self.dist(lv)))


def relaxed_bernoulli(key, fn, sample_shape, strategy):
    """``(hard, soft)`` for a Bernoulli site under a relaxation strategy.

    ``hard`` is a float sample in {0, 1}; ``soft`` has the same value and the relaxation's
    tangent (``p`` for straight-through; the binary Concrete sample for Gumbel-softmax), so
    ``soft`` is what carries tangents. Uses the same noise for both: ``hard = 1[logit(p) + g > 0]``
    with ``g`` logistic.
    """
    from ppl.distributions import base_distribution
    from ppl.strategy import GumbelSoftmax

    shape = tuple(sample_shape) + tuple(fn.batch_shape) + tuple(fn.event_shape)
    probs = jnp.broadcast_to(base_distribution(fn).probs, shape)
    logits = jnp.log(probs) - jnp.log1p(-probs)
    g = jax.random.logistic(key, shape, dtype=probs.dtype)
    hard = (jax.lax.stop_gradient(logits) + g > 0).astype(probs.dtype)
    if isinstance(strategy, GumbelSoftmax):
        relaxed = jax.nn.sigmoid((logits + g) / strategy.temperature)
    else:
        relaxed = probs
    return hard, hard + (relaxed - jax.lax.stop_gradient(relaxed))


def _abstract_eval(key, *leaves, treedef, name, strategy, sample_shape, batch_shape):
    choice = Choice(treedef.value, name, strategy, sample_shape, batch_shape)
    one = jax.eval_shape(
        lambda k, lv: choice.draw(k, choice.dist(lv)),
        jax.ShapeDtypeStruct((), key.dtype),
        [jax.ShapeDtypeStruct(lv.shape[len(batch_shape):], lv.dtype) for lv in leaves],
    )
    return jax.core.ShapedArray(tuple(batch_shape) + tuple(one.shape), one.dtype)


def _impl(key, *leaves, treedef, name, strategy, sample_shape, batch_shape):
    choice = Choice(treedef.value, name, strategy, sample_shape, batch_shape)
    return choice.sample(key, list(leaves))


def _batch_rule(args, dims, *, treedef, name, strategy, sample_shape, batch_shape):
    size = next(a.shape[d] for a, d in zip(args, dims) if d is not None)
    key, *leaves = args
    kdim, *ldims = dims
    if kdim is None:
        # One independent draw per element of the vmapped axis: split the shared key.
        flat = key.reshape(-1)
        keys = jax.vmap(lambda k: jax.random.split(k, size))(flat)  # (m, size)
        key = jnp.moveaxis(keys, 1, 0).reshape((size,) + tuple(batch_shape))
    else:
        key = jnp.moveaxis(key, kdim, 0)
    new_leaves = []
    for leaf, d in zip(leaves, ldims):
        if d is None:
            leaf = jnp.broadcast_to(leaf, (size,) + tuple(jnp.shape(leaf)))
        else:
            leaf = jnp.moveaxis(leaf, d, 0)
        new_leaves.append(leaf)
    out = random_choice_p.bind(
        key, *new_leaves, treedef=treedef, name=name, strategy=strategy,
        sample_shape=sample_shape, batch_shape=(size,) + tuple(batch_shape),
    )
    return out, 0


def _jvp_rule(primals, tangents, *, name, **params):
    raise TypeError(
        f"random choice at site '{name}' cannot be differentiated directly: gradients of "
        "expectations come from ppl.Expectation.grad_estimate (the ADEV transformation), not "
        "from jax.grad of the estimate."
    )


random_choice_p.def_impl(_impl)
random_choice_p.def_abstract_eval(_abstract_eval)
batching.primitive_batchers[random_choice_p] = _batch_rule
ad.primitive_jvps[random_choice_p] = _jvp_rule
mlir.register_lowering(random_choice_p, mlir.lower_fun(_impl, multiple_results=False))


def bind_choice(key: jax.Array, fn: Any, *, name: str, strategy: Any,
                sample_shape: tuple = ()) -> jax.Array:
    """Bind one random choice of distribution ``fn`` at site ``name`` with ``strategy``.

    Example:
        >>> import jax, numpyro.distributions as dist
        >>> from ppl.strategy import Reinforce
        >>> b = bind_choice(jax.random.key(1), dist.Bernoulli(0.5), name="b", strategy=Reinforce())
        >>> float(b) in (0.0, 1.0)
        True
    """
    if not jnp.issubdtype(key.dtype, jax.dtypes.prng_key):
        key = jax.random.wrap_key_data(key)
    leaves, treedef = jax.tree_util.tree_flatten(fn)
    leaves = [jnp.asarray(leaf) for leaf in leaves]
    return random_choice_p.bind(
        key, *leaves, treedef=Static(treedef), name=name, strategy=strategy,
        sample_shape=tuple(sample_shape), batch_shape=(),
    )
