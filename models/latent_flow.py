r"""A top-down generator with a normalizing-flow prior in latent space, learned by short-run
Langevin posterior inference (no encoder).

The model, for data ``x`` in ``R^D`` and latents ``z`` in ``R^d``:

.. math::  z \sim q_\alpha(z), \qquad x \mid z \sim p_\beta(x \mid z),

with ``q_alpha`` a normalizing flow (:class:`inference.flows.FlowSpec`: ``z = T_alpha(e)``,
``e ~ N(0, I)``, density exact through the inverse) and the likelihood either
``"gaussian"``, ``N(g_beta(z), sigma^2 I)`` with ``sigma = noise_sd`` fixed, or
``"bernoulli"``, independent pixels with logits ``g_beta(z)`` (binarized images). ``g_beta``
is any Equinox module mapping ``(d,)`` to ``(D,)``; :func:`init` builds an MLP.

Learning (:func:`fit`). Fisher's identity gives the gradient of the marginal likelihood as a
posterior expectation, ``grad log p(x) = E_{p(z|x)}[grad log q_alpha(z) + grad log
p_beta(x|z)]``, and the two terms involve disjoint parameters. Every minibatch:

1. *inference* (:func:`infer_latents`): ``K`` unadjusted Langevin steps on every ``z_i``
   targeting ``log p(z_i | x_i) = log q_alpha(z_i) + log p_beta(x_i | z_i) + const``
   (``inference.langevin.flow``), started from draws of the current prior (or, with
   ``persistent=True``, from where that data point's chain stopped the last time);
2. *generator step*: one optimizer step up ``mean_i log p_beta(x_i | z_i)``, ``z`` held fixed;
3. *prior step*: one optimizer step up ``mean_i log q_alpha(z_i)``: maximum likelihood of the
   flow on the inferred latents, so the prior tracks the aggregate posterior.

With an energy-based prior (Pang et al. 2020) step 3 needs a second Langevin chain on the
prior for the normalizer's gradient; a flow's normalizer is exact, so the prior step is plain
maximum likelihood, and sampling (:func:`sample`) needs no MCMC: ``z = T_alpha(e)`` (one flow
pass), ``x = g_beta(z)``.

The Langevin step size is in units of ``z``: the likelihood's curvature in ``z`` is about
``|dg/dz|^2 / noise_sd^2`` for the Gaussian likelihood, and ULA needs ``step_size`` below
``2 /`` that curvature to be stable (:func:`fit` stops with an error naming the latents when
they stop being finite).

Example:
    >>> import jax, jax.numpy as jnp
    >>> model = init(jax.random.key(0), data_dim=3, latent_dim=2, hidden=8, flow_layers=1,
    ...              flow_width=8)
    >>> x = jax.random.normal(jax.random.key(1), (40, 3))
    >>> model, history = fit(model, x, 0, steps=200, batch=20, langevin_steps=10,
    ...                      step_size=0.02)
    >>> sample(model, jax.random.key(3), 5).shape, history["log_likelihood"].shape
    ((5, 3), (200,))
"""

from __future__ import annotations

import functools
import math
import numbers
from typing import Any, Callable, NamedTuple

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax

from inference import langevin
from inference.fit import FitResult, NonFiniteError, all_finite
from inference.flows import FlowSpec
from inference.training import run_steps
from inference.arguments import as_key, check_int, check_number  # infer's rules; no default key here

__all__ = [
    "LIKELIHOODS", "LatentFlowModel", "Optimizers", "init", "log_prior", "log_likelihood",
    "decode", "sample_latents", "sample", "infer_latents", "reconstruct", "update", "fit",
]

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


# ----------------------------------------------------------------------------------------
# Densities, decoding, sampling
# ----------------------------------------------------------------------------------------
def _check_points(name: str, owner: str, a: Any, dim: int, what: str) -> jax.Array:
    a = jnp.asarray(a)
    if a.ndim != 2 or a.shape[1] != dim:
        raise ValueError(f"{owner}: {name} has shape {a.shape}; expected (n, {dim}) ({what}).")
    if not jnp.issubdtype(a.dtype, jnp.floating):
        a = a.astype(jnp.float32)
    return a


