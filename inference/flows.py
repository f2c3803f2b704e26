"""Normalizing flows on ``R^D`` as Equinox modules, with their weights as one flat vector.

A flow here is a bijection ``T: R^D -> R^D`` built from `flowjax <https://github.com/danielward27/flowjax>`_'s
Equinox bijections (we use theirs rather than writing our own: they are well kept, and
their coupling, masked-autoregressive and rational-quadratic-spline layers are what we
need). Kinds (:data:`KINDS`):

=====================  ====================================================================
``"affine_coupling"``  RealNVP: affine coupling layers (half the coordinates scale-and-shift
                       the other half), the order reversed after each. Both directions one
                       pass per layer.
``"spline_coupling"``  Neural spline flow: coupling layers whose transformer is a monotone
                       rational-quadratic spline on ``[-interval, interval]`` (identity
                       outside). Both directions one pass per layer.
``"iaf"``              Inverse autoregressive flow: masked autoregressive affine layers used
                       in the fast direction for *sampling* (``forward`` one pass,
                       ``inverse`` ``D`` sequential passes per layer).
``"maf"``              Masked autoregressive flow: the same layers inverted, fast for
                       *density* (``inverse`` one pass, ``forward`` ``D`` passes per layer).
=====================  ====================================================================

Every kind ends with an elementwise affine layer (``loc``, ``scale``), and every
conditioner's last linear layer starts at zero, so a fresh flow is the identity map and
training starts from the base distribution (a guide: ``N(0, I)`` on the unconstrained
space).

:class:`FlowSpec` holds a flow's structure (the kind, the sizes, and the non-trainable parts
such as permutations and autoregressive masks, fixed at construction); its weights live in
one flat vector ``theta`` (:meth:`FlowSpec.init`), which is what a guide declares as a single
``numpyro.param`` and what :func:`inference.fit` optimizes. :meth:`FlowSpec.forward` and
:meth:`FlowSpec.inverse` return the value and ``log |det J|`` for one point (``vmap`` for
batches).

Example:
    >>> import jax, jax.numpy as jnp
    >>> spec = FlowSpec("affine_coupling", dim=3, layers=2, width=8)
    >>> theta = spec.init(jax.random.key(0))
    >>> x, logdet = spec.forward(theta, jnp.ones(3))  # a fresh flow is the identity
    >>> x.tolist(), float(logdet)
    ([1.0, 1.0, 1.0], 0.0)
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Callable

import equinox as eqx
import jax
import jax.numpy as jnp
import paramax
from flowjax.bijections import (
    Affine,
    Chain,
    Coupling,
    Flip,
    Invert,
    MaskedAutoregressive,
    Permute,
    RationalQuadraticSpline,
    Vmap,
)
from jax.flatten_util import ravel_pytree

__all__ = ["KINDS", "ALIASES", "FlowSpec", "check_kind"]

#: Flow kinds (see the module docstring).
KINDS: tuple[str, ...] = ("affine_coupling", "spline_coupling", "iaf", "maf")
#: Other names accepted for a kind.
ALIASES: dict[str, str] = {"realnvp": "affine_coupling", "nsf": "spline_coupling",
                           "spline": "spline_coupling", "rqs": "spline_coupling"}

_ACTIVATIONS: dict[str, Callable] = {"relu": jax.nn.relu, "tanh": jnp.tanh, "elu": jax.nn.elu,
                                     "gelu": jax.nn.gelu, "silu": jax.nn.silu}


def check_kind(kind: Any, owner: str = "flow") -> str:
    """The canonical name of a flow kind; a clear ``ValueError`` for an unknown one.

    Example:
        >>> check_kind("realnvp")
        'affine_coupling'
    """
    if isinstance(kind, str):
        name = ALIASES.get(kind.lower(), kind.lower())
        if name in KINDS:
            return name
    raise ValueError(
        f"{owner}(kind={kind!r}): unknown flow kind; use one of {list(KINDS)} "
        f"(or an alias: {sorted(ALIASES)})."
    )


def _is_trainable(leaf: Any) -> bool:
    return eqx.is_inexact_array(leaf)


def _not_trainable_leaf(leaf: Any) -> bool:
    return isinstance(leaf, paramax.NonTrainable)


def _zero_last_layer(bijection: Any) -> Any:
    """Zero the last linear layer of every conditioner MLP: the layer becomes the identity
    (flowjax's transformers are the identity at zero conditioner output)."""

    def is_mlp(node):
        return isinstance(node, eqx.nn.MLP)

    def zero(node):
        if not is_mlp(node):
            return node
        last = node.layers[-1]
        weight = last.weight
        if isinstance(weight, paramax.Parameterize):  # masked weight (MAF): zero the raw one
            new_weight = eqx.tree_at(lambda w: w.args[1], weight, jnp.zeros_like(weight.args[1]))
        else:
            new_weight = jnp.zeros_like(weight)
        last = eqx.tree_at(lambda lin: lin.weight, last, new_weight)
        if last.bias is not None:
            last = eqx.tree_at(lambda lin: lin.bias, last, jnp.zeros_like(last.bias))
        return eqx.tree_at(lambda m: m.layers[-1], node, last)

    return jax.tree_util.tree_map(zero, bijection, is_leaf=is_mlp)


@dataclass(frozen=True, eq=False)
class FlowSpec:
    """The structure of a flow over ``R^dim``; its weights are a flat vector ``theta``.

    Args:
        kind: one of :data:`KINDS` (or an alias from :data:`ALIASES`).
        dim: the dimension ``D``.
        layers: flow layers (each a coupling or autoregressive layer and a permutation).
        width: hidden units of each conditioner MLP.
        depth: hidden layers of each conditioner MLP.
        knots: spline knots (``"spline_coupling"``).
        interval: the spline acts on ``[-interval, interval]`` and is the identity outside.
        activation: the conditioners' activation (``"relu"``, ``"tanh"``, ``"elu"``,
            ``"gelu"``, ``"silu"``).
        permutation: how coordinates are reordered after each layer (not trained):
            ``"reverse"`` (RealNVP's and MAF's alternation: every coordinate is transformed
            by every other layer) or ``"random"`` (a fixed random permutation per layer).
        seed: fixes the random permutations and the weights' template.

    Example:
        >>> import jax, jax.numpy as jnp
        >>> spec = FlowSpec("spline_coupling", dim=2, layers=2, width=8)
        >>> theta = spec.init(jax.random.key(0)) + 0.1
        >>> z, _ = spec.inverse(theta, spec.forward(theta, jnp.array([0.3, -1.2]))[0])
        >>> [round(v, 4) for v in z.tolist()]
        [0.3, -1.2]
    """

    kind: str
    dim: int
    layers: int = 4
    width: int = 32
    depth: int = 1
    knots: int = 8
    interval: float = 5.0
    activation: str = "tanh"
    permutation: str = "reverse"
    seed: int = 0
    _static: Any = field(init=False, repr=False)
    _unravel: Any = field(init=False, repr=False)
    size: int = field(init=False)

    def __post_init__(self):
        set_ = lambda k, v: object.__setattr__(self, k, v)  # noqa: E731
        set_("kind", check_kind(self.kind, "FlowSpec"))
        for name in ("dim", "layers", "width", "depth", "knots"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"FlowSpec({name}={value!r}): must be a positive int.")
        if not (isinstance(self.interval, (int, float)) and self.interval > 0):
            raise ValueError(f"FlowSpec(interval={self.interval!r}): must be a positive number.")
        if self.permutation not in ("reverse", "random"):
            raise ValueError(f"FlowSpec(permutation={self.permutation!r}): use 'reverse' or "
                             "'random'.")
        if self.activation not in _ACTIVATIONS:
            raise ValueError(f"FlowSpec(activation={self.activation!r}): use one of "
                             f"{sorted(_ACTIVATIONS)}.")
        # The non-trainable parts (permutations, masks) come from ``seed``. Built inside a jit
        # trace they are traced values of that trace: see :attr:`concrete`.
        template = self._build(jax.random.key(self.seed))
        params, static = eqx.partition(template, _is_trainable, is_leaf=_not_trainable_leaf)
        flat, unravel = ravel_pytree(params)
        set_("_static", static)
        set_("_unravel", unravel)
        set_("size", int(flat.size))

    # -- construction -----------------------------------------------------------------
    def _build(self, key: jax.Array) -> Any:
        dim, act = self.dim, _ACTIVATIONS[self.activation]
        keys = jax.random.split(key, self.layers + 1)
        perm_key = keys[-1]
        nn = dict(nn_width=self.width, nn_depth=self.depth, nn_activation=act)
        chain = []
        for i in range(self.layers):
            if self.kind in ("affine_coupling", "spline_coupling"):
                transformer = (Affine() if self.kind == "affine_coupling" else
                               RationalQuadraticSpline(knots=self.knots, interval=self.interval))
                if dim == 1:  # nothing to condition on: an elementwise transformer
                    if self.kind == "affine_coupling":
                        continue  # the final elementwise affine layer covers it
                    layer = Vmap(transformer, axis_size=1)
                else:
                    layer = Coupling(keys[i], transformer=transformer,
                                     untransformed_dim=dim // 2, dim=dim, **nn)
            elif dim == 1:
                continue  # an affine autoregressive layer in 1-D is the final affine layer
            else:
                layer = MaskedAutoregressive(keys[i], transformer=Affine(), dim=dim, **nn)
                if self.kind == "maf":
                    layer = Invert(layer)
            chain.append(layer)
            if dim >= 2 and (self.permutation == "reverse" or dim == 2):
                chain.append(Flip((dim,)))
            elif dim > 2:
                perm_key, k = jax.random.split(perm_key)
                chain.append(Permute(jax.random.permutation(k, jnp.arange(dim))))
        chain.append(Affine(jnp.zeros(dim), jnp.ones(dim)))
        return _zero_last_layer(Chain(chain))

    @property
    def concrete(self) -> bool:
        """Whether the non-trainable parts are concrete arrays (built outside any JAX
        trace), so that the spec may be kept and reused across traces."""
        return not any(isinstance(leaf, jax.core.Tracer) for leaf in jax.tree.leaves(self._static))

    def init(self, key: jax.Array) -> jax.Array:
        """Initial weights, shape ``(size,)``: random conditioner weights, last layers zero
        (so the flow starts as the identity).

        Example:
            >>> FlowSpec("iaf", dim=3, layers=1, width=4).init(jax.random.key(0)).shape
            (52,)
        """
        params, _ = eqx.partition(self._build(key), _is_trainable, is_leaf=_not_trainable_leaf)
        return ravel_pytree(params)[0]

    def bijection(self, theta: jax.Array) -> Any:
        """The flowjax bijection with weights ``theta`` (paramax-unwrapped, ready to call)."""
        theta = jnp.asarray(theta)
        if theta.shape != (self.size,):
            raise ValueError(
                f"FlowSpec({self.kind!r}, dim={self.dim}): theta has shape {theta.shape}; "
                f"expected ({self.size},)."
            )
        return paramax.unwrap(eqx.combine(self._unravel(theta), self._static))

    # -- maps -------------------------------------------------------------------------
    def _point(self, x: jax.Array, what: str) -> jax.Array:
        x = jnp.asarray(x)
        if x.shape != (self.dim,):
            raise ValueError(
                f"FlowSpec({self.kind!r}, dim={self.dim}).{what}: got a point of shape "
                f"{x.shape}; expected ({self.dim},) (use jax.vmap for batches)."
            )
        return x

    def forward(self, theta: jax.Array, z: jax.Array) -> tuple[jax.Array, jax.Array]:
        """``(T(z), log |det dT/dz|)`` for one point ``z`` of shape ``(dim,)``."""
        return self.bijection(theta).transform_and_log_det(self._point(z, "forward"))

    def inverse(self, theta: jax.Array, x: jax.Array) -> tuple[jax.Array, jax.Array]:
        """``(T^{-1}(x), log |det dT^{-1}/dx|)`` for one point ``x`` of shape ``(dim,)``."""
        return self.bijection(theta).inverse_and_log_det(self._point(x, "inverse"))

    def log_prob(self, theta: jax.Array, x: jax.Array) -> jax.Array:
        """Log density at ``x`` of ``T`` pushing forward ``N(0, I)`` (via the inverse).

        Example:
            >>> spec = FlowSpec("maf", dim=2, layers=1, width=4)
            >>> round(float(spec.log_prob(spec.init(jax.random.key(0)), jnp.zeros(2))), 4)
            -1.8379
        """
        z, logdet = self.inverse(theta, x)
        return _std_normal_log_prob(z) + logdet


def _std_normal_log_prob(z: jax.Array) -> jax.Array:
    return -0.5 * jnp.sum(z**2) - 0.5 * z.size * math.log(2 * math.pi)
