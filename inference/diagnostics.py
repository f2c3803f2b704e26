"""End-of-run checks of MCMC draws, as Stan and PyMC report them.

:func:`diagnose` returns one message per problem found (an empty list when none):

* **Non-finite draws** (NaN or infinite) of any site, in any chain: the sampler diverged
  (an unadjusted method's step too large for where the chain went, or the model's
  arithmetic overflowed there); means, R-hat and ESS of such draws mean nothing.
* **R-hat** above 1.01 (Vehtari et al. 2021: the larger of the rank-normalized split R-hat
  of the draws and of their folded values ``|x - median|``): the chains disagree.
* **Bulk ESS** below 100 per chain (rank-normalized split chains): too few effective
  draws for reliable means and quantiles.
* **Divergences** after warmup: the sampler missed part of the posterior.
* **Maximum tree depth** reached (NUTS): the trajectories were cut short.
* **E-BFMI** below 0.3 in a chain (HMC/NUTS energies): momentum resampling explores the
  energy levels poorly (heavy tails, funnels).

R-hat and ESS use NumPyro's ``split_gelman_rubin`` and ``effective_sample_size`` on the
rank-normalized draws; they are checked for methods whose draws are Markov chains
(``method.markov_chains``), the others (divergences, ...) wherever the statistic exists.
``inference.infer`` warns each message once (a :class:`DiagnosticWarning`) unless called
with ``diagnostics=False``.

Example:
    >>> import numpy as np
    >>> rng = np.random.default_rng(0)
    >>> good = {"x": rng.normal(size=(4, 500))}
    >>> check_draws(good, {}, num_chains=4)
    []
    >>> stuck = {"x": rng.normal(size=(4, 500)) + np.arange(4)[:, None]}
    >>> check_draws(stuck, {}, num_chains=4)[0].startswith("R-hat")
    True
"""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np
from numpyro.diagnostics import effective_sample_size, split_gelman_rubin

__all__ = ["DiagnosticWarning", "diagnose", "check_draws", "rank_normalized_rhat",
           "bulk_ess", "ebfmi", "warn_all"]

RHAT_MAX = 1.01
ESS_PER_CHAIN_MIN = 100
EBFMI_MIN = 0.3
_SHOWN = 4  # sites named per message


class DiagnosticWarning(UserWarning):
    """A problem found in a run's draws (R-hat, ESS, divergences, tree depth, E-BFMI)."""


def _ranks(rows: np.ndarray) -> np.ndarray:
    """Ranks (1..m, ties averaged, as ``scipy.stats.rankdata``) within each row (k, m)."""
    k, m = rows.shape
    order = np.argsort(rows, axis=1)
    ordered = np.take_along_axis(rows, order, axis=1)
    # Repeated draws (rejections, float32 rounding) share the mean of their positions.
    new = np.ones((k, m), bool)
    new[:, 1:] = ordered[:, 1:] != ordered[:, :-1]
    last = np.ones((k, m), bool)
    last[:, :-1] = new[:, 1:]
    index = np.broadcast_to(np.arange(m), (k, m))
    first_of_group = np.maximum.accumulate(np.where(new, index, 0), axis=1)
    last_of_group = np.minimum.accumulate(np.where(last, index, m - 1)[:, ::-1], axis=1)[:, ::-1]
    ranks = np.empty((k, m))
    np.put_along_axis(ranks, order, (first_of_group + last_of_group) / 2 + 1, axis=1)
    return ranks


def _rank_normal(x: np.ndarray) -> np.ndarray:
    """Draws (chains, draws, k) replaced by normal scores of their pooled ranks."""
    from scipy.special import ndtri  # on first use: scipy costs ~0.3 s to import

    c, n, k = x.shape
    ranks = _ranks(np.ascontiguousarray(x.reshape(c * n, k).T)).T.reshape(c, n, k)
    return ndtri((ranks - 0.375) / (c * n + 0.25))


def _split(x: np.ndarray) -> np.ndarray:
    c, n = x.shape[:2]
    half = n // 2
    return np.concatenate([x[:, :half], x[:, n - half:]], axis=0)


def rank_normalized_rhat(x: np.ndarray) -> np.ndarray:
    """R-hat of draws ``x`` (chains, draws, k) per component (Vehtari et al. 2021)."""
    return _rhat_and_ess(x)[0]