def _check_data(model: LatentFlowModel, x: Any, owner: str, name: str = "x") -> jax.Array:
    x = _check_points(name, owner, x, model.data_dim, "a batch of data points")
    if not isinstance(x, jax.core.Tracer):  # concrete: check on the host (numpy)
        xn = np.asarray(x)
        if not np.all(np.isfinite(xn)):
            raise ValueError(f"{owner}: {name} has non-finite values.")
        if model.likelihood == "bernoulli" and not np.all((xn >= 0) & (xn <= 1)):
            raise ValueError(f"{owner}: {name} has values outside [0, 1]; the bernoulli "
                             "likelihood needs binary (or [0, 1]) data.")
    return x


@eqx.filter_jit
def _log_prior_jit(model: LatentFlowModel, z: jax.Array) -> jax.Array:
    return _log_prior(model, z)


def _log_prior(model: LatentFlowModel, z: jax.Array) -> jax.Array:
    return jax.vmap(lambda zi: model.spec.log_prob(model.flow_theta, zi))(z)


def _log_likelihood(model: LatentFlowModel, x: jax.Array, z: jax.Array) -> jax.Array:
    out = jax.vmap(model.generator)(z)
    if model.likelihood == "bernoulli":
        return jnp.sum(x * out - jax.nn.softplus(out), axis=-1)
    sd = model.noise_sd
    d = x.shape[-1]
    return (-0.5 * jnp.sum((x - out) ** 2, axis=-1) / sd**2
            - d * (math.log(sd) + 0.5 * math.log(2 * math.pi)))


def log_prior(model: LatentFlowModel, z: jax.Array) -> jax.Array:
    """``log q_alpha(z_i)`` for each row of ``z`` (shape ``(n, d)``), shape ``(n,)``.

    Example:
        >>> import jax, jax.numpy as jnp
        >>> m = init(jax.random.key(0), data_dim=3, latent_dim=2, hidden=8, flow_layers=1,
        ...          flow_width=8)
        >>> round(float(log_prior(m, jnp.zeros((1, 2)))[0]), 4)  # fresh prior: N(0, I)
        -1.8379
    """
    return _log_prior_jit(model, _check_points("z", "latent_flow.log_prior", z, model.latent_dim,
                                           "a batch of latents"))


def log_likelihood(model: LatentFlowModel, x: jax.Array, z: jax.Array) -> jax.Array:
    """``log p_beta(x_i | z_i)`` for each row (``x`` ``(n, D)``, ``z`` ``(n, d)``), ``(n,)``.

    Example:
        >>> import jax, jax.numpy as jnp
        >>> m = init(jax.random.key(0), data_dim=3, latent_dim=2, hidden=8, flow_layers=1,
        ...          flow_width=8, noise_sd=1.0)
        >>> z = jnp.zeros((1, 2)); x = decode(m, z)
        >>> round(float(log_likelihood(m, x, z)[0]), 4)  # -3/2 log(2 pi): x at the mean
        -2.7568
    """
    owner = "latent_flow.log_likelihood"
    z = _check_points("z", owner, z, model.latent_dim, "a batch of latents")
    x = _check_data(model, x, owner)
    if x.shape[0] != z.shape[0]:
        raise ValueError(f"{owner}: x has {x.shape[0]} rows but z has {z.shape[0]}.")
    return eqx.filter_jit(_log_likelihood)(model, x, z)


def decode(model: LatentFlowModel, z: jax.Array) -> jax.Array:
    """The mean of ``x | z`` for each row of ``z``: ``g(z)`` (gaussian) or
    ``sigmoid(g(z))`` (bernoulli), shape ``(n, D)``.

    Example:
        >>> import jax, jax.numpy as jnp
        >>> m = init(jax.random.key(0), data_dim=3, latent_dim=2, hidden=8, flow_layers=1,
        ...          flow_width=8, likelihood="bernoulli")
        >>> bool(jnp.all((decode(m, jnp.ones((2, 2))) > 0) & (decode(m, jnp.ones((2, 2))) < 1)))
        True
    """
    z = _check_points("z", "latent_flow.decode", z, model.latent_dim, "a batch of latents")
    return _decode(model, z)


@eqx.filter_jit
def _decode(model: LatentFlowModel, z: jax.Array) -> jax.Array:
    out = jax.vmap(model.generator)(z)
    return jax.nn.sigmoid(out) if model.likelihood == "bernoulli" else out


def _prior_draws(model: LatentFlowModel, key: jax.Array, n: int) -> jax.Array:
    e = jax.random.normal(key, (n, model.latent_dim))
    return jax.vmap(lambda ei: model.spec.forward(model.flow_theta, ei)[0])(e)


