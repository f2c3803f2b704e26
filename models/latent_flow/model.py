"""The model: a generator network and a normalizing-flow prior on its latents (:func:`init`)."""

from __future__ import annotations

import functools
import math
import numbers
from typing import Any, Callable

import equinox as eqx
import jax
import jax.numpy as jnp

from inference.flows import FlowSpec
from inference.arguments import as_key, check_int, check_number  # infer's rules; no default key here


#: Observation models: ``"gaussian"`` (``N(g(z), noise_sd^2 I)``) and ``"bernoulli"``
#: (logits ``g(z)``, data in ``[0, 1]``).
LIKELIHOODS: tuple[str, ...] = ("gaussian", "bernoulli")

_ACTIVATIONS: dict[str, Callable] = {"relu": jax.nn.relu, "gelu": jax.nn.gelu,
                                     "silu": jax.nn.silu, "tanh": jnp.tanh, "elu": jax.nn.elu}

_PARTS = ("latents", "generator", "prior")  # what fit names when a value stops being finite


# ----------------------------------------------------------------------------------------
# The model
# ----------------------------------------------------------------------------------------
class LatentFlowModel(eqx.Module):
    """A generator ``g: R^d -> R^D`` and a flow prior over ``R^d`` (weights ``flow_theta``).

    Attributes:
        generator: an Equinox module mapping one latent ``(d,)`` to ``(D,)`` (the Gaussian
            mean, or the Bernoulli logits).
        flow_theta: the flow's flat weights, shape ``(spec.size,)``.
        spec: the flow's structure (:class:`inference.flows.FlowSpec` with ``dim = d``);
            static.
        likelihood: ``"gaussian"`` or ``"bernoulli"`` (:data:`LIKELIHOODS`); static.
        noise_sd: the Gaussian likelihood's standard deviation ``sigma`` (fixed, not
            learned; unused by ``"bernoulli"``); static.

    Build one with :func:`init`, or directly with a generator of your own (e.g. a linear map).

    Example:
        >>> from models.latent_flow import decode
        >>> import jax, jax.numpy as jnp
        >>> from inference.flows import FlowSpec
        >>> spec = FlowSpec("affine_coupling", dim=2, layers=1, width=4)
        >>> gen = eqx.nn.Linear(2, 3, key=jax.random.key(0))
        >>> m = LatentFlowModel(gen, spec.init(jax.random.key(1)), spec, "gaussian", 0.5)
        >>> m.latent_dim, decode(m, jnp.zeros((4, 2))).shape
        (2, (4, 3))
    """

    generator: Any
    flow_theta: jax.Array
    spec: FlowSpec = eqx.field(static=True)
    likelihood: str = eqx.field(static=True, default="gaussian")
    noise_sd: float = eqx.field(static=True, default=0.3)

    def __check_init__(self):
        if not isinstance(self.spec, FlowSpec):
            raise ValueError(f"LatentFlowModel(spec={self.spec!r}): must be an "
                             "inference.flows.FlowSpec.")
        if self.likelihood not in LIKELIHOODS:
            raise ValueError(f"LatentFlowModel(likelihood={self.likelihood!r}): use one of "
                             f"{list(LIKELIHOODS)}.")
        sd = self.noise_sd
        if isinstance(sd, bool) or not isinstance(sd, numbers.Real) or not (
                math.isfinite(sd) and sd > 0):
            raise ValueError(f"LatentFlowModel(noise_sd={sd!r}): must be a positive finite "
                             "number.")
        if not callable(self.generator):
            raise ValueError(f"LatentFlowModel(generator={self.generator!r}): must be a callable "
                             "Equinox module mapping a latent (d,) to (D,).")
        shape = jnp.shape(self.flow_theta)
        if shape != (self.spec.size,):
            raise ValueError(f"LatentFlowModel(flow_theta=...): shape {shape}; the flow spec "
                             f"expects ({self.spec.size},).")

    @property
    def latent_dim(self) -> int:
        """``d``, the latent dimension."""
        return self.spec.dim

    @property
    def data_dim(self) -> int:
        """``D``, the data dimension (from one generator pass on ``zeros(d)``)."""
        out = jax.eval_shape(self.generator, jax.ShapeDtypeStruct((self.spec.dim,), jnp.float32))
        return int(out.shape[-1])


