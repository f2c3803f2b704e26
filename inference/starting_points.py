"""``init_params``: chains started from values the user gives, as NumPyro users know it.

``infer(model, ..., init_params={"mu": 0.0, "sigma": [1.0, 2.0, 1.5, 0.5]})`` starts every
chain at those *constrained* values (the model's own scale: ``sigma > 0``): one value per
site broadcast to every chain, or one per chain (a leading ``num_chains`` axis). Every
latent site needs a value. The values are checked here, on the host, before anything is
compiled: unknown or missing sites, shapes, and the support of each site's distribution
(evaluated with the other given values, so ``Uniform(0, sigma)`` is checked against the
given ``sigma``); each error names the site and says what was expected.

Example:
    >>> import jax, numpyro.distributions as dist, ppl
    >>> def model():
    ...     ppl.sample("s", dist.HalfNormal(1.0))
    >>> pot = ppl.potential(model)
    >>> x = unconstrained_starts(pot, {"s": 1.0}, num_chains=2)
    >>> x["s"].tolist()
    [0.0, 0.0]
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import numpyro
from numpyro import handlers
from numpyro.infer.util import unconstrain_fn

from ppl.errors import ModelError
from ppl.potential import Position, Potential
from ppl.tracing import model_name

__all__ = ["unconstrained_starts", "constrained_starts", "raise_nonfinite_start"]


def _constrained_shapes(pot: Potential) -> dict[str, tuple[int, ...]]:
    zeros = {name: jnp.zeros(shape) for name, shape in pot.sites.items()}
    out = jax.eval_shape(pot.to_constrained, zeros)
    return {name: tuple(out[name].shape) for name in pot.sites}


def _per_chain(name: str, value: Any, shape: tuple, num_chains: int,
               dtype: Any = None) -> np.ndarray:
    try:
        array = np.asarray(value, dtype=dtype or jnp.result_type(float))
        exact = np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError) as err:
        raise ModelError(f"init_params['{name}'] must be a number or an array; got "
                         f"{type(value).__name__} ({err}).") from err
    if np.issubdtype(array.dtype, np.integer) and not np.array_equal(exact, array):
        raise ModelError(f"init_params['{name}'] must hold whole numbers (a discrete site); "
                         f"got {np.array2string(exact, threshold=6)}.")
    if array.shape == shape:
        return np.broadcast_to(array, (num_chains,) + shape)
    if array.shape == (num_chains,) + shape:
        return array
    raise ModelError(
        f"init_params['{name}'] has shape {array.shape}; expected {shape} (the site's "
        f"shape, used for every chain) or {(num_chains,) + shape} (one value per chain, "
        f"num_chains={num_chains}).")


def _check_support(model: Any, args: tuple, kwargs: dict, values: dict[str, np.ndarray],
                   num_chains: int, same: bool) -> None:
    """Each value inside its site's support, with the other sites at the given values."""
    model = handlers.seed(model, 0)
    for chain in range(1 if same else num_chains):
        at = {name: v[chain] for name, v in values.items()}
        # Without argument validation: a value outside its support would otherwise be
        # reported by the distribution of a later site that uses it.
        with numpyro.validation_enabled(False):
            tr = handlers.trace(handlers.substitute(model, data=at)).get_trace(*args, **kwargs)
        for name in values:
            fn = tr[name]["fn"]
            inside = np.asarray(fn.support(jnp.asarray(at[name])))
            if not inside.all():
                where = "" if same else f" (chain {chain})"
                shown = np.array2string(np.asarray(at[name]), threshold=6)
                raise ModelError(
                    f"init_params['{name}'] = {shown}{where} is outside the support of site "
                    f"'{name}' ({type(fn).__name__}, support {fn.support}). Pass a value "
                    "inside it (init_params are on the model's constrained scale).")


def constrained_starts(model: Any, args: tuple, kwargs: dict, shapes: dict[str, tuple],
                       init_params: Any, num_chains: int,
                       dtypes: dict[str, Any] | None = None) -> dict[str, np.ndarray]:
    """``init_params`` checked against the latent sites ``shapes`` (``{site: constrained
    shape}``) of ``model(*args, **kwargs)``: ``{site: (num_chains, *shape) array}`` of
    ``dtypes[site]`` (default float). Errors as :func:`unconstrained_starts`.

    Example:
        >>> import numpyro, numpyro.distributions as dist
        >>> def model():
        ...     numpyro.sample("k", dist.Poisson(2.0))
        >>> constrained_starts(model, (), {}, {"k": ()}, {"k": 3}, 2, {"k": np.int32})["k"]
        array([3, 3], dtype=int32)
    """
    name = model_name(model)
    if not isinstance(init_params, Mapping):
        raise TypeError(f"init_params must be a dict {{site name: value}}; got "
                        f"{type(init_params).__name__}.")
    unknown = sorted(set(init_params) - set(shapes))
    missing = [s for s in shapes if s not in init_params]
    if unknown:
        raise ModelError(
            f"init_params names site(s) {unknown} that are not latent sites of model {name}; "
            f"its latent sites are {list(shapes)} (observed and deterministic sites take "
            "no initial value).")
    if missing:
        raise ModelError(
            f"init_params has no value for latent site(s) {missing} of model {name}: give "
            f"every latent site ({list(shapes)}) a value, e.g. from a previous run's "
            "draws: {site: result.samples[site][:, -1]}.")
    dtypes = dtypes or {}
    same = all(np.shape(init_params[s]) == shapes[s] for s in shapes)
    values = {s: _per_chain(s, init_params[s], shapes[s], num_chains, dtypes.get(s))
              for s in shapes}
    _check_support(model, args, kwargs, values, num_chains, same)
    return values


def unconstrained_starts(pot: Potential, init_params: Any, num_chains: int) -> Position:
    """The unconstrained starting position of each chain (leading axis ``num_chains``).

    ``init_params`` maps every latent site to its constrained value (shape of the site, or
    ``(num_chains, *shape)``). Raises a :class:`ModelError` naming the site for an unknown
    or missing site, a wrong shape or a value outside the support.
    """
    values = constrained_starts(pot.model, pot.args, pot.kwargs, _constrained_shapes(pot),
                                init_params, num_chains)
    model = handlers.seed(pot.model, 0)
    one = lambda v: unconstrain_fn(model, pot.args, pot.kwargs, v)  # noqa: E731
    position = jax.vmap(one)({s: jnp.asarray(v) for s, v in values.items()})
    return {s: position[s] for s in pot.sites}


def raise_nonfinite_start(pot: Potential, positions: Position, found: Any) -> None:
    """The error for ``init_params`` whose log density or gradient is not finite."""
    chain = int(np.argmin(np.asarray(found)))
    point = jax.tree.map(lambda x: x[chain], positions)
    bad = pot.nonfinite_sites(point)
    raise ModelError(
        f"model {model_name(pot.model)}: the log density (or its gradient) is not finite at "
        f"init_params (chain {chain}); site(s) where it is not finite: {bad or 'none found'}. "
        "Pass values where every site's density is finite (check the data and the values "
        "of parameters the other sites depend on).")