_prior_draws_jit = eqx.filter_jit(_prior_draws)


def sample_latents(model: LatentFlowModel, key: jax.Array, n: int) -> jax.Array:
    """``n`` draws of the prior, ``z = T_alpha(e)``, ``e ~ N(0, I)``: shape ``(n, d)``.

    Example:
        >>> import jax
        >>> m = init(jax.random.key(0), data_dim=3, latent_dim=2, hidden=8, flow_layers=1,
        ...          flow_width=8)
        >>> sample_latents(m, jax.random.key(1), 7).shape
        (7, 2)
    """
    n = _positive_int("n", n, "latent_flow.sample_latents")
    return _prior_draws_jit(model, _as_key(key, "latent_flow.sample_latents"), n)


def sample(model: LatentFlowModel, key: jax.Array, n: int, noise: bool = False) -> jax.Array:
    """``n`` new data points with no MCMC: ``z ~ q_alpha`` (one flow pass), then the mean of
    ``x | z`` (:func:`decode`), or with ``noise=True`` a draw of ``x | z`` (Gaussian noise
    added, or Bernoulli pixels). Shape ``(n, D)``.

    Example:
        >>> import jax, jax.numpy as jnp
        >>> m = init(jax.random.key(0), data_dim=3, latent_dim=2, hidden=8, flow_layers=1,
        ...          flow_width=8, likelihood="bernoulli")
        >>> x = sample(m, jax.random.key(1), 4, noise=True)
        >>> x.shape, bool(jnp.all((x == 0) | (x == 1)))
        ((4, 3), True)
    """
    n = _positive_int("n", n, "latent_flow.sample")
    k_z, k_x = jax.random.split(_as_key(key, "latent_flow.sample"))
    mean = _decode(model, _prior_draws_jit(model, k_z, n))
    if not noise:
        return mean
    if model.likelihood == "bernoulli":
        return jax.random.bernoulli(k_x, mean).astype(mean.dtype)
    return mean + model.noise_sd * jax.random.normal(k_x, mean.shape, mean.dtype)


# ----------------------------------------------------------------------------------------
# Posterior inference
# ----------------------------------------------------------------------------------------
def _infer(model: LatentFlowModel, x: jax.Array, z0: jax.Array, key: jax.Array, steps: int,
           step_size: float) -> jax.Array:
    arrays, static = eqx.partition(model, eqx.is_inexact_array)
    model = eqx.combine(jax.lax.stop_gradient(arrays), static)
    x = jax.lax.stop_gradient(x)

    def logdensity(z):  # chains are independent: the sum's gradient is each one's
        return jnp.sum(_log_prior(model, z) + _log_likelihood(model, x, z))

    zk = langevin.flow(logdensity, z0, key, steps, step_size, noise=True, checkpoint=False)
    return jax.lax.stop_gradient(zk)


_infer_jit = eqx.filter_jit(_infer)


def infer_latents(
    model: LatentFlowModel,
    x: jax.Array,
    key: jax.Array,
    steps: int = 20,
    step_size: float = 0.01,
    start: str | jax.Array = "prior",
) -> jax.Array:
    """Short-run Langevin posterior latents: one chain per row of ``x``, ``steps`` ULA steps
    ``z <- z + h grad log p(z | x) + sqrt(2 h) xi`` with ``h = step_size``.

    Args:
        model: the model (held fixed; the result carries no gradient to it).
        x: data, shape ``(n, D)``.
        key: PRNG key (the initial draws and the Langevin noise).
        steps: Langevin steps ``K`` (0: the initial points).
        step_size: ``h``; keep it below ``2 /`` the curvature of ``log p(z | x)``.
        start: where chains start: ``"prior"`` (draws of ``q_alpha``), ``"base"`` (draws of
            the flow's base ``N(0, I)``), or an array ``(n, d)`` (e.g. persistent chains).

    Returns:
        ``z_K``, shape ``(n, d)``.

    Example:
        >>> import jax, jax.numpy as jnp
        >>> m = init(jax.random.key(0), data_dim=3, latent_dim=2, hidden=8, flow_layers=1,
        ...          flow_width=8)
        >>> z = infer_latents(m, jnp.zeros((5, 3)), jax.random.key(1), steps=10)
        >>> z.shape
        (5, 2)
    """
    owner = "latent_flow.infer_latents"
    x = _check_data(model, x, owner)
    steps = _positive_int("steps", steps, owner, allow_zero=True)
    step_size = _positive_float("step_size", step_size, owner)
    k0, k = jax.random.split(_as_key(key, owner))
    n = x.shape[0]
    if isinstance(start, str):
        if start == "prior":
            z0 = _prior_draws_jit(model, k0, n)
        elif start == "base":
            z0 = jax.random.normal(k0, (n, model.latent_dim))
        else:
            raise ValueError(f"{owner}(start={start!r}): use 'prior', 'base' or an array of "
                             f"shape ({n}, {model.latent_dim}).")
    else:
        z0 = jnp.asarray(start)
        if z0.shape != (n, model.latent_dim):
            raise ValueError(f"{owner}: start has shape {z0.shape}; expected "
                             f"({n}, {model.latent_dim}) (one start per row of x).")
    return _infer_jit(model, x, z0, k, steps, step_size)


