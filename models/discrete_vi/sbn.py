"""A sigmoid belief network (a discrete VAE) on binarized 8x8 digits.

One layer of ``H`` Bernoulli latent units per image, a linear Bernoulli decoder and a linear
Bernoulli encoder (Neal 1992; Mnih and Gregor 2014 train the same model with NVIL)::

    z_h ~ Bernoulli(sigmoid(prior_logits_h))                h = 1..H
    x_j ~ Bernoulli(sigmoid((z @ dec_w)_j + dec_b_j))        j = 1..64
    q(z_h | x) = Bernoulli(sigmoid((x @ enc_w)_h + enc_b_h))

The data are scikit-learn's 1797 bundled digits binarized at 8 of 16 (as
``examples/vae_digits.py`` loads them). :func:`make_sbn` gives the model and the guide as
NumPyro programs whose parameters are ``numpyro.param`` sites (``prior_logits``, ``dec_w``,
``dec_b`` in the model; ``enc_w``, ``enc_b`` in the guide), so they run unchanged under
``ppl.objectives`` (with any gradient strategy for the guide's site ``"z"``) and under
NumPyro's ``SVI`` with ``TraceGraph_ELBO``. The latent site ``"z"`` is a ``(B, H)`` block inside
the plate ``"batch"`` (one event of ``H`` units per image).

:func:`log_weight` is the same model written directly in JAX (``log p(x, z) - log q(z | x)`` per
image), used by the evaluators and by hand-written gradient estimators; :func:`exact_elbo`
sums over all ``2^H`` latent configurations (small ``H`` only), for tests.

Example:
    >>> import jax, jax.numpy as jnp, ppl
    >>> x = jnp.asarray(load_binary_digits()[0][:8])
    >>> params = init_params(jax.random.key(0), x, hidden=4)
    >>> model, guide = make_sbn(params)
    >>> float(ppl.objectives.elbo(model, guide).estimate(jax.random.key(1), params, x)) < 0
    True
"""

from __future__ import annotations

import itertools
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist

PIXELS = 64

__all__ = [
    "PIXELS",
    "elbo_per_image",
    "exact_elbo",
    "init_params",
    "load_binary_digits",
    "log_weight",
    "make_sbn",
    "sample_z",
]


def load_binary_digits(seed: int = 0, test_fraction: float = 0.2) -> tuple[np.ndarray, np.ndarray]:
    """``(x_train, x_test)``: the sklearn digits binarized at 8 of 16, float32, ``(n, 64)``.

    Example:
        >>> x_train, x_test = load_binary_digits()
        >>> x_train.shape, x_test.shape
        ((1437, 64), (360, 64))
    """
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    x = (load_digits().data >= 8).astype(np.float32)
    x_train, x_test = train_test_split(x, test_size=test_fraction, random_state=seed)
    return x_train, x_test


def init_params(key: jax.Array, x: jax.Array, hidden: int = 32,
                dtype: jnp.dtype | None = None) -> dict[str, jax.Array]:
    """Initial parameters: small random weights and prior logits, the decoder bias at the
    pixels' log-odds (plus a little noise).

    No logit starts at exactly 0: NumPyro's ``Bernoulli(logits=l).log_prob``
    (``max(l, 0) + log1p(exp(-|l|)) - l x``) has gradient ``x`` instead of ``x - 1/2`` at
    exactly ``l = 0`` (the kinks of ``max`` and ``|.|``), which would bias every gradient of
    the model's first step.

    ``dtype`` defaults to JAX's default float (float32, or float64 with x64 enabled).

    Example:
        >>> import jax, jax.numpy as jnp
        >>> p = init_params(jax.random.key(0), jnp.zeros((3, 64)), hidden=8)
        >>> sorted((k, v.shape) for k, v in p.items())[:2]
        [('dec_b', (64,)), ('dec_w', (8, 64))]
    """
    if int(hidden) < 1:
        raise ValueError(f"sbn.init_params: hidden={hidden!r}; pass a positive number of units.")
    x = jnp.asarray(x)
    if x.ndim != 2 or x.shape[1] != PIXELS:
        raise ValueError(f"sbn.init_params: x has shape {x.shape}; pass images of shape "
                         f"(n, {PIXELS}) (flattened 8x8, values 0/1).")
    dtype = jnp.zeros(()).dtype if dtype is None else dtype
    k_enc, k_dec, k_prior, k_bias = jax.random.split(key, 4)
    mean = jnp.clip(jnp.mean(x, axis=0), 0.01, 0.99)
    return {
        "prior_logits": (0.1 * jax.random.normal(k_prior, (hidden,))).astype(dtype),
        "dec_w": (0.1 * jax.random.normal(k_dec, (hidden, PIXELS))).astype(dtype),
        "dec_b": (jnp.log(mean / (1 - mean))
                  + 0.01 * jax.random.normal(k_bias, (PIXELS,))).astype(dtype),
        "enc_w": (0.1 * jax.random.normal(k_enc, (PIXELS, hidden))).astype(dtype),
        "enc_b": jnp.zeros(hidden, dtype),
    }


