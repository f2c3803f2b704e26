"""The one protocol ``inference.infer`` runs: a method object with ``run(...)``.

``infer(model, *args, method=m, ...)`` checks the model and its data once, builds one
:class:`Request` (key, numbers of draws, warmup steps and chains, progress, devices, the
model's trace, and the options below), then calls

    m.run(model, args, kwargs, request) -> (samples, stats, tuning, timing)

without knowing ``m``'s class. ``run`` refuses the options ``m`` does not take and calls
the method's one hook, ``draw(model, args, kwargs, request)``. ``samples`` maps every
latent and deterministic site to draws of shape (chains, draws, ...), ``stats`` maps
ArviZ's ``sample_stats`` names to (chains, draws), ``tuning`` holds what the method chose
(step sizes, fitted parameters, evidence), ``timing`` seconds (``compile``, ``run``, ...)
and ``devices``.

What a method can do is said by class attributes that ``infer`` reads:

* ``handles_discrete``: it can move discrete latent sites (Gibbs); otherwise ``infer``
  refuses a model with discrete latent sites and names the methods that can.
* ``sums_out_enumerated``: its density sums out the sites marked for enumeration.
* ``stochastic_gradients``: it differentiates minibatches from the model's subsampled
  plates (SGLD, SGHMC); its ``batch_size`` field, if set, resizes them. Other methods need
  the full-data density, and ``infer`` refuses a subsampled plate for them.
* ``learns_params``: it fits the model's own ``numpyro.param`` sites (VI, as NumPyro's SVI
  does, with the guide's). A sampler would hold them at their initial values, so ``infer``
  refuses a model with param sites for the others (unless a handler around the model
  supplies their values) and names the sites.
* ``splits_devices``: it can split its work over ``devices``; else ``run`` refuses them.
* ``options``: which of ``init_params``, ``checkpoint``, ``checkpoint_every`` it takes.

Two ways to write one:

* :class:`ChainMethod`: MCMC chains. Give ``sampler(logdensity_fn, num_warmup,
  num_samples)`` returning an :class:`inference.chains.Sampler` (``init`` and ``step`` over
  batched chains); its ``draw`` drives it with :func:`inference.chains.run_chains`
  (compiled once per shape, chunks, progress, devices). NUTS and the Langevin methods.
* :class:`Method`: anything else (VI, SMC, Gibbs, NeuTra, Learned): write ``draw``.

A new method is one new file with one such class; :func:`all_methods` finds it for error
messages (every concrete subclass that has been imported).

Example:
    >>> import inference
    >>> isinstance(inference.NUTS(), ChainMethod), isinstance(inference.VI(), Method)
    (True, True)
"""

from __future__ import annotations

import abc
import warnings
from typing import Any, Callable, ClassVar, NamedTuple

import jax

from inference.chains import continue_chains, run_chains
from inference.sharding import mesh_for

__all__ = ["Method", "ChainMethod", "Request", "all_methods"]

Outputs = tuple[dict, dict, dict, dict]


class Request(NamedTuple):
    """What ``infer`` asks of a method: one value, built once, passed to :meth:`Method.draw`.

    ``trace`` is the model's trace on these arguments if the caller has one
    (:func:`ppl.tracing.trace_model`), to save running the model again. The last three
    fields are options only some methods take (see :attr:`Method.options`).

    Example:
        >>> import jax
        >>> r = Request(key=jax.random.key(0), num_samples=100, num_warmup=100, num_chains=2)
        >>> r.num_chains, r.progress, r.init_params
        (2, True, None)
    """

    key: jax.Array
    num_samples: int
    num_warmup: int
    num_chains: int
    progress: bool = True
    devices: Any = None
    trace: dict | None = None
    #: ``{site: constrained value}`` to start from.
    init_params: dict | None = None
    #: A file the run's state is written to (and resumed from).
    checkpoint: Any = None
    #: Steps between two writes of ``checkpoint``.
    checkpoint_every: int | None = None


#: The :class:`Request` fields only some methods take.
OPTIONS = ("init_params", "checkpoint", "checkpoint_every")