def reconstruct(model: LatentFlowModel, x: jax.Array, key: jax.Array, steps: int = 20,
                step_size: float = 0.01, start: str | jax.Array = "prior") -> jax.Array:
    """:func:`decode` of :func:`infer_latents`: the reconstruction of each row of ``x``.

    Example:
        >>> import jax, jax.numpy as jnp
        >>> m = init(jax.random.key(0), data_dim=3, latent_dim=2, hidden=8, flow_layers=1,
        ...          flow_width=8)
        >>> reconstruct(m, jnp.zeros((5, 3)), jax.random.key(1), steps=10).shape
        (5, 3)
    """
    return decode(model, infer_latents(model, x, key, steps, step_size, start))


# ----------------------------------------------------------------------------------------
# Learning
# ----------------------------------------------------------------------------------------
class Optimizers(NamedTuple):
    """The two optax transformations of :func:`update` and :func:`fit`: one for the
    generator's weights, one for the flow prior's (``flow_theta``).

    Example:
        >>> import jax, optax
        >>> m = init(jax.random.key(0), data_dim=3, latent_dim=2, hidden=8, flow_layers=1,
        ...          flow_width=8)
        >>> opts = Optimizers(optax.adam(1e-3), optax.adam(1e-2))
        >>> len(opts.init(m))
        2
    """

    generator: optax.GradientTransformation = optax.adam(1e-3)
    prior: optax.GradientTransformation = optax.adam(1e-3)

    def init(self, model: LatentFlowModel) -> tuple[Any, Any]:
        """The optimizer state ``(generator_state, prior_state)`` for ``model``."""
        return (self.generator.init(eqx.filter(model.generator, eqx.is_inexact_array)),
                self.prior.init(model.flow_theta))


def _update(model, opt_state, x, z, optimizers):
    z = jax.lax.stop_gradient(z)
    gen_params, gen_static = eqx.partition(model.generator, eqx.is_inexact_array)

    def gen_loss(p):
        m = eqx.tree_at(lambda mm: mm.generator, model, eqx.combine(p, gen_static))
        return -jnp.mean(_log_likelihood(m, x, z))

    def prior_loss(theta):
        return -jnp.mean(jax.vmap(lambda zi: model.spec.log_prob(theta, zi))(z))

    g_val, g_grad = jax.value_and_grad(gen_loss)(gen_params)
    p_val, p_grad = jax.value_and_grad(prior_loss)(model.flow_theta)
    g_upd, g_state = optimizers.generator.update(g_grad, opt_state[0], gen_params)
    p_upd, p_state = optimizers.prior.update(p_grad, opt_state[1], model.flow_theta)
    new_gen = eqx.combine(optax.apply_updates(gen_params, g_upd), gen_static)
    new_theta = optax.apply_updates(model.flow_theta, p_upd)
    new_model = eqx.tree_at(lambda m: (m.generator, m.flow_theta), model, (new_gen, new_theta))
    info = {
        "log_likelihood": -g_val,
        "log_prior": -p_val,
        "generator_finite": jnp.isfinite(g_val) & all_finite(g_grad) & all_finite(new_gen),
        "prior_finite": jnp.isfinite(p_val) & jnp.all(jnp.isfinite(p_grad))
        & jnp.all(jnp.isfinite(new_theta)),
    }
    return new_model, (g_state, p_state), info


_update_jit = eqx.filter_jit(_update)


