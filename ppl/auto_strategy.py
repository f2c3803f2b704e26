"""Choosing gradient strategies automatically, from a short pilot of :func:`ppl.gradient_report`.

:func:`auto_strategies` measures, for each random choice of an objective, every *unbiased*
strategy that applies to it (site by site in program order, the sites before set to their
choice and those after as built) and keeps the one
with the lowest ``variance x cost``: total gradient variance over all parameters times
seconds per estimate, i.e. the variance left after a fixed compute budget (averaging ``n``
estimates divides the variance by ``n``, and ``n`` estimates cost ``n x cost``). Biased
relaxations (straight-through, Gumbel-softmax) are never chosen. It returns the choice as a
dict ``{site: strategy}`` for :func:`ppl.strategies` and says what it chose, one line per site.

It is the documented way to get ``ppl.strategies(program, auto=True)``: a strategy can only be
judged on an objective (the same guide gets different best strategies under an ELBO and under
IWAE), so the choice takes the function that builds the objective::

    build = lambda **s: ppl.objectives.elbo(model, ppl.strategies(guide, **s))
    choice = ppl.auto_strategies(build, params, x, key=jax.random.key(0))
    objective = build(**choice)

Example:
    >>> import jax, numpyro, numpyro.distributions as dist, ppl
    >>> def guide(theta):  # three coins: 8 joint values, enumerated exactly
    ...     numpyro.sample("b", dist.Bernoulli(jax.nn.sigmoid(theta)).expand([3]))
    >>> def build(**s):
    ...     @ppl.expectation
    ...     def obj(params):
    ...         values, _ = ppl.sim(ppl.strategies(guide, **s), params["theta"])
    ...         return (values["b"].sum() - 1.2) ** 2
    ...     return obj
    >>> choice = ppl.auto_strategies(build, {"theta": 0.0}, key=jax.random.key(0),
    ...                              num_estimates=32, candidates=["enum"], verbose=False)
    >>> dict(choice)  # enumeration is exact, REINFORCE (the default for the coins) is not
    {'b': Enum()}
"""

from __future__ import annotations

import logging
from typing import Any, Callable

from ppl.expectation import Expectation
from ppl.estimator_lab import Variant, _check_candidates, _Lab
from ppl.gradient_report import GradientReport
from ppl.strategy import Strategy, strategy_label

__all__ = ["auto_strategies", "AutoStrategies"]

logger = logging.getLogger("ppl.auto_strategy")


class AutoStrategies(dict):
    """The strategies :func:`auto_strategies` chose: a dict ``{site: strategy}`` (pass it on
    as ``ppl.strategies(guide, **choice)`` or ``build(**choice)``), with the pilot's
    :class:`ppl.GradientReport` as ``.report`` and one line per site in ``.summary``.

    Example:
        >>> import ppl
        >>> choice = AutoStrategies({"b": ppl.Enum()}, report=None, summary=["site 'b': enum"])
        >>> print(choice)
        site 'b': enum
    """

    def __init__(self, chosen: dict[str, Strategy], report: GradientReport | None,
                 summary: list[str]):
        super().__init__(chosen)
        self.report = report
        self.summary = list(summary)

    def __str__(self) -> str:
        return "\n".join(self.summary)


def _score(v: Variant) -> tuple[float, float]:
    return (v.variance * v.cost, v.cost)


def _line(site: str, best: Variant, current: Variant, others: list[Variant]) -> str:
    def short(v: Variant) -> str:
        return f"{strategy_label(v.strategy)} {v.variance:.3g} x {v.cost * 1e6:.3g} us"

    rest = ", ".join(short(v) for v in others if v is not best)
    if best is current:
        head = f"site '{site}': {strategy_label(best.strategy)} (kept; variance x cost "
    else:
        head = (f"site '{site}': {strategy_label(best.strategy)} instead of "
                f"{strategy_label(current.strategy)} (variance x cost ")
    return (head + f"{best.variance:.3g} x {best.cost * 1e6:.3g} us)"
            + (f"; also measured: {rest}" if rest else ""))


def auto_strategies(objective: Callable[..., Expectation], params: Any, *args: Any, key: Any,
                    num_estimates: int = 64, candidates: Any = None, verbose: bool = True,
                    by: str = "group") -> AutoStrategies:
    """Per random choice of ``objective``, the applicable unbiased strategy with the lowest
    ``variance x cost`` on a pilot of ``num_estimates`` gradient estimates at ``params, *args``.

    ``objective`` builds the objective from per-site strategies given as keywords
    (``lambda **s: ppl.objectives.elbo(model, ppl.strategies(guide, **s))``). Sites are
    taken in program order (one pass of coordinate descent): each site's strategies are
    measured with the sites before it set to their choice and the sites after it as built
    (the measurements are :func:`ppl.gradient_report`'s; ``candidates`` and ``by`` are its).
    The result is a dict ``{site: strategy}`` (an :class:`AutoStrategies`, with the pilot's
    report as ``.report``); the choice is logged on the ``ppl.auto_strategy`` logger, one line
    per site, and printed too when ``verbose``.

    On a pilot, close contestants can swap places from run to run; the report shows by how
    much they differ. Strategies that are exact (enumeration) have zero variance and win
    whenever they apply, whatever their cost.

    Example (a coin: enumerating its two values gives the exact gradient):
        >>> import jax, numpyro, numpyro.distributions as dist, ppl
        >>> def coin(theta):
        ...     numpyro.sample("b", dist.Bernoulli(logits=theta))
        >>> def build(**s):
        ...     def payoff(params):
        ...         values, _ = ppl.sim(ppl.strategies(coin, **s), params["theta"])
        ...         return 3.0 * values["b"] - 1.0
        ...     return ppl.expectation(payoff)
        >>> choice = ppl.auto_strategies(build, {"theta": 0.3}, key=jax.random.key(0),
        ...                              num_estimates=32, verbose=False)
        >>> choice["b"]
        Enum()
    """
    if isinstance(objective, Expectation) or not callable(objective):
        raise TypeError(
            "auto_strategies needs a function that builds the objective from per-site "
            f"strategies, got {type(objective).__name__}; pass e.g. "
            "`lambda **s: ppl.objectives.elbo(model, ppl.strategies(guide, **s))`.")
    _check_candidates(candidates)
    lab = _Lab(objective, params, args, key, num_estimates, by)
    lab.check_sites(candidates)
    chosen: dict[str, Strategy] = {}
    changed: dict[str, Strategy] = {}  # the sites set to another strategy than their own
    per_site, summary = {}, []
    for site in lab.sites:
        variants = lab.variants_for(site, changed, candidates, biased=False)
        per_site[site] = variants
        unbiased = [v for v in variants if v.strategy.unbiased]
        if not unbiased:  # only biased ones were measured (candidates= left out the others)
            chosen[site] = variants[0].strategy
            summary.append(f"site '{site}': {strategy_label(variants[0].strategy)} kept (biased; "
                           "no unbiased candidate was measured, see candidates=)")
            continue
        best = min(unbiased, key=_score)
        chosen[site] = best.strategy
        if best is not variants[0]:
            changed[site] = best.strategy
        summary.append(_line(site, best, variants[0], unbiased))
    if not lab.sites:
        summary.append("the objective draws no random choices: no strategy to choose")
    report = GradientReport(
        lab.variant({}, None, None, True), per_site, num_estimates, lab.dtype,
        note="\n".join(["Sites measured in program order, each with the earlier sites set to "
                        "their choice.", *lab.skipped]))
    for line in summary:
        logger.info(line)
        if verbose:
            print(line)
    return AutoStrategies(chosen, report, summary)
