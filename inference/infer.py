"""One entry point: a model, its data, a method object -> posterior draws as a ``Result``."""

from __future__ import annotations

from typing import Any, Callable

import jax

from inference.arguments import as_arrays, as_key, positive_int
from inference.discrete_draws import DRAWS_KEY, draw_discrete
from inference.scan_chain import chain_of
from inference.diagnostics import warn_all
from inference.method import Method, Request, all_methods
from inference.methods.nuts import NUTS
from inference.result import Result
from ppl.enumeration import enumeration_of, unmarked_discrete_sites, unmarked_error
from ppl.errors import ModelError
from ppl.subsample import subsampled_plates, with_subsample_size
from ppl.tracing import (discrete_latent_sites, free_param_sites, latent_sites, model_name,
                         omitted_data_arguments, trace_model)

# Kept under their old private names for the modules that import them from here.
_positive_int, _as_key = positive_int, as_key


def _check_method(method: Any) -> Method:
    if isinstance(method, type):
        raise TypeError(
            f"method={method.__name__} is a class; pass an instance, e.g. "
            f"method=inference.{method.__name__}() (its settings are its arguments)."
        )
    if isinstance(method, Method):
        return method
    names = ", ".join(f"inference.{m.__name__}()" for m in all_methods())
    raise TypeError(
        f"method must be a method object such as {names} (an inference.method.Method); "
        f"got {method!r} ({type(method).__name__})."
    )


_DISCRETE_DRAWS = DRAWS_KEY  # kept under its old name


def _enumeration(model: Callable, args: tuple, kwargs: dict, trace: dict, method: Method):
    """How a gradient method sums the model's discrete sites out (``None``: it has none
    marked), or a :class:`ModelError`: finite sites left unmarked (with the annotation or the
    one-line wrapper to add), or a model with no continuous site left to sample."""
    unmarked = unmarked_discrete_sites(trace)
    if unmarked:
        raise unmarked_error(model, trace, unmarked, type(method).__name__)
    enumeration = enumeration_of(model, tuple(args), dict(kwargs), trace)
    if enumeration is None:
        return None
    if not method.sums_out_enumerated:
        capable = [m.__name__ for m in all_methods() if m.sums_out_enumerated]
        raise ModelError(
            f"model {model_name(model)} has enumerated discrete site(s) "
            f"{list(enumeration.sites)}, which {type(method).__name__} does not sum out yet "
            "(its density does not go through ppl.potential). Use a method that does: "
            + ", ".join(f"inference.{c}()" for c in capable)
            + "; or sample the sites with inference.Gibbs.")
    if not any(n not in enumeration.sites for n in latent_sites(trace)):
        raise ModelError(
            f"model {model_name(model)}: every latent site ({list(enumeration.sites)}) is "
            f"enumerated, so {type(method).__name__} has no continuous site to move; its "
            "posterior is exact by enumeration. Use inference.Gibbs to sample the discrete "
            "sites, or numpyro.contrib.funsor.infer_discrete to draw them directly.")
    # Whether the draws can come back (a chain through scan: one site, history 1), checked
    # before sampling rather than after.
    continuous = {n: s["value"] for n, s in latent_sites(trace).items() if n not in enumeration.sites}
    chain_of(model, tuple(args), dict(kwargs), enumeration, continuous)
    return enumeration


