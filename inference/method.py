"""The one protocol ``inference.infer`` runs: a method object with ``run(...)``.

``infer(model, *args, method=m, ...)`` checks the model and its data once, then calls

    m.run(model, args, kwargs, key=..., num_samples=..., num_warmup=..., num_chains=...,
          progress=..., devices=..., trace=...) -> (samples, stats, tuning, timing)

without knowing ``m``'s class: ``samples`` maps every latent and deterministic site to
draws of shape (chains, draws, ...), ``stats`` maps ArviZ's ``sample_stats`` names to
(chains, draws), ``tuning`` holds what the method chose (step sizes, fitted parameters,
evidence), ``timing`` seconds (``compile``, ``run``, ...) and ``devices``.

What a method can do is said by class attributes that ``infer`` reads:

* ``handles_discrete``: it can move discrete latent sites (Gibbs); otherwise ``infer``
  refuses a model with discrete latent sites and names the methods that can.
* ``stochastic_gradients``: it differentiates minibatches from the model's subsampled
  plates (SGLD, SGHMC); its ``batch_size`` field, if set, resizes them. Other methods need
  the full-data density, and ``infer`` refuses a subsampled plate for them.
* ``learns_params``: it fits the model's own ``numpyro.param`` sites (VI, as NumPyro's SVI
  does, with the guide's). A sampler would hold them at their initial values, so ``infer``
  refuses a model with param sites for the others (unless a handler around the model
  supplies their values) and names the sites.

Two ways to write one:

* :class:`ChainMethod`: MCMC chains. Give ``sampler(logdensity_fn, num_warmup,
  num_samples)`` returning an :class:`inference.chains.Sampler` (``init`` and ``step`` over
  batched chains); ``run`` drives it with :func:`inference.chains.run_chains`
  (compiled once per shape, chunks, progress, devices). NUTS and the Langevin methods.
* :class:`Method`: anything else (VI, SMC, Gibbs, NeuTra, Learned): write ``run``.

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
from typing import Any, Callable, ClassVar

import jax

from inference.chains import continue_chains, run_chains
from inference.sharding import mesh_for

__all__ = ["Method", "ChainMethod", "all_methods"]

Outputs = tuple[dict, dict, dict, dict]


class Method(abc.ABC):
    """What ``inference.infer`` runs (see the module docstring)."""

    #: It can move discrete latent sites.
    handles_discrete: ClassVar[bool] = False
    #: It differentiates minibatches drawn from the model's subsampled plates.
    stochastic_gradients: ClassVar[bool] = False
    #: It fits the model's ``numpyro.param`` sites (others would leave them at their initial values).
    learns_params: ClassVar[bool] = False

    @abc.abstractmethod
    def run(
        self,
        model: Callable,
        args: tuple,
        kwargs: dict,
        *,
        key: jax.Array,
        num_samples: int,
        num_warmup: int,
        num_chains: int,
        progress: bool = True,
        devices: Any = None,
        trace: dict | None = None,
    ) -> Outputs:
        """Draw from the posterior of ``model(*args, **kwargs)``.

        ``trace`` is the model's trace on these arguments if the caller has one
        (:func:`ppl.tracing.trace_model`), to save running the model again.
        """

    def run_model(self, model: Callable, args: tuple, kwargs: dict, **options: Any) -> Outputs:
        """Deprecated name of :meth:`run` (kept for one release)."""
        warnings.warn(f"{type(self).__name__}.run_model is deprecated; use .run (same "
                      "arguments).", DeprecationWarning, stacklevel=2)
        return self.run(model, args, kwargs, **options)


class ChainMethod(Method):
    """An MCMC method given by its :class:`inference.chains.Sampler`.

    Beyond :class:`Method` it takes ``init_params`` (constrained starting values per site),
    ``checkpoint``/``checkpoint_every`` (a file the run can be resumed from), and its
    chains can be continued (:meth:`extend`, behind ``Result.extend``).
    """

    #: Its draws are Markov chains: ``Result.diagnose`` checks R-hat and ESS.
    markov_chains: ClassVar[bool] = True

    @abc.abstractmethod
    def sampler(self, logdensity_fn: Callable, num_warmup: int, num_samples: int) -> Any:
        """The chains over ``logdensity_fn`` (unconstrained positions -> log density; for a
        method with ``stochastic_gradients``, ``(position, key) -> estimate``)."""

    def run(self, model: Callable, args: tuple, kwargs: dict, *, key: jax.Array,
            num_samples: int, num_warmup: int, num_chains: int, progress: bool = True,
            devices: Any = None, trace: dict | None = None, init_params: dict | None = None,
            checkpoint: Any = None, checkpoint_every: int | None = None) -> Outputs:
        mesh = mesh_for(devices, num_chains, what="chains", owner="infer")
        return run_chains(self, model, tuple(args), dict(kwargs), key=key,
                          num_warmup=num_warmup, num_samples=num_samples,
                          num_chains=num_chains, progress=progress, mesh=mesh, trace=trace,
                          init_params=init_params, checkpoint=checkpoint,
                          checkpoint_every=checkpoint_every)

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
