"""What ``inference.infer`` returns: draws, sampler statistics, and their ArviZ view.

A Result of an MCMC method also keeps where its chains stopped (``state``), so that
``result.extend(n)`` draws more without a new warmup; ``result.save(path)`` writes it all
(no pickled code) and :func:`load_result` reads it back.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any, Callable

import jax
import numpy as np
from numpyro.infer import log_likelihood as numpyro_log_likelihood

from inference import checkpoint as ckpt
from inference.arviz_data import import_arviz, from_groups


@dataclass
class Result:
    """Posterior draws of every latent and deterministic site, with per-draw statistics.

    Attributes:
        samples: site name -> array of shape (chains, draws, *site_shape).
        stats: statistic name -> array of shape (chains, draws), under ArviZ's
            ``sample_stats`` names (``lp``, ``diverging``, ``acceptance_rate``, ``n_grad``...).
        method: the method object that produced the draws.
        observed: observed site name -> data.
        tuning: what warmup chose (e.g. step size and inverse mass matrix per chain).
        timing: seconds spent compiling and running.
        state: where the chains stopped (MCMC methods; opaque, used by :meth:`extend`).

    Example:
        >>> import numpyro.distributions as dist, ppl, inference
        >>> def model():
        ...     ppl.sample("x", dist.Normal(0.0, 1.0))
        >>> r = inference.infer(model, num_samples=100, num_warmup=100, num_chains=2,
        ...                     progress=False)
        >>> "x" in r.summary().index
        True
    """

    samples: dict[str, jax.Array]
    stats: dict[str, jax.Array]
    method: Any = None
    observed: dict[str, Any] = field(default_factory=dict)
    tuning: dict[str, Any] = field(default_factory=dict)
    timing: dict[str, float] = field(default_factory=dict)
    model: Callable | None = field(default=None, repr=False)
    model_args: tuple = field(default=(), repr=False)
    model_kwargs: dict = field(default_factory=dict, repr=False)
    state: Any = field(default=None, repr=False)

    @property
    def num_chains(self) -> int:
        return int(next(iter(self.samples.values())).shape[0])

    @property
    def num_draws(self) -> int:
        return int(next(iter(self.samples.values())).shape[1])

    def log_likelihood(self) -> dict[str, np.ndarray]:
        """Pointwise log likelihood of each observed site, shape (chains, draws, *data_shape)."""
        if self.model is None:
            raise ValueError("this Result has no model attached; cannot compute log likelihood.")
        values = numpyro_log_likelihood(
            self.model, self.samples, *self.model_args, batch_ndims=2, **self.model_kwargs
        )
        return {k: np.asarray(v) for k, v in values.items()}

    def to_arviz(self, log_likelihood: bool = False) -> Any:
        """The draws as the installed ArviZ's data (DataTree on ArviZ 1.x, else InferenceData).

        Groups: ``posterior``, ``sample_stats`` (ArviZ's names, plus ``n_grad``),
        ``observed_data``, and ``log_likelihood`` when asked (for ``loo``/``waic``).
        """
        groups = {
            "posterior": dict(self.samples),
            "sample_stats": dict(self.stats),
            "observed_data": dict(self.observed),
        }
        if log_likelihood:
            groups["log_likelihood"] = self.log_likelihood()
        return from_groups(groups)

    def summary(self, **kwargs: Any):
        """ArviZ's summary table (mean, sd, HDI, MCSE, ESS, R-hat) of the posterior draws."""
        return import_arviz().summary(self.to_arviz(), **kwargs)

    def diagnose(self) -> list[str]:
        """Problems in the draws, one message each (empty if none): R-hat > 1.01, bulk ESS
        < 100 per chain, divergences, maximum tree depth hits, E-BFMI < 0.3 (see
        :mod:`inference.diagnostics`). ``infer`` warns them unless ``diagnostics=False``.

        Example:
            >>> import numpyro.distributions as dist, ppl, inference
            >>> def model():
            ...     ppl.sample("x", dist.Normal(0.0, 1.0))
            >>> r = inference.infer(model, num_samples=20, num_warmup=50, num_chains=2,
            ...                     progress=False, diagnostics=False)
            >>> any(m.startswith("bulk ESS") for m in r.diagnose())
            True
        """
        from inference.diagnostics import diagnose

        return diagnose(self)

    def extend(self, num_samples: int, *, key: Any = None, progress: bool = True,
               devices: Any = None, diagnostics: bool = True) -> "Result":
        """A new Result with ``num_samples`` more draws per chain appended, continuing the
        same chains from where they stopped with the step size and mass matrix warmup
        chose (no new warmup). MCMC methods (``inference.ChainMethod``, ``Gibbs``, and
        ``Learned(correct="irmh")``, whose chains go on with the same fitted proposal), ``VI``, whose
        extension is ``num_samples`` more independent draws per chain from the fitted guide
        (no fitting; new draws each time, with the run's key folded with the draws made),
        and ``SMC``, whose extension moves the final particle populations by MCMC steps at
        inverse temperature 1 (the posterior) and takes draws from them (valid posterior
        draws, correlated with the earlier ones through the particles; not the draws of a
        longer run, so ``r.extend(a).extend(b)`` differs from ``r.extend(a + b)``).

        With ``key=None`` the chains go on with the run's own keys: ``r.extend(n)`` has,
        bit for bit, the draws of a run ``n`` draws longer with the same key, and
        ``r.extend(a).extend(b)`` equals ``r.extend(a + b)``. A ``key`` (int or
        ``jax.random.key``) draws other continuations; the same key gives the same ones.
        A Result from :func:`load_result` needs its model (passed to ``load_result``).
        Enumerated discrete sites (summed out by the chains) are drawn for the new draws
        from their exact conditionals, as ``infer`` draws them, with keys of their own.

        Example:
            >>> import numpyro.distributions as dist, ppl, inference
            >>> def model():
            ...     ppl.sample("x", dist.Normal(0.0, 1.0))
            >>> r = inference.infer(model, num_samples=100, num_warmup=100, num_chains=2,
            ...                     progress=False, diagnostics=False)
            >>> r.extend(50, progress=False, diagnostics=False).samples["x"].shape
            (2, 150)
        """
        from inference.arguments import as_key, positive_int
        from inference.diagnostics import warn_all

        num_samples = positive_int("num_samples", num_samples)
        if self.state is not None and self.method is None:
            raise ValueError(
                "this Result's method could not be rebuilt from its file (its class is not "
                "importable, or its settings are not plain values): set result.method to the "
                "method it was run with (e.g. inference.NUTS(...), same settings), then extend.")
        if self.state is None or not hasattr(self.method, "extend"):
            raise ValueError(
                f"this Result (method {type(self.method).__name__}) has no chain state to "
                "continue: extend works for MCMC methods (NUTS, MALA, ..., Gibbs, Learned with IRMH), "
                "SMC and VI, on a Result "
                "from infer, from result.extend, or from inference.load_result.")
        if self.model is None:
            raise ValueError(
                "this Result has no model attached (it was loaded from a file): load it with "
                "inference.load_result(path, model, *args, **kwargs) to extend it.")
        outputs = self.method.extend(
            self.model, self.model_args, self.model_kwargs, state=self.state,
            num_samples=num_samples, key=None if key is None else as_key(key),
            progress=progress, devices=devices)
        samples, stats, tuning, timing = outputs
        missing = [k for k in self.samples if k not in samples]
        if missing:  # enumerated discrete sites: drawn given the new continuous draws
            samples, timing = self._draw_enumerated(samples, timing, key)
        join = lambda a, b: np.concatenate([np.asarray(a), np.asarray(b)], axis=1)  # noqa: E731
        result = Result(
            samples={k: join(self.samples[k], v) for k, v in samples.items()},
            stats={k: join(self.stats[k], v) for k, v in stats.items() if k in self.stats},
            method=self.method, observed=self.observed, tuning=dict(self.tuning),
            timing=timing, model=self.model, model_args=self.model_args,
            model_kwargs=self.model_kwargs, state=outputs.state)
        if diagnostics:
            warn_all(result.diagnose(), type(self.method).__name__)
        return result

    def _draw_enumerated(self, samples: dict, timing: dict, key: Any) -> tuple[dict, dict]:
        """The enumerated discrete sites (which the chains sum out) for the new draws, from
        their exact conditionals, as ``infer`` draws them (with a key of their own)."""
        from inference.arguments import as_key
        from inference.discrete_draws import DRAWS_KEY, draw_discrete
        from ppl.enumeration import enumeration_of
        from ppl.tracing import latent_sites, trace_model

        args, kwargs = tuple(self.model_args), dict(self.model_kwargs)
        trace = trace_model(self.model, *args, **kwargs)
        enumeration = enumeration_of(self.model, args, kwargs, trace)
        if enumeration is None:
            return samples, timing
        base = self.state.run_key() if key is None else as_key(key)
        draw_key = jax.random.fold_in(jax.random.fold_in(base, DRAWS_KEY), self.state.t)
        continuous = [n for n in latent_sites(trace) if n not in enumeration.sites]
        draws, seconds = draw_discrete(self.model, args, kwargs, samples, enumeration,
                                       continuous, draw_key)
        return {**samples, **draws}, {**timing, "discrete_draws": seconds}

    def save(self, path: str | os.PathLike) -> None:
        """Write the draws, statistics, tuning, timing, observed data, the method's settings
        and the chains' state to ``path`` (a NumPy ``.npz`` archive; no pickled code).

        :func:`load_result` reads it back; the model is passed again there if the result is
        to be extended or to compute log likelihoods. Nested tuning values (VI's fitted
        params) come back as nested dicts of arrays; values that are neither numbers nor
        strings (functions, objects) are left out.

        Example:
            >>> import os, tempfile, numpyro.distributions as dist, ppl, inference
            >>> def model():
            ...     ppl.sample("x", dist.Normal(0.0, 1.0))
            >>> r = inference.infer(model, num_samples=100, num_warmup=100, num_chains=2,
            ...                     progress=False, diagnostics=False)
            >>> path = os.path.join(tempfile.mkdtemp(), "r.npz")
            >>> r.save(path)
            >>> bool((inference.load_result(path).samples["x"] == r.samples["x"]).all())
            True
        """
        arrays, meta = {}, {"kind": "result"}
        groups = {"samples": self.samples, "stats": self.stats, "observed": self.observed}
        for group, values in groups.items():
            meta[group] = list(values)
            arrays.update({f"{group}/{k}": ckpt.to_host(v) for k, v in values.items()})
        meta["tuning"] = _write_tree("tuning", self.tuning, arrays)
        meta["timing"] = {k: v for k, v in self.timing.items()
                          if isinstance(v, (int, float, str, bool))}
        meta["method"], method_arrays = ckpt.method_to_json(self.method)
        arrays.update(method_arrays)
        if self.state is not None:
            meta["state"] = self.state.meta()
            arrays.update(self.state.arrays("state/"))
        ckpt.write_archive(path, arrays, meta)


def load_result(path: str | os.PathLike, model: Callable | None = None, *args: Any,
                **kwargs: Any) -> Result:
    """The :class:`Result` that ``result.save(path)`` wrote.

    ``model`` and its arguments (the data, as passed to ``infer``) are attached when given:
    then ``extend`` and ``log_likelihood`` work as on the original result. The method is
    rebuilt from its saved settings (its class must be importable).

    Example:
        >>> import os, tempfile, numpyro.distributions as dist, ppl, inference
        >>> def model():
        ...     ppl.sample("x", dist.Normal(0.0, 1.0))
        >>> r = inference.infer(model, num_samples=100, num_warmup=100, num_chains=2,
        ...                     progress=False, diagnostics=False)
        >>> path = os.path.join(tempfile.mkdtemp(), "r.npz")
        >>> r.save(path)
        >>> load_result(path, model).extend(50, progress=False, diagnostics=False).num_draws
        150
    """
    arrays, meta = ckpt.read_archive(path)
    if meta.get("kind") != "result":
        raise ValueError(f"{os.fspath(path)!r} is a {meta.get('kind')}, not a saved Result: "
                         "a checkpoint is resumed by calling infer again with the same "
                         "checkpoint= path.")
    group = {g: {k: arrays[f"{g}/{k}"] for k in meta[g]}
             for g in ("samples", "stats", "observed")}
    group["tuning"] = _read_tree(meta["tuning"], arrays)
    state = (ckpt.ChainState.from_meta(meta["state"], arrays, "state/")
             if "state" in meta else None)
    if model is None and (args or kwargs):
        raise TypeError("load_result got model arguments but no model: pass "
                        "load_result(path, model, *args, **kwargs).")
    if model is not None:
        from inference.arguments import as_arrays

        args, kwargs = as_arrays(tuple(args)), as_arrays(dict(kwargs))
    return Result(samples=group["samples"], stats=group["stats"],
                  method=ckpt.method_from_json(meta.get("method"), arrays),
                  observed=group["observed"], tuning=group["tuning"],
                  timing=meta.get("timing", {}), model=model, model_args=tuple(args),
                  model_kwargs=dict(kwargs), state=state)


def _write_tree(group: str, values: dict, arrays: dict) -> dict:
    """Store ``values`` (name -> array or nested dict/list of arrays, e.g. VI's fitted
    params) in ``arrays`` under ``group/...``; returns the layout for :func:`_read_tree`.
    Leaves that are not numbers or strings (functions, objects) are left out."""
    layout = {}
    for name, value in values.items():
        leaves = jax.tree_util.tree_flatten_with_path(value)[0]
        entries = []
        for i, (path, leaf) in enumerate(leaves):
            host = ckpt.to_host(leaf)
            if host.dtype == object:
                continue
            entry = f"{group}/{name}" if not path else f"{group}/{name}#{i}"
            arrays[entry] = host
            entries.append([entry, [_path_key(k) for k in path]])
        if entries:
            layout[name] = entries
    return layout


def _path_key(key: Any) -> Any:
    for attr in ("key", "idx", "name"):
        if hasattr(key, attr):
            return getattr(key, attr)
    return str(key)


def _read_tree(layout: dict, arrays: dict) -> dict:
    """What :func:`_write_tree` stored: arrays, nested containers as nested dicts."""
    out = {}
    for name, entries in layout.items():
        if len(entries) == 1 and not entries[0][1]:
            out[name] = arrays[entries[0][0]]
            continue
        tree: dict = {}
        for entry, path in entries:
            node = tree
            for k in path[:-1]:
                node = node.setdefault(k, {})
            node[path[-1]] = arrays[entry]
        out[name] = tree
    return out