def update(
    model: LatentFlowModel,
    opt_state: tuple[Any, Any],
    x: jax.Array,
    z: jax.Array,
    optimizers: Optimizers = Optimizers(),
) -> tuple[LatentFlowModel, tuple[Any, Any], dict[str, jax.Array]]:
    """One learning step on fixed latents ``z`` (no gradient flows into ``z``): the
    generator steps up ``mean_i log p(x_i | z_i)`` and the prior up ``mean_i log q(z_i)``
    (maximum likelihood of the flow on ``z``), each with its own optimizer.

    Returns ``(model, opt_state, info)``; ``info`` has ``"log_likelihood"`` and
    ``"log_prior"`` (the two means before the step) and ``"generator_finite"``,
    ``"prior_finite"`` (whether each part's objective, gradient and new weights are finite;
    the step is applied regardless, :func:`fit` keeps the last finite model). Pure and
    jittable (``eqx.filter_jit``).

    Example:
        >>> import jax, jax.numpy as jnp
        >>> m = init(jax.random.key(0), data_dim=3, latent_dim=2, hidden=8, flow_layers=1,
        ...          flow_width=8)
        >>> opts = Optimizers()
        >>> z = jnp.ones((4, 2)); x = jnp.zeros((4, 3))
        >>> m2, state, info = update(m, opts.init(m), x, z, opts)
        >>> bool(log_prior(m2, z).mean() > info["log_prior"])
        True
    """
    owner = "latent_flow.update"
    x = _check_data(model, x, owner)
    z = _check_points("z", owner, z, model.latent_dim, "a batch of latents")
    if x.shape[0] != z.shape[0]:
        raise ValueError(f"{owner}: x has {x.shape[0]} rows but z has {z.shape[0]}.")
    if not isinstance(optimizers, Optimizers):
        raise ValueError(f"{owner}(optimizers={optimizers!r}): must be latent_flow.Optimizers"
                         "(generator=..., prior=...).")
    return _update_jit(model, opt_state, x, z, optimizers)


class _Config(NamedTuple):
    """What a step of :func:`fit` is specialised on."""

    static: Any  # the model's non-array part
    optimizers: Optimizers
    langevin_steps: int
    step_size: float
    steps: int
    batch: int
    persistent: bool


def _fit_step(config: _Config, state, i, key, data, guard):
    """One learning step for :func:`inference.training.run_steps`: flags ``[latents,
    generator, prior]`` (the order of ``_PARTS``)."""
    params, opt_state, bank = state
    m = eqx.combine(params, config.static)
    k_batch, k_init, k_lang = jax.random.split(jax.random.fold_in(key, i), 3)
    idx = jax.random.choice(k_batch, data.shape[0], (config.batch,), replace=False)
    xb = data[idx]
    z0 = bank[idx] if config.persistent else _prior_draws(m, k_init, config.batch)
    z = _infer(m, xb, z0, k_lang, config.langevin_steps, config.step_size)
    new_m, new_opt, info = _update(m, opt_state, xb, z, config.optimizers)
    ok = jnp.stack([jnp.all(jnp.isfinite(z)), info["generator_finite"], info["prior_finite"]])
    new_params = eqx.filter(new_m, eqx.is_inexact_array)
    new_bank = bank.at[idx].set(z) if config.persistent else bank
    return (new_params, new_opt, new_bank), (info["log_likelihood"], info["log_prior"]), ok


