"""The ADEV interpreter: forward-mode differentiation of an expectation, with continuations.

The objective is traced to a jaxpr (:mod:`ppl.expectation`) in which each random choice is a
:data:`ppl.choice.random_choice_p` equation. :func:`jvp_jaxpr` interprets that jaxpr equation
by equation on dual numbers ``(primal, tangent)``:

- an ordinary equation: ``jax.jvp`` of its primitive;
- a random choice: its strategy's rule, given the *continuation* ``k(x_dual) -> (y, dy)`` that
  interprets the rest of the jaxpr from that point and returns the final scalar's dual.

Rules for ``x ~ p_theta`` with parameter tangents ``d_theta`` (Lew et al., POPL 2023):

- Reparam: ``x = T(theta, eps)``; pass ``(x, dT)`` to ``k``.
- Reinforce: ``(y, dy) = k((x, 0))``; return ``(y, dy + (y - b) <grad log p(x), d_theta>)``.
  Inside ``jax.vmap`` the batch is one joint choice (summed log density).
- Enum: ``sum_v (p(v) k(v).y, dp(v) k(v).y + p(v) k(v).dy)`` over the joint support of the site.
- MVD: ``(y, dy + sum_j d_theta_j c_j (k(x+_j).y - k(x-_j).y))`` per element and canonical
  parameter (:mod:`ppl.mvd`).
- StraightThrough / GumbelSoftmax (biased): the hard value with a relaxed tangent.

Every rule runs the continuation with the same keys for the later choices (common random
numbers). With the key fixed, the returned tangent is linear in the input tangents, so
:class:`ppl.Expectation` registers the estimator as a ``jax.custom_jvp`` whose rule is this
interpreter, and ``jax.grad`` transposes it to get reverse mode.

Random choices must sit at the top level of the jaxpr (``jax.vmap`` over particles is fine:
batching happens while tracing); a choice inside ``scan``/``cond``/``while``/``jit`` bodies is a
clear error (:mod:`ppl.expectation` reports it earlier, at the ``ppl.sim`` call).

Example:
    >>> import jax, jax.numpy as jnp
    >>> closed = jax.make_jaxpr(lambda t: jnp.sin(t) * 2.0)(0.0)
    >>> y, dy = jvp_jaxpr(closed, [0.0], [1.0])
    >>> float(y), float(dy)
    (0.0, 2.0)
"""

from __future__ import annotations

import math
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.extend.core import ClosedJaxpr, Jaxpr, Literal

from ppl import mvd
from ppl.choice import Choice, random_choice_p, relaxed_bernoulli
from ppl.strategy import (
    MAX_ENUM_CONFIGS,
    MVD,
    Enum,
    GumbelSoftmax,
    Reinforce,
    Reparam,
    StraightThrough,
    StrategyError,
)

__all__ = ["Dual", "jvp_jaxpr", "choice_sites"]


class Dual(NamedTuple):
    """A primal value and its tangent (``None`` stands for a zero tangent)."""

    primal: Any
    tangent: Any


#: ``k(x_dual, primal_only=False) -> (y, dy)``; with ``primal_only`` all tangents are dropped
#: downstream (``dy`` is zero), which keeps the branches that only need ``y`` (MVD) cheap.
Continuation = Callable[..., tuple]


def _is_float(x) -> bool:
    return jnp.issubdtype(jnp.result_type(x), jnp.inexact)


def _zero_tangent(x):
    if _is_float(x):
        return jnp.zeros(jnp.shape(x), jnp.result_type(x))
    return np.zeros(jnp.shape(x), jax.dtypes.float0)


def _tangent_or_none(t):
    if t is None or getattr(t, "dtype", None) == jax.dtypes.float0:
        return None
    return t


def _sub_jaxprs(params: dict):
    for value in params.values():
        items = value if isinstance(value, (tuple, list)) else (value,)
        for item in items:
            if isinstance(item, ClosedJaxpr):
                yield item.jaxpr
            elif isinstance(item, Jaxpr):
                yield item


def choice_sites(jaxpr: Jaxpr, nested: bool = False) -> list[str]:
    """Names of the random-choice sites in ``jaxpr`` (with ``nested``: only inside sub-jaxprs).

    Example:
        >>> import jax
        >>> choice_sites(jax.make_jaxpr(lambda x: x + 1)(0.0).jaxpr)
        []
    """
    out = []
    for eqn in jaxpr.eqns:
        if eqn.primitive is random_choice_p and not nested:
            out.append(eqn.params["name"])
        for sub in _sub_jaxprs(eqn.params):
            out += choice_sites(sub)
    return out


def _read(env: dict, var) -> Dual:
    if isinstance(var, Literal):
        return Dual(var.val, None)
    return env[var]


