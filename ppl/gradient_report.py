"""The estimator lab: how noisy and how costly each site's gradient strategies are.

:func:`gradient_report` measures the gradient estimator of an objective at fixed parameters:
for every parameter group, the mean of ``num_estimates`` independent gradient estimates, their
variance, the signal-to-noise ratio and the cost (seconds per estimate, compiled, compile
time excluded), first with the objective as it is and then with one random choice at a time
switched to each other strategy that applies to it (the other choices keep theirs).

Strategies are set per site when the objective is built (``ppl.strategies(guide, b="enum")``),
so the report takes a *builder*: a function of per-site strategies returning the objective::

    report = ppl.gradient_report(
        lambda **s: ppl.objectives.elbo(model, ppl.strategies(guide, **s)),
        params, x, key=jax.random.key(0))
    print(report)   # one table row per (site, strategy, parameter group)
    report.plot()   # variance against cost, biased strategies hollow

A plain :class:`ppl.Expectation` is also accepted; its current strategies are then the only
ones measured. Every variant uses the same keys (common random numbers), so differences
between strategies are not blurred by independent noise.

Biased strategies (:class:`ppl.StraightThrough`, :class:`ppl.GumbelSoftmax`) are measured
too, and marked ``biased``: a low variance says nothing about how far their mean is from the
true gradient. :func:`ppl.auto_strategies` picks among the unbiased ones.

Example:
    >>> import jax, numpyro, numpyro.distributions as dist, ppl
    >>> def guide(theta):
    ...     numpyro.sample("x", dist.Normal(theta, 1.0))
    >>> def build(**s):
    ...     @ppl.expectation
    ...     def second_moment(params):
    ...         values, _ = ppl.sim(ppl.strategies(guide, **s), params["theta"])
    ...         return values["x"] ** 2
    ...     return second_moment
    >>> report = ppl.gradient_report(build, {"theta": 1.0}, key=jax.random.key(0),
    ...                              num_estimates=200, candidates=["reparam", "reinforce"])
    >>> [(r.strategy, r.current) for r in report.rows]
    [('reparam', True), ('reinforce', False)]
    >>> 2.5 < report.rows[0].variance < 6.0  # exactly 4: d/dtheta (theta + e)^2 = 2 (theta + e)
    True
"""

from __future__ import annotations

import math
from typing import Any, Callable, Mapping, Sequence

from ppl.estimator_lab import GradientRow, Variant, _check_candidates, _Lab
from ppl.expectation import Expectation
from ppl.strategy import default_candidates, strategy_label

__all__ = ["gradient_report", "GradientReport", "GradientRow", "Variant", "strategy_label",
           "default_candidates"]