class Method(abc.ABC):
    """What ``inference.infer`` runs (see the module docstring)."""

    #: It can move discrete latent sites.
    handles_discrete: ClassVar[bool] = False
    #: It differentiates minibatches drawn from the model's subsampled plates.
    stochastic_gradients: ClassVar[bool] = False
    #: It fits the model's ``numpyro.param`` sites (others would leave them at their initial values).
    learns_params: ClassVar[bool] = False
    #: Its density sums out the discrete sites marked ``infer={"enumerate": "parallel"}``.
    sums_out_enumerated: ClassVar[bool] = False
    #: It can split its work over several devices (``devices=``); else only ``devices=None``.
    splits_devices: ClassVar[bool] = True
    #: Which of :data:`OPTIONS` it takes; ``infer`` refuses the others by name.
    options: ClassVar[frozenset] = frozenset()

    def run(self, model: Callable, args: tuple, kwargs: dict, request: Request | None = None,
            **fields: Any) -> Outputs:
        """Draw from the posterior of ``model(*args, **kwargs)``: ``(samples, stats, tuning,
        timing)``. Give a :class:`Request`, or its fields as keywords."""
        if request is None:
            request = Request(**fields)
        elif fields:
            raise TypeError(f"{type(self).__name__}.run: give a Request or keywords, not both "
                            f"(got {sorted(fields)} as well).")
        refused = [name for name in OPTIONS
                   if getattr(request, name) is not None and name not in self.options]
        if refused:
            raise TypeError(refused_options_message(type(self), refused))
        if request.devices is not None and not self.splits_devices:
            raise ValueError(f"infer: {type(self).__name__} does not split its work over "
                             "devices; leave devices=None (its chains, if any, run on the "
                             "default device).")
        return self.draw(model, tuple(args), dict(kwargs), request)

    @abc.abstractmethod
    def draw(self, model: Callable, args: tuple, kwargs: dict, request: Request) -> Outputs:
        """The method itself: what :meth:`run` returns, for a checked ``request``."""

    def run_model(self, model: Callable, args: tuple, kwargs: dict, **options: Any) -> Outputs:
        """Deprecated name of :meth:`run` (kept for one release)."""
        warnings.warn(f"{type(self).__name__}.run_model is deprecated; use .run (same "
                      "arguments).", DeprecationWarning, stacklevel=2)
        return self.run(model, args, kwargs, **options)


def refused_options_message(cls: type, refused: list[str]) -> str:
    """The error for :data:`OPTIONS` that ``cls`` does not take, naming the methods that do."""
    takers: dict[str, list[str]] = {}
    for name in refused:
        takers[name] = [m.__name__ for m in all_methods() if name in m.options]
    one = len(refused) == 1
    where = "; ".join(f"{name}: {', '.join(ms) or 'none'}" for name, ms in takers.items())
    return (f"{', '.join(refused)} {'is' if one else 'are'} not taken by {cls.__name__}; drop "
            f"{'it' if one else 'them'} or use a method that takes {'it' if one else 'them'} "
            f"({where}).")


class ChainMethod(Method):
    """An MCMC method given by its :class:`inference.chains.Sampler`.

    Beyond :class:`Method` it takes ``init_params`` (constrained starting values per site),
    ``checkpoint``/``checkpoint_every`` (a file the run can be resumed from), and its
    chains can be continued (:meth:`extend`, behind ``Result.extend``).
    """

    #: Its draws are Markov chains: ``Result.diagnose`` checks R-hat and ESS.
    markov_chains: ClassVar[bool] = True
    sums_out_enumerated: ClassVar[bool] = True
    options: ClassVar[frozenset] = frozenset(OPTIONS)

    @abc.abstractmethod
    def sampler(self, logdensity_fn: Callable, num_warmup: int, num_samples: int) -> Any:
        """The chains over ``logdensity_fn`` (unconstrained positions -> log density; for a
        method with ``stochastic_gradients``, ``(position, key) -> estimate``)."""

    def draw(self, model: Callable, args: tuple, kwargs: dict, request: Request) -> Outputs:
        r = request
        mesh = mesh_for(r.devices, r.num_chains, what="chains", owner="infer")
        return run_chains(self, model, args, kwargs, key=r.key, num_warmup=r.num_warmup,
                          num_samples=r.num_samples, num_chains=r.num_chains,
                          progress=r.progress, mesh=mesh, trace=r.trace,
                          init_params=r.init_params, checkpoint=r.checkpoint,
                          checkpoint_every=r.checkpoint_every)

    def extend(self, model: Callable, args: tuple, kwargs: dict, *, state: Any,
               num_samples: int, key: jax.Array | None = None, progress: bool = True,
               devices: Any = None) -> Outputs:
        """``num_samples`` more draws of the chains in ``state`` (a run's final state), with
        no new warmup (see :func:`inference.chains.continue_chains`)."""
        mesh = mesh_for(devices, state.num_chains, what="chains", owner="extend")
        return continue_chains(self, model, tuple(args), dict(kwargs), state=state,
                               num_samples=num_samples, key=key, progress=progress, mesh=mesh)


def all_methods() -> list[type]:
    """Every concrete :class:`Method` class imported so far, in definition order.

    Example:
        >>> import inference
        >>> "NUTS" in [m.__name__ for m in all_methods()]
        True
    """
    found, todo = [], [Method]
    while todo:
        cls = todo.pop(0)
        for sub in cls.__subclasses__():
            if sub not in found:
                todo.append(sub)
                if not getattr(sub, "__abstractmethods__", None) and not sub.__name__.startswith("_"):
                    found.append(sub)
    return found