def _positive_int(name: str, value: Any, owner: str, allow_zero: bool = False) -> int:
    return check_int(owner, name, value, minimum=0 if allow_zero else 1)


def _positive_float(name: str, value: Any, owner: str) -> float:
    return check_number(owner, name, value)


def _as_key(key: Any, owner: str) -> jax.Array:
    if key is not None:
        try:
            return as_key(key)
        except TypeError:
            pass
    raise ValueError(f"{owner}(key={key!r}): must be a jax.random.key(...) or an int seed.")


@functools.lru_cache(maxsize=32)
def _flow_spec(kind: str, dim: int, layers: int, width: int) -> FlowSpec:
    # One FlowSpec object per configuration: the spec is a static field compared by
    # identity, so models of the same configuration share compiled functions.
    return FlowSpec(kind, dim=dim, layers=layers, width=width)


def init(
    key: jax.Array,
    data_dim: int,
    latent_dim: int,
    *,
    likelihood: str = "gaussian",
    noise_sd: float = 0.3,
    hidden: int = 256,
    depth: int = 2,
    activation: str = "gelu",
    flow_kind: str = "affine_coupling",
    flow_layers: int = 4,
    flow_width: int = 64,
) -> LatentFlowModel:
    """A fresh model: an MLP generator ``d -> hidden (x depth) -> D`` and a flow prior that
    starts as the identity (so the initial prior is ``N(0, I)``).

    Args:
        key: PRNG key for the generator's and the flow's initial weights.
        data_dim: ``D``; latent_dim: ``d``.
        likelihood: ``"gaussian"`` or ``"bernoulli"`` (:data:`LIKELIHOODS`).
        noise_sd: the Gaussian likelihood's ``sigma`` (fixed).
        hidden, depth: the generator MLP's width and number of hidden layers (``depth=0``: a
            linear generator).
        activation: ``"relu"``, ``"gelu"``, ``"silu"``, ``"tanh"`` or ``"elu"``.
        flow_kind: a kind of :mod:`inference.flows` with a fast inverse (the density) and a
            fast forward (sampling): ``"affine_coupling"`` or ``"spline_coupling"``.
        flow_layers, flow_width: the flow's coupling layers and conditioner width.

    Example:
        >>> import jax
        >>> m = init(jax.random.key(0), data_dim=3, latent_dim=2, hidden=8, flow_layers=1,
        ...          flow_width=8)
        >>> m.data_dim, m.latent_dim, m.likelihood, m.spec.kind
        (3, 2, 'gaussian', 'affine_coupling')
    """
    data_dim = _positive_int("data_dim", data_dim, "latent_flow.init")
    latent_dim = _positive_int("latent_dim", latent_dim, "latent_flow.init")
    hidden = _positive_int("hidden", hidden, "latent_flow.init")
    depth = _positive_int("depth", depth, "latent_flow.init", allow_zero=True)
    if likelihood not in LIKELIHOODS:
        raise ValueError(f"latent_flow.init(likelihood={likelihood!r}): use one of "
                         f"{list(LIKELIHOODS)}.")
    noise_sd = _positive_float("noise_sd", noise_sd, "latent_flow.init")
    if activation not in _ACTIVATIONS:
        raise ValueError(f"latent_flow.init(activation={activation!r}): use one of "
                         f"{sorted(_ACTIVATIONS)}.")
    kind = flow_kind.lower() if isinstance(flow_kind, str) else flow_kind
    if kind not in ("affine_coupling", "spline_coupling", "realnvp", "nsf", "spline", "rqs"):
        raise ValueError(
            f"latent_flow.init(flow_kind={flow_kind!r}): use 'affine_coupling' or "
            "'spline_coupling' (both directions one pass: the density for inference and "
            "learning, the forward map for sampling).")
    spec = _flow_spec(kind, latent_dim,
                      _positive_int("flow_layers", flow_layers, "latent_flow.init"),
                      _positive_int("flow_width", flow_width, "latent_flow.init"))
    k_gen, k_flow = jax.random.split(key)
    generator = eqx.nn.MLP(latent_dim, data_dim, hidden, depth,
                           activation=_ACTIVATIONS[activation], key=k_gen)
    return LatentFlowModel(generator, spec.init(k_flow), spec, likelihood, noise_sd)