class GradientReport:
    """What :func:`gradient_report` measured: ``rows`` (:class:`GradientRow`), per site the
    strategies tried (:meth:`for_site`), and ways to read them (``str()`` is a table,
    :meth:`to_dataframe`, :meth:`plot`, :meth:`variance_x_cost`).

    Example:
        >>> import jax, numpyro, numpyro.distributions as dist, ppl
        >>> @ppl.expectation
        ... def mean_x(params):
        ...     values, _ = ppl.sim(lambda: numpyro.sample("x", dist.Normal(params["m"], 1.0)))
        ...     return values["x"]
        >>> report = ppl.gradient_report(mean_x, {"m": 0.0}, key=jax.random.key(0), num_estimates=8)
        >>> str(report).splitlines()[2].split()[:5]  # site, strategy (* current), group, size, mean
        ['x', 'reparam*', 'm', '1', '1.000e+00']
    """

    def __init__(self, base: Variant, per_site: Mapping[str, Sequence[Variant]],
                 num_estimates: int, dtype: str, fixed: bool = False, note: str = ""):
        self.base = base
        self.per_site = {s: tuple(v) for s, v in per_site.items()}
        self.sites = {s: v[0].strategy for s, v in self.per_site.items()}
        self.num_estimates = int(num_estimates)
        self.dtype = dtype
        self.fixed = fixed  # an Expectation was given: only its current strategies
        self.note = note
        rows = [r for vs in self.per_site.values() for v in vs for r in v.rows]
        self.rows: tuple[GradientRow, ...] = tuple(rows if self.per_site else base.rows)

    def for_site(self, site: str) -> tuple[Variant, ...]:
        """The variants measured for ``site``: its current strategy first, then the others.

        Example:
            >>> import jax, numpyro, numpyro.distributions as dist, ppl
            >>> @ppl.expectation
            ... def mean_x(params):
            ...     values, _ = ppl.sim(lambda: numpyro.sample("x", dist.Normal(params["m"], 1.0)))
            ...     return values["x"]
            >>> r = ppl.gradient_report(mean_x, {"m": 0.0}, key=jax.random.key(0), num_estimates=4)
            >>> [(v.strategy, v.variance) for v in r.for_site("x")]
            [(Reparam(), 0.0)]
        """
        if site not in self.per_site:
            raise KeyError(f"site '{site}' is not a random choice of the objective; its sites "
                           f"are {sorted(self.per_site)}.")
        return self.per_site[site]

    def variance_x_cost(self, site: str) -> dict[str, float]:
        """Per strategy of ``site``: total variance (all groups) times seconds per estimate.

        Example:
            >>> import jax, numpyro, numpyro.distributions as dist, ppl
            >>> @ppl.expectation
            ... def mean_x(params):
            ...     values, _ = ppl.sim(lambda: numpyro.sample("x", dist.Normal(params["m"], 1.0)))
            ...     return values["x"]
            >>> r = ppl.gradient_report(mean_x, {"m": 0.0}, key=jax.random.key(0), num_estimates=4)
            >>> r.variance_x_cost("x")  # the reparameterized gradient of E[x] is exactly 1
            {'reparam': 0.0}
        """
        return {strategy_label(v.strategy): v.variance * v.cost for v in self.for_site(site)}

    def __str__(self) -> str:
        head = ["site", "strategy", "group", "size", "mean", "+-", "variance", "+-", "snr",
                "us/est", "var x s", "note"]
        lines = [[r.site, r.strategy + ("*" if r.current else ""), r.group, str(r.size),
                  f"{r.mean:.3e}", f"{r.mean_se:.1e}", f"{r.variance:.3e}",
                  f"{r.variance_se:.1e}", f"{r.snr:.3g}", f"{r.cost * 1e6:.1f}",
                  f"{r.variance_x_cost:.2e}", "" if r.unbiased else "BIASED"]
                 for r in self.rows]
        widths = [max(len(x) for x in col) for col in zip(head, *lines)]

        def fmt(cells: list[str]) -> str:
            return "  ".join(c.ljust(w) for c, w in zip(cells, widths)).rstrip()

        out = [fmt(head), "  ".join("-" * w for w in widths)] + [fmt(c) for c in lines]
        out.append(f"{self.num_estimates} estimates per row ({self.dtype}); * = the site's "
                   "current strategy; +- = standard error; us/est = microseconds per gradient "
                   "estimate (compiled).")
        if any(not r.unbiased for r in self.rows):
            out.append("BIASED: the strategy's gradient is biased; its variance does not say "
                       "how far its mean is from the true gradient.")
        if self.note:
            out.append(self.note)
        if self.fixed:
            out.append("Only the current strategies were measured: pass a function "
                       "`lambda **s: objective built with ppl.strategies(guide, **s)` to "
                       "compare the others.")
        return "\n".join(out)

    def __repr__(self) -> str:
        return (f"GradientReport({len(self.rows)} rows, sites={sorted(self.sites)}, "
                f"num_estimates={self.num_estimates})")

    def to_dataframe(self) -> Any:
        """The rows as a ``pandas.DataFrame`` (needs pandas), one column per field.

        Example:
            >>> import jax, numpyro, numpyro.distributions as dist, ppl
            >>> @ppl.expectation
            ... def mean_x(params):
            ...     values, _ = ppl.sim(lambda: numpyro.sample("x", dist.Normal(params["m"], 1.0)))
            ...     return values["x"]
            >>> r = ppl.gradient_report(mean_x, {"m": 0.0}, key=jax.random.key(0), num_estimates=4)
            >>> list(r.to_dataframe().columns)[:4]
            ['site', 'strategy', 'current', 'unbiased']
        """
        try:
            import pandas as pd
        except ImportError as err:  # pragma: no cover - pandas is a dev dependency
            raise ImportError("GradientReport.to_dataframe needs pandas (pip install pandas); "
                              "report.rows holds the same numbers.") from err
        names = [f for f in GradientRow.__dataclass_fields__ if f != "strategy_object"]
        frame = pd.DataFrame([{f: getattr(r, f) for f in names} for r in self.rows])
        frame["variance_x_cost"] = [r.variance_x_cost for r in self.rows]
        return frame

    def plot(self, ax: Any = None, group: str | None = None) -> Any:
        """Variance against cost per measured objective (log scales): the objective as given
        (black star, once), and per site its other strategies (one colour per site, legend),
        biased ones hollow; the dotted line is the best unbiased ``variance x cost`` (points
        on it are as good, points below it better). ``group`` plots one parameter group
        (default: the total over all). An exact gradient (zero variance) sits at the bottom,
        marked ``v``. Returns the matplotlib ``Axes``.

        Example:
            >>> import jax, numpyro, numpyro.distributions as dist, ppl
            >>> @ppl.expectation
            ... def mean_x(params):
            ...     values, _ = ppl.sim(lambda: numpyro.sample("x", dist.Normal(params["m"], 1.0)))
            ...     return values["x"] ** 2
            >>> r = ppl.gradient_report(mean_x, {"m": 0.0}, key=jax.random.key(0), num_estimates=4)
            >>> r.plot().get_xlabel()
            'seconds per gradient estimate'
        """
        import matplotlib.pyplot as plt

        if ax is None:
            _, ax = plt.subplots(figsize=(6.5, 4.5))
        points = []  # (site or None for the objective as given, label, unbiased, cost, variance)
        seen = set()
        for site, variants in [(None, (self.base,)), *self.per_site.items()]:
            for v in variants:
                if v.strategies in seen:  # the same objective, measured once: plotted once
                    continue
                seen.add(v.strategies)
                rows = [r for r in v.rows if group is None or r.group == group]
                if group is not None and not rows:
                    raise KeyError(f"plot(group={group!r}): no such parameter group; groups are "
                                   f"{sorted({r.group for r in v.rows})}.")
                given = ", ".join(f"{s}: {strategy_label(c)}" for s, c in self.sites.items())
                label = strategy_label(v.strategy) if site is not None else \
                    "as given" + (f" ({given})" if given else "")
                unbiased = site is None or v.strategy.unbiased
                points.append((site, label, unbiased, v.cost, sum(r.variance for r in rows)))
        positive = [p[4] for p in points if p[4] > 0 and math.isfinite(p[4])]
        floor = min(positive) / 10 if positive else 1e-12
        colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
        order = list(dict.fromkeys(p[0] for p in points if p[0] is not None))
        for site, label, unbiased, cost, var in points:
            colour = "black" if site is None else colours[order.index(site) % len(colours)]
            y = var if var > 0 else floor
            marker = "*" if site is None else ("o" if var > 0 else "v")
            ax.scatter([cost], [y], marker=marker, s=90 if site is None else 40,
                       facecolors=colour if unbiased else "none", edgecolors=colour,
                       label=None if site is None else f"site '{site}'")
            text = label + ("" if unbiased else " (biased)") + ("" if var > 0 else " (exact)")
            ax.annotate(text, (cost, y), textcoords="offset points", xytext=(4, 4), fontsize=8)
        scores = [p[3] * p[4] for p in points if p[2] and p[4] > 0]
        if scores:  # the best unbiased variance x cost, as a line of slope -1
            lo, hi = min(p[3] for p in points) / 2, max(p[3] for p in points) * 2
            ax.plot([lo, hi], [min(scores) / lo, min(scores) / hi], ":", color="grey", lw=1)
        handles, labels = ax.get_legend_handles_labels()
        unique = dict(zip(labels, handles))
        if unique:
            ax.legend(unique.values(), unique.keys(), fontsize=8, loc="best")
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("seconds per gradient estimate")
        ax.set_ylabel("gradient variance" + (f" ({group})" if group else " (all parameters)"))
        ax.set_title(f"Gradient strategies: variance x cost ({self.num_estimates} estimates)")
        return ax