def bulk_ess(x: np.ndarray) -> np.ndarray:
    """Bulk effective sample size of draws ``x`` (chains, draws, k) per component."""
    return _rhat_and_ess(x)[1]


def _rhat_and_ess(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    # Ranks are pooled over all draws, so the split chains' normal scores are the split
    # normal scores: one ranking serves R-hat and ESS.
    z = _rank_normal(x)
    folded = _rank_normal(np.abs(x - np.median(x, axis=(0, 1))))
    with np.errstate(invalid="ignore", divide="ignore"):
        rhat = np.fmax(split_gelman_rubin(z), split_gelman_rubin(folded))
        return rhat, effective_sample_size(_split(z))


def ebfmi(energy: np.ndarray) -> np.ndarray:
    """E-BFMI of each chain from its energies (chains, draws)."""
    energy = np.asarray(energy, dtype=np.float64)
    num = np.sum(np.diff(energy, axis=1) ** 2, axis=1)
    den = np.sum((energy - energy.mean(axis=1, keepdims=True)) ** 2, axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return num / den


def _components(samples: dict[str, Any]) -> list[tuple[str, np.ndarray, np.ndarray, tuple]]:
    """(site, draws (chains, draws, k), their flat indices, site shape) per site; constant
    components (nothing to mix) left out."""
    out = []
    for name, value in samples.items():
        x = np.asarray(value)
        if x.ndim < 2 or not np.issubdtype(x.dtype, np.number):
            continue
        c, n = x.shape[:2]
        flat = x.reshape(c, n, -1).astype(np.float64)
        varying = np.ptp(flat, axis=(0, 1)) > 0
        if varying.any():
            out.append((name, flat[..., varying], np.argwhere(varying).ravel(), x.shape[2:]))
    return out


def _label(name: str, index: int, shape: tuple) -> str:
    if not shape:
        return name
    return f"{name}[{','.join(map(str, np.unravel_index(index, shape)))}]"


def _worst(values: list[tuple[float, str]], largest: bool) -> str:
    values = sorted(values, reverse=largest)
    shown = ", ".join(f"{label} ({v:.3g})" for v, label in values[:_SHOWN])
    more = len(values) - _SHOWN
    return shown + (f" and {more} more" if more > 0 else "")


def check_draws(samples: dict[str, Any], stats: dict[str, Any], num_chains: int,
                markov_chains: bool = True) -> list[str]:
    """The messages for draws ``samples`` (site -> (chains, draws, ...)) and ``stats``.

    Example:
        >>> x = np.random.default_rng(0).normal(size=(2, 200))
        >>> x[1, 50:] = np.nan
        >>> check_draws({"x": x}, {}, num_chains=2)[0][:58]
        'non-finite draws (NaN or inf) in chain 1, from draw 50 on:'
    """
    messages = []
    message = _non_finite(samples)
    if message:
        messages.append(message)
    num_draws = min((np.shape(v)[1] for v in samples.values() if np.ndim(v) >= 2), default=0)
    if markov_chains and num_draws >= 4:
        high, low = [], []
        for name, x, index, shape in _components(samples):
            rhat, ess = _rhat_and_ess(x)
            for j, (r, e) in enumerate(zip(np.atleast_1d(rhat), np.atleast_1d(ess))):
                label = _label(name, int(index[j]), shape)
                if not r <= RHAT_MAX:
                    high.append((float(r), label))
                if not e >= ESS_PER_CHAIN_MIN * num_chains:
                    low.append((float(e), label))
        if high:
            what = "quantity" if len(high) == 1 else "quantities"
            messages.append(
                f"R-hat above {RHAT_MAX} for {len(high)} {what}: "
                f"{_worst(high, True)}; the chains have not mixed: run longer "
                "(result.extend(...)) or reparameterise.")
        if low:
            messages.append(
                f"bulk ESS below {ESS_PER_CHAIN_MIN} per chain ({ESS_PER_CHAIN_MIN * num_chains} "
                f"for {num_chains} chain{'s' if num_chains > 1 else ''}) for {len(low)} "
                f"quantit{'y' if len(low) == 1 else 'ies'}: {_worst(low, False)}; means and "
                "quantiles are unreliable: draw more (result.extend(...)).")
    total = num_chains * num_draws
    if "diverging" in stats and total:
        n_div = int(np.sum(np.asarray(stats["diverging"])))
        if n_div:
            messages.append(
                f"{n_div} divergent transition{'s' if n_div > 1 else ''} after warmup "
                f"({100 * n_div / total:.2g}% of draws): the sampler missed regions of high "
                "curvature; raise target_accept_prob (e.g. NUTS(target_accept_prob=0.95)) or "
                "reparameterise (a non-centred hierarchy).")
    if "reached_max_treedepth" in stats and total:
        hits = int(np.sum(np.asarray(stats["reached_max_treedepth"])))
        if hits:
            depth = int(np.max(np.asarray(stats.get("tree_depth", 0))))
            messages.append(
                f"{hits} draw{'s' if hits > 1 else ''} ({100 * hits / total:.2g}%) reached the "
                f"maximum tree depth ({depth}): trajectories were cut short; raise "
                "NUTS(max_tree_depth=...) or reparameterise.")
    if "energy" in stats and "tree_depth" in stats and num_draws >= 4:
        values = ebfmi(np.asarray(stats["energy"]))
        bad = [(float(v), f"chain {c}") for c, v in enumerate(values) if v < EBFMI_MIN]
        if bad:
            messages.append(
                f"E-BFMI below {EBFMI_MIN} in {_worst(bad, False)}: the momentum resampling "
                "explores the energy levels poorly (heavy tails or a funnel); reparameterise.")
    return messages


def _non_finite(samples: dict[str, Any]) -> str | None:
    """The message for sites with non-finite draws: which chains, from which draw, which
    sites (or ``None``)."""
    first: dict[int, int] = {}  # chain -> first draw with a non-finite value
    sites = []
    for name, value in samples.items():
        x = np.asarray(value)
        if x.ndim < 2 or not np.issubdtype(x.dtype, np.inexact):
            continue
        bad = ~np.isfinite(x.reshape(x.shape[0], x.shape[1], -1)).all(axis=2)
        if bad.any():
            sites.append(name)
            for c in np.flatnonzero(bad.any(axis=1)):
                d = int(np.argmax(bad[c]))
                first[int(c)] = min(d, first.get(int(c), d))
    if not sites:
        return None
    chains = sorted(first)
    where = ", ".join(f"chain {c}, from draw {first[c]} on" for c in chains[:_SHOWN])
    shown = ", ".join(repr(n) for n in sites[:_SHOWN])
    more = len(sites) - _SHOWN
    return (f"non-finite draws (NaN or inf) in {where}"
            + (f" and {len(chains) - _SHOWN} more chains" if len(chains) > _SHOWN else "")
            + f": site(s) {shown}" + (f" and {more} more" if more > 0 else "")
            + ". The sampler diverged there (an unadjusted method's step too large where the "
            "chain went, or the model's arithmetic overflowing): its draws, means, R-hat and "
            "ESS mean nothing. Use an adjusted method (MALA, NUTS) or a smaller step size, "
            "or look at the model where the chain went (result.samples of those chains).")


def diagnose(result: Any) -> list[str]:
    """The messages for a :class:`inference.Result` (see the module docstring).

    Example:
        >>> import numpyro.distributions as dist, ppl, inference
        >>> def model():
        ...     ppl.sample("x", dist.Normal(0.0, 1.0))
        >>> r = inference.infer(model, num_samples=20, num_warmup=50, num_chains=2,
        ...                     progress=False, diagnostics=False)
        >>> # 40 draws cannot give a bulk ESS of 100 per chain
        >>> "bulk ESS below 100 per chain" in [m.split(" (")[0] for m in diagnose(r)]
        True
    """
    markov = bool(getattr(result.method, "markov_chains", False))
    return check_draws(result.samples, result.stats, result.num_chains, markov)


def warn_all(messages: list[str], owner: str, stacklevel: int = 3) -> None:
    """Each message as one :class:`DiagnosticWarning` line."""
    for message in messages:
        warnings.warn(f"{owner}: {message}", DiagnosticWarning, stacklevel=stacklevel)
