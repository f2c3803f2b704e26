"""The estimator lab's measurements: gradient estimates of an objective under per-site
strategies, their statistics and their cost (used by :func:`ppl.gradient_report` and
:func:`ppl.auto_strategies`).

- :func:`choice_sites` traces an objective once and lists its random choices, the strategy
  each has and the strategies that apply to it.
- ``_Lab`` builds the objective with given strategies, runs ``num_estimates`` gradient
  estimates in one compiled ``jax.lax.map`` (the same keys for every variant: common random
  numbers), times them (compile excluded) and summarises them per parameter group
  (:class:`GradientRow`).

Example:
    >>> import ppl
    >>> [strategy_label(s) for s in default_candidates()][:3]
    ['reparam', 'reinforce', 'reinforce(mean)']
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping

import jax
import jax.numpy as jnp
import numpy as np

from ppl.choice import Choice, random_choice_p
from ppl.expectation import Expectation, _split_differentiable
from ppl.strategy import (
    MAX_ENUM_CONFIGS,
    Enum,
    Strategy,
    StrategyError,
    as_strategies,
    default_candidates,
    resolve_strategy,
    strategy_label,
)

__all__ = ["GradientRow", "Variant", "choice_sites", "default_candidates", "strategy_label"]


@dataclass(frozen=True)
class GradientRow:
    """One parameter group's gradient statistics under one choice of strategies.

    ``site`` is the random choice whose strategy this row sets to ``strategy`` (the other
    choices keep their current strategies); ``current`` says it is the site's strategy in the
    objective as given. For a group of one scalar, ``mean`` is the mean gradient; for a larger
    group it is the Euclidean norm of the mean gradient vector. ``variance`` is the total
    variance of one estimate (the trace of its covariance, ``E |g - E g|^2``); ``mean_se`` and
    ``variance_se`` are their standard errors over the ``num_estimates`` estimates.
    ``snr = |mean| / sqrt(variance)`` (infinite for an exact gradient); ``cost`` is seconds
    per estimate of the whole gradient (all groups).

    Example:
        >>> row = GradientRow("z", "enum", False, True, "theta", 1, 0.45, 0.0, 0.0, 0.0,
        ...                   float("inf"), 2e-6)
        >>> row.variance_x_cost
        0.0
    """

    site: str
    strategy: str
    current: bool
    unbiased: bool
    group: str
    size: int
    mean: float
    mean_se: float
    variance: float
    variance_se: float
    snr: float
    cost: float
    strategy_object: Strategy | None = field(default=None, repr=False, compare=False)

    @property
    def variance_x_cost(self) -> float:
        """``variance * cost``: the variance left after one second of estimates, up to a
        constant (averaging ``n`` estimates divides the variance by ``n``)."""
        return self.variance * self.cost


@dataclass(frozen=True)
class Variant:
    """One objective measured: ``site`` set to ``strategy`` (``site=None``: the objective as
    given), its rows, seconds per estimate and compile seconds; ``strategies`` are all the
    sites set when it was built (besides ``site``, those chosen earlier by
    :func:`ppl.auto_strategies`).

    Example:
        >>> import ppl
        >>> row = GradientRow("z", "mvd", False, True, "theta", 1, 0.4, 0.1, 2.0, 0.3, 0.28, 1e-6)
        >>> Variant("z", ppl.MVD(), (row, row), 1e-6).variance  # summed over the groups
        4.0
    """

    site: str | None
    strategy: Strategy | None
    rows: tuple[GradientRow, ...]
    cost: float
    compile_s: float = 0.0
    strategies: tuple = ()

    @property
    def variance(self) -> float:
        """Total variance of the gradient over every parameter group."""
        return float(sum(r.variance for r in self.rows))


def _as_key(key: Any) -> jax.Array:
    if isinstance(key, int) and not isinstance(key, bool):
        return jax.random.key(key)
    if not hasattr(key, "dtype"):
        raise TypeError(f"gradient_report: key must be a JAX key (jax.random.key(0)) or an int "
                        f"seed, got {type(key).__name__}.")
    if not jnp.issubdtype(key.dtype, jax.dtypes.prng_key):
        key = jax.random.wrap_key_data(key)
    return key


def _check_objective(obj: Any, where: str) -> Expectation:
    if not isinstance(obj, Expectation):
        raise TypeError(
            f"{where} must give a ppl.Expectation (an objective such as "
            f"ppl.objectives.elbo(model, guide)), got {type(obj).__name__}.")
    return obj


def choice_sites(obj: Expectation, key: jax.Array, args: tuple) -> dict[str, tuple]:
    """The random choices of ``obj`` at ``args``: ``{site: (strategy, applicable strategies)}``,
    found by tracing the objective once (in program order, first occurrence of each name).

    Example:
        >>> import jax, numpyro, numpyro.distributions as dist, ppl
        >>> @ppl.expectation
        ... def obj(p):
        ...     values, _ = ppl.sim(lambda: numpyro.sample("b", dist.Bernoulli(p)))
        ...     return values["b"] * 1.0
        >>> current, fits = choice_sites(obj, jax.random.key(0), (0.3,))["b"]
        >>> strategy_label(current), [strategy_label(s) for s in fits][:3]
        ('reinforce', ['reinforce', 'reinforce(mean)', 'enum'])
    """
    dleaves, rebuild, _ = _split_differentiable(args)
    closed = jax.make_jaxpr(lambda k, d: obj._estimate(k, *rebuild(d)))(key, dleaves)
    found: dict[str, tuple] = {}
    for eqn in closed.jaxpr.eqns:
        if eqn.primitive is not random_choice_p or eqn.params["name"] in found:
            continue
        choice = Choice.from_params(eqn.params)
        nb = len(choice.batch_shape)
        leaves = [jax.ShapeDtypeStruct(v.aval.shape[nb:], v.aval.dtype) for v in eqn.invars[1:]]
        value_shape = tuple(eqn.outvars[0].aval.shape[nb:])
        fits: list[Strategy] = []

        def collect(lv, choice=choice, value_shape=value_shape, fits=fits, nb=nb):
            fn = choice.dist(lv)
            for cand in default_candidates():
                try:
                    resolve_strategy(choice.name, fn, cand)
                except StrategyError:
                    continue
                if isinstance(cand, Enum):
                    if nb:  # ADEV enumerates outside jax.vmap only
                        continue
                    size = fn.enumerate_support(expand=False).shape[0]
                    if size ** math.prod(value_shape) > MAX_ENUM_CONFIGS:
                        continue
                fits.append(cand)
            return jnp.zeros(())

        jax.eval_shape(collect, leaves)
        found[choice.name] = (choice.strategy, fits)
    return found


def _split_static(args: tuple) -> tuple[list, Callable]:
    """Array leaves of ``args`` (passed to the compiled program) and a rebuild with the rest
    (ints, objects: closed over, so plate sizes stay concrete)."""
    leaves, tree = jax.tree_util.tree_flatten(args)
    mask = [isinstance(x, (jax.Array, np.ndarray, float)) for x in leaves]
    static = [x for x, m in zip(leaves, mask) if not m]

    def rebuild(dynamic):
        it, rest = iter(dynamic), iter(static)
        return jax.tree_util.tree_unflatten(tree, [next(it) if m else next(rest) for m in mask])

    return [x for x, m in zip(leaves, mask) if m], rebuild


def _groups(params: Any, by: str) -> list[tuple[str, list[int]]]:
    """(group name, indices of its leaves among params' leaves)."""
    paths = [jax.tree_util.keystr(p) for p, _ in jax.tree_util.tree_flatten_with_path(params)[0]]
    if by == "leaf":
        return [(p or "params", [i]) for i, p in enumerate(paths)]
    if isinstance(params, Mapping):
        out: dict[str, list[int]] = {}
        flat = jax.tree_util.tree_flatten_with_path(params)[0]
        for i, (path, _) in enumerate(flat):
            out.setdefault(str(getattr(path[0], "key", path[0])), []).append(i)
        return list(out.items())
    return [("params", list(range(len(paths))))]


def _run_timed(run: Callable, keys: jax.Array, params: Any, dynamic: list) -> tuple:
    """Compile ``run`` ahead of time, run it, and time it: the fastest of 2 to 5 runs (more
    while they take under 0.2 s in all; one when a run takes over a second), compile time
    excluded. ``(grads, seconds per estimate, compile seconds)``."""
    start = time.perf_counter()
    compiled = jax.jit(run).lower(keys, params, dynamic).compile()
    compile_s = time.perf_counter() - start
    best, grads, spent, runs = math.inf, None, 0.0, 0
    while runs < 2 or (runs < 5 and spent < 0.2):  # at least 2 runs, up to 5 within 0.2 s
        start = time.perf_counter()
        out = jax.block_until_ready(compiled(keys, params, dynamic))
        elapsed = time.perf_counter() - start
        grads = out if grads is None else grads
        best, spent, runs = min(best, elapsed), spent + elapsed, runs + 1
        if elapsed > 1.0:
            break
    return grads, best / keys.shape[0], compile_s


def _plus(leaf: Any, zero: jax.Array) -> Any:
    """``leaf + zero`` for floating-point arrays (their dtype kept), other leaves as they are."""
    if hasattr(leaf, "dtype") and jnp.issubdtype(leaf.dtype, jnp.floating):
        return leaf + zero.astype(leaf.dtype)
    if isinstance(leaf, float):
        return jnp.asarray(leaf) + zero
    return leaf


def _stats(grads: Any, groups: list, n: int) -> list[tuple]:
    """Per group: (name, size, mean, mean_se, variance, variance_se, snr)."""
    leaves = jax.tree_util.tree_leaves(grads)
    out = []
    for name, idx in groups:
        parts = [np.asarray(leaves[i], np.float64).reshape(n, -1) for i in idx
                 if leaves[i].dtype != jax.dtypes.float0]
        if not parts:
            continue
        g = np.concatenate(parts, axis=1)
        m = g.mean(0)
        d = np.sum((g - m) ** 2, axis=1)  # squared distance of each estimate from the mean
        var = float(d.sum() / (n - 1))
        # The sample variance is (n/(n-1)) x the mean of d: its standard error is sd(d)/sqrt(n)
        # to first order (for one normal coordinate, sqrt(2/n) variance, the textbook value).
        var_se = float(d.std(ddof=1) / math.sqrt(n))
        mean = float(m[0]) if g.shape[1] == 1 else float(np.linalg.norm(m))
        snr = abs(mean) / math.sqrt(var) if var > 0 else (math.inf if mean else math.nan)
        out.append((name, g.shape[1], mean, math.sqrt(var / n), var, var_se, snr))
    return out


class _Lab:
    """Measures one objective's gradient under chosen per-site strategies (cached)."""

    def __init__(self, objective: Any, params: Any, args: tuple, key: Any,
                 num_estimates: int, by: str):
        if isinstance(num_estimates, bool) or not isinstance(num_estimates, (int, np.integer)) \
                or num_estimates < 2:
            raise ValueError(f"gradient_report(num_estimates={num_estimates!r}): need an int "
                             ">= 2 (variances need at least two estimates).")
        if by not in ("group", "leaf"):
            raise ValueError(f"gradient_report(by={by!r}): use 'group' (top-level keys of "
                             "params) or 'leaf' (every leaf).")
        key = _as_key(key)
        self.fixed = isinstance(objective, Expectation)
        if not self.fixed and not callable(objective):
            raise TypeError("gradient_report: objective must be a ppl.Expectation or a function "
                            "of per-site strategies returning one, got "
                            f"{type(objective).__name__}.")
        self.builder = objective
        self.base = objective if self.fixed else _check_objective(
            objective(), "objective() (called with no strategies)")
        self.params, self.args = params, args
        self.key = key
        self.sites = choice_sites(self.base, key, (params, *args))
        self.keys = jax.random.split(key, int(num_estimates))
        self.groups = _groups(params, by)
        leaves = jax.tree_util.tree_leaves(params)
        self.dtype = str(jnp.result_type(*leaves)) if leaves else "float32"
        self._cache: dict = {}
        self.skipped: list[str] = []

    def measure(self, strategies: Mapping[str, Strategy]) -> tuple:
        """``(stats, cost, compile_s)`` of the objective built with ``strategies``."""
        cache_key = tuple(sorted(strategies.items(), key=lambda kv: kv[0]))
        if cache_key not in self._cache:
            obj = self._build(dict(strategies)) if strategies else self.base
            dynamic, rebuild = _split_static(self.args)

            def one(k, p, dyn):
                # Adding a zero that XLA cannot fold (a key word times 0.0) makes the params
                # and data differ at every iteration as far as XLA knows, so an estimate that
                # uses no random numbers (an enumerated one) is not hoisted out of the loop:
                # each iteration costs what one estimate costs (measured: 8 ns hoisted, 660 ns
                # for the enumerated mixture ELBO of tests/test_gradient_report.py).
                zero = jax.random.key_data(k).ravel()[0].astype(jnp.float32) * 0.0
                p, dyn = jax.tree_util.tree_map(lambda a: _plus(a, zero), (p, dyn))
                return obj.grad_estimate(k, p, *rebuild(dyn))[0]

            def run(ks, p, dyn):
                return jax.lax.map(lambda k: one(k, p, dyn), ks)

            grads, cost, compile_s = _run_timed(run, self.keys, self.params, dynamic)
            self._cache[cache_key] = (_stats(grads, self.groups, self.keys.shape[0]), cost,
                                      compile_s)
        return self._cache[cache_key]

    def _build(self, strategies: dict[str, Strategy]) -> Expectation:
        """The objective built with ``strategies``, checked to draw its sites with them."""
        what = ", ".join(f"{s}={strategy_label(c)}" for s, c in sorted(strategies.items()))
        try:
            obj = self.builder(**strategies)
        except TypeError as err:
            raise TypeError(
                f"gradient_report: calling the objective builder as objective({what}) raised "
                f"TypeError: {err}. It must take the sites' strategies as keywords, e.g. "
                "`lambda **s: ppl.objectives.elbo(model, ppl.strategies(guide, **s))`.") from err
        obj = _check_objective(obj, f"objective({what})")
        got = choice_sites(obj, self.key, (self.params, *self.args))
        for site, wanted in strategies.items():
            have = got.get(site, (None,))[0]
            if have != wanted:
                raise ValueError(
                    f"gradient_report: objective({what}) draws site '{site}' with "
                    f"{have!r}, not {wanted!r}: the builder must pass its keywords on to "
                    "ppl.strategies(program, **s) for the program that draws the site.")
        return obj

    def variant(self, strategies: Mapping[str, Strategy], site: str | None,
                strategy: Strategy | None, current: bool) -> Variant:
        stats, cost, compile_s = self.measure(strategies)
        label = strategy_label(strategy) if strategy is not None else "as given"
        unbiased = strategy is None or strategy.unbiased
        rows = tuple(GradientRow(site or "", label, current, unbiased, *st, cost, strategy)
                     for st in stats)
        return Variant(site, strategy, rows, cost, compile_s,
                       tuple(sorted(dict(strategies).items(), key=lambda kv: kv[0])))

    def variants_for(self, site: str, base: Mapping[str, Strategy], candidates: Any,
                     biased: bool) -> list[Variant]:
        """``site`` under its current strategy, then under each other candidate, with the
        sites in ``base`` set as given. A candidate that the site's distribution refuses when
        the objective runs (a :class:`ppl.StrategyError`, e.g. a flow guide whose noise is
        Normal) is left out and noted in ``self.skipped``."""
        current = self.sites[site][0]
        out = [self.variant(base, site, current, True)]
        for cand in self.candidates(site, candidates, biased):
            try:
                out.append(self.variant({**base, site: cand}, site, cand, False))
            except StrategyError as err:
                self.skipped.append(f"{site}: {strategy_label(cand)} left out ({err})")
        return out

    def check_sites(self, candidates: Any) -> None:
        """A ``candidates`` dict naming a site the objective does not have is a mistake."""
        unknown = sorted(set(candidates or {}) - set(self.sites)) \
            if isinstance(candidates, Mapping) else []
        if unknown:
            raise ValueError(f"candidates names site(s) {unknown} that the objective does not "
                             f"draw; its random choices are {sorted(self.sites)}.")

    def candidates(self, site: str, candidates: Any, biased: bool) -> list[Strategy]:
        """The strategies to try at ``site`` besides its current one."""
        if self.fixed:
            return []
        current, fits = self.sites[site]
        return [c for c in _candidates_for(site, fits, candidates)
                if c != current and (biased or c.unbiased)]


def _check_candidates(candidates: Any) -> None:
    """Parse ``candidates`` once up front, so that a typo fails before anything compiles."""
    if candidates is None:
        return
    specs = candidates.values() if isinstance(candidates, Mapping) else [candidates]
    for spec in specs:
        _parse(spec)


def _parse(spec: Any) -> list[Strategy]:
    return as_strategies([spec] if isinstance(spec, (str, Strategy)) else spec,
                         "gradient_report(candidates=...)")


def _candidates_for(site: str, fits: list[Strategy], candidates: Any) -> list[Strategy]:
    if candidates is None:
        return fits
    spec = candidates.get(site, None) if isinstance(candidates, Mapping) else candidates
    if spec is None:
        return fits
    wanted = _parse(spec)
    fit_types = {type(f) for f in fits}
    return [w for w in wanted if type(w) in fit_types]