def _eval_eqn(eqn, invals: list[Dual]) -> list[Dual]:
    params = eqn.primitive.get_bind_params(eqn.params)

    def apply(*args):
        with eqn.ctx.manager:
            out = eqn.primitive.bind(*args, **params)
        return list(out) if eqn.primitive.multiple_results else [out]

    primals = [v.primal for v in invals]
    if all(v.tangent is None for v in invals):
        return [Dual(o, None) for o in apply(*primals)]
    tangents = [v.tangent if v.tangent is not None else _zero_tangent(v.primal) for v in invals]
    outs, touts = jax.jvp(apply, primals, tangents)
    return [Dual(o, _tangent_or_none(t)) for o, t in zip(outs, touts)]


def _run(eqns, i: int, env: dict, outvars, k_final) -> tuple:
    """Interpret ``eqns[i:]`` in ``env`` (a private copy), then call ``k_final`` on the outputs."""
    while i < len(eqns):
        eqn = eqns[i]
        if eqn.primitive is random_choice_p:
            outvar = eqn.outvars[0]

            def cont(x: Dual, primal_only: bool = False, _i=i, _env=env, _var=outvar) -> tuple:
                if primal_only:  # only the value is wanted: drop every tangent downstream
                    env2 = {var: Dual(d.primal, None) for var, d in _env.items()}
                    x = Dual(x.primal, None)
                else:
                    env2 = dict(_env)
                env2[_var] = x
                return _run(eqns, _i + 1, env2, outvars, k_final)

            key, *leaves = [_read(env, v) for v in eqn.invars]
            return _choice_rule(Choice.from_params(eqn.params), key.primal, leaves, cont)
        inner = [s for sub in _sub_jaxprs(eqn.params) for s in choice_sites(sub)]
        if inner:
            raise StrategyError(
                f"random choice(s) {inner} sit inside a '{eqn.primitive.name}' body "
                "(jax.lax.scan / cond / while_loop / jit / grad inside the objective); the ADEV "
                "transformation supports random choices at the top level and under jax.vmap. "
                "Unroll the loop in Python or draw the choices with jax.vmap."
            )
        outs = _eval_eqn(eqn, [_read(env, v) for v in eqn.invars])
        for var, val in zip(eqn.outvars, outs):
            env[var] = val
        i += 1
    return k_final([_read(env, v) for v in outvars])


def jvp_jaxpr(closed: ClosedJaxpr, primals: list, tangents: list) -> tuple:
    """The ADEV forward-mode estimate ``(y, dy)`` of a closed jaxpr with one scalar output.

    ``tangents`` holds one tangent (or ``None`` for zero) per input of the jaxpr.
    """
    jaxpr = closed.jaxpr
    env = {v: Dual(c, None) for v, c in zip(jaxpr.constvars, closed.consts)}
    for var, p, t in zip(jaxpr.invars, primals, tangents):
        env[var] = Dual(p, _tangent_or_none(t))

    def final(outs: list[Dual]) -> tuple:
        (out,) = outs
        y = jnp.asarray(out.primal)
        dy = jnp.zeros_like(y) if out.tangent is None else jnp.asarray(out.tangent)
        return y, dy

    return _run(jaxpr.eqns, 0, env, jaxpr.outvars, final)


# ----------------------------------------------------------------------------------------
# Rules
# ----------------------------------------------------------------------------------------


def _choice_rule(choice: Choice, key, leaves: list[Dual], k: Continuation) -> tuple:
    lp = [d.primal for d in leaves]
    if all(d.tangent is None for d in leaves):
        lt = None
    else:
        lt = [d.tangent if d.tangent is not None else _zero_tangent(d.primal) for d in leaves]
    strategy = choice.strategy
    if isinstance(strategy, Reparam):
        return _reparam(choice, key, lp, lt, k)
    if isinstance(strategy, Reinforce):
        return _reinforce(choice, key, lp, lt, k)
    if isinstance(strategy, Enum):
        return _enum(choice, key, lp, lt, k)
    if isinstance(strategy, MVD):
        return _mvd(choice, key, lp, lt, k)
    if isinstance(strategy, (StraightThrough, GumbelSoftmax)):
        return _relaxed(choice, key, lp, lt, k)
    raise StrategyError(f"site '{choice.name}': no ADEV rule for strategy {strategy!r}")


def _reparam(choice, key, lp, lt, k):
    if lt is None:
        return k(Dual(choice.sample(key, lp), None))
    x, dx = jax.jvp(lambda lv: choice.sample(key, lv), (lp,), (lt,))
    return k(Dual(x, _tangent_or_none(dx)))


def _score(choice, x, lp, lt):
    """``<grad_theta sum log p(x), d_theta>``: the joint score in the direction of the tangents."""
    return jax.jvp(lambda lv: jnp.sum(choice.log_prob(x, lv)), (lp,), (lt,))[1]


def _callable_baseline(choice, lp):
    values = choice.map_dist(choice.strategy.baseline)(lp)
    return jax.lax.stop_gradient(jnp.mean(values))