def infer(
    model: Callable,
    *args: Any,
    method: Any = None,
    num_samples: int = 1000,
    num_warmup: int = 1000,
    num_chains: int = 4,
    key: jax.Array | int | None = None,
    progress: bool = True,
    devices: Any = None,
    init_params: dict | None = None,
    checkpoint: Any = None,
    checkpoint_every: int | None = None,
    diagnostics: bool = True,
    **kwargs: Any,
) -> Result:
    """Draw from the posterior of ``model(*args, **kwargs)`` with ``method``.

    Args:
        model: a NumPyro model function; observed sites are conditioned on the data passed.
        *args, **kwargs: the model's arguments (data).
        method: a method object; default ``inference.NUTS()``. ``inference.VI(...)`` fits a
            guide and draws from it.
        num_samples, num_warmup: draws kept per chain, and warmup (adaptation) steps (MCMC
            methods only; VI's budget is its own ``steps``).
        num_chains: independent chains, run with ``jax.vmap`` in one compiled program.
        key: ``jax.random.key(...)`` or an int seed; the same key gives the same draws.
        progress: show a progress bar (updated a few times per run, not every step).
        devices: which devices the chains are split over (one compiled program, the chain
            axis sharded; see :mod:`inference.sharding`): ``None`` (default) uses every
            accelerator JAX sees when ``num_chains`` divides by their number, else the
            largest number of them that divides it, and one device on CPUs (CPU devices
            share the host's cores); ``"all"``, a number ``k`` (the first ``k`` devices) or
            a list of ``jax.Device`` must divide ``num_chains`` (else a ``ValueError``).
            ``result.timing["devices"]`` says how many ran. The same key on the same number
            of devices gives the same draws, bit for bit. On another number of devices each
            chain is the same computation compiled for another batch size, so it can differ
            by float rounding: chains without discrete decisions (ULA, Underdamped or
            RandomizedMidpoint with a given ``step_size``) stay within rounding; an accept
            step or an adaptive warmup (NUTS, MALA, OBABO, and every Langevin method's
            default warmup, which runs MALA) can turn a rounding difference into another
            decision, and from there into different, equally valid chains (compare those in
            distribution). Methods that run on the model (SMC, NeuTra) split their chains
            too; VI runs on one device.
        init_params: MCMC methods (``inference.ChainMethod``: NUTS, MALA, ULA, Underdamped,
            RandomizedMidpoint, SGLD, SGHMC): ``{site: value}`` starting every chain at
            these constrained values (a site's shape, or ``(num_chains, *shape)`` for one
            per chain) instead of Stan's random points; every latent site needs one.
            ``VI``: ``{param site: constrained value}`` starting the fit there (e.g. a
            previous VI result's ``tuning["params"]``; others keep their initial values).
            ``SMC`` refuses it (a ``TypeError`` saying why): it starts every particle from
            a prior draw and tempers from the prior, so a starting point has no place in it.
        checkpoint, checkpoint_every: MCMC methods: a file (``.npz``) where the chains'
            state and draws so far are written every ``checkpoint_every`` steps (warmup
            and sampling; default: every twentieth of the run) and at the end. If the file
            exists, the run resumes from it: after a crash, the same call again finishes
            the run with the same draws as an uninterrupted one (a finished run's file gives
            its draws back at once). It must come from the same
            call (method, counts, key, data; the model's code is not compared), else a
            ``ValueError`` says what differs. ``VI``: the fit's parameters and optimizer
            state, resumed the same way (:func:`inference.fit`). ``SMC``: every chain's
            particle population, every ``checkpoint_every`` stages (default: every stage),
            resumed the same way (:mod:`inference.smc.driver`).
        diagnostics: warn (one line each, :class:`inference.diagnostics.DiagnosticWarning`)
            about what ``result.diagnose()`` finds: R-hat > 1.01, bulk ESS < 100 per chain,
            divergences, maximum tree depth hits, E-BFMI < 0.3. ``False`` silences them
            (``progress=False`` does not).

    Ctrl-C (``KeyboardInterrupt``) during the draws of an MCMC method stops at the end of the
    chunk in flight (chunks are sized to take about a second) and *returns* a Result with the draws
    made so far, with a warning saying how many; ``result.extend(n)`` continues those chains.
    During ``VI``'s fit it stops the fit likewise and returns draws from the guide fitted so
    far, with a warning. ``SMC`` runs its stages in chunks of about a second too, but has no
    posterior before its tempering ends: its ``KeyboardInterrupt`` propagates, saying at which
    stage each chain stood (and writes ``checkpoint`` first, to resume from). Interrupted
    during warmup, or by another method, the ``KeyboardInterrupt`` propagates.

    Returns:
        A :class:`Result` with ``samples`` of shape (chains, draws, *site_shape) for every
        latent and deterministic site, ``stats`` under ArviZ's names, ``summary()`` and
        ``to_arviz()``.

    Example:
        >>> import jax, numpyro, numpyro.distributions as dist, inference
        >>> def model(y=None):
        ...     mu = numpyro.sample("mu", dist.Normal(0.0, 10.0))
        ...     with numpyro.plate("data", 3):
        ...         numpyro.sample("y", dist.Normal(mu, 1.0), obs=y)
        >>> r = inference.infer(model, y=jax.numpy.array([1.0, 2.0, 3.0]),
        ...                     num_samples=300, num_warmup=300, progress=False)
        >>> r.samples["mu"].shape
        (4, 300)
    """
    method = NUTS() if method is None else _check_method(method)
    num_samples = positive_int("num_samples", num_samples)
    num_warmup = positive_int("num_warmup", num_warmup, allow_zero=True)
    num_chains = positive_int("num_chains", num_chains)
    key = as_key(key)
    args, kwargs = as_arrays(tuple(args)), as_arrays(dict(kwargs))

    trace = trace_model(model, *args, **kwargs)
    traced_model = model
    omitted = omitted_data_arguments(model, args, kwargs)
    became_latent = sorted(omitted & set(latent_sites(trace)))
    if became_latent:
        raise ModelError(
            f"model {model_name(model)}: data argument(s) {became_latent} were not given, so "
            f"site(s) {became_latent} would be sampled as latent variables instead of being "
            f"observed; shapes expected: "
            + ", ".join(f"'{n}' {tuple(trace[n]['fn'].shape())}" for n in became_latent)
            + ". Pass the data, or pass None explicitly to sample them from the model."
        )
    if not latent_sites(trace):
        observed_names = [n for n, site in trace.items() if site["type"] == "sample"]
        raise ModelError(
            f"model {model_name(model)} has no latent sites, so there is no posterior to "
            f"sample (its sample sites {observed_names} are all observed). Leave a data "
            "argument as None to sample that site, or add the unknowns as numpyro.sample "
            "sites without obs=."
        )
    discrete = discrete_latent_sites(trace)
    enumeration = None
    if discrete and not getattr(method, "handles_discrete", False):
        enumeration = _enumeration(model, args, kwargs, trace, method)
        discrete = [n for n in discrete if enumeration is None or n not in enumeration.sites]
    if discrete and not getattr(method, "handles_discrete", False):
        details = ", ".join(f"'{n}' ({type(trace[n]['fn']).__name__})" for n in discrete)
        capable = [m.__name__ for m in all_methods() if m.handles_discrete]
        raise ModelError(
            f"model {model_name(model)} has discrete latent site(s) {details}, which "
            f"{type(method).__name__} cannot sample: it moves by gradients. Marginalise the "
            "site out in the model (sum over its values with jax.nn.logsumexp and add the "
            "result with numpyro.factor), or use a method that handles discrete sites: "
            + (", ".join(capable) + ", or " if capable else "")
            + "NumPyro's DiscreteHMCGibbs / MixedHMC."
        )
    params = free_param_sites(trace)
    if params and not method.learns_params:
        capable = [m.__name__ for m in all_methods() if m.learns_params]
        raise ModelError(
            f"model {model_name(model)} has numpyro.param site(s) {params}, which "
            f"{type(method).__name__} would hold fixed at their initial values (it samples "
            "only numpyro.sample sites). To infer them, make each a numpyro.sample site with a "
            "prior; to fix them, pass the values as data arguments (or wrap the model in "
            "numpyro.handlers.substitute(model, data={name: value}))"
            + (f"; to fit them (point estimates), use {' or '.join(f'inference.{c}()' for c in capable)}, "
               "which learns the model's params with its guide (result.tuning['params'])"
               if capable else "")
            + "."
        )

    plates = subsampled_plates(trace)
    if plates and enumeration is not None:
        raise ModelError(
            f"model {model_name(model)} subsamples plate(s) {sorted(plates)} and enumerates "
            f"discrete site(s) {list(enumeration.sites)}; summing discrete sites out of a "
            "minibatch is not supported. Drop subsample_size from the plate.")
    stochastic = method.stochastic_gradients
    if stochastic and getattr(method, "batch_size", None) is not None:
        sizes = {name: method.batch_size for name in plates} or {"data": method.batch_size}
        model = with_subsample_size(model, sizes, trace)
    elif plates and not stochastic:
        capable = [m.__name__ for m in all_methods() if m.stochastic_gradients]
        raise ModelError(
            f"model {model_name(model)} subsamples plate(s) "
            + ", ".join(f"'{n}' ({b} of {n_})" for n, (n_, b) in plates.items())
            + f", but {type(method).__name__} needs the full-data density. Drop "
            "subsample_size from the plate, or use a stochastic-gradient method: "
            + ", ".join(capable) + "."
        )

    request = Request(key=key, num_samples=num_samples, num_warmup=num_warmup,
                      num_chains=num_chains, progress=progress, devices=devices,
                      trace=trace if model is traced_model else None, init_params=init_params,
                      checkpoint=checkpoint, checkpoint_every=checkpoint_every)
    outputs = method.run(model, tuple(args), dict(kwargs), request)
    samples, stats, tuning, timing = outputs
    if enumeration is not None:
        # Each enumerated site drawn from its exact conditional given each continuous draw.
        continuous = [n for n in latent_sites(trace) if n not in enumeration.sites]
        draws, seconds = draw_discrete(model, tuple(args), dict(kwargs), samples, enumeration,
                                       continuous, jax.random.fold_in(key, _DISCRETE_DRAWS))
        samples = {**samples, **draws}
        timing = {**timing, "discrete_draws": seconds}
    observed = {
        name: site["value"]
        for name, site in trace.items()
        if site["type"] == "sample" and site["is_observed"] and not name.startswith("_")
        and site["fn"].__class__.__name__ != "Unit"
    }
    result = Result(
        samples=dict(samples),
        stats=stats,
        method=method,
        observed=observed,
        tuning=tuning,
        timing=timing,
        model=model,
        model_args=tuple(args),
        model_kwargs=dict(kwargs),
        state=getattr(outputs, "state", None),
    )
    if diagnostics:
        warn_all(result.diagnose(), type(method).__name__)
    return result