def make_sbn(params0: dict[str, jax.Array]) -> tuple[Callable, Callable]:
    """``(model, guide)`` over a batch ``x`` of shape ``(B, 64)``; ``params0`` gives the param
    sites' initial values (and the number of latent units, ``params0["enc_b"].shape[0]``).

    Example:
        >>> import jax, jax.numpy as jnp, numpyro
        >>> p = init_params(jax.random.key(0), jnp.zeros((2, 64)), hidden=3)
        >>> model, guide = make_sbn(p)
        >>> tr = numpyro.handlers.trace(numpyro.handlers.seed(guide, 0)).get_trace(jnp.zeros((2, 64)))
        >>> tr["z"]["value"].shape
        (2, 3)
    """
    hidden = int(params0["enc_b"].shape[0])

    def model(x):
        prior_logits = numpyro.param("prior_logits", params0["prior_logits"])
        dec_w = numpyro.param("dec_w", params0["dec_w"])
        dec_b = numpyro.param("dec_b", params0["dec_b"])
        with numpyro.plate("batch", x.shape[0]):
            z = numpyro.sample(
                "z", dist.Bernoulli(logits=prior_logits).expand([x.shape[0], hidden]).to_event(1))
            logits = z.astype(dec_w.dtype) @ dec_w + dec_b
            numpyro.sample("x", dist.Bernoulli(logits=logits).to_event(1), obs=x)

    def guide(x):
        enc_w = numpyro.param("enc_w", params0["enc_w"])
        enc_b = numpyro.param("enc_b", params0["enc_b"])
        with numpyro.plate("batch", x.shape[0]):
            numpyro.sample("z", dist.Bernoulli(logits=x @ enc_w + enc_b).to_event(1))

    return model, guide


def _bernoulli_log_prob(value: jax.Array, logits: jax.Array) -> jax.Array:
    return value * logits - jax.nn.softplus(logits)


def log_weight(params: dict, x: jax.Array, z: jax.Array) -> jax.Array:
    """``log p(x_b, z_b) - log q(z_b | x_b)`` per image, shape ``(B,)`` (``z`` of shape ``(B, H)``).

    Example:
        >>> import jax, jax.numpy as jnp
        >>> p = init_params(jax.random.key(0), jnp.zeros((2, 64)), hidden=3)
        >>> log_weight(p, jnp.zeros((2, 64)), jnp.ones((2, 3))).shape
        (2,)
    """
    z = z.astype(params["dec_w"].dtype)
    log_prior = jnp.sum(_bernoulli_log_prob(z, params["prior_logits"]), -1)
    log_lik = jnp.sum(_bernoulli_log_prob(x, z @ params["dec_w"] + params["dec_b"]), -1)
    log_q = jnp.sum(_bernoulli_log_prob(z, x @ params["enc_w"] + params["enc_b"]), -1)
    return log_prior + log_lik - log_q


def sample_z(params: dict, x: jax.Array, key: jax.Array) -> jax.Array:
    """Draws ``z ~ q(z | x)``, float ``(B, H)`` in the parameters' dtype."""
    logits = x @ params["enc_w"] + params["enc_b"]
    return jax.random.bernoulli(key, jax.nn.sigmoid(logits)).astype(logits.dtype)


def elbo_per_image(params: dict, x: jax.Array, key: jax.Array, samples: int = 8) -> jax.Array:
    """Monte Carlo ELBO of each image (mean of ``samples`` draws of ``q``), shape ``(n,)``.

    Example:
        >>> import jax, jax.numpy as jnp
        >>> p = init_params(jax.random.key(0), jnp.zeros((2, 64)), hidden=3)
        >>> elbo_per_image(p, jnp.zeros((2, 64)), jax.random.key(1)).shape
        (2,)
    """
    keys = jax.random.split(key, samples)
    return jnp.mean(jax.vmap(lambda k: log_weight(params, x, sample_z(params, x, k)))(keys), 0)


def exact_elbo(params: dict, x: jax.Array) -> jax.Array:
    """``sum_b sum_z q(z | x_b) (log p(x_b, z) - log q(z | x_b))`` over all ``2^H`` latent
    configurations: the exact ELBO of the batch (differentiable; for ``H <= 12`` or so).

    Example:
        >>> import jax, jax.numpy as jnp
        >>> p = init_params(jax.random.key(0), jnp.zeros((2, 64)), hidden=3)
        >>> bool(exact_elbo(p, jnp.zeros((2, 64))) < 0)
        True
    """
    hidden = params["enc_b"].shape[0]
    if hidden > 16:
        raise ValueError(f"sbn.exact_elbo: {hidden} latent units means 2^{hidden} "
                         "configurations; use elbo_per_image (Monte Carlo) instead.")
    configs = jnp.asarray(list(itertools.product([0.0, 1.0], repeat=hidden)),
                          params["enc_b"].dtype)  # (2^H, H)
    logits = x @ params["enc_w"] + params["enc_b"]  # (B, H)

    def one(z):
        zb = jnp.broadcast_to(z, (x.shape[0], hidden))
        log_q = jnp.sum(_bernoulli_log_prob(zb, logits), -1)
        return jnp.exp(log_q) * log_weight(params, x, zb)

    return jnp.sum(jax.vmap(one)(configs))
