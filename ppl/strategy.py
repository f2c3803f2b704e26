"""Gradient strategies: how the gradient of an expectation flows through one random choice.

A strategy is chosen per ``sample`` site, through NumPyro's own ``infer`` dict::

    numpyro.sample("b", dist.Bernoulli(p), infer={"grad": "mvd"})

with ``"reparam"``, ``"reinforce"``, ``"enum"``, ``"mvd"`` or a strategy object, or without
touching the program with :func:`strategies`. A site without a strategy gets :class:`Reparam`
when its distribution has a reparameterized sampler (``fn.has_rsample``, which includes
NumPyro's implicit reparameterization of Gamma, Beta and Dirichlet), else :class:`Reinforce`.

A strategy that cannot apply to a site's distribution is a :class:`StrategyError` naming the
site and the strategies that fit. The rules themselves live in :mod:`ppl.adev`.

Example:
    >>> import numpyro.distributions as dist, ppl
    >>> resolve_strategy("z", dist.Normal(0.0, 1.0), None)
    Reparam()
    >>> resolve_strategy("b", dist.Bernoulli(0.5), "enum")
    Enum()
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

from numpyro import distributions as dist
from numpyro.primitives import Messenger

from ppl.distributions import base_distribution  # noqa: F401  (re-exported)
from ppl.errors import ModelError
from ppl.mvd import has_mvd
from ppl.tracing import model_name

__all__ = [
    "Strategy",
    "Reparam",
    "Reinforce",
    "Enum",
    "MVD",
    "StraightThrough",
    "GumbelSoftmax",
    "StrategyError",
    "resolve_strategy",
    "strategies",
    "base_distribution",
    "default_candidates",
    "strategy_label",
    "as_strategies",
]

#: Largest number of joint configurations :class:`Enum` enumerates at one site.
MAX_ENUM_CONFIGS = 4096


class StrategyError(ModelError):
    """A gradient strategy that cannot apply to a site (the message names the site and what fits)."""


class Strategy:
    """Base class of gradient strategies. ``unbiased`` says whether gradients stay unbiased."""

    unbiased: bool = True
    #: relaxations give the site a floating-point value (so that it can carry a tangent)
    relaxed: bool = False
    name: str = "strategy"


@dataclass(frozen=True)
class Reparam(Strategy):
    """Pathwise gradient: differentiate through the reparameterized sampler ``x = T(theta, eps)``.

    Fits distributions with ``has_rsample`` (Normal, ..., and the implicitly reparameterized
    Gamma, Beta, Dirichlet).

    Example:
        >>> Reparam().unbiased
        True
    """

    name = "reparam"


@dataclass(frozen=True)
class Reinforce(Strategy):
    """Score-function (REINFORCE) gradient: ``(f(x) - b) * d log p(x)``; fits every distribution.

    ``baseline``:
      - ``None``: no baseline.
      - ``"mean"``: a leave-one-out mean (REINFORCE leave-one-out, Kool et al. 2019). The site
        is drawn ``num_samples`` times independently, the rest of the program (the
        continuation) runs once per draw with the same later random numbers, and draw ``i``
        uses as baseline the mean of the other draws' values. That baseline does not depend
        on draw ``i``, so the estimate stays unbiased; the value and the gradient are the
        means over the draws. Costs ``num_samples`` runs of the continuation.
      - a callable ``baseline(fn) -> scalar`` of the site's distribution (not of the drawn
        value, which keeps the estimate unbiased); its value is treated as a constant. Inside
        ``jax.vmap`` the mean of its values over the batch is used.

    Example:
        >>> Reinforce(baseline="mean").num_samples
        2
    """

    baseline: Any = None
    num_samples: int = 2
    name = "reinforce"

    def __post_init__(self):
        if not (self.baseline is None or self.baseline == "mean" or callable(self.baseline)):
            raise ValueError(
                f"Reinforce(baseline={self.baseline!r}): baseline must be None, 'mean' or a "
                "callable of the site's distribution."
            )
        if int(self.num_samples) < 2:
            raise ValueError(f"Reinforce(num_samples={self.num_samples}): need at least 2 draws.")


@dataclass(frozen=True)
class Enum(Strategy):
    """Exact enumeration of a finite support: ``sum_v p(v) f(v)`` and its exact derivative.

    Fits distributions with ``has_enumerate_support`` (Bernoulli, Categorical, ...), with at
    most ``MAX_ENUM_CONFIGS`` joint configurations at the site, outside ``jax.vmap``.

    Example:
        >>> Enum().unbiased
        True
    """

    name = "enum"


@dataclass(frozen=True)
class MVD(Strategy):
    """Measure-valued derivative: ``d/dtheta E[f] = c (E_{p+}[f] - E_{p-}[f])`` per parameter.

    Known weak-derivative decompositions (see :mod:`ppl.mvd`): Bernoulli, Categorical, Poisson,
    Normal (location and scale), also under plates (``expand``) and ``to_event``. The positive
    and negative branches share the later random numbers (common random numbers).

    Example:
        >>> MVD().name
        'mvd'
    """

    name = "mvd"


@dataclass(frozen=True)
class StraightThrough(Strategy):
    """Straight-through estimator for Bernoulli sites (biased).

    The forward value is the hard sample (as a float); the backward pass pretends
    ``dx/dp = 1``. Note: the gradient is biased, unlike every other strategy.

    Example:
        >>> StraightThrough().unbiased
        False
    """

    unbiased = False
    relaxed = True
    name = "straight_through"


@dataclass(frozen=True)
class GumbelSoftmax(Strategy):
    """Straight-through Gumbel-softmax (binary Concrete) for Bernoulli sites (biased).

    The value is the hard sample ``1[logit(p) + g > 0]`` (``g`` logistic noise), as a float;
    its tangent is that of the relaxed sample ``sigmoid((logit(p) + g) / temperature)``.
    Note: the gradient is biased; lower temperatures reduce the bias and raise the variance.

    Example:
        >>> GumbelSoftmax(0.5).unbiased
        False
    """

    temperature: float = 1.0
    unbiased = False
    relaxed = True
    name = "gumbel_softmax"

    def __post_init__(self):
        if not float(self.temperature) > 0:
            raise ValueError(f"GumbelSoftmax(temperature={self.temperature}): must be > 0.")


_BY_NAME: dict[str, Callable[[], Strategy]] = {
    "reparam": Reparam, "reinforce": Reinforce, "reinforce(mean)": lambda: Reinforce("mean"),
    "enum": Enum, "mvd": MVD, "straight_through": StraightThrough,
    "gumbel_softmax": GumbelSoftmax}


def default_candidates() -> list[Strategy]:
    """The strategies the estimator lab tries at each site (those that do not apply are
    skipped): one of each, with the default settings.

    Example:
        >>> [strategy_label(s) for s in default_candidates()]  # doctest: +NORMALIZE_WHITESPACE
        ['reparam', 'reinforce', 'reinforce(mean)', 'enum', 'mvd', 'straight_through',
         'gumbel_softmax(1)']
    """
    return [Reparam(), Reinforce(), Reinforce(baseline="mean"), Enum(), MVD(),
            StraightThrough(), GumbelSoftmax(1.0)]


def strategy_label(strategy: Strategy) -> str:
    """A short name for a strategy: ``'reinforce(mean)'``, ``'gumbel_softmax(0.5)'``, ...

    Example:
        >>> strategy_label(Reinforce(baseline="mean", num_samples=4))
        'reinforce(mean, 4)'
    """
    if isinstance(strategy, Reinforce):
        if strategy.baseline is None:
            return "reinforce"
        if strategy.baseline == "mean":
            n = int(strategy.num_samples)
            return "reinforce(mean)" if n == 2 else f"reinforce(mean, {n})"
        return f"reinforce({getattr(strategy.baseline, '__name__', 'baseline')})"
    if isinstance(strategy, GumbelSoftmax):
        return f"gumbel_softmax({strategy.temperature:g})"
    return strategy.name


def as_strategies(specs: Any, what: str) -> list[Strategy]:
    """Strategy objects from names (:data:`_BY_NAME`'s keys), classes or objects; ``what``
    names the caller in the error.

    Example:
        >>> [strategy_label(s) for s in as_strategies(["enum", MVD, Reinforce("mean")], "f")]
        ['enum', 'mvd', 'reinforce(mean)']
    """
    out = []
    for s in specs:
        if isinstance(s, str) and s.lower() in _BY_NAME:
            s = _BY_NAME[s.lower()]()
        elif isinstance(s, type) and issubclass(s, Strategy):
            s = s()
        if not isinstance(s, Strategy):
            raise TypeError(f"{what}: got {s!r}; give strategy names {sorted(_BY_NAME)} or "
                            "strategy objects such as ppl.Reinforce(baseline='mean').")
        out.append(s)
    return out


def _fits(fn: Any) -> list[str]:
    out = []
    if fn.has_rsample:
        out.append("'reparam'")
    out.append("'reinforce'")
    if fn.has_enumerate_support:
        out.append("'enum'")
    if has_mvd(fn):
        out.append("'mvd'")
    if isinstance(base_distribution(fn), (dist.BernoulliProbs, dist.BernoulliLogits)):
        out += ["ppl.StraightThrough()", "ppl.GumbelSoftmax(t) (biased)"]
    return out


def _cannot(name: str, fn: Any, strategy: Strategy, why: str) -> StrategyError:
    return StrategyError(
        f"site '{name}': strategy {strategy!r} cannot apply to {type(fn).__name__}: {why}. "
        f"Strategies that fit this site: {', '.join(_fits(fn))}."
    )


def resolve_strategy(name: str, fn: Any, spec: Any) -> Strategy:
    """The strategy object for site ``name`` with distribution ``fn`` from an ``infer["grad"]`` spec.

    ``spec`` is ``None`` (the default rule), one of ``"reparam"``, ``"reinforce"``, ``"enum"``,
    ``"mvd"``, or a :class:`Strategy`. Raises :class:`StrategyError` naming the site when the
    strategy cannot apply.

    Example:
        >>> import numpyro.distributions as dist
        >>> resolve_strategy("b", dist.Bernoulli(0.5), None)
        Reinforce(baseline=None, num_samples=2)
        >>> try:
        ...     resolve_strategy("b", dist.Bernoulli(0.5), "reparam")
        ... except StrategyError as err:
        ...     print(str(err)[:60])
        site 'b': strategy Reparam() cannot apply to BernoulliProbs:
    """
    if spec is None:
        return Reparam() if fn.has_rsample else Reinforce()
    if isinstance(spec, str):
        if spec.lower() not in _BY_NAME:
            raise StrategyError(
                f"site '{name}': unknown gradient strategy {spec!r}; use one of "
                f"{sorted(_BY_NAME)} or a strategy object such as ppl.Reinforce(baseline='mean')."
            )
        strategy = _BY_NAME[spec.lower()]()
    elif isinstance(spec, Strategy):
        strategy = spec
    elif isinstance(spec, type) and issubclass(spec, Strategy):
        strategy = spec()
    else:
        raise StrategyError(
            f"site '{name}': infer['grad'] must be a strategy name or object, got {spec!r}."
        )
    _check(name, fn, strategy)
    return strategy


def _check(name: str, fn: Any, strategy: Strategy) -> None:
    if isinstance(strategy, Reparam) and not fn.has_rsample:
        raise _cannot(name, fn, strategy, "it has no reparameterized sampler")
    if isinstance(strategy, Enum):
        if not fn.has_enumerate_support:
            raise _cannot(name, fn, strategy, "its support is not finite (no enumerate_support)")
        if tuple(fn.event_shape) != ():
            raise _cannot(name, fn, strategy, f"Enum needs scalar events, got {fn.event_shape}")
    if isinstance(strategy, MVD) and not has_mvd(fn):
        raise _cannot(name, fn, strategy, "no known weak-derivative decomposition")
    if strategy.relaxed and not isinstance(
        base_distribution(fn), (dist.BernoulliProbs, dist.BernoulliLogits)
    ):
        raise _cannot(name, fn, strategy, "relaxations apply to Bernoulli sites only")


class _SetStrategies(Messenger):
    def __init__(self, fn, by_site):
        self.by_site = by_site
        self.seen = set()
        super().__init__(fn)

    def process_message(self, msg):
        if msg["type"] == "sample" and msg["name"] in self.by_site:
            self.seen.add(msg["name"])
            msg["infer"] = dict(msg.get("infer") or {}, grad=self.by_site[msg["name"]])

    def __call__(self, *args, **kwargs):
        self.seen = set()
        out = super().__call__(*args, **kwargs)
        missing = set(self.by_site) - self.seen
        if missing:
            raise StrategyError(
                f"ppl.strategies: program {model_name(self.fn)} has no sample site named "
                f"{sorted(missing)}; its strategies cannot be set."
            )
        return out


def strategies(program: Callable, **by_site: Any) -> Callable:
    """``program`` with the gradient strategy of the named sites set, without editing it.

    Values are strategy names (``"reparam"``, ``"reinforce"``, ``"reinforce(mean)"``,
    ``"enum"``, ``"mvd"``, ``"straight_through"``, ``"gumbel_softmax"``) or strategy objects; they override the sites' own ``infer={"grad": ...}``. Naming a site
    the program does not have is an error when the program runs.

    Example:
        >>> import numpyro, numpyro.distributions as dist, ppl
        >>> def guide():
        ...     numpyro.sample("b", dist.Bernoulli(0.3))
        >>> tr = numpyro.handlers.trace(numpyro.handlers.seed(
        ...     ppl.strategies(guide, b="enum"), 0)).get_trace()
        >>> tr["b"]["infer"]["grad"]
        'enum'
    """
    for name, spec in by_site.items():
        if not (isinstance(spec, (str, Strategy)) or
                (isinstance(spec, type) and issubclass(spec, Strategy))):
            raise StrategyError(
                f"ppl.strategies: site '{name}' got {spec!r}; pass a strategy name "
                f"{sorted(_BY_NAME)} or a strategy object."
            )
    return _SetStrategies(program, dict(by_site))