def gradient_report(objective: Expectation | Callable[..., Expectation], params: Any,
                    *args: Any, key: Any, num_estimates: int = 256, candidates: Any = None,
                    biased: bool = True, by: str = "group") -> GradientReport:
    """Mean, variance, signal-to-noise ratio and cost of the gradient of ``objective`` with
    respect to ``params`` (its first argument) at ``params, *args``, per parameter group and
    per strategy of each random choice.

    ``objective`` is a builder ``objective(**strategies) -> ppl.Expectation`` (the site names
    of the strategies to set as keywords, e.g. ``lambda **s:
    ppl.objectives.elbo(model, ppl.strategies(guide, **s))``), or a :class:`ppl.Expectation`
    (then only its current strategies are measured). The report measures the objective as
    built with no keywords, then, one site at a time, each other applicable strategy in
    ``candidates`` (default :func:`default_candidates`; a list for every site or a dict
    ``{site: [...]}``; strategies that do not fit a site are skipped). ``biased=False`` leaves
    out the biased relaxations.

    ``num_estimates`` gradient estimates (keys split from ``key``, the same for every variant)
    run in one compiled ``jax.lax.map``; ``cost`` is its run time per estimate (the fastest of
    a few runs), compile time and Python dispatch excluded, as in a training loop compiled
    with ``jax.lax.scan``. The estimates are kept (``num_estimates`` copies of the gradient in
    memory: lower it for large networks). ``by="group"`` groups the leaves of ``params`` by
    top-level key (a dict) and ``by="leaf"`` reports every leaf. Works in float32 and float64
    (the params' dtype).

    Example:
        >>> import jax, numpyro, numpyro.distributions as dist, ppl
        >>> def guide(theta):
        ...     numpyro.sample("b", dist.Bernoulli(jax.nn.sigmoid(theta)))
        >>> def build(**s):
        ...     @ppl.expectation
        ...     def obj(params):
        ...         values, _ = ppl.sim(ppl.strategies(guide, **s), params["theta"])
        ...         return (values["b"] - 0.4) ** 2
        ...     return obj
        >>> r = ppl.gradient_report(build, {"theta": 0.0}, key=jax.random.key(1),
        ...                         num_estimates=64, candidates=["reinforce", "enum"])
        >>> {row.strategy: round(row.variance, 6) for row in r.rows}["enum"]  # exact: no variance
        0.0
    """
    _check_candidates(candidates)
    lab = _Lab(objective, params, args, key, num_estimates, by)
    lab.check_sites(candidates)
    per_site = {site: lab.variants_for(site, {}, candidates, biased) for site in lab.sites}
    return GradientReport(lab.variant({}, None, None, True), per_site, num_estimates,
                          lab.dtype, lab.fixed, note="\n".join(lab.skipped))