def fit(
    model: LatentFlowModel,
    data: jax.Array,
    key: jax.Array | int,
    steps: int = 2000,
    batch: int = 128,
    *,
    langevin_steps: int = 20,
    step_size: float = 0.01,
    persistent: bool = False,
    optimizers: Optimizers | None = None,
    updates: int = 20,
    progress: bool = False,
) -> tuple[LatentFlowModel, dict[str, jax.Array]]:
    """Learn the generator and the flow prior by alternating short-run Langevin inference
    and one :func:`update` per minibatch (see the module docstring).

    Args:
        model: the initial model (e.g. from :func:`init`).
        data: training data, shape ``(N, D)``.
        key: PRNG key or int seed; step ``i`` uses ``fold_in(key, i)``.
        steps: learning steps (minibatches).
        batch: minibatch size (rows drawn without replacement each step), ``1..N``.
        langevin_steps: ``K``, Langevin steps of the posterior inference per minibatch.
        step_size: the Langevin step ``h``.
        persistent: start each data point's chain where its last one stopped (a bank of
            ``N`` latents, first filled from the initial prior) instead of from fresh prior
            draws. More posterior-accurate latents for the same ``K``: on the 8x8 digits
            (``examples/latent_flow_digits.py``, ``K = 20``) fresh chains let the training
            ``log p(x|z)`` peak early and then fall, and gave samples ~3x further from the
            data than persistent ones. Held-out data then need longer chains (they have no
            bank): there 1000 steps from the prior.
        optimizers: :class:`Optimizers`; default Adam(1e-3) for both parts.
        updates: the run is compiled as one chunk of steps (a ``lax.scan``) called about
            this many times; between chunks the host checks for non-finite values.
        progress: show a progress bar.

    Returns:
        ``(model, history)``; ``history`` has ``"log_likelihood"`` and ``"log_prior"``, shape
        ``(steps,)``: each minibatch's mean ``log p(x|z)`` and ``log q(z)`` at its inferred
        latents, before that step's update.

    Raises:
        inference.NonFiniteError: at the first step whose latents, generator or prior update
            is not finite; ``err.leaf`` names the part (``"latents"``, ``"generator"`` or
            ``"prior"``), ``err.step`` the step, ``err.result.params`` the last finite model
            and ``err.result.values`` the history before that step.

    Example:
        >>> import jax, jax.numpy as jnp
        >>> m = init(jax.random.key(0), data_dim=3, latent_dim=2, hidden=8, flow_layers=1,
        ...          flow_width=8)
        >>> x = jnp.linspace(-1, 1, 40)[:, None] * jnp.array([1.0, -1.0, 0.5])
        >>> m2, h = fit(m, x, 0, steps=200, batch=20, langevin_steps=10, step_size=0.02)
        >>> bool(h["log_likelihood"][-20:].mean() > h["log_likelihood"][:20].mean())
        True
    """
    owner = "latent_flow.fit"
    if not isinstance(model, LatentFlowModel):
        raise ValueError(f"{owner}(model={type(model).__name__}): must be a LatentFlowModel "
                         "(see latent_flow.init).")
    data = _check_data(model, data, owner, name="data")
    key = _as_key(key, owner)
    steps = _positive_int("steps", steps, owner)
    n = data.shape[0]
    batch = _positive_int("batch", batch, owner)
    if batch > n:
        raise ValueError(f"{owner}(batch={batch}): more than the {n} rows of data.")
    K = _positive_int("langevin_steps", langevin_steps, owner, allow_zero=True)
    h = _positive_float("step_size", step_size, owner)
    updates = _positive_int("updates", updates, owner)
    optimizers = Optimizers() if optimizers is None else optimizers
    if not isinstance(optimizers, Optimizers):
        raise ValueError(f"{owner}(optimizers={optimizers!r}): must be latent_flow.Optimizers"
                         "(generator=..., prior=...).")

    params, static = eqx.partition(model, eqx.is_inexact_array)
    persistent = bool(persistent)
    bank = _prior_draws_jit(model, jax.random.fold_in(key, 2**31 - 1), n) if persistent else \
        jnp.zeros((0, model.latent_dim))
    config = _Config(static, optimizers, K, h, steps, batch, persistent)
    # The one training loop (inference.training): chunked, guarded, with the bar.
    trained = run_steps(
        lambda state, i, key, data, guard: _fit_step(config, state, i, key, data, guard),
        (params, optimizers.init(model), bank), steps=steps, key=key, data=data,
        updates=updates, progress=progress, label=owner,
        postfix=lambda out: {"log p(x|z)": float(jnp.nanmean(out[0])),
                             "log q(z)": float(jnp.nanmean(out[1]))})
    fitted = eqx.combine(trained.state[0], static)
    ll, lp = trained.outputs
    if trained.stopped is None:
        return fitted, {"log_likelihood": ll, "log_prior": lp}
    bad = trained.stopped.step
    part = _PARTS[int(np.argmin(trained.stopped.ok))]  # the first part that is not finite
    history = {"log_likelihood": ll[:bad], "log_prior": lp[:bad]}
    advice = {
        "latents": "the Langevin chains diverged: lower step_size (below 2 / the curvature "
                   "of log p(z|x), about noise_sd^2 / |dg/dz|^2) or langevin_steps",
        "generator": "the generator's objective, gradient or update: lower its learning rate",
        "prior": "the flow prior's objective, gradient or update: lower its learning rate",
    }[part]
    raise NonFiniteError(
        f"{owner}: non-finite {part} at step {bad} (0-based; {bad} step(s) were applied): "
        f"{advice}. Training stopped; err.result.params holds the last finite model.",
        bad, part, FitResult(fitted, history),
    )