def _reinforce(choice, key, lp, lt, k):
    strategy = choice.strategy
    if strategy.baseline == "mean":
        n = int(strategy.num_samples)
        fold = choice._batched(lambda kk, i: jax.random.fold_in(kk, i))
        keys = [key] + [fold(key, jnp.full(choice.batch_shape, i, jnp.uint32)) for i in range(1, n)]
        xs = jax.vmap(lambda kk: choice.sample(kk, lp))(jnp.stack(keys))
        ys, dys = jax.vmap(lambda x: k(Dual(x, None)))(xs)
        if lt is None:
            return jnp.mean(ys), jnp.mean(dys)
        scores = jax.vmap(lambda x: _score(choice, x, lp, lt))(xs)
        loo = (jnp.sum(ys) - ys) / (n - 1)  # baseline of draw i: the mean of the others
        return jnp.mean(ys), jnp.mean(dys + (ys - jax.lax.stop_gradient(loo)) * scores)
    x = choice.sample(key, lp)
    y, dy = k(Dual(x, None))
    if lt is None:
        return y, dy
    b = 0.0 if strategy.baseline is None else _callable_baseline(choice, lp)
    return y, dy + (jax.lax.stop_gradient(y) - b) * _score(choice, x, lp, lt)


def _enum(choice, key, lp, lt, k):
    if choice.batch_shape:
        raise StrategyError(
            f"site '{choice.name}': Enum inside jax.vmap (batch {choice.batch_shape}) would "
            "enumerate every joint configuration of the batch, exponentially many; use "
            "Reinforce or MVD for vmapped choices, or enumerate outside the vmap."
        )
    fn = choice.dist(lp)
    value = jax.eval_shape(lambda: choice.sample(key, lp))
    n = math.prod(value.shape)
    support = jnp.reshape(fn.enumerate_support(expand=False), (-1,)).astype(value.dtype)
    count = support.shape[0] ** n
    if count > MAX_ENUM_CONFIGS:
        raise StrategyError(
            f"site '{choice.name}': Enum would enumerate {support.shape[0]}^{n} = {count} joint "
            f"configurations of a value of shape {value.shape} (limit {MAX_ENUM_CONFIGS}); use "
            "Reinforce or MVD for this site."
        )
    if n == 0:
        configs = jnp.zeros((1,) + value.shape, value.dtype)
    else:
        grids = jnp.meshgrid(*([support] * n), indexing="ij")
        configs = jnp.stack(grids, axis=-1).reshape((count,) + value.shape)

    def probs(lv):
        return jnp.exp(jax.vmap(lambda v: jnp.sum(choice.dist(lv).log_prob(v)))(configs))

    ys, dys = jax.vmap(lambda v: k(Dual(v, None)))(configs)
    if lt is None:
        p = probs(lp)
        return jnp.sum(p * ys), jnp.sum(p * dys)
    p, dp = jax.jvp(probs, (lp,), (lt,))
    return jnp.sum(p * ys), jnp.sum(dp * ys + p * dys)


def _mvd(choice, key, lp, lt, k):
    x = choice.sample(key, lp)
    y, dy = k(Dual(x, None))
    if lt is None:
        return y, dy
    nb = len(choice.batch_shape)
    elem_shape = x.shape[nb:]
    canon = choice._batched(lambda lv: mvd.canonical(choice.dist(lv), elem_shape))
    _, dthetas = jax.jvp(canon, (lp,), (lt,))
    parts = choice._batched(lambda kk, lv, xe: mvd.parts(kk, choice.dist(lv), xe))(key, lp, x)
    flat = x.reshape(-1)
    n = flat.shape[0]

    def branch_values(idx, vals):
        return jax.vmap(lambda i, v: k(Dual(flat.at[i].set(v).reshape(x.shape), None), True)[0])(
            idx, vals
        )

    total = dy
    for (c, xp, xm), dtheta in zip(parts, dthetas):
        m = math.prod(c.shape[x.ndim:])  # categories per element (1 for scalar parameters)
        idx = jnp.arange(n * m) // m
        y_plus = branch_values(idx, xp.reshape(-1).astype(x.dtype))
        y_minus = y if xm is None else branch_values(idx, xm.reshape(-1).astype(x.dtype))
        weight = jax.lax.stop_gradient(c.reshape(-1) * (y_plus - y_minus))
        total = total + jnp.sum(dtheta.reshape(-1) * weight)
    return y, total


def _relaxed(choice, key, lp, lt, k):
    def soft(lv):
        return choice._batched(
            lambda kk, l1: relaxed_bernoulli(kk, choice.dist(l1), choice.sample_shape,
                                             choice.strategy)[1]
        )(key, lv)

    if lt is None:
        return k(Dual(soft(lp), None))
    x, dx = jax.jvp(soft, (lp,), (lt,))
    return k(Dual(x, dx))
