"""Simulation-based calibration: does a method recover the parameters that made the data?

For each of ``num_simulations`` simulations, draw parameters ``theta`` and data ``y`` from
the model's prior (its observed-data arguments passed as ``None``), run
:func:`inference.infer` on ``y``, thin the posterior draws to ``num_draws`` and take the
rank of each true parameter element among them. When the method samples the posterior,
``theta`` and the draws are exchangeable, so every rank ``0 .. num_draws`` is equally
likely (Talts et al. 2018, "Validating Bayesian inference algorithms with simulation-based
calibration"). Ties (discrete sites) are broken at random, which keeps ranks uniform.
Over-dispersed draws give ranks piled in the middle, under-dispersed draws (mean-field VI
on a correlated posterior) ranks piled at both ends, a bias ranks piled at one end.

Uniformity is tested per element with a chi-square test on binned ranks
(:attr:`SBCResult.pvalues`), and :meth:`SBCResult.plot` draws the difference between the
ranks' empirical CDF and the uniform CDF with simultaneous confidence bands found by
simulation (Säilynoja, Bürkner & Vehtari 2022; Modrák et al. 2023, "Simulation-based
calibration checking for Bayesian computation").

All simulations have the same shapes, so :func:`inference.infer` compiles its programs for
the first one and takes them from its cache (``PROGRAMS``) for the others:
:attr:`SBCResult.timing` keeps each run's ``compile`` seconds and ``cache`` source.

Example:
    >>> import numpyro, numpyro.distributions as dist, inference
    >>> def model(y=None):
    ...     mu = numpyro.sample("mu", dist.Normal(0.0, 1.0))
    ...     numpyro.sample("y", dist.Normal(mu, 1.0), obs=y)
    >>> r = inference.sbc(model, method=inference.NUTS(), num_simulations=4, num_draws=9,
    ...                   num_samples=50, num_warmup=50, num_chains=1, progress=False)
    >>> r.ranks["mu"].shape, sorted(r.pvalues)
    ((4,), ['mu'])
"""

from __future__ import annotations

import dataclasses
import inspect
import warnings
from collections.abc import Callable, Sequence
from typing import Any

import jax
import numpy as np
from numpyro import handlers

from inference.arguments import as_arrays, as_key, positive_int, split_arguments, static_part
from inference.programs.cache import compile_program
from inference.infer import _check_method, infer
from inference.methods.nuts import NUTS
from ppl.errors import ModelError
from ppl.tracing import (check_arguments, model_name, site_reasons, trace_model,
                         unsampleable_sites)

__all__ = ["sbc", "SBCResult", "ranks_of", "uniformity_pvalues", "ecdf_band"]

# infer's own options; every other keyword argument of sbc is a model argument.
_INFER_OPTIONS = ("num_samples", "num_warmup", "num_chains", "devices")


