"""Data subsampling through NumPyro's own ``plate(name, size, subsample_size=...)``.

A model that declares its data plate as ``numpyro.plate("data", N, subsample_size=B)`` and
indexes its data with the indices the plate returns has, under a seed, an unbiased estimate
of its full log density: NumPyro draws ``B`` distinct indices and scales the plate's terms
by ``N / B``. This module finds such plates and changes their subsample size without
touching the model, so a stochastic-gradient sampler can choose its own minibatch size.
"""

from __future__ import annotations

from typing import Any, Callable

import jax.numpy as jnp
from numpyro.primitives import Messenger

from ppl.errors import ModelError
from ppl.tracing import model_name


def subsampled_plates(trace: dict) -> dict[str, tuple[int, int]]:
    """``{plate name: (size, subsample_size)}`` for the plates of ``trace`` that subsample.

    Example:
        >>> import jax.numpy as jnp, numpyro, numpyro.distributions as dist, ppl
        >>> def model(y):
        ...     mu = numpyro.sample("mu", dist.Normal(0.0, 1.0))
        ...     with numpyro.plate("data", 100, subsample_size=10) as idx:
        ...         numpyro.sample("y", dist.Normal(mu, 1.0), obs=y[idx])
        >>> subsampled_plates(ppl.trace_model(model, jnp.zeros(100)))
        {'data': (100, 10)}
    """
    out = {}
    for name, site in trace.items():
        if site["type"] == "plate":
            size, sub = site["args"]
            if sub is not None and sub != size:
                out[name] = (int(size), int(sub))
    return out


class _SubsampleSize(Messenger):
    """Set the subsample size of the named plates (``None`` size: every subsampled plate)."""

    def __init__(self, fn: Callable | None, sizes: dict[str, int]):
        self.sizes = dict(sizes)
        super().__init__(fn)

    def process_message(self, msg: Any) -> None:
        if msg["type"] != "plate" or msg["name"] not in self.sizes:
            return
        size = msg["args"][0]
        sub = self.sizes[msg["name"]]
        msg["args"] = (size, sub)
        # NumPyro fills in the full index range when it is not subsampling; clear it so the
        # seed handler draws a subsample.
        msg["value"] = jnp.arange(size) if sub == size else None


def with_subsample_size(model: Callable, sizes: dict[str, int], trace: dict) -> Callable:
    """``model`` with the subsample size of each plate in ``sizes`` replaced.

    Only plates the model already subsamples can be resized (their data are indexed by the
    plate's indices); naming another plate is an error that says how to declare it.

    Example:
        >>> import jax, jax.numpy as jnp, numpyro, numpyro.distributions as dist, ppl
        >>> def model(y):
        ...     mu = numpyro.sample("mu", dist.Normal(0.0, 1.0))
        ...     with numpyro.plate("data", 100, subsample_size=10) as idx:
        ...         numpyro.sample("y", dist.Normal(mu, 1.0), obs=y[idx])
        >>> y = jnp.zeros(100)
        >>> resized = with_subsample_size(model, {"data": 25}, ppl.trace_model(model, y))
        >>> ppl.trace_model(resized, y)["y"]["value"].shape
        (25,)
    """
    plates = subsampled_plates(trace)
    for name, sub in sizes.items():
        if name not in plates:
            have = f"its subsampled plates are {sorted(plates)}" if plates else "it has no subsampled plate"
            raise ModelError(
                f"model {model_name(model)}: cannot set the minibatch size of plate '{name}'; "
                f"{have}. Declare the data plate as numpyro.plate('{name}', N, "
                "subsample_size=B) and index the data with the indices it returns "
                "(with numpyro.plate(...) as idx: ... obs=y[idx])."
            )
        size = plates[name][0]
        if not (isinstance(sub, int) and 1 <= sub <= size):
            raise ValueError(f"minibatch size {sub!r} for plate '{name}': must be an int in [1, {size}].")
    return _SubsampleSize(model, sizes)
