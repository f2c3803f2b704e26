"""Variational inference in a Gaussian mixture with one discrete assignment per point.

``K`` components in 2-D with a known, shared isotropic scale ``SCALE``::

    z_n ~ Categorical(softmax(mix_logits))                   n = 1..N
    x_n ~ Normal(locs[z_n], SCALE I_2)

The component locations ``locs`` (``(K, 2)``) and ``mix_logits`` are model parameters
(``numpyro.param``, fitted by maximizing the ELBO, as EM does), and the guide has free
per-point logits ``q(z_n) = Categorical(softmax(assign_logits[n]))``. Two ways to handle the
assignments (:func:`make_gmm`):

- sampled: the guide draws ``z`` (the ELBO's gradient needs a discrete estimator: REINFORCE,
  baselines, MVD, VIMCO, or NumPyro's ``TraceGraph_ELBO``);
- enumerated (``enumerate=True``): the model marks ``z`` with
  ``infer={"enumerate": "parallel"}`` and the guide has no latent site, so the objective is
  ``log p(x)`` summed exactly over the assignments (NumPyro's ``TraceEnum_ELBO``). Its
  optimal guide is the exact posterior, :func:`posterior_logits`.

:func:`exact_elbo` and :func:`log_marginal` are closed forms in JAX; :func:`brute_force_elbo`
sums over all ``K^N`` joint assignments (tiny ``N``, for tests).

Example:
    >>> import jax, ppl
    >>> x = make_data(jax.random.key(0), 30)
    >>> params = init_params(jax.random.key(1), x)
    >>> model, guide = make_gmm(params)
    >>> float(ppl.objectives.elbo(model, guide).estimate(jax.random.key(2), params, x)) < 0
    True
"""

from __future__ import annotations

import itertools
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpyro
import numpyro.distributions as dist
from jax.scipy.special import logsumexp

import ppl

SCALE = 0.8
CENTERS = ((-2.0, 0.0), (2.0, 0.0), (0.0, 2.5), (0.0, -2.5))

__all__ = [
    "SCALE",
    "brute_force_elbo",
    "exact_elbo",
    "init_params",
    "log_joint_table",
    "log_marginal",
    "log_marginal_objective",
    "make_data",
    "make_gmm",
    "posterior_logits",
]


def make_data(key: jax.Array, n: int = 300, components: int = 3,
              dtype: jnp.dtype | None = None) -> jax.Array:
    """``n`` 2-D points, round-robin from the first ``components`` of :data:`CENTERS` plus
    ``N(0, SCALE^2 I)`` noise (clusters that overlap a little).

    Example:
        >>> import jax
        >>> make_data(jax.random.key(0), 10).shape
        (10, 2)
    """
    if not 1 <= int(components) <= len(CENTERS):
        raise ValueError(f"gmm.make_data: components={components!r}; pass 1 to {len(CENTERS)}.")
    dtype = jnp.zeros(()).dtype if dtype is None else dtype
    centers = jnp.asarray(CENTERS[:components], dtype)
    labels = jnp.arange(n) % components
    return (centers[labels] + SCALE * jax.random.normal(key, (n, 2))).astype(dtype)


def init_params(key: jax.Array, x: jax.Array, components: int = 3) -> dict[str, jax.Array]:
    """Initial parameters: ``locs`` at ``components`` data points drawn with ``key``, uniform
    mixture weights and uniform assignment probabilities (in the dtype of ``x``).

    Example:
        >>> import jax
        >>> p = init_params(jax.random.key(0), make_data(jax.random.key(1), 12))
        >>> {k: v.shape for k, v in sorted(p.items())}
        {'assign_logits': (12, 3), 'locs': (3, 2), 'mix_logits': (3,)}
    """
    x = jnp.asarray(x)
    if x.ndim != 2 or x.shape[1] != 2:
        raise ValueError(f"gmm.init_params: x has shape {x.shape}; pass points of shape (n, 2).")
    idx = jax.random.choice(key, x.shape[0], (components,), replace=False)
    return {
        "locs": x[idx],
        "mix_logits": jnp.zeros(components, x.dtype),
        "assign_logits": jnp.zeros((x.shape[0], components), x.dtype),
    }


def make_gmm(params0: dict[str, jax.Array], enumerate: bool = False) -> tuple[Callable, Callable]:
    """``(model, guide)`` over points ``x`` of shape ``(N, 2)``; ``params0`` gives the param
    sites' initial values. With ``enumerate=True`` the model's ``"z"`` is marked for parallel
    enumeration and the guide has no latent site (nor the ``assign_logits`` param).

    Example:
        >>> import jax, numpyro
        >>> x = make_data(jax.random.key(0), 6)
        >>> model, guide = make_gmm(init_params(jax.random.key(1), x))
        >>> numpyro.handlers.trace(numpyro.handlers.seed(guide, 0)).get_trace(x)["z"]["value"].shape
        (6,)
    """
    infer = {"enumerate": "parallel"} if enumerate else {}

    def model(x):
        locs = numpyro.param("locs", params0["locs"])
        mix_logits = numpyro.param("mix_logits", params0["mix_logits"])
        with numpyro.plate("data", x.shape[0]):
            z = numpyro.sample("z", dist.Categorical(logits=mix_logits), infer=infer)
            numpyro.sample("x", dist.Normal(locs[z], SCALE).to_event(1), obs=x)

    def guide(x):
        logits = numpyro.param("assign_logits", params0["assign_logits"])
        with numpyro.plate("data", x.shape[0]):
            numpyro.sample("z", dist.Categorical(logits=logits))

    def enumerated_guide(x):
        pass

    return model, (enumerated_guide if enumerate else guide)