@dataclasses.dataclass(frozen=True)
class SBCResult:
    """What :func:`sbc` returns.

    Attributes:
        ranks: per latent site, ``(num_simulations, *site_shape)`` integer ranks in
            ``0 .. num_draws`` of the true values among the thinned posterior draws.
        pvalues: per latent site, ``site_shape`` p-values of the chi-square test of uniform
            ranks (``bins`` bins). Small values flag miscalibration; with many elements,
            compare the smallest with ``level / num_elements`` (Bonferroni).
        num_draws: the posterior draws each rank is taken among.
        bins: the number of bins of the chi-square test.
        truths: per latent site, the true (prior) values, ``(num_simulations, *site_shape)``.
        timing: per simulation, the ``timing`` dict of its :class:`inference.Result`
            (``compile`` seconds and ``cache`` source where the method reports them).

    Example:
        >>> import numpy as np
        >>> r = SBCResult(ranks={"mu": np.arange(10) % 5}, pvalues={"mu": np.array(1.0)},
        ...               num_draws=4, bins=5, truths={}, timing=[])
        >>> r.num_simulations, r.min_pvalue
        (10, 1.0)
    """

    ranks: dict[str, np.ndarray]
    pvalues: dict[str, np.ndarray]
    num_draws: int
    bins: int
    truths: dict[str, np.ndarray]
    timing: list[dict]

    @property
    def num_simulations(self) -> int:
        """How many simulations were run."""
        return int(next(iter(self.ranks.values())).shape[0]) if self.ranks else 0

    @property
    def min_pvalue(self) -> float:
        """The smallest p-value over every site and element."""
        return float(min(np.min(p) for p in self.pvalues.values()))

    @property
    def num_elements(self) -> int:
        """How many scalar elements were tested (for a Bonferroni correction)."""
        return int(sum(np.size(p) for p in self.pvalues.values()))

    def plot(self, sites: Sequence[str] | None = None, level: float = 0.95,
             max_panels: int = 16) -> Any:
        """ECDF-difference plot per element with simultaneous ``level`` bands; a Figure.

        Each panel shows ``ECDF(ranks / num_draws) - uniform CDF`` and the band (see
        :func:`ecdf_band`) that the whole curve stays inside with probability ``level`` when
        the ranks are uniform. matplotlib is imported here, not with the module.

        Example:
            >>> import numpy as np
            >>> r = SBCResult(ranks={"mu": np.arange(40) % 10}, pvalues={"mu": np.array(1.0)},
            ...               num_draws=9, bins=5, truths={}, timing=[])
            >>> len(r.plot().axes)
            1
        """
        import matplotlib.pyplot as plt

        names = list(self.ranks) if sites is None else list(sites)
        unknown = [n for n in names if n not in self.ranks]
        if unknown:
            raise KeyError(f"SBCResult.plot(sites={unknown}): no such site; sites are "
                           f"{sorted(self.ranks)}.")
        panels = []
        for name in names:
            flat = self.ranks[name].reshape(self.ranks[name].shape[0], -1)
            shape = self.ranks[name].shape[1:]
            for j in range(flat.shape[1]):
                index = np.unravel_index(j, shape) if shape else ()
                label = name + (str(list(map(int, index))) if shape else "")
                panels.append((label, flat[:, j], self.pvalues[name].reshape(-1)[j]))
        panels = panels[:max_panels]
        n = self.num_simulations
        lower, upper = ecdf_band(n, self.num_draws, level=level)
        grid = np.arange(self.num_draws + 1) / (self.num_draws + 1)
        expected = np.arange(1, self.num_draws + 2) / (self.num_draws + 1)
        cols = min(4, len(panels))
        rows = -(-len(panels) // cols)
        fig, axes = plt.subplots(rows, cols, figsize=(3.2 * cols, 2.6 * rows), squeeze=False)
        for ax, (label, ranks, p) in zip(axes.ravel(), panels):
            ecdf = np.cumsum(np.bincount(ranks, minlength=self.num_draws + 1)) / n
            ax.fill_between(grid, lower - expected, upper - expected, step="post",
                            color="0.85", label=f"{level:.0%} band")
            ax.step(grid, ecdf - expected, where="post", color="C0")
            ax.axhline(0.0, color="0.5", lw=0.5)
            ax.set_title(f"{label} (p = {p:.2g})", fontsize=9)
            ax.set_xlabel("fractional rank")
        for ax in axes.ravel()[len(panels):]:
            ax.set_visible(False)
        axes[0, 0].set_ylabel("ECDF difference")
        fig.tight_layout()
        return fig


def ranks_of(truth: Any, draws: Any, key: jax.Array | int | None = None) -> np.ndarray:
    """Ranks of ``truth`` (shape ``S``) among ``draws`` (shape ``(L, *S)``), in ``0 .. L``.

    The rank is the number of draws below the true value plus a uniform share of the draws
    equal to it (random tie-breaking, so that discrete sites give uniform ranks too).

    Example:
        >>> import numpy as np
        >>> ranks_of(np.array([0.5, 3.0]), np.array([[0.0, 1.0], [1.0, 2.0], [2.0, 4.0]]))
        array([1, 2])
    """
    truth = np.asarray(truth)
    draws = np.asarray(draws)
    if draws.shape[1:] != truth.shape:
        raise ValueError(f"ranks_of: draws of shape {draws.shape} do not hold draws of a value "
                         f"of shape {truth.shape}; give draws of shape (L, *{truth.shape}).")
    truth = truth.astype(draws.dtype)
    below = np.sum(draws < truth, axis=0)
    ties = np.sum(draws == truth, axis=0)
    rng = np.random.default_rng(np.asarray(jax.random.key_data(as_key(key))).ravel())
    return (below + np.floor(rng.uniform(size=ties.shape) * (ties + 1))).astype(np.int64)


def _bins(num_simulations: int, num_draws: int, bins: int | None) -> int:
    if bins is None:
        bins = int(np.clip(num_simulations // 5, 2, 20))
    return int(min(bins, num_draws + 1))


def uniformity_pvalues(ranks: np.ndarray, num_draws: int, bins: int | None = None) -> np.ndarray:
    """Chi-square p-values that ``ranks`` (``(N, *S)``, values ``0 .. num_draws``) are uniform.

    Ranks are grouped into ``bins`` bins of (nearly) equal width; the expected count of a bin
    is ``N`` times its share of the ``num_draws + 1`` rank values, so the test is exact in
    its expectation even when the bins cannot be equal. Default bins: ``N // 5`` (at least
    five expected per bin), between 2 and 20, at most ``num_draws + 1``. One p-value per
    element, shape ``S``.

    Example:
        >>> import numpy as np
        >>> p = uniformity_pvalues(np.arange(200) % 10, num_draws=9)
        >>> float(p) > 0.99
        True
    """
    from scipy import stats

    ranks = np.asarray(ranks)
    n = ranks.shape[0]
    bins = _bins(n, num_draws, bins)
    if bins < 2:
        raise ValueError(f"uniformity_pvalues: need at least 2 bins; got bins={bins} with "
                         f"num_draws={num_draws}. Use more draws or more bins.")
    if np.any(ranks < 0) or np.any(ranks > num_draws):
        raise ValueError(f"uniformity_pvalues: ranks must lie in 0..{num_draws}; got values in "
                         f"{ranks.min()}..{ranks.max()}.")
    bin_of = (np.arange(num_draws + 1) * bins) // (num_draws + 1)
    expected = n * np.bincount(bin_of, minlength=bins) / (num_draws + 1)
    flat = ranks.reshape(n, -1)
    counts = np.stack([np.bincount(bin_of[flat[:, j]], minlength=bins)
                       for j in range(flat.shape[1])], axis=-1)
    pvalues = stats.chisquare(counts, expected[:, None], axis=0).pvalue
    return np.asarray(pvalues).reshape(ranks.shape[1:])


def ecdf_band(num_simulations: int, num_draws: int, level: float = 0.95,
              trials: int = 2000, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Simultaneous band for the ECDF of ``num_simulations`` uniform ranks in ``0 .. num_draws``.

    Returns ``(lower, upper)`` of shape ``(num_draws + 1,)``: the ECDF at rank ``r`` lies in
    ``[lower[r], upper[r]]`` for every ``r`` at once with probability about ``level``. Under
    uniformity ``N * ECDF(r)`` is Binomial(``N``, ``(r + 1) / (num_draws + 1)``); the band
    takes pointwise binomial quantiles at a level ``gamma`` chosen, by simulating ``trials``
    sets of uniform ranks, so that the simultaneous coverage is ``level``.

    Example:
        >>> lower, upper = ecdf_band(50, 9)
        >>> lower.shape, bool(((lower <= np.arange(1, 11) / 10) & (np.arange(1, 11) / 10 <= upper)).all())
        ((10,), True)
    """
    from scipy import stats

    n, values = num_simulations, num_draws + 1
    probs = np.arange(1, values + 1) / values
    rng = np.random.default_rng(seed)
    sims = rng.integers(0, values, size=(trials, n))
    cum = np.cumsum(np.stack([np.bincount(s, minlength=values) for s in sims]), axis=1)
    # two-sided pointwise tail probability of each simulated ECDF value, minimum over ranks
    tail = np.minimum(stats.binom.cdf(cum, n, probs), stats.binom.sf(cum - 1, n, probs))
    gamma = np.quantile(2.0 * tail[:, :-1].min(axis=1), 1.0 - level)
    lower = stats.binom.ppf(gamma / 2.0, n, probs) / n
    upper = stats.binom.ppf(1.0 - gamma / 2.0, n, probs) / n
    return lower, upper


def _observed_names(model: Callable, bound: inspect.BoundArguments | None,
                    sample_sites: list[str], observed: Sequence[str] | None) -> list[str]:
    if observed is not None:
        names = [observed] if isinstance(observed, str) else list(observed)
        missing = [n for n in names if n not in sample_sites]
        if missing:
            raise ValueError(f"sbc(observed={names}): model {model_name(model)} has no sample "
                             f"site(s) {missing}; its sample sites are {sample_sites}.")
        return names
    if bound is None:
        raise TypeError(f"sbc: model {model_name(model)} has no inspectable signature; pass "
                        "observed=[names of the data arguments] explicitly.")
    arguments = {**{n: p.default for n, p in bound.signature.parameters.items()},
                 **bound.arguments}
    names = [n for n in sample_sites if n in arguments and arguments[n] is None]
    if not names:
        raise ModelError(
            f"sbc: model {model_name(model)} has no observed-data argument left as None "
            f"(sample sites {sample_sites}, arguments {sorted(arguments)}). Pass the data "
            "arguments as None (or leave them out) so the model simulates them; by convention "
            "an argument is the data of the sample site of the same name (or pass observed=).")
    return names


def _simulate(model: Callable, args: tuple, kwargs: dict, key: jax.Array, num: int,
              progress: bool) -> dict:
    """``num`` prior draws of every unobserved sample site, in one compiled program (kept in
    the program cache: a second ``sbc`` of the same model and shapes does not recompile)."""
    dynamic, rebuild = split_arguments((args, kwargs))

    def simulate(keys: jax.Array, dynamic: list) -> dict:
        a, kw = rebuild(dynamic)

        def one(k: jax.Array) -> dict:
            tr = handlers.trace(handlers.seed(model, rng_seed=k)).get_trace(*a, **kw)
            return {n: s["value"] for n, s in tr.items()
                    if s["type"] == "sample" and not s["is_observed"]}

        return jax.vmap(one)(keys)

    keys = jax.random.split(key, num)
    try:
        program, _ = compile_program(
            jax.jit(simulate), (keys, dynamic), label="SBC prior", progress=progress,
            key=("inference.sbc.simulate", model, static_part((args, kwargs))))
    except (NotImplementedError, ImportError) as err:
        bad = unsampleable_sites(trace_model(model, *args, **kwargs))
        why = site_reasons(bad) or f"{err}"
        raise ModelError(
            f"sbc: cannot simulate from the prior of model {model_name(model)} ({why}); "
            "calibration needs a proper prior with a sampler on every latent site (an "
            "ImproperUniform or flat prior cannot be sampled). Give those sites proper "
            "priors, or install the package their sampler needs.") from None
    return program(keys, dynamic)


def _thin(draws: np.ndarray, num_draws: int) -> np.ndarray:
    """``num_draws`` draws evenly spaced through the (chain, draw) sequence."""
    pooled = draws.reshape(-1, *draws.shape[2:])
    index = ((np.arange(num_draws) + 0.5) * pooled.shape[0] / num_draws).astype(np.int64)
    return pooled[index]


def sbc(
    model: Callable,
    *args: Any,
    method: Any = None,
    num_simulations: int = 100,
    num_draws: int = 99,
    key: jax.Array | int | None = None,
    observed: Sequence[str] | None = None,
    bins: int | None = None,
    progress: bool = True,
    **infer_kwargs: Any,
) -> SBCResult:
    """Simulation-based calibration of ``method`` on ``model`` (see the module docstring).

    Args:
        model: a NumPyro model whose observed-data arguments are passed as ``None`` (or left
            out), so that it simulates them; every latent site needs a proper prior.
        *args: the model's positional arguments (data arguments as ``None``).
        method: an :func:`inference.infer` method object; default ``inference.NUTS()``.
        num_simulations: prior draws of (parameters, data), one posterior run each.
        num_draws: posterior draws each rank is taken among (ranks ``0 .. num_draws``),
            evenly spaced through all chains' draws; at most ``num_chains * num_samples``.
            Pick it so that the spacing ``num_chains * num_samples / num_draws`` exceeds the
            chains' autocorrelation time, else ranks pile up at the ends.
        key: ``jax.random.key(...)`` or an int seed: the simulations, the runs and the
            tie-breaking all follow from it.
        observed: the names of the observed sites to simulate and condition on; default
            the model arguments that are ``None`` and name a sample site.
        bins: bins of the chi-square test (see :func:`uniformity_pvalues`).
        progress: a progress bar over the simulations (each run's own bar is off).
        **infer_kwargs: ``num_samples``, ``num_warmup``, ``num_chains``, ``devices`` for
            :func:`inference.infer`; any other keyword is a model argument.

    Returns:
        An :class:`SBCResult` with ``ranks``, ``pvalues``, ``timing`` and ``plot()``.

    Example:
        >>> import numpyro, numpyro.distributions as dist, inference
        >>> def model(y=None):
        ...     mu = numpyro.sample("mu", dist.Normal(0.0, 1.0))
        ...     numpyro.sample("y", dist.Normal(mu, 1.0), obs=y)
        >>> r = inference.sbc(model, num_simulations=4, num_draws=9, num_samples=50,
        ...                   num_warmup=50, num_chains=1, key=1, progress=False)
        >>> bool(((r.ranks["mu"] >= 0) & (r.ranks["mu"] <= 9)).all())
        True
    """
    method = NUTS() if method is None else _check_method(method)
    num_simulations = positive_int("num_simulations", num_simulations)
    num_draws = positive_int("num_draws", num_draws)
    options = {k: infer_kwargs.pop(k) for k in _INFER_OPTIONS if k in infer_kwargs}
    total = options.get("num_chains", 4) * options.get("num_samples", 1000)
    if num_draws > total:
        raise ValueError(f"sbc(num_draws={num_draws}): more than the num_chains * num_samples "
                         f"= {total} posterior draws of each run; lower num_draws or draw more.")
    args, kwargs = as_arrays(tuple(args)), as_arrays(dict(infer_kwargs))
    bound = check_arguments(model, args, kwargs)
    sim_key, run_key, rank_key = jax.random.split(as_key(key), 3)

    prior = _simulate(model, args, kwargs, sim_key, num_simulations, progress)
    data_names = _observed_names(model, bound, list(prior), observed)
    latent = [n for n in prior if n not in data_names]
    if not latent:
        raise ModelError(f"sbc: model {model_name(model)} has no latent site besides the "
                         f"observed ones {data_names}; there is nothing to calibrate.")
    prior = {n: np.asarray(v) for n, v in prior.items()}

    ranks: dict[str, list] = {n: [] for n in latent}
    timing = []
    warned: dict[tuple, dict] = {}  # one summary per kind of warning, not one per run
    run_keys = jax.random.split(run_key, num_simulations)
    rank_keys = jax.random.split(rank_key, num_simulations)
    steps: Any = range(num_simulations)
    if progress:
        from tqdm.auto import tqdm

        steps = tqdm(steps, desc=f"SBC {type(method).__name__}", unit="sim")
    for i in steps:
        data = {n: prior[n][i] for n in data_names}
        if bound is None:
            call_args, call_kwargs = args, {**kwargs, **data}
        else:
            sim = inspect.BoundArguments(bound.signature, {**bound.arguments, **data})
            call_args, call_kwargs = sim.args, sim.kwargs
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            result = infer(model, *call_args, method=method, key=run_keys[i], progress=False,
                           **options, **call_kwargs)
        for w in caught:
            runs = warned.setdefault((w.category, str(w.message).split(":")[0]), {})
            runs.setdefault(i, str(w.message))
        timing.append(dict(result.timing))
        site_keys = jax.random.split(rank_keys[i], len(latent))
        for name, k in zip(latent, site_keys):
            draws = _thin(np.asarray(result.samples[name]), num_draws)
            ranks[name].append(ranks_of(prior[name][i], draws, k))
    for (category, _), runs in warned.items():
        first, message = next(iter(runs.items()))
        warnings.warn(f"sbc: {len(runs)} of {num_simulations} runs warned; the first "
                      f"(simulation {first}): {message}", category, stacklevel=2)
    stacked = {n: np.stack(r) for n, r in ranks.items()}
    pvalues = {n: uniformity_pvalues(r, num_draws, bins) for n, r in stacked.items()}
    return SBCResult(ranks=stacked, pvalues=pvalues, num_draws=num_draws,
                     bins=_bins(num_simulations, num_draws, bins),
                     truths={n: prior[n] for n in latent}, timing=timing)