def log_joint_table(params: dict, x: jax.Array) -> jax.Array:
    """``log pi_k + log N(x_n; locs_k, SCALE^2 I)``, shape ``(N, K)``."""
    log_pi = jax.nn.log_softmax(params["mix_logits"])
    return log_pi + jnp.sum(dist.Normal(params["locs"], SCALE).log_prob(x[:, None, :]), -1)


def exact_elbo(params: dict, x: jax.Array) -> jax.Array:
    """``sum_n sum_k q_nk (log p(x_n, k) - log q_nk)`` in closed form.

    Example:
        >>> import jax
        >>> x = make_data(jax.random.key(0), 5)
        >>> p = init_params(jax.random.key(1), x)
        >>> bool(exact_elbo(p, x) <= log_marginal(p, x))
        True
    """
    log_q = jax.nn.log_softmax(params["assign_logits"], axis=-1)
    return jnp.sum(jnp.exp(log_q) * (log_joint_table(params, x) - log_q))


def log_marginal(params: dict, x: jax.Array) -> jax.Array:
    """``log p(x) = sum_n logsumexp_k log p(x_n, k)``: the ELBO at the exact posterior."""
    return jnp.sum(logsumexp(log_joint_table(params, x), axis=-1))


def posterior_logits(params: dict, x: jax.Array) -> jax.Array:
    """``log p(z_n = k | x_n)``, shape ``(N, K)``: the optimal ``assign_logits``."""
    return jax.nn.log_softmax(log_joint_table(params, x), axis=-1)


def brute_force_elbo(params: dict, x: jax.Array) -> jax.Array:
    """The ELBO as a sum over all ``K^N`` joint assignments (tiny ``N`` only, for tests).

    Example:
        >>> import jax, jax.numpy as jnp
        >>> x = make_data(jax.random.key(0), 3)
        >>> p = init_params(jax.random.key(1), x)
        >>> bool(jnp.isclose(brute_force_elbo(p, x), exact_elbo(p, x), rtol=1e-5))
        True
    """
    n, k = params["assign_logits"].shape
    if k ** n > 100_000:
        raise ValueError(f"gmm.brute_force_elbo: {k}^{n} joint assignments; use exact_elbo.")
    configs = jnp.asarray(list(itertools.product(range(k), repeat=n)))  # (K^N, N)
    table = log_joint_table(params, x)
    log_q = jax.nn.log_softmax(params["assign_logits"], axis=-1)
    rows = jnp.arange(n)

    def one(z):
        lq = jnp.sum(log_q[rows, z])
        return jnp.exp(lq) * (jnp.sum(table[rows, z]) - lq)

    return jnp.sum(jax.vmap(one)(configs))


def log_marginal_objective(enum_model: Callable, x: jax.Array) -> ppl.Expectation:
    """``log p(x)`` of the enumerated model (``make_gmm(..., enumerate=True)``), the assignments
    summed out, as an objective of ``(params, x)`` to maximize.

    It evaluates, on the model with ``params`` substituted, the enumeration that
    ``ppl.potential`` builds for the model (NumPyro's funsor machinery, as for NUTS on
    enumerated models). ``ppl.objectives.elbo`` cannot take the enumerated model
    (``ppl.density`` needs a value for every latent site) and ``ppl.Enum`` on the guide
    enumerates the joint assignment block (``K^N`` configurations), so this is how the
    library sums the assignments of many points out.

    Example:
        >>> import jax, jax.numpy as jnp
        >>> x = make_data(jax.random.key(0), 20)
        >>> p = init_params(jax.random.key(1), x)
        >>> model, _ = make_gmm(p, enumerate=True)
        >>> marginal = {k: v for k, v in p.items() if k != "assign_logits"}
        >>> value = log_marginal_objective(model, x).estimate(jax.random.key(2), marginal, x)
        >>> bool(jnp.isclose(value, log_marginal(p, x), rtol=1e-5))
        True
    """
    enumeration = ppl.potential(enum_model, x).enumeration
    if enumeration is None:
        raise ValueError("gmm.log_marginal_objective: the model has no enumerated site; pass "
                         "the model of make_gmm(params0, enumerate=True).")

    @ppl.expectation
    def log_marginal_of(params, x):
        return enumeration.log_density(ppl.with_params(enum_model, params), (x,), {}, {})

    return log_marginal_of
